/**
 * The export: Sentry's user-scope tables in, the bytes of a `sentry export users` file out.
 *
 * One `REPEATABLE READ READ ONLY` transaction gives every model the same snapshot, so a live
 * database exports a coherent set. Each model is read through a server-side cursor, a page at a
 * time, and written as soon as the page is formatted: memory holds one page, never a table.
 *
 * Output is byte-for-byte what Sentry's exporter writes: Python's `json.dump(records, indent=2)`
 * (`ensure_ascii`, so everything outside printable ASCII is `\uXXXX`), models in Sentry's
 * dependency order, pks ascending, each field encoded as Sentry's serializer encodes it.
 */
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { writeFileAtomically } from './atomic-file.js';
import { checkDatabaseUrl } from './db/knex.js';
import { encryptExport } from './encrypt.js';
import { ErrorCodes, ExportError, OptionError, UserportError, wrapDbError } from './errors.js';

/** How a column's text (as PostgreSQL prints it) becomes a JSON value in the export. */
type Encoding =
  /** JSON string */
  | 'text'
  /** `t` / `f` -> true / false */
  | 'bool'
  /** digits, written as a JSON number (exact: never goes through a double) */
  | 'int'
  /** digits, written as a JSON string: Sentry's `BitField` serializes to text */
  | 'int-string'
  /** a timestamp, written as Sentry's `DatetimeSafeDjangoJSONEncoder` does: UTC, milliseconds, `Z` */
  | 'date'
  /** jsonb text, re-indented in place (numbers and escapes kept as PostgreSQL wrote them) */
  | 'json';

interface ExportField {
  /** Sentry's field name in `fields`. */
  field: string;
  /** Column in Sentry's table. */
  column: string;
  encoding: Encoding;
}

interface ExportModel {
  model: string;
  table: string;
  fields: readonly ExportField[];
}

const f = (field: string, encoding: Encoding, column = field): ExportField => ({ field, column, encoding });

/**
 * The four user-scope models in the order current Sentry writes them (`sorted_dependencies()`;
 * see its `test_at_head.pysnap` release snapshot: user, email, useroption, useremail), fields in
 * Django's declaration order, which is the order its serializer writes them.
 */
export const EXPORT_MODELS: readonly ExportModel[] = [
  {
    model: 'sentry.user', table: 'auth_user', fields: [
      f('password', 'text'), f('last_login', 'date'), f('username', 'text'), f('name', 'text', 'first_name'),
      f('email', 'text'), f('is_staff', 'bool'), f('is_active', 'bool'), f('is_superuser', 'bool'),
      f('is_managed', 'bool'), f('is_sentry_app', 'bool'), f('is_password_expired', 'bool'), f('is_unclaimed', 'bool'),
      f('last_password_change', 'date'), f('flags', 'int-string'), f('session_nonce', 'text'), f('date_joined', 'date'),
      f('last_active', 'date'), f('avatar_type', 'int'), f('avatar_url', 'text'),
    ],
  },
  { model: 'sentry.email', table: 'sentry_email', fields: [f('email', 'text'), f('date_added', 'date')] },
  {
    model: 'sentry.useroption', table: 'sentry_useroption', fields: [
      f('user', 'int', 'user_id'), f('project_id', 'int'), f('organization_id', 'int'), f('key', 'text'), f('value', 'json'),
    ],
  },
  {
    model: 'sentry.useremail', table: 'sentry_useremail', fields: [
      f('user', 'int', 'user_id'), f('email', 'text'), f('validation_hash', 'text'), f('date_hash_added', 'date'), f('is_verified', 'bool'),
    ],
  },
];

/** Columns without which a table cannot be exported in user scope. */
const REQUIRED: Record<string, readonly string[]> = {
  auth_user: ['id', 'username'],
  sentry_email: ['id', 'email'],
  sentry_useremail: ['id', 'user_id', 'email'],
  sentry_useroption: ['id', 'user_id', 'key'],
};

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
  /** Records written, by model (every user-scope model is listed, zero or not). */
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
}

/** Something a findings file should tell: rows left out, or a username that matched nothing. */
export type ExportFinding = ExcludedRows | { kind: 'unmatched-username'; model: 'sentry.user'; username: string };

/** Rows of a model the database holds that the export left out, and why. */
export interface ExcludedRows { kind: 'excluded'; model: string; count: number; reason: string }

/** Options of {@link createExporter}: the source database, the username filter, the layout of the JSON. */
export interface ExporterOptions {
  /** `postgresql://...` of the database holding Sentry's tables. */
  databaseUrl: string;
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

function checkOptions(o: ExporterOptions, where: string): void {
  if (o === null || typeof o !== 'object') throw new OptionError(`${where}: options must be an object`);
  if (typeof o.databaseUrl !== 'string' || !o.databaseUrl) throw new OptionError(`${where}: databaseUrl must be a postgresql:// URL`);
  checkDatabaseUrl(o.databaseUrl);
  if (o.filterUsernames !== undefined && !(Array.isArray(o.filterUsernames) && o.filterUsernames.every((u) => typeof u === 'string'))) {
    throw new OptionError(`${where}: filterUsernames must be an array of strings`);
  }
  if (o.indent !== undefined && !(Number.isInteger(o.indent) && o.indent >= 0 && o.indent <= 16)) {
    throw new OptionError(`${where}: indent must be an integer from 0 to 16, got ${String(o.indent)}`);
  }
  if (o.fetchRows !== undefined && !(Number.isInteger(o.fetchRows) && o.fetchRows >= 1)) {
    throw new OptionError(`${where}: fetchRows must be an integer >= 1, got ${String(o.fetchRows)}`);
  }
}

const NON_ASCII = /[^\x20-\x7e]/;
const NON_ASCII_ALL = /[^\x20-\x7e]/g;

/**
 * `s` as Python's `json.dumps(s)` writes it (`ensure_ascii=True`): the escapes JSON requires,
 * and every character outside ' '..'~' as a lower-case `\uXXXX` (UTF-16 units, so astral
 * characters become surrogate pairs, as in Python).
 */
export function pythonJsonString(s: string): string {
  const j = JSON.stringify(s);
  // JSON.stringify already wrote C0 controls, quotes and backslashes as escapes (all ASCII).
  return NON_ASCII.test(j) ? j.replace(NON_ASCII_ALL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) : j;
}

function pad(indent: number, level: number): string {
  return ' '.repeat(indent * level);
}

/**
 * jsonb text (`{"a": [1, 2]}`, as PostgreSQL prints it) laid out as Python's `json.dump` with
 * `indent` would write the same value nested `level` deep. Works on the text, so numbers keep
 * every digit PostgreSQL stored.
 */
export function reindentJson(text: string, indent: number, level: number): string {
  let out = '';
  let depth = level;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const token = text.slice(i, j + 1);
      out += NON_ASCII.test(token) ? token.replace(NON_ASCII_ALL, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`) : token;
      i = j;
    } else if (c === '{' || c === '[') {
      let j = i + 1;
      while (text[j] === ' ') j++;
      if (text[j] === (c === '{' ? '}' : ']')) {
        out += c === '{' ? '{}' : '[]';
        i = j;
      } else {
        depth++;
        out += `${c}\n${pad(indent, depth)}`;
      }
    } else if (c === '}' || c === ']') {
      depth--;
      out += `\n${pad(indent, depth)}${c}`;
    } else if (c === ',') {
      out += `,\n${pad(indent, depth)}`;
    } else if (c === ':') {
      out += ': ';
    } else if (c === '-' || (c >= '0' && c <= '9')) {
      let j = i + 1;
      while (j < n && /[0-9.eE+-]/.test(text[j]!)) j++;
      out += pythonJsonNumber(text.slice(i, j));
      i = j - 1;
    } else if (c !== ' ' && c !== '\n' && c !== '\t' && c !== '\r') {
      out += c;
    }
  }
  return out;
}

/**
 * A JSON number as Sentry's export writes it: psycopg hands the jsonb to Python's `json.loads`,
 * and `json.dumps` writes the value back. An integer stays an exact arbitrary-precision int
 * (`-0` becomes `0`); a number with a fraction or an exponent becomes a float, written as
 * Python's `repr`: the shortest round-trip digits (as JS's), but in exponent form below 1e-4 and
 * from 1e16 on, with a sign and at least two exponent digits (`1e-07`, `1e+16`), else with a
 * decimal point (`1.0`); out of range it is `Infinity`, `-Infinity`, `0.0` or `-0.0`.
 */
export function pythonJsonNumber(token: string): string {
  if (/^-?\d+$/.test(token)) return BigInt(token).toString();
  const x = Number(token);
  if (x === Infinity) return 'Infinity';
  if (x === -Infinity) return '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  // toExponential() without digits gives the shortest round-trip digits: "d.ddde+X".
  const m = /^(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(Math.abs(x).toExponential())!;
  const digits = m[1]! + (m[2] ?? '');
  const exp = Number(m[3]);
  if (exp < -4 || exp >= 16) {
    const e = Math.abs(exp).toString().padStart(2, '0');
    return `${sign}${digits[0]}${digits.length > 1 ? `.${digits.slice(1)}` : ''}e${exp < 0 ? '-' : '+'}${e}`;
  }
  const point = exp + 1;
  if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`;
  if (point >= digits.length) return `${sign}${digits}${'0'.repeat(point - digits.length)}.0`;
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

function encodeValue(v: string | null, encoding: Encoding, indent: number): string {
  if (v === null) return 'null';
  switch (encoding) {
    case 'text': case 'date': case 'int-string': return pythonJsonString(v);
    case 'bool': return v === 't' || v === 'true' ? 'true' : 'false';
    case 'int': return v;
    case 'json': return reindentJson(v, indent, 3);
  }
}

/** SQL that prints a column as the text {@link encodeValue} expects. */
function selectExpr(column: string, encoding: Encoding): string {
  const c = `"${column}"`;
  switch (encoding) {
    // to_char's MS truncates, as Python's strftime('%f')[:-3] does.
    case 'date': return `to_char(${c} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
    case 'bool': return `CASE WHEN ${c} THEN 't' WHEN NOT ${c} THEN 'f' END`;
    default: return `${c}::text`;
  }
}

/** The rows of each model that belong in a user-scope export (`$1`: usernames, or NULL for all). */
function scopeWhere(table: string, has: (t: string, c: string) => boolean): string {
  const users = `SELECT id FROM auth_user WHERE $1::text[] IS NULL OR username = ANY($1::text[])`;
  switch (table) {
    case 'auth_user': return '$1::text[] IS NULL OR username = ANY($1::text[])';
    // Sentry's Email.query_for_relocation_export: addresses some exported user's UserEmail holds,
    // compared case-insensitively (the column is citext in Sentry).
    case 'sentry_email': return has('sentry_useremail', 'id')
      ? `lower(email) IN (SELECT lower(ue.email) FROM sentry_useremail ue WHERE ue.user_id IN (${users}))`
      : 'false';
    default: return `user_id IN (${users})`;
  }
}

const EXCLUDED_REASON: Record<string, string> = {
  auth_user: 'not in --filter-usernames',
  sentry_email: 'no exported user holds this address (Sentry exports only the addresses of exported users)',
  sentry_useremail: 'its user is not exported',
  sentry_useroption: 'its user is not exported',
};

function emptySummary(): ExportSummary {
  return {
    models: Object.fromEntries(EXPORT_MODELS.map((m) => [m.model, 0])), records: 0, bytes: 0, seconds: 0,
    unmatchedUsernames: [], excluded: [], missingColumns: {},
  };
}

async function* generate(o: ExporterOptions, summary: ExportSummary): AsyncGenerator<Buffer> {
  const indent = o.indent ?? DEFAULT_INDENT;
  const fetchRows = o.fetchRows ?? DEFAULT_FETCH_ROWS;
  const usernames = o.filterUsernames ? [...new Set(o.filterUsernames)] : null;
  const started = Date.now();
  const client = new pg.Client({ connectionString: o.databaseUrl, application_name: 'userport export' });
  // A connection error after connect() (server shutdown) is reported by the next query; without
  // a listener it would crash the process instead.
  client.on('error', () => undefined);
  let step = 'connecting to the database';
  const query = async (sql: string, params?: unknown[]) => {
    const r = await client.query({ text: sql, values: params ?? [], rowMode: 'array' });
    return r.rows as (string | null)[][];
  };
  try {
    await client.connect();
    step = 'opening the snapshot';
    await query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    step = 'reading the table columns';
    const cols = await query(`SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
      WHERE table_schema = current_schema() AND table_name = ANY($1::text[])`, [EXPORT_MODELS.map((m) => m.table)]);
    const present = new Map(cols.map(([t, c, type]) => [`${t}.${c}`, type]));
    const has = (t: string, c: string) => present.has(`${t}.${c}`);
    // Older Sentry keeps option values as JSON-encoded text; its serializer then writes that text
    // as a JSON string, so only a json/jsonb column is written as a JSON value.
    const encodingOf = (t: string, fl: ExportField): Encoding =>
      fl.encoding === 'json' && !/^jsonb?$/.test(present.get(`${t}.${fl.column}`) ?? '') ? 'text' : fl.encoding;
    for (const m of EXPORT_MODELS) {
      const missing = REQUIRED[m.table]!.filter((c) => !has(m.table, c));
      if (missing.length) {
        throw new ExportError(ErrorCodes.EXPORT_SCHEMA, `cannot export ${m.model}: table ${m.table} ${
          missing.length === REQUIRED[m.table]!.length && !cols.some(([t]) => t === m.table) ? 'does not exist' : `lacks column ${missing.join(', ')}`}`,
        { position: { model: m.model } });
      }
      const absent = m.fields.filter((fl) => !has(m.table, fl.column)).map((fl) => fl.field);
      if (absent.length) summary.missingColumns[m.model] = absent;
    }

    const p1 = pad(indent, 1);
    const p2 = pad(indent, 2);
    const p3 = pad(indent, 3);
    let first = true;
    let head = Buffer.from('[');
    summary.bytes += head.length;
    yield head;
    for (const m of EXPORT_MODELS) {
      const fields = m.fields.filter((fl) => has(m.table, fl.column)).map((fl) => ({ ...fl, encoding: encodingOf(m.table, fl) }));
      const names = fields.map((fl) => `${p3}${pythonJsonString(fl.field)}: `);
      const modelText = pythonJsonString(m.model);
      step = `reading ${m.table}`;
      // Qualified: the output column `id::text` is also named id, and would sort as text.
      await query(`DECLARE userport_export NO SCROLL CURSOR FOR
        SELECT id::text${fields.map((fl) => `, ${selectExpr(fl.column, fl.encoding)}`).join('')}
        FROM ${m.table} WHERE ${scopeWhere(m.table, has)} ORDER BY ${m.table}.id`, [usernames]);
      for (;;) {
        const rows = await query(`FETCH ${fetchRows} FROM userport_export`);
        if (!rows.length) break;
        let text = '';
        for (const row of rows) {
          text += `${first ? '\n' : ',\n'}${p1}{\n${p2}"model": ${modelText},\n${p2}"pk": ${row[0]},\n${p2}"fields": `;
          first = false;
          if (!fields.length) text += '{}';
          else {
            text += '{';
            for (let i = 0; i < fields.length; i++) {
              text += `${i ? ',\n' : '\n'}${names[i]}${encodeValue(row[i + 1]!, fields[i]!.encoding, indent)}`;
            }
            text += `\n${p2}}`;
          }
          text += `\n${p1}}`;
        }
        const buf = Buffer.from(text);
        summary.models[m.model]! += rows.length;
        summary.records += rows.length;
        summary.bytes += buf.length;
        summary.seconds = (Date.now() - started) / 1000;
        o.onProgress?.({ model: m.model, records: summary.records, bytes: summary.bytes, seconds: summary.seconds });
        yield buf;
        if (rows.length < fetchRows) break;
      }
      await query('CLOSE userport_export');
    }
    // What was left out, counted in the same snapshot, for the findings file and the summary.
    step = 'counting what the export left out';
    for (const m of EXPORT_MODELS) {
      const [[total]] = await query(`SELECT count(*)::text FROM ${m.table}`) as [[string]];
      const left = Number(total) - summary.models[m.model]!;
      if (left > 0) summary.excluded.push({ kind: 'excluded', model: m.model, count: left, reason: EXCLUDED_REASON[m.table]! });
    }
    if (usernames) {
      const found = new Set((await query('SELECT username FROM auth_user WHERE username = ANY($1::text[])', [usernames])).map((r) => r[0]));
      summary.unmatchedUsernames = usernames.filter((u) => !found.has(u));
    }
    await query('COMMIT');
    head = Buffer.from(first ? ']' : '\n]');
    summary.bytes += head.length;
    summary.seconds = (Date.now() - started) / 1000;
    yield head;
  } catch (err) {
    throw wrapDbError(err, step);
  } finally {
    // Ending the connection also ends the read-only transaction if it is still open.
    await client.end().catch(() => undefined);
  }
}

/**
 * Creates the exporter stage: a Readable of the export's bytes, read from `databaseUrl` in one
 * snapshot. Options are checked now (throws {@link OptionError}); database failures destroy the
 * stream with a {@link UserportError}. `summary` fills in as it goes and is final at `end`.
 */
export function createExporter(options: ExporterOptions): ExportStream {
  checkOptions(options, 'createExporter');
  const summary = emptySummary();
  const stream = Readable.from(generate(options, summary), { objectMode: false, highWaterMark: 64 * 1024 });
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
}

/**
 * Exports the user scope to `destination`, plain or as Sentry's encrypted tarball. Resolves to
 * the summary; on failure nothing is left at a file destination.
 */
export async function exportUsers(options: ExportUsersOptions): Promise<ExportSummary> {
  checkOptions(options, 'exportUsers');
  const dest = options.destination;
  if (typeof dest !== 'string' && !(dest && typeof (dest as Writable).write === 'function')) {
    throw new OptionError('exportUsers: destination must be a file path, "-" or a Writable stream');
  }
  const exporter = createExporter(options);
  const write = async (out: Writable) => {
    if (options.encryptWith !== undefined) {
      await encryptExport({ stream: exporter }, out, { publicKeyPem: options.encryptWith, ...(options.tmpDir ? { tmpDir: options.tmpDir } : {}) });
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
    else await writeFileAtomically(dest, options.encryptWith !== undefined ? 0o644 : 0o600, write).catch((err: unknown) => {
      if (err instanceof UserportError) throw err;
      throw new UserportError(ErrorCodes.IO, `cannot write ${dest}: ${(err as Error).message}`, { cause: err });
    });
  } catch (err) {
    exporter.destroy();
    throw err;
  }
  return exporter.summary;
}

