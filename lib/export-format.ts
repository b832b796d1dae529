/**
 * How the export writes what PostgreSQL printed: Python's `json.dump(records, indent=N)` with
 * `ensure_ascii` (everything outside printable ASCII as `\uXXXX`), each field encoded as Sentry's
 * serializer encodes it. Pure functions over text: no database, no stream. A value that cannot
 * be written (a pickle of something other than plain values, a JSON column holding something
 * else) throws, and {@link unreadableReason} says why the row is left out.
 */
import zlib from 'node:zlib';
import { DEFAULT_PICKLE_LIMITS, PickleError, pickledFieldToJsonText, pyFloatRepr } from './pickle.js';

/** How a column's text (as PostgreSQL prints it) becomes a JSON value in the export. */
export type Encoding =
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

/** Why a value made its row unreadable (grouped in the summary) and what exactly (opcode, byte: never the value). */
export interface Unreadable { why: string; detail: string }

/**
 * Whether `err`, thrown while writing a value, means the stored value cannot be written (then
 * the row is left out and named), or is a bug to pass on (undefined).
 */
export function unreadable(err: unknown): Unreadable | undefined {
  if (err instanceof PickleError) return { why: UNREADABLE_REASON, detail: err.message };
  if (err instanceof NotJsonError) return { why: NOT_JSON_REASON, detail: err.message };
  return undefined;
}

/** A field as the record writer sees it: Sentry's name, and how its column's text is encoded. */
export interface FieldFormat { field: string; encoding: Encoding }

/** The text around one model's values, laid out once per model (see {@link formatRecord}). */
export interface RecordLayout {
  /** `{`, `"model": ...` and `"pk": `, one level deep. */
  readonly head: string;
  /** `"fields": ` before the fields' object. */
  readonly fieldsKey: string;
  /** Each field's `"name": `, three levels deep. */
  readonly names: readonly string[];
  readonly encodings: readonly Encoding[];
  /** The fields' closing `}`, then the record's. */
  readonly closeFields: string;
  readonly closeRecord: string;
  readonly indent: number;
}

/** The layout of `model`'s records with `fields` (those the database has), at `indent` spaces per level. */
export function recordLayout(model: string, fields: readonly FieldFormat[], indent: number): RecordLayout {
  const [p1, p2, p3] = [1, 2, 3].map((level) => pad(indent, level)) as [string, string, string];
  return {
    head: `${p1}{\n${p2}"model": ${pythonJsonString(model)},\n${p2}"pk": `,
    fieldsKey: `,\n${p2}"fields": `,
    names: fields.map((fl) => `${p3}${pythonJsonString(fl.field)}: `),
    encodings: fields.map((fl) => fl.encoding),
    closeFields: `\n${p2}}`,
    closeRecord: `\n${p1}}`,
    indent,
  };
}

/**
 * One row (its id, then its columns' text in the layout's field order) as a record of the
 * array, without the separator before it. Throws what {@link unreadable} recognizes when a value
 * cannot be written.
 */
export function formatRecord(l: RecordLayout, row: readonly (string | null)[]): string {
  let body = '{}';
  if (l.names.length) {
    body = '{';
    for (let i = 0; i < l.names.length; i++) body += `${i ? ',\n' : '\n'}${l.names[i]}${encodeValue(row[i + 1]!, l.encodings[i]!, l.indent)}`;
    body += l.closeFields;
  }
  return `${l.head}${row[0]}${l.fieldsKey}${body}${l.closeRecord}`;
}

/** What comes before a record: a new line, after a comma unless it is the first. */
export function recordSeparator(first: boolean): string {
  return first ? '\n' : ',\n';
}

/** The export's first bytes. */
export const ARRAY_OPEN = '[';

/** The export's last bytes, as `json.dump` ends an array (`[]` when it is empty). */
export function arrayClose(empty: boolean): string {
  return empty ? ']' : '\n]';
}
