/**
 * The new users' options and user emails, decided in the client and written once, straight into
 * the target (issue #23, item 1). While the early users step runs (early.ts), the sink diverts
 * every option and user email that names its user by pk (an option: and no project or
 * organization) to a side spool; once the step is done, the users' pk map says which of those
 * users are new (inserted or renamed by this import), and their rows are COPYed into the target
 * as final rows, in file order (source pk order: the caller checked). Staging them and deciding
 * them in SQL cost about 1.3 s of server time per 100k users and model, for rows that are all
 * plain inserts.
 *
 * Exact, or not taken:
 * - a row goes straight in only when its user is new: nobody else can hold a row of that user,
 *   and no rule but "one row per (user, key) or (user, address), the first by source pk" applies;
 * - that rule is checked by the database once the rows are in (one aggregate over the new users'
 *   rows): a repeat, which only a hand-made file holds, rolls that model's direct rows back and
 *   stages them with the others, where the merge decides them as ever;
 * - a row of a user the username filter removed is dropped with the merge's finding (kind
 *   `filtered`, "user filtered out (user pk N)"), COPYed straight into userport.findings
 *   ({@link FilteredUsers});
 * - every other row (a merged, rejected or unknown user) is staged as before, so its reasons and
 *   findings are the merge's.
 * State in the process: the new users as ranges of the pk map (one for a file in Sentry's order),
 * and with a username filter a bit per pk of the filtered users.
 */
import type pg from 'pg';
import type { StagedRow } from '../../map-models.js';
import { STAGE_INDEX } from '../../models.js';
import { CopyOut } from './copy-out.js';
import { HashSet64 } from './hash-sets.js';
import { NewUsers } from './pk-map.js';
import { copyInto, idSequence, markSequence, putSequenceBack } from './run.js';
import { columnStart, intAt, intField, lineColumn, NEWLINE, OFF, ORD, scanTabs, SRC_PK, TAB } from './staging-lines.js';

/** The lines of one side spool, a read chunk's lines at a time (the sink's `SideLines`, lib/overlap.ts). */
export type SideLines = () => AsyncIterable<Buffer[]>;

const USER_PK = lineColumn('user_pk');
/** An option's project and organization (none) and the tab before its key. */
const NO_PROJECT_ORG = Buffer.from('\t\\N\t\\N\t');
/** A user email's date_hash_added (the transaction's start) and is_verified. */
const NOW_UNVERIFIED = Buffer.from('\tnow\tf\n');
/** A lost-password hash's date_added. */
const NOW_LINE = Buffer.from('\tnow\n');

/** Rows per model beyond which the client keeps no hashes of their (user, key): 2^20 slots of 8 bytes (8 MB), at most 70% full. */
export const MAX_CHECKED_ROWS = 700_000;

/**
 * Whether a model's diverted rows may repeat a (user, key) or (user, address): a 64-bit hash of
 * each pair as the row is diverted. No two alike means no repeat among the rows written (a subset),
 * so the database's aggregate is skipped; a hash met twice, a key that is not text, or more rows
 * than {@link MAX_CHECKED_ROWS}, and the database checks, as before. The hashes are let go once the
 * input has ended.
 */
export class PairCheck {
  private seen: HashSet64 | undefined = new HashSet64();
  private count = 0;
  /** Something says the rows may repeat a pair (or the check gave up): the database decides. */
  mayRepeat = false;

  constructor(private readonly limit = MAX_CHECKED_ROWS) {}

  note(userPk: unknown, key: unknown): void {
    if (this.mayRepeat) return;
    if (!this.seen || ++this.count > this.limit || typeof userPk !== 'number' || typeof key !== 'string') { this.give(); return; }
    if (!this.seen.addText(userPk, key)) this.give();
  }

  /** Lets the hashes go (the input has ended; only the verdict is needed). */
  release(): void {
    this.seen = undefined;
  }

  private give(): void {
    this.mayRepeat = true;
    this.seen = undefined;
  }
}

/** The span of pks, from the first filtered user's, that {@link FilteredUsers} keeps bits for: 2^26 (8 MB at most). */
export const MAX_FILTERED_SPAN = 2 ** 26;

/**
 * The pks of the users a username filter removed, as they pass (in Sentry's order, increasing): a
 * bit per pk from the first one's on. With it, a row of a filtered user is dropped to its finding
 * straight from the side spool instead of being staged for the merge to say the same: a filter
 * that keeps a tenth of the users stages nine tenths of their options and user emails. A pk below
 * the first, or beyond {@link MAX_FILTERED_SPAN} from it, and it knows none: every such row is
 * staged, as before.
 */
export class FilteredUsers {
  private bits: Uint8Array | undefined = new Uint8Array(1024);
  private base = -1;

  note(pk: number): void {
    if (!this.bits) return;
    if (this.base < 0) this.base = pk;
    const at = pk - this.base;
    if (!Number.isSafeInteger(pk) || at < 0 || at >= MAX_FILTERED_SPAN) { this.bits = undefined; return; }
    const byte = at >>> 3;
    if (byte >= this.bits.length) {
      const grown = new Uint8Array(Math.min(MAX_FILTERED_SPAN / 8, Math.max(byte + 1, this.bits.length * 2)));
      grown.set(this.bits);
      this.bits = grown;
    }
    this.bits[byte]! |= 1 << (at & 7);
  }

  /** True when `pk` is a filtered user's (false for every pk once it gave up). */
  has(pk: number): boolean {
    const at = pk - this.base;
    if (!this.bits || this.base < 0 || at < 0) return false;
    const byte = Math.floor(at / 8);
    return byte < this.bits.length && (this.bits[byte]! & (1 << (at % 8))) !== 0;
  }

  /** Bytes held. */
  get bytes(): number {
    return this.bits?.length ?? 0;
  }
}

/** The merge's reason for a row whose user the username filter removed (children.ts), before the user's pk. */
export const USER_FILTERED = 'user filtered out';

/** A model whose rows of new users may go straight in. */
export interface DirectModel {
  /** The model (`sentry.useroption`). */
  name: string;
  /** The staging code of its rows. */
  code: number;
  /** The target table. */
  table: string;
  /** The columns `row` writes, in order. */
  columns: readonly string[];
  /** The columns that make a row unique for its user ("one per (user, key)"). */
  unique: readonly string[];
  /** Whether the sink diverts a staged row of this model (and, when it does, notes the row's pair in `pairs`). */
  diverts(row: StagedRow): boolean;
  /** The (user, key) or (user, address) pairs of the rows diverted so far. */
  pairs: PairCheck;
  /** The last staging column `row` reads. */
  lastColumn: number;
  /**
   * Appends to `out` the COPY text line (with its newline) of a diverted staging line whose user
   * got `id`; `tabs`: the line's tabs up to `lastColumn` ({@link scanTabs}).
   */
  row(line: Buffer, tabs: Int32Array, id: number, out: CopyOut): void;
}

/** Options: the user, no project or organization, the key and the value as staged (the target's encoding). */
export function directOptions(code: number, table: string): DirectModel {
  const key = lineColumn('opt_key');
  // key <tab> value are adjacent in the staging line.
  if (lineColumn('opt_value') !== key + 1) throw new Error('staging columns opt_key, opt_value must be adjacent');
  const pairs = new PairCheck();
  return {
    name: 'sentry.useroption', code, table, columns: ['user_id', 'project_id', 'organization_id', 'key', 'value'], unique: ['key'], pairs,
    diverts: (r) => {
      if (r.code !== code || r.values[STAGE_INDEX.user_pk] == null || r.values[STAGE_INDEX.project_id] != null || r.values[STAGE_INDEX.organization_id] != null) return false;
      pairs.note(r.values[STAGE_INDEX.user_pk], r.values[STAGE_INDEX.opt_key]);
      return true;
    },
    lastColumn: key + 1,
    row: (line, tabs, id, out) => {
      out.int(id);
      out.raw(NO_PROJECT_ORG);
      out.bytes(line, columnStart(tabs, key), tabs[key + 1]!);
      out.byte(NEWLINE);
    },
  };
}

/**
 * User emails, as Sentry's import resets them outside the global scope: the address, a new
 * 32-character validation hash (uuid4 hex, as the merge's), the transaction's start
 * as date_hash_added (`now`, as the merge's `now()`), unverified.
 */
export function directUserEmails(code: number, table: string): DirectModel {
  const email = lineColumn('email');
  const pairs = new PairCheck();
  return {
    name: 'sentry.useremail', code, table, columns: ['user_id', 'email', 'validation_hash', 'date_hash_added', 'is_verified'], unique: ['email'], pairs,
    diverts: (r) => {
      if (r.code !== code || r.values[STAGE_INDEX.user_pk] == null) return false;
      pairs.note(r.values[STAGE_INDEX.user_pk], r.values[STAGE_INDEX.email]);
      return true;
    },
    lastColumn: email,
    row: (line, tabs, id, out) => {
      out.int(id);
      out.byte(TAB);
      out.bytes(line, columnStart(tabs, email), tabs[email]!);
      out.byte(TAB);
      out.uuid4Hex();
      out.raw(NOW_UNVERIFIED);
    },
  };
}

/**
 * The new users' lost-password hashes (outside the global scope every new user gets one), made in
 * the client and COPYed, in id order: uuid4 hex as the merge's, dated at the
 * transaction's start (`now`, as the merge's now()). Half the server time of the merge's INSERT
 * ... SELECT gen_random_uuid(). Resolves to their count.
 */
export function writeLostPasswords(client: pg.ClientBase, table: string, users: NewUsers): Promise<number> {
  return copyInto(client, `COPY ${table} (user_id, hash, date_added) FROM STDIN`, table, async (send) => {
    let count = 0;
    const out = new CopyOut();
    for (const id of users.ids()) {
      out.int(id);
      out.byte(TAB);
      out.uuid4Hex();
      out.raw(NOW_LINE);
      if (++count % 5000 === 0) await send(out.take());
    }
    if (out.length) await send(out.take());
    return count;
  });
}

/** What {@link writeDirectRows} did, per model (by table). */
export interface DirectRows {
  /** Rows written straight into the table. */
  written: number;
  /** Rows of users the username filter removed, dropped to their findings straight in. */
  filtered: number;
  /** Lines handed back to be staged. */
  staged: number;
  /** A row repeated its (user, key): the direct rows were rolled back and staged too. */
  repeated: boolean;
  /** Who made sure no (user, key) came twice: the client's hashes, or the database's aggregate. */
  checked?: 'client' | 'database';
  /** How long the model's passes took. */
  ms: number;
  /** Its rows of new users were written before the input ended ({@link copyNewRows}). */
  early?: boolean;
}

/**
 * Writes the diverted rows of the new `users` (the run's pk map, {@link NewUsers.read}) that belong
 * straight in (see the module comment), one COPY per model, from the side spool named after its
 * table, and hands every other line to `stage` (every line of a side spool whose model is not in
 * `models`, and every line without `users`).
 */
export async function writeDirectRows(client: pg.ClientBase, users: NewUsers | undefined, models: readonly DirectModel[],
  sides: ReadonlyMap<string, SideLines>, stage: (lines: Buffer[]) => Promise<void>, filtered?: { run: number; users: FilteredUsers },
  early?: ReadonlyMap<DirectModel, EarlyRows>): Promise<Map<DirectModel, DirectRows>> {
  // The input has ended: the pairs' verdicts are all that is needed of their hashes.
  for (const m of models) m.pairs.release();
  const done = new Map<DirectModel, DirectRows>();
  for (const [name, lines] of sides) {
    const model = users && models.find((m) => sideName(m.table) === name);
    if (model) done.set(model, await writeModel(client, model, users, lines, stage, filtered, early?.get(model)));
    else await stageOthers(lines, undefined, stage);
  }
  return done;
}

/** A model's rows of new users COPYed before the input ended ({@link copyNewRows}). */
export interface EarlyRows {
  written: number;
  /** Lines of other users, left for the end. */
  others: number;
  ms: number;
}

/**
 * The COPY of a model's side spool: the new users' rows as final rows; the others counted, left
 * to the caller. No savepoint of its own. {@link writeDirectRows} runs it at the end of the input;
 * the early users step's early part (early.ts) runs it alone while the input is still read, for a
 * model whose rows are over and whose pairs the client saw no twice so far, under its savepoint,
 * which undoes it with the others where a repeat (the COPY's unique violation, on the general
 * path), a later row of the model or anything else says so; the other users' lines and the
 * filtered users' findings then wait for the end ({@link writeDirectRows} given the result).
 */
export async function copyNewRows(client: pg.ClientBase, model: DirectModel, users: NewUsers, lines: SideLines): Promise<EarlyRows> {
  const t0 = performance.now();
  let written = 0;
  let others = 0;
  const tabs = new Int32Array(Math.max(USER_PK, model.lastColumn) + 1);
  await copyInto(client, `COPY ${model.table} (${model.columns.join(', ')}) FROM STDIN`, model.table, async (send) => {
    // A chunk's rows in one CopyData message (a write per row would be a message per row).
    const out = new CopyOut();
    for await (const chunk of lines()) {
      for (const line of chunk) {
        scanTabs(line, tabs);
        const id = users.id(intAt(line, columnStart(tabs, USER_PK), tabs[USER_PK]!));
        if (id < 0) others++;
        else { written++; model.row(line, tabs, id, out); }
      }
      if (out.length) await send(out.take());
    }
  });
  return { written, others, ms: performance.now() - t0 };
}

/** The merge's reason for an option scoped to an organization or project, which every scope drops (children.ts). */
export const SCOPED_OPTION = 'scoped to an organization or project';

/**
 * The options scoped to an organization or project that name their user by pk: diverted to side
 * spool `side`, for {@link writeScopedOptions}.
 */
export function scopedOptions(code: number): { side: string; diverts(row: StagedRow): boolean } {
  return {
    side: 'scoped_options',
    diverts: (r) => r.code === code && r.values[STAGE_INDEX.user_pk] != null
      && (r.values[STAGE_INDEX.project_id] != null || r.values[STAGE_INDEX.organization_id] != null),
  };
}

/**
 * The diverted scoped options ({@link scopedOptions}) of `run`: a new user's (one of `users`, the
 * run's pk map) is dropped with the merge's finding (its reason, then the user's source pk),
 * COPYed straight from the side spool; any other user's, or every one without `users`, is handed
 * to `stage`, for the merge to say why (filtered, merged, not in the export). Staged, the 2% of a
 * generated export's options that are scoped cost the merge a second ANALYZE of the staging table
 * and the options' statement (0.13 s at 100k users), for rows that are all dropped. Resolves to
 * how many were dropped and staged.
 */
export async function writeScopedOptions(client: pg.ClientBase, run: number, users: NewUsers | undefined, model: string, lines: SideLines,
  stage: (lines: Buffer[]) => Promise<void>, early?: EarlyFindings): Promise<{ dropped: number; staged: number; ms: number; early?: boolean }> {
  const t0 = performance.now();
  const { dropped, others } = early ?? (users ? await dropScopedFindings(client, run, users, model, lines) : { dropped: 0, others: 0 });
  // The options of other users (or all of them, beyond the pk map's ranges the client reads) are staged.
  const staged = !users || others ? await stageOthers(lines, users, stage) : 0;
  return { dropped, staged, ms: (early?.ms ?? 0) + performance.now() - t0, ...(early ? { early: true } : {}) };
}

/** The new users' scoped options dropped to their findings ({@link dropScopedFindings}), before the input ended where given to {@link writeScopedOptions}. */
export interface EarlyFindings {
  dropped: number;
  /** Lines of other users, left for the end. */
  others: number;
  ms: number;
}

/**
 * The findings of the new users' scoped options, COPYed; the others counted, left to the caller:
 * {@link writeScopedOptions} at the end, or the early part alone while the input is still read
 * (early.ts, under its savepoint; the lines of other users wait for the end).
 */
export async function dropScopedFindings(client: pg.ClientBase, run: number, users: NewUsers, model: string, lines: SideLines): Promise<EarlyFindings> {
  const t0 = performance.now();
  let others = 0;
  const dropped = await copyUserFindings(client, run, model, lines, 'dropped', SCOPED_OPTION, (pk) => {
    if (users.id(pk) >= 0) return true;
    others++;
    return false;
  });
  return { dropped, others, ms: performance.now() - t0 };
}

/**
 * Hands `stage` the lines of `lines` whose user is not one of `users` (nor one of `filtered`), or
 * every line without `users`. Resolves to how many.
 */
async function stageOthers(lines: SideLines, users: NewUsers | undefined, stage: (lines: Buffer[]) => Promise<void>, filtered?: FilteredUsers): Promise<number> {
  let staged = 0;
  const other = (pk: number) => users!.id(pk) < 0 && !filtered?.has(pk);
  for await (const chunk of lines()) {
    const keep = users ? chunk.filter((line) => other(intField(line, USER_PK))) : chunk;
    staged += keep.length;
    if (keep.length) await stage(keep);
  }
  return staged;
}

/**
 * {@link copyFindings} for the lines whose user pk `theirs` answers true for: the finding says
 * `reason`, then the user's pk, as the merge's do (`reason (user pk N)`).
 */
function copyUserFindings(client: pg.ClientBase, run: number, model: string, lines: SideLines, kind: 'dropped' | 'filtered', reason: string,
  theirs: (userPk: number) => boolean): Promise<number> {
  const lead = Buffer.from(`\t${reason} (user pk `);
  const end = Buffer.from(')\n');
  return copyFindings(client, run, model, lines, USER_PK, (line, tabs, out) => {
    const userPk = columnStart(tabs, USER_PK);
    if (!theirs(intAt(line, userPk, tabs[USER_PK]!))) return false;
    out.raw(lead);
    out.bytes(line, userPk, tabs[USER_PK]!);
    out.raw(end);
    return true;
  }, kind);
}

/**
 * COPYs into userport.findings a finding of kind `kind` (`dropped` unless said) for `model` of each
 * line of `lines` that `reason` writes one for: the line's src_pk, ord and off, then what `reason`
 * appends (the reason text and the newline), or nothing when it answers false. `lastColumn`: the
 * last column `reason` reads of `tabs`. Resolves to the findings written.
 */
export function copyFindings(client: pg.ClientBase, run: number, model: string, lines: SideLines, lastColumn: number,
  reason: (line: Buffer, tabs: Int32Array, out: CopyOut) => boolean, kind: 'dropped' | 'filtered' = 'dropped'): Promise<number> {
  const lead = Buffer.from(`${run}\t${kind}\t${model}\t`);
  const tabs = new Int32Array(Math.max(lastColumn, SRC_PK, OFF) + 1);
  const sql = 'COPY userport.findings (run, kind, model, source_pk, ordinal, byte_offset, reason) FROM STDIN';
  return copyInto(client, sql, 'userport.findings', async (send) => {
    let count = 0;
    const out = new CopyOut();
    for await (const chunk of lines()) {
      for (const line of chunk) {
        scanTabs(line, tabs);
        const mark = out.length;
        out.raw(lead);
        out.bytes(line, columnStart(tabs, SRC_PK), tabs[SRC_PK]!);
        out.byte(TAB);
        out.bytes(line, columnStart(tabs, ORD), tabs[OFF]!);
        if (reason(line, tabs, out)) count++;
        else out.rewind(mark);
      }
      if (out.length) await send(out.take());
    }
    return count;
  });
}

/** The side spool a model's rows are diverted to: its table's name, as a word. */
export function sideName(table: string): string {
  return table.replace(/\W/g, '_');
}

/**
 * One model's passes over its side spool: its new users' rows straight in (a savepoint around
 * them), then its other rows staged; or, when a (user, key) repeats, every row staged. A repeat
 * shows as the aggregate below, or (on the general path, where the unique indexes stand) as the
 * COPY's unique violation.
 */
async function writeModel(client: pg.ClientBase, model: DirectModel, users: NewUsers, lines: SideLines,
  stage: (lines: Buffer[]) => Promise<void>, filtered?: { run: number; users: FilteredUsers }, early?: EarlyRows): Promise<DirectRows> {
  const t0 = performance.now();
  let written = early?.written ?? 0;
  let others = early?.others ?? 0;
  let repeated = false;
  let checked: 'client' | 'database' = 'client';
  // Written before the input ended (the caller kept it: no row of the model came after, no pair twice).
  if (!early) {
    const savepoint = 'userport_direct_rows';
    await client.query(`SAVEPOINT ${savepoint}`);
    // Where the table's id sequence stands, to put it back with a repeat's rollback.
    const query = (sql: string, params?: unknown[]) => client.query(sql, params);
    const seq = await idSequence(query, model.table);
    const before = seq ? await markSequence(query, seq) : undefined;
    try {
      ({ written, others } = await copyNewRows(client, model, users, lines));
    } catch (err) {
      if (!uniqueViolation(err)) throw err;
      repeated = true;
    }
    // One row per (user, key), or none of these goes straight in. The new users' ids are this
    // import's own: no other row of them exists yet. Where the client saw no pair twice among the
    // diverted rows, none of the rows written repeats one (0.25 s of aggregates at 100k users).
    checked = repeated || model.pairs.mayRepeat ? 'database' : 'client';
    repeated ||= written > 0 && checked === 'database' && ((await client.query(`SELECT 1 FROM ${model.table} WHERE user_id BETWEEN $1 AND $2
      GROUP BY user_id, ${model.unique.join(', ')} HAVING count(*) > 1 LIMIT 1`, [users.low, users.high])).rowCount ?? 0) > 0;
    if (repeated) {
      // The COPY's ids go back to the sequence (where nobody else drew meanwhile), so the merge
      // gives the staged rows the ids it gives them without this path.
      // (Read after the rollback: a refused COPY leaves the transaction aborted until then; a
      // sequence's draws are not rolled back.)
      await client.query(`ROLLBACK TO SAVEPOINT ${savepoint}`);
      if (before) await putSequenceBack(query, before, (await markSequence(query, before.seq)).lastValue);
    }
    await client.query(`RELEASE SAVEPOINT ${savepoint}`);
  }
  // The rows of filtered users, when the model's rows are not all staged: dropped to the merge's
  // finding (kind filtered, its reason, the user's pk).
  const dropFiltered = !repeated && others > 0 ? filtered : undefined;
  const dropped = !dropFiltered ? 0
    : await copyUserFindings(client, dropFiltered.run, model.name, lines, 'filtered', USER_FILTERED, (pk) => dropFiltered.users.has(pk));
  // The rows that stay staged: those of other users, or all of them.
  const staged = repeated || others > dropped ? await stageOthers(lines, repeated ? undefined : users, stage, dropFiltered?.users) : 0;
  return { written: repeated ? 0 : written, filtered: dropped, staged, repeated, checked, ms: (early?.ms ?? 0) + performance.now() - t0, ...(early ? { early: true } : {}) };
}

/** A unique violation (23505), as the COPY's error or its cause. */
export function uniqueViolation(err: unknown): boolean {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  return e?.code === '23505' || e?.cause?.code === '23505';
}
