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
 */
import { Readable, type Writable } from 'node:stream';
import zlib from 'node:zlib';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { writeFileAtomically } from './atomic-file.js';
import { checkDatabaseUrl } from './db/knex.js';
import { readTarget } from './db/target.js';
import { IMPORT_SCOPES, registry, scopeIncludes, type ImportScope, type ModelMapping } from './models.js';
import { DEFAULT_PICKLE_LIMITS, PickleError, pickledFieldToJsonText, pyFloatRepr } from './pickle.js';
import { encryptExport } from './encrypt.js';
import { ErrorCodes, ExportError, OptionError, UserportError, wrapDbError } from './errors.js';
import { checkOptions as checkKnownOptions, isFunction, isInteger, isNonEmptyString, isOneOf, isStringOrBuffer, type OptionCheck } from './options.js';

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
  | 'json'
  /** base64 of a Python pickle (Sentry 9's django-picklefield columns), written as the value it holds */
  | 'pickle'
  /**
   * JSON text (jsonb or a text column holding JSON) written as a JSON string holding that JSON,
   * compact, as Sentry's `PickledObjectField.value_to_string` writes `auth_authenticator.config`
   * (`sentry.utils.json.dumps`: simplejson, separators `,` `:`, ensure_ascii): `"config": "\"\""`
   */
  | 'json-string'
  /** a pickle, decoded safely, then written as `json-string` (Sentry 9's authenticator configs) */
  | 'pickle-string'
  /**
   * a PostgreSQL text[] (read as `array_to_json`), written as a JSON string holding a JSON array,
   * as Django's `ArrayField.value_to_string` writes it (`json.dumps(list)`: separators `, ` `: `):
   * `"permissions": "[\"users.admin\"]"`, and `"[]"` as in Sentry's 2023-24 release snapshots.
   * Decided over the real JSON array of the newest `user-with-roles-no-superadmin.json` fixture: that
   * file is an import fixture written by hand, while Django's serializer calls `value_to_string`
   * for every non-primitive value, and Sentry's importer reads both (ArrayField `to_python`
   * json-loads a string).
   */
  | 'text-array';

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
export const EXPORT_MODELS: readonly ExportModel[] = [...registry().models.values()]
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

/** Something a findings file should tell: rows left out, or a username that matched nothing. */
export type ExportFinding = ExcludedRows | { kind: 'unmatched-username'; model: 'sentry.user'; username: string };

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
};

/** The one option checker (lib/options.ts) over the exporter's options, or exportUsers' wider set. */
function checkOptions<T extends ExporterOptions>(o: T, where: string, spec: { readonly [K in keyof T]-?: OptionCheck }, required: (keyof T & string)[]): void {
  checkKnownOptions(where, o, spec, ['databaseUrl', ...required]);
  checkDatabaseUrl(o.databaseUrl);
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
 * How {@link layoutJson} lays a value out: Python's `json.dump(indent=N)` nested `level` deep
 * (items and keys on lines of their own), or on one line with the given separators.
 */
type JsonLayout = { indent: number; level: number } | { item: string; key: string };

/** Python's `json.dumps(v)` (separators `, ` and `: `): Django's ArrayField.value_to_string. */
const PY_DUMPS: JsonLayout = { item: ', ', key: ': ' };
/** `sentry.utils.json.dumps(v)` (simplejson, separators `,` and `:`): Sentry's PickledObjectField. */
const SENTRY_DUMPS: JsonLayout = { item: ',', key: ':' };

/**
 * jsonb text (`{"a": [1, 2]}`, as PostgreSQL prints it) laid out as Python's `json.dump` with
 * `indent` would write the same value nested `level` deep. Works on the text, so numbers keep
 * every digit PostgreSQL stored.
 */
export function reindentJson(text: string, indent: number, level: number): string {
  return layoutJson(text, { indent, level });
}

/**
 * Valid JSON text written again as Python's JSON encoders write the value `json.loads` reads
 * from it, in `layout`: `ensure_ascii` escapes, numbers as {@link pythonJsonNumber}, keys in the
 * text's order.
 */
function layoutJson(text: string, layout: JsonLayout): string {
  const lines = 'indent' in layout;
  const nl = (depth: number) => (lines ? `\n${pad(layout.indent, depth)}` : '');
  const item = lines ? ',' : layout.item;
  const key = lines ? ': ' : layout.key;
  let out = '';
  let depth = lines ? layout.level : 0;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (j < n && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const token = text.slice(i, j + 1);
      out += NON_ASCII.test(token) ? token.replace(NON_ASCII_ALL, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`) : token;
      i = j;
    } else if (c === '{' || c === '[') {
      let j = i + 1;
      while (text[j] === ' ' || text[j] === '\n' || text[j] === '\t' || text[j] === '\r') j++;
      if (text[j] === (c === '{' ? '}' : ']')) {
        out += c === '{' ? '{}' : '[]';
        i = j;
      } else {
        depth++;
        out += `${c}${nl(depth)}`;
      }
    } else if (c === '}' || c === ']') {
      depth--;
      out += `${nl(depth)}${c}`;
    } else if (c === ',') {
      out += `${item}${nl(depth)}`;
    } else if (c === ':') {
      out += key;
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
 * A pickled column's text as the JSON of the value it holds, decoded by a reader that knows only
 * the opcodes of plain values and executes nothing (lib/pickle.ts); throws a PickleError for
 * anything else.
 */
function pickledValueAsJson(v: string): string {
  return pickledFieldToJsonText(v, { inflate: (b) => zlib.inflateSync(b, { maxOutputLength: DEFAULT_PICKLE_LIMITS.maxBytes }) });
}

/** Why a row whose pickle is not a plain value is left out (summary and findings). */
const UNREADABLE_REASON = 'its value is a pickle of something other than plain values: not executed, left out';
/** Why a row whose JSON text column holds something else is left out. */
const NOT_JSON_REASON = 'its value is not JSON: left out';

/** Unreadable rows named one by one in the summary; more are counted. */
const MAX_UNREADABLE_LISTED = 1000;

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
  return pyFloatRepr(x);
}

/** A stored value that is not the JSON its column should hold: the row is left out and named. */
class NotJsonError extends Error {}

/**
 * Valid JSON text, or a NotJsonError. A text column (Sentry 2020-2025) can hold anything; its
 * message never quotes the text, which may be a secret (an authenticator's config).
 */
function checkedJson(v: string): string {
  try {
    JSON.parse(v);
  } catch {
    throw new NotJsonError('the stored text is not JSON');
  }
  return v;
}

function encodeValue(v: string | null, encoding: Encoding, indent: number): string {
  if (v === null) return 'null';
  switch (encoding) {
    case 'text': case 'date': case 'int-string': return pythonJsonString(v);
    case 'bool': return v === 't' || v === 'true' ? 'true' : 'false';
    case 'int': return v;
    case 'json': return reindentJson(v, indent, 3);
    case 'pickle': return reindentJson(pickledValueAsJson(v), indent, 3);
    case 'json-string': return pythonJsonString(layoutJson(checkedJson(v), SENTRY_DUMPS));
    case 'pickle-string': return pythonJsonString(layoutJson(pickledValueAsJson(v), SENTRY_DUMPS));
    case 'text-array': return pythonJsonString(layoutJson(v, PY_DUMPS));
  }
}

/** SQL that prints a column (of base type `udt`) as the text {@link encodeValue} expects. */
function selectExpr(column: string, encoding: Encoding, udt: string | undefined): string {
  const c = `"${column}"`;
  switch (encoding) {
    // to_char's MS truncates, as Python's strftime('%f')[:-3] does.
    case 'date': return `to_char(${c} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
    case 'bool': return `CASE WHEN ${c} THEN 't' WHEN NOT ${c} THEN 'f' END`;
    case 'text-array': return `array_to_json(${c})::text`;
    // inet's output function, as psycopg hands it to Django ('127.0.0.2'); its cast to text adds
    // the netmask ('127.0.0.2/32').
    default: return udt === 'inet' ? `format('%s', ${c})` : `${c}::text`;
  }
}

/** Whether the database has a table's column (`has(table, column)`). */
type Has = (t: string, c: string) => boolean;

/**
 * The users an export in `scope` writes, as a condition on `auth_user` (`$1`: usernames, or NULL
 * for all). Config: only the globally privileged, as Sentry's
 * `get_all_globally_privileged_users()`: staff, superusers, and every user holding a permission
 * or a role (the tables a generation lacks count no one).
 */
function usersWhere(scope: ExportScope, has: Has): string {
  const named = '($1::text[] IS NULL OR auth_user.username = ANY($1::text[]))';
  if (scope !== 'config') return named;
  const privileged = [
    ...['is_staff', 'is_superuser'].filter((c) => has('auth_user', c)).map((c) => `auth_user.${c}`),
    ...['sentry_userpermission', 'sentry_userrole_users'].filter((t) => has(t, 'user_id'))
      .map((t) => `auth_user.id IN (SELECT p.user_id FROM ${t} p)`),
  ];
  return `${named} AND (${privileged.join(' OR ') || 'false'})`;
}

/**
 * The rows of model `m` an export in `scope` writes: those of the exported users (Sentry's
 * exporter drops a row whose foreign key points at a row it did not export), application-bound
 * ones only in global scope; roles have no user and are all written, in config as in global.
 */
function scopeWhere(m: ExportModel, scope: ExportScope, filtered: boolean, has: Has): string {
  const users = `SELECT auth_user.id FROM auth_user WHERE ${usersWhere(scope, has)}`;
  if (m.table === 'auth_user') return usersWhere(scope, has);
  if (m.table === 'sentry_email') {
    // A global export filters no query (exports.py: "we want absolutely every relocatable model").
    if (scope === 'global' && !filtered) return 'true';
    // Sentry's Email.query_for_relocation_export: addresses some exported user's UserEmail holds,
    // compared case-insensitively (the column is citext in Sentry).
    return has('sentry_useremail', 'id')
      ? `lower(email) IN (SELECT lower(ue.email) FROM sentry_useremail ue WHERE ue.user_id IN (${users}))`
      : 'false';
  }
  const where = m.userColumn ? [`"${m.userColumn}" IN (${users})`] : ['true'];
  if (m.applicationColumn && scope !== 'global') where.push(`"${m.applicationColumn}" IS NULL`);
  return where.join(' AND ');
}

/** Why rows of `m` the database holds are not in an export in `scope`. */
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

async function* generate(o: ExporterOptions, summary: ExportSummary): AsyncGenerator<Buffer> {
  const indent = o.indent ?? DEFAULT_INDENT;
  const fetchRows = o.fetchRows ?? DEFAULT_FETCH_ROWS;
  const usernames = o.filterUsernames ? [...new Set(o.filterUsernames)] : null;
  const scope = o.scope ?? 'users';
  const scoped = exportModels(scope);
  const started = Date.now();
  /** Rows left out per model for an unreadable value, by reason. */
  const unreadable = new Map<string, Map<string, number>>();
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
    // Every table the scope's queries name, those of the privileged-user test included.
    const target = await readTarget(client, [...new Set([...scoped.map((m) => m.table), 'sentry_useremail', 'sentry_userpermission', 'sentry_userrole_users'])]);
    const has = (t: string, c: string) => !!target.tables.get(t)?.columns.has(c);
    const encodingOf = (t: string, fl: ExportField): Encoding => {
      // How a database of this generation stores option values: jsonb is written as the value
      // it holds; JSON text (2020-2025) as a JSON string, as Django serialized that field;
      // Sentry 9's pickles as the value they hold, decoded safely (lib/pickle.ts), which is what
      // Sentry's export of the same user would say and what a current Sentry accepts.
      if (fl.encoding === 'json') {
        if (target.optionValues === 'pickle') return 'pickle';
        return target.optionValues === 'jsonb' ? 'json' : 'text';
      }
      // An authenticator's config is written as a string holding JSON in every generation; a
      // Sentry 9 pickle is decoded the same safe way first.
      if (fl.encoding === 'json-string') return target.authenticatorConfig === 'pickle' ? 'pickle-string' : 'json-string';
      if (fl.encoding === 'text-array' && !target.tables.get(t)?.columns.get(fl.column)?.udt.startsWith('_')) return 'text';
      return fl.encoding;
    };
    const models = scoped.filter((m) => {
      // Sentry 2026 has no sentry_email, Sentry 9 no sentry_userrole: their own exports have no
      // such records either.
      if ((m.model === 'sentry.email' || m.scope !== 'user') && !target.tables.has(m.table)) {
        summary.absentModels[m.model] = m.model === 'sentry.email'
          ? `no ${m.table} table in this database (Sentry removed the Email model in 2026)`
          : `no ${m.table} table in this database (this generation of Sentry has no ${m.model})`;
        delete summary.models[m.model];
        return false;
      }
      return true;
    });
    for (const m of models) {
      const required = ['id', ...[m.userColumn, m.applicationColumn].filter((c): c is string => !!c), ...KEY_COLUMNS[m.table] ?? []];
      const missing = required.filter((c) => !has(m.table, c));
      if (missing.length) {
        throw new ExportError(ErrorCodes.EXPORT_SCHEMA, `cannot export ${m.model}: table ${m.table} ${
          !target.tables.has(m.table) ? 'does not exist' : `lacks column ${missing.join(', ')}`}`,
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
    for (const m of models) {
      const fields = m.fields.filter((fl) => has(m.table, fl.column)).map((fl) => ({ ...fl, encoding: encodingOf(m.table, fl) }));
      const names = fields.map((fl) => `${p3}${pythonJsonString(fl.field)}: `);
      const modelText = pythonJsonString(m.model);
      step = `reading ${m.table}`;
      // Qualified: the output column `id::text` is also named id, and would sort as text.
      const where = scopeWhere(m, scope, !!usernames, has);
      // Roles and a global export's addresses name no user: no $1 to bind.
      await query(`DECLARE userport_export NO SCROLL CURSOR FOR
        SELECT id::text${fields.map((fl) => `, ${selectExpr(fl.column, fl.encoding, target.tables.get(m.table)!.columns.get(fl.column)!.udt)}`).join('')}
        FROM ${m.table} WHERE ${where} ORDER BY ${m.table}.id`, where.includes('$1') ? [usernames] : []);
      for (;;) {
        const rows = await query(`FETCH ${fetchRows} FROM userport_export`);
        if (!rows.length) break;
        let text = '';
        let written = 0;
        for (const row of rows) {
          let body = '{}';
          if (fields.length) {
            body = '{';
            try {
              for (let i = 0; i < fields.length; i++) {
                body += `${i ? ',\n' : '\n'}${names[i]}${encodeValue(row[i + 1]!, fields[i]!.encoding, indent)}`;
              }
            } catch (err) {
              if (!(err instanceof PickleError) && !(err instanceof NotJsonError)) throw err;
              // Never run, never guessed: the row is left out and named. The messages name the
              // opcode or byte offset, never the value (which may be a secret).
              const why = err instanceof PickleError ? UNREADABLE_REASON : NOT_JSON_REASON;
              if (summary.unreadable.length < MAX_UNREADABLE_LISTED) summary.unreadable.push({ model: m.model, pk: Number(row[0]), reason: `${why} (${err.message})` });
              const counts = unreadable.get(m.model) ?? new Map<string, number>();
              unreadable.set(m.model, counts.set(why, (counts.get(why) ?? 0) + 1));
              continue;
            }
            body += `\n${p2}}`;
          }
          text += `${first ? '\n' : ',\n'}${p1}{\n${p2}"model": ${modelText},\n${p2}"pk": ${row[0]},\n${p2}"fields": ${body}\n${p1}}`;
          first = false;
          written++;
        }
        const buf = Buffer.from(text);
        summary.models[m.model]! += written;
        summary.records += written;
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
    for (const m of models) {
      const [[total]] = await query(`SELECT count(*)::text FROM ${m.table}`) as [[string]];
      let bad = 0;
      for (const [reason, count] of unreadable.get(m.model) ?? []) {
        summary.excluded.push({ kind: 'excluded', model: m.model, count, reason });
        bad += count;
      }
      const left = Number(total) - summary.models[m.model]! - bad;
      if (left > 0) summary.excluded.push({ kind: 'excluded', model: m.model, count: left, reason: excludedReason(m, scope, !!usernames) });
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
  checkOptions(options, 'createExporter', EXPORTER_OPTIONS, []);
  const summary = emptySummary(options.scope ?? 'users');
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
 * Exports `scope` (the user scope by default) to `destination`, plain or as Sentry's encrypted
 * tarball. Resolves to the summary; on failure nothing is left at a file destination.
 */
export async function exportUsers(options: ExportUsersOptions): Promise<ExportSummary> {
  checkOptions(options, 'exportUsers', EXPORT_USERS_OPTIONS, ['destination']);
  const { destination: dest, encryptWith, tmpDir, ...exporterOptions } = options;
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
    exporter.destroy();
    throw err;
  }
  return exporter.summary;
}

