/**
 * The export: Sentry's user tables in, the bytes of a `sentry export users|config|global` file
 * out (for the user models and the privilege models the config and global scopes add).
 *
 * One `REPEATABLE READ READ ONLY` transaction gives every model the same snapshot, so a live
 * database exports a coherent set. Each model is read through a server-side cursor, a page at a
 * time, and written as soon as the page is formatted: memory holds one page, never a table.
 *
 * Output is byte-for-byte what Sentry's exporter writes: Python's `json.dump(records, indent=2)`
 * (`ensure_ascii`, so everything outside printable ASCII is `\uXXXX`), models in Sentry's
 * dependency order, pks ascending, each field encoded as Sentry's serializer encodes it.
 *
 * This module is the stream and the summary: the SQL (snapshot, catalog, cursors and their
 * `WHERE`) is lib/db/export-queries.ts, the JSON writing lib/export-format.ts.
 */
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { writeFileAtomically } from './atomic-file.js';
import { destroyAndWait } from './stream-writes.js';
import { ExportSnapshot, scopeWhere, type SelectedColumn } from './db/export-queries.js';
import type { Target } from './db/target.js';
import { IMPORT_SCOPES, modelSchemas, scopeIncludes, type ImportScope, type ModelMapping } from './models.js';
import { arrayClose, ARRAY_OPEN, formatRecord, recordLayout, recordSeparator, unreadable, type Encoding, type RecordLayout, type Unreadable } from './export-format.js';
import { writeErrorFinding, writeExportFindings, type Finding } from './findings.js';
import { encryptExport, encryptionKey } from './encrypt.js';
import { ErrorCodes, ExportError, guardCallback, OptionError, UserportError, wrapDbError } from './errors.js';
import { checkDatabaseUrl, checkOptions as checkKnownOptions, isFunction, isInteger, isNonEmptyString, isOneOf, isStringOrBuffer, type OptionCheck } from './options.js';

// The export's JSON writers, public here since before they had a module of their own.
export { pythonJsonNumber, pythonJsonString, reindentJson } from './export-format.js';

interface ExportField {
  /** Sentry's field name in `fields`. */
  field: string;
  /** Column in Sentry's table. */
  column: string;
  encoding: Encoding;
}

/** A model the exporter writes: its name, table and the columns it reads, as `exportModels(scope)` lists them. */
export interface ExportModel {
  model: string;
  table: string;
  /** The narrowest export scope that writes the model (Sentry's `RelocationScope`). */
  scope: ModelMapping['scope'];
  fields: readonly ExportField[];
  /** Column of the `user` foreign key: the model's rows belong to the users exported. */
  userColumn: string | undefined;
  /**
   * Column of the `application` foreign key: Sentry's per-row scope (`get_relocation_scope()`:
   * Global when set, else Config), so a config export leaves application-bound rows out.
   */
  applicationColumn: string | undefined;
}

/** What a scope of Sentry's export is called in its CLI and in `ExporterOptions.scope`. */
export type ExportScope = ImportScope;

/**
 * Every model userport exports, in the order current Sentry writes them (`sorted_dependencies()`,
 * see `exportRank` in lib/models.ts), fields in Django's declaration order, which is the order its
 * serializer writes them: read from the model registry (`x-userport.export` in schemas/).
 */
export const EXPORT_MODELS: readonly ExportModel[] = [...modelSchemas().values()]
  .sort((a, b) => a.mapping.exportRank - b.mapping.exportRank)
  .map((m) => {
    const fields = m.mapping.export.map(([field, encoding, column]) => ({ field, encoding: encoding as Encoding, column: column ?? field }));
    return {
      model: m.name, table: m.mapping.table, scope: m.mapping.scope, fields,
      userColumn: fields.find((f) => f.field === 'user')?.column,
      applicationColumn: fields.find((f) => f.field === 'application')?.column,
    };
  });

/** The models an export in `scope` writes, in Sentry's order. */
export function exportModels(scope: ExportScope): ExportModel[] {
  return EXPORT_MODELS.filter((m) => scopeIncludes(scope, m.scope));
}

/** Columns, besides `id` and the foreign keys the scope filters on, without which a table cannot be exported. */
const KEY_COLUMNS: Record<string, readonly string[]> = {
  auth_user: ['username'],
  sentry_email: ['email'],
  sentry_useremail: ['email'],
  sentry_useroption: ['key'],
};

/**
 * A page's text, written record by record into one buffer (doubled when full) as UTF-8. Joined
 * into one string first, a page of 1,000 records (1.7 MB at 100k users) was a string of V8's
 * large-object space, flattened and encoded once more: garbage collection took a quarter of
 * the export's time.
 */
class PageText {
  private buf = Buffer.allocUnsafe(1 << 16);
  private length = 0;

  add(text: string): void {
    // A UTF-16 code unit is at most 3 bytes of UTF-8.
    if (this.length + text.length * 3 > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.length + text.length * 3));
      this.buf.copy(bigger, 0, 0, this.length);
      this.buf = bigger;
    }
    this.length += this.buf.write(text, this.length, 'utf8');
  }

  /** The text written: a view of the page's buffer (which may be up to twice its size). */
  take(): Buffer {
    return this.length === this.buf.length ? this.buf : this.buf.subarray(0, this.length);
  }
}

/** Rows per FETCH: about 0.5 MB of output for users, a fraction of the 150 MB budget. */
export const DEFAULT_FETCH_ROWS = 1000;
/** Sentry's `--indent` default. */
export const DEFAULT_INDENT = 2;

/** What `onProgress` receives while an export runs: bytes and records written so far, the model being read. */
export interface ExportProgress {
  model: string;
  records: number;
  bytes: number;
  seconds: number;
}

/** What an export did: records per model, bytes, time, and what it left out (rows, columns, unmatched usernames). */
export interface ExportSummary {
  /** Records written, by model (every model of the scope is listed, zero or not). */
  models: Record<string, number>;
  records: number;
  /** Bytes of JSON written (before encryption). */
  bytes: number;
  seconds: number;
  /** `filterUsernames` entries that matched no user. */
  unmatchedUsernames: string[];
  /** Rows the database holds that the export left out, by model and reason. */
  excluded: ExcludedRows[];
  /** Columns of Sentry's field list that the database's tables lack (their fields are omitted). */
  missingColumns: Record<string, string[]>;
  /** Models whose table this generation of Sentry does not have, and why (no records are written for them). */
  absentModels: Record<string, string>;
  /** Rows left out because a stored value was unreadable: a pickle of something other than plain values, or text that is not JSON (at most 1000 named; `excluded` counts all). */
  unreadable: { model: string; pk: number; reason: string }[];
}

/**
 * An entry of the export's findings file (`ExportUsersOptions.findingsFile`): a {@link Finding},
 * the import's format, with `finding` `ExportFinding` (rows left out, absent models and columns),
 * `UnmatchedUsername` or `ExportError`.
 */
export type ExportFinding = Finding;

/** Rows of a model the database holds that the export left out, and why. */
export interface ExcludedRows { kind: 'excluded'; model: string; count: number; reason: string }

/** Options of {@link createExporter}: the source database, the scope, the username filter, the layout of the JSON. */
export interface ExporterOptions {
  /** `postgresql://...` of the database holding Sentry's tables. */
  databaseUrl: string;
  /**
   * What `sentry export users|config|global` would write, for the user models: `users` the user
   * scope; `config` also permissions, roles and role links, personal API tokens and
   * authorizations, of the globally privileged users only (staff, superusers, users with a
   * permission or a role), as Sentry's; `global` every user and every row of the seven privilege
   * tables, authenticators (2FA secrets) and user IPs included. @default 'users'
   */
  scope?: ExportScope;
  /** Export only these users (exact usernames, as Sentry's filter) and what belongs to them. */
  filterUsernames?: string[];
  /** Spaces per level, as Sentry's `--indent`. @default 2 */
  indent?: number;
  /** Rows per FETCH from each cursor. @default 1000 */
  fetchRows?: number;
  /** Called after every page. */
  onProgress?: (p: ExportProgress) => void;
}

/** The exporter stage: a byte stream of the export, and its summary, complete once it ends. */
export interface ExportStream extends Readable {
  readonly summary: ExportSummary;
}

const isUsernameList: OptionCheck = (v) => (Array.isArray(v) && v.every((u) => typeof u === 'string') ? undefined : 'an array of strings');

const EXPORTER_OPTIONS: { readonly [K in keyof ExporterOptions]-?: OptionCheck } = {
  databaseUrl: isNonEmptyString,
  scope: isOneOf(...IMPORT_SCOPES),
  filterUsernames: isUsernameList,
  indent: isInteger(0, 16),
  fetchRows: isInteger(1),
  onProgress: isFunction,
};

const EXPORT_USERS_OPTIONS: { readonly [K in keyof ExportUsersOptions]-?: OptionCheck } = {
  ...EXPORTER_OPTIONS,
  destination: (v) => (typeof v === 'string' && v !== '') || (v !== null && typeof v === 'object' && typeof (v as Writable).write === 'function')
    ? undefined
    : 'a file path, "-" or a Writable stream',
  encryptWith: isStringOrBuffer,
  tmpDir: isNonEmptyString,
  findingsFile: isNonEmptyString,
};

/** The one option checker (lib/options.ts) over the exporter's options, or exportUsers' wider set. */
function checkOptions<T extends ExporterOptions>(o: T, where: string, spec: { readonly [K in keyof T]-?: OptionCheck }, required: (keyof T & string)[]): void {
  checkKnownOptions(where, o, spec, ['databaseUrl', ...required]);
  checkDatabaseUrl(o.databaseUrl);
}

/** Unreadable rows named one by one in the summary; more are counted. */
const MAX_UNREADABLE_LISTED = 1000;

/** Why rows of `m` the database holds are not in an export in `scope` (the rows {@link scopeWhere} leaves out). */
function excludedReason(m: ExportModel, scope: ExportScope, filtered: boolean): string {
  if (m.table === 'auth_user') {
    const unprivileged = 'not globally privileged (Sentry\'s config export holds only staff, superusers and users with a permission or a role)';
    if (scope !== 'config') return 'not in --filter-usernames';
    return filtered ? `not in --filter-usernames, or ${unprivileged}` : unprivileged;
  }
  if (m.table === 'sentry_email') return 'no exported user holds this address (Sentry exports only the addresses of exported users)';
  if (m.applicationColumn && scope !== 'global') {
    return 'its user is not exported, or it belongs to an application (Sentry exports those in global scope only)';
  }
  return 'its user is not exported';
}

function emptySummary(scope: ExportScope): ExportSummary {
  return {
    models: Object.fromEntries(exportModels(scope).map((m) => [m.model, 0])), records: 0, bytes: 0, seconds: 0,
    unmatchedUsernames: [], excluded: [], missingColumns: {}, absentModels: {}, unreadable: [],
  };
}

/**
 * How a field is written from a database of this generation. Option values: jsonb as the value
 * it holds; JSON text (2020-2025) as a JSON string, as Django serialized that field; Sentry 9's
 * pickles as the value they hold, decoded safely (lib/pickle.ts), which is what Sentry's export
 * of the same user would say and what a current Sentry accepts. An authenticator's config is a
 * string holding JSON in every generation, a Sentry 9 pickle decoded the same safe way first.
 */
function encodingOf(target: Target, table: string, fl: ExportField): Encoding {
  if (fl.encoding === 'json') {
    if (target.optionValues === 'pickle') return 'pickle';
    return target.optionValues === 'jsonb' ? 'json' : 'text';
  }
  if (fl.encoding === 'json-string') return target.authenticatorConfig === 'pickle' ? 'pickle-string' : 'json-string';
  if (fl.encoding === 'text-array' && !target.tables.get(table)?.columns.get(fl.column)?.udt.startsWith('_')) return 'text';
  return fl.encoding;
}

/** A model as this database lets it be exported: the fields it has columns for, their layout, its rows' `WHERE`. */
interface PlannedModel {
  model: ExportModel;
  fields: SelectedColumn[] & ExportField[];
  layout: RecordLayout;
  where: string;
}

/** The summary's bookkeeping: records and bytes written, rows left out and why. */
class ExportAccounting {
  private readonly started = Date.now();
  /** Rows left out per model for an unreadable value, by reason. */
  private readonly unreadable = new Map<string, Map<string, number>>();

  private readonly onProgress: ExporterOptions['onProgress'];

  constructor(readonly summary: ExportSummary, onProgress: ExporterOptions['onProgress']) {
    this.onProgress = guardCallback(onProgress, 'onProgress');
  }

  /** Bytes of the array's brackets. */
  framing(bytes: number): void {
    this.summary.bytes += bytes;
    this.summary.seconds = (Date.now() - this.started) / 1000;
  }

  /** A page of `model` written: `records` records in `bytes` bytes. */
  page(model: string, records: number, bytes: number): void {
    const s = this.summary;
    s.models[model]! += records;
    s.records += records;
    this.framing(bytes);
    this.onProgress?.({ model, records: s.records, bytes: s.bytes, seconds: s.seconds });
  }

  /** A row left out because a value could not be written. Never the value: it may be a secret. */
  unreadableRow(model: string, pk: number, u: Unreadable): void {
    if (this.summary.unreadable.length < MAX_UNREADABLE_LISTED) this.summary.unreadable.push({ model, pk, reason: `${u.why} (${u.detail})` });
    const counts = this.unreadable.get(model) ?? new Map<string, number>();
    this.unreadable.set(model, counts.set(u.why, (counts.get(u.why) ?? 0) + 1));
  }

  /** `m` has no table in this database: no records, and why. */
  absent(m: ExportModel): void {
    this.summary.absentModels[m.model] = m.model === 'sentry.email'
      ? `no ${m.table} table in this database (Sentry removed the Email model in 2026)`
      : `no ${m.table} table in this database (this generation of Sentry has no ${m.model})`;
    delete this.summary.models[m.model];
  }

  /** Of the `total` rows of `m` in the snapshot, those not written: unreadable ones by reason, the rest for `reason`. */
  leftOut(m: ExportModel, total: number, reason: string): void {
    let bad = 0;
    for (const [why, count] of this.unreadable.get(m.model) ?? []) {
      this.summary.excluded.push({ kind: 'excluded', model: m.model, count, reason: why });
      bad += count;
    }
    const left = total - this.summary.models[m.model]! - bad;
    if (left > 0) this.summary.excluded.push({ kind: 'excluded', model: m.model, count: left, reason });
  }
}

/** One run of the export: the snapshot, the models in order, and the bookkeeping. */
class ExportRun {
  private readonly indent: number;
  private readonly fetchRows: number;
  private readonly usernames: string[] | null;
  private readonly scope: ExportScope;
  private readonly account: ExportAccounting;
  private db: ExportSnapshot | undefined;
  /** No record written yet (the next one needs no comma). */
  private first = true;
  /** What the run is doing, for the error message. */
  step = 'connecting to the database';

  constructor(private readonly o: ExporterOptions, summary: ExportSummary) {
    this.indent = o.indent ?? DEFAULT_INDENT;
    this.fetchRows = o.fetchRows ?? DEFAULT_FETCH_ROWS;
    this.usernames = o.filterUsernames ? [...new Set(o.filterUsernames)] : null;
    this.scope = o.scope ?? 'users';
    this.account = new ExportAccounting(summary, o.onProgress);
  }

  /** The export's bytes: `[`, every model's records a page at a time, `]`. */
  async* bytes(): AsyncGenerator<Buffer> {
    // Made first, so that a destroy while it connects ends the connection (open() then fails).
    this.db = ExportSnapshot.make(this.o.databaseUrl);
    await this.db.open();
    this.step = 'opening the snapshot';
    await this.db.begin();
    const models = await this.plan(this.db);
    yield this.framing(ARRAY_OPEN);
    for (const p of models) yield* this.pages(this.db, p);
    await this.countLeftOut(this.db, models);
    await this.db.commit();
    yield this.framing(arrayClose(this.first));
  }

  async end(): Promise<void> {
    await this.db?.end();
  }

  private framing(text: string): Buffer {
    const buf = Buffer.from(text);
    this.account.framing(buf.length);
    return buf;
  }

  /**
   * Reads the catalog (fields whose column is missing are left out, and said so), drops the
   * models this generation of Sentry has no table for, and refuses a table without its keys.
   */
  private async plan(db: ExportSnapshot): Promise<PlannedModel[]> {
    this.step = 'reading the table columns';
    const scoped = exportModels(this.scope);
    // Every table the scope's queries name, those of the privileged-user test included.
    const target = await db.catalog([...new Set([...scoped.map((m) => m.table), 'sentry_useremail', 'sentry_userpermission', 'sentry_userrole_users'])]);
    const has = (t: string, c: string) => !!target.tables.get(t)?.columns.has(c);
    const planned: PlannedModel[] = [];
    for (const m of scoped) {
      // Sentry 2026 has no sentry_email, Sentry 9 no sentry_userrole: their own exports have no
      // such records either.
      if ((m.model === 'sentry.email' || m.scope !== 'user') && !target.tables.has(m.table)) {
        this.account.absent(m);
        continue;
      }
      checkKeyColumns(m, target);
      const absent = m.fields.filter((fl) => !has(m.table, fl.column)).map((fl) => fl.field);
      if (absent.length) this.account.summary.missingColumns[m.model] = absent;
      const columns = target.tables.get(m.table)!.columns;
      const fields = m.fields.filter((fl) => columns.has(fl.column))
        .map((fl) => ({ ...fl, encoding: encodingOf(target, m.table, fl), udt: columns.get(fl.column)!.udt }));
      planned.push({ model: m, fields, layout: recordLayout(m.model, fields, this.indent), where: scopeWhere(m, this.scope, !!this.usernames, has) });
    }
    return planned;
  }

  /** A model's records, one page per FETCH: backpressure reaches the cursor. */
  private async* pages(db: ExportSnapshot, p: PlannedModel): AsyncGenerator<Buffer> {
    this.step = `reading ${p.model.table}`;
    await db.declare(p.model, p.fields, p.where, this.usernames);
    for (;;) {
      const rows = await db.fetch(this.fetchRows);
      if (!rows.length) break;
      const { buf, written } = this.formatPage(p, rows);
      this.account.page(p.model.model, written, buf.length);
      yield buf;
      if (rows.length < this.fetchRows) break;
    }
    await db.close();
  }

  /** A page of rows as records; a row with an unreadable value is left out and named, never guessed. */
  private formatPage(p: PlannedModel, rows: (string | null)[][]): { buf: Buffer; written: number } {
    const out = new PageText();
    let written = 0;
    for (const row of rows) {
      let record: string;
      try {
        record = formatRecord(p.layout, row);
      } catch (err) {
        const u = unreadable(err);
        if (!u) throw err;
        this.account.unreadableRow(p.model.model, Number(row[0]), u);
        continue;
      }
      out.add(recordSeparator(this.first));
      out.add(record);
      this.first = false;
      written++;
    }
    return { buf: out.take(), written };
  }

  /** What was left out, counted in the same snapshot, for the summary and the findings file. */
  private async countLeftOut(db: ExportSnapshot, models: PlannedModel[]): Promise<void> {
    this.step = 'counting what the export left out';
    for (const { model: m } of models) this.account.leftOut(m, await db.count(m.table), excludedReason(m, this.scope, !!this.usernames));
    if (this.usernames) {
      const found = await db.existingUsernames(this.usernames);
      this.account.summary.unmatchedUsernames = this.usernames.filter((u) => !found.has(u));
    }
  }
}

/** Refuses a model whose table, or a column its rows cannot be exported without, is missing (`USERPORT_EXPORT_SCHEMA`). */
function checkKeyColumns(m: ExportModel, target: Target): void {
  const required = ['id', ...[m.userColumn, m.applicationColumn].filter((c): c is string => !!c), ...KEY_COLUMNS[m.table] ?? []];
  const missing = required.filter((c) => !target.tables.get(m.table)?.columns.has(c));
  if (missing.length) {
    throw new ExportError(ErrorCodes.EXPORT_SCHEMA, `cannot export ${m.model}: table ${m.table} ${
      !target.tables.has(m.table) ? 'does not exist' : `lacks column ${missing.join(', ')}`}`,
    { position: { model: m.model } });
  }
}

async function* generate(run: ExportRun): AsyncGenerator<Buffer> {
  try {
    yield* run.bytes();
  } catch (err) {
    throw wrapDbError(err, run.step);
  } finally {
    await run.end();
  }
}


/**
 * Creates the exporter stage: a Readable of the export's bytes, read from `databaseUrl` in one
 * snapshot. Options are checked now (throws {@link OptionError}); database failures destroy the
 * stream with a {@link UserportError}. `summary` fills in as it goes and is final at `end`.
 */
export function createExporter(options: ExporterOptions): ExportStream {
  checkOptions(options, 'createExporter', EXPORTER_OPTIONS, []);
  const summary = emptySummary(options.scope ?? 'users');
  // Made now, connected at the first read.
  const run = new ExportRun(options, summary);
  const stream = Readable.from(generate(run), { objectMode: false, highWaterMark: 64 * 1024 });
  // Destroyed while a query runs (a count over a large table, a table locked by another session),
  // the generator would end only once that query returns: the connection is ended at once, which
  // fails the query, and the stream closes then.
  const destroy = stream._destroy.bind(stream);
  stream._destroy = (err, callback) => {
    void run.end();
    destroy(err, callback);
  };
  Object.defineProperty(stream, 'summary', { value: summary, enumerable: true });
  return stream as ExportStream;
}

/** Options of {@link exportUsers}: the exporter's, plus where the bytes go and how they are encrypted. */
export interface ExportUsersOptions extends ExporterOptions {
  /** A file path (written under a temporary name, renamed on success), `-` for stdout, or a stream. */
  destination: string | Writable;
  /** Encrypt as Sentry's `--encrypt-with`: the PEM RSA public key the data key is wrapped to. */
  encryptWith?: Buffer | string;
  /** Folder for the encrypted spool. @default os.tmpdir() */
  tmpDir?: string;
  /**
   * Write what the export left out (rows per model and reason, absent models and columns, names
   * of `filterUsernames` that matched no user), or the error that stopped it, here: the import's
   * findings format (lib/findings.ts).
   */
  findingsFile?: string;
}

/**
 * Exports `scope` (the user scope by default) to `destination`, plain or as Sentry's encrypted
 * tarball, and `findingsFile` once it is written. Resolves to the summary; on failure nothing is
 * left at a file destination (the findings file, if asked for, holds the error).
 */
export async function exportUsers(options: ExportUsersOptions): Promise<ExportSummary> {
  checkOptions(options, 'exportUsers', EXPORT_USERS_OPTIONS, ['destination']);
  const { destination: dest, encryptWith, tmpDir, findingsFile, ...exporterOptions } = options;
  // A key that cannot encrypt is said before the database is read.
  if (encryptWith !== undefined) encryptionKey(encryptWith, 'exportUsers', 'encryptWith', 'the public key to encrypt with (encryptWith)');
  const exporter = createExporter(exporterOptions);
  const write = async (out: Writable) => {
    if (encryptWith !== undefined) {
      await encryptExport({ stream: exporter }, out, { publicKeyPem: encryptWith, ...(tmpDir ? { tmpDir } : {}) });
    } else {
      await pipeline(exporter, out);
    }
  };
  try {
    if (dest === '-') {
      await write(process.stdout).catch((err: unknown) => {
        if (err instanceof UserportError) throw err;
        throw new UserportError(ErrorCodes.IO, `cannot write to standard output: ${(err as Error).message}`, { cause: err });
      });
    }
    else if (typeof dest !== 'string') await write(dest);
    // A plain export holds password hashes: created 0600.
    else await writeFileAtomically(dest, encryptWith !== undefined ? 0o644 : 0o600, write).catch((err: unknown) => {
      if (err instanceof UserportError) throw err;
      throw new UserportError(ErrorCodes.IO, `cannot write ${dest}: ${(err as Error).message}`, { cause: err });
    });
  } catch (err) {
    // Closed (its connection ended) before the export says it failed.
    await destroyAndWait(exporter);
    if (findingsFile !== undefined) writeErrorFinding(findingsFile, err instanceof UserportError ? err : wrapDbError(err, 'the export'), 'export');
    throw err;
  }
  if (findingsFile !== undefined) {
    await writeExportFindings(findingsFile, exporter.summary).catch((err: unknown) => {
      throw new UserportError(ErrorCodes.IO, `cannot write the findings file ${findingsFile}: ${(err as Error).message}`, { cause: err });
    });
  }
  return exporter.summary;
}

