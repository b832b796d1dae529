/**
 * Counters of one import, and the summary they add up to. The sink accounts every record in file
 * order (so a checkpoint's counters cover exactly the records before it) and the merge adds the
 * outcomes. Bounded: keys are model names, field names and drop reasons, each capped so hostile
 * input cannot grow them.
 */
import type { MappedItem } from './map-models.js';

/** Per-model outcome counts. `read` = `inserted + existing + merged + filtered + dropped + rejected`. */
export interface ModelCounts {
  read: number;
  inserted: number;
  /** Rows that matched one already in the database (emails, options) and were reused. */
  existing: number;
  /** Users merged into an existing user (`--merge-users`), and their rows skipped with them. */
  merged: number;
  /** Users inserted under a new name because theirs was taken. Also counted in `inserted`. */
  renamed: number;
  /**
   * Roles of an existing name overwritten with the imported permissions (`--overwrite-configs`).
   * Optional: summaries of user-scope imports lack it.
   */
  overwritten?: number;
  /** Removed by `--filter-usernames`. */
  filtered: number;
  /** Dropped, by reason (`user not imported: filtered out`, `scoped to an organization`, ...). */
  dropped: Record<string, number>;
  /** Written to the rejects file instead of failing the import. */
  rejected: number;
}

/** The outcome of one import, printed as a table or as JSON (`--json`). */
export interface ImportSummary {
  importId: string;
  mode: 'atomic' | 'resumable' | 'dry-run';
  /** `done`; or `already-done` when a finished resumable import was run again. */
  state: 'done' | 'already-done';
  records: number;
  bytes: number;
  seconds: number;
  models: Record<string, ModelCounts>;
  /** Out-of-scope records, by model name. */
  skipped: Record<string, number>;
  /**
   * Why, for the skipped models whose reason is more than "not user data" (a wider scope's
   * model, organisation data the global scope would need). Absent when there is none.
   */
  skippedReasons?: Record<string, string>;
  /** The import's scope, when not `users`. */
  scope?: 'config' | 'global';
  /** Fields the schemas do not know, by model then field: ignored, counted. */
  unknownFields: Record<string, Record<string, number>>;
  /** Extra rows userport writes beside the imported ones. */
  adjacent: Adjacent;
  /** Names given to --filter-usernames that matched no user. */
  unmatchedUsernames: string[];
  /**
   * True when the target tables were empty and the rows were loaded before their indexes and
   * constraints were built (`bulkLoad: 'auto'`). Optional: summaries stored before it existed lack it.
   */
  bulkLoad?: boolean;
  /** What was written into this target and what not, and why (`userport target` prints the same). */
  target?: string[];
  /**
   * Text before the JSON array that `skipLeadingText` skipped (log lines printed before the
   * export); absent when there was none. `firstLine` is the first of them, cut to 80 characters.
   */
  leadingText?: { lines: number; bytes: number; firstLine: string };
  /** True when the input was gzip-compressed (read through gunzip). */
  gzip?: boolean;
}

/** Rows userport writes beside the imported ones, as Sentry's signal receivers would. */
export interface Adjacent {
  lostPasswordHashes: number;
  primaryEmails: number;
  /**
   * `sentry_email` rows added for addresses of new user emails that had none (Sentry's
   * `receivers/email.py`). Optional: checkpoints written before it existed lack it.
   */
  userEmailAddresses?: number;
  /**
   * New users whose address another user of the target already had (a finding each). Optional:
   * checkpoints written before it existed lack it.
   */
  sharedAddresses?: number;
  /**
   * On targets with `auth_user.email_unique` (Sentry 2025+): new users whose `email_unique` was
   * left empty because another user holds that address there (a finding each).
   */
  emailUniqueLeftEmpty?: number;
  /**
   * Config and global scopes: API tokens whose token or refresh token another row already had,
   * imported with new token values as Sentry does (a finding each, never quoting a token).
   */
  tokensRegenerated?: number;
}

const MAX_KEYS = 200;
const OTHER = '(other)';

/**
 * A map keyed by data (model, field, reason names): no prototype, so a key like `constructor` or
 * `toString` starts at nothing instead of inheriting `Object.prototype`'s member.
 */
function dict<V>(from?: Record<string, V>): Record<string, V> {
  const d = Object.create(null) as Record<string, V>;
  if (from) for (const [k, v] of Object.entries(from)) d[k] = v;
  return d;
}

function bump(obj: Record<string, number>, key: string, n = 1): void {
  if (!(key in obj) && Object.keys(obj).length >= MAX_KEYS) key = OTHER;
  obj[key] = (obj[key] ?? 0) + n;
}

export function emptyCounts(): ModelCounts {
  return { read: 0, inserted: 0, existing: 0, merged: 0, renamed: 0, filtered: 0, dropped: dict<number>(), rejected: 0 };
}

/** Mutable counters the stages update as records flow. */
export class ImportStats {
  records = 0;
  bytes = 0;
  readonly models = dict<ModelCounts>();
  readonly skipped = dict<number>();
  readonly unknownFields = dict<Record<string, number>>();
  unmatchedUsernames: string[] = [];
  adjacent: Adjacent = { lostPasswordHashes: 0, primaryEmails: 0, userEmailAddresses: 0 };

  model(name: string): ModelCounts {
    return (this.models[name] ??= emptyCounts());
  }

  skip(model: string): void {
    bump(this.skipped, model);
  }

  unknownField(model: string, field: string): void {
    bump((this.unknownFields[model] ??= dict<number>()), field);
  }

  drop(model: string, reason: string, n = 1): void {
    bump(this.model(model).dropped, reason, n);
  }

  /** Accounts one item reaching the sink. Every record of the export passes here exactly once, in order. */
  account(item: MappedItem): void {
    this.records++;
    this.bytes = item.offset + item.length;
    if (item.kind === 'skip') {
      this.skip(item.model);
    } else if (item.kind === 'reject') {
      const c = this.model(item.model ?? '(invalid)');
      c.read++;
      c.rejected++;
    } else {
      this.model(item.model).read++;
      if (item.kind === 'row' && item.unknownFields) for (const f of item.unknownFields) this.unknownField(item.model, f);
    }
  }

  /** Plain-object snapshot (for checkpoints and JSON). */
  snapshot(): StatsSnapshot {
    return JSON.parse(JSON.stringify({
      records: this.records, bytes: this.bytes, models: this.models, skipped: this.skipped,
      unknownFields: this.unknownFields, unmatchedUsernames: this.unmatchedUsernames, adjacent: this.adjacent,
    })) as StatsSnapshot;
  }

  /** Restores counters saved by {@link snapshot} (resuming an import). */
  restore(s: StatsSnapshot): void {
    this.records = s.records;
    this.bytes = s.bytes;
    // A snapshot comes back from JSON as plain objects: rebuild every data-keyed map without a prototype.
    for (const [k, v] of Object.entries(s.models)) this.models[k] = { ...v, dropped: dict(v.dropped) };
    for (const [k, v] of Object.entries(s.skipped)) this.skipped[k] = v;
    for (const [k, v] of Object.entries(s.unknownFields)) this.unknownFields[k] = dict(v);
    this.unmatchedUsernames = s.unmatchedUsernames;
    this.adjacent = s.adjacent;
  }
}

/** The counters as plain JSON ({@link ImportStats.snapshot}): what a resumable import checkpoints and a summary is built from. */
export interface StatsSnapshot {
  records: number;
  bytes: number;
  models: Record<string, ModelCounts>;
  skipped: Record<string, number>;
  unknownFields: Record<string, Record<string, number>>;
  unmatchedUsernames: string[];
  adjacent: Adjacent;
  /** Size and count of the rejects file at the snapshot (to resume it exactly). */
  rejects?: { bytes: number; count: number };
}
