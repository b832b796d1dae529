/**
 * `sentry.useroption` values: one canonical form, exact numbers, and Sentry's value checks.
 *
 * Canonical form: the decoded value, stored as JSON, which is what current Sentry's
 * `UserOption.value` (a `JSONField`) holds and exports. Exports written while the column was a
 * pickled/JSON text field carry the same value as JSON text inside a string
 * (`"\"Europe/Vienna\""`); Sentry decoded that text on import. Such a string is decoded once when
 * its text is a JSON string, array or object (it starts with `"`, `[` or `{` and parses). A string
 * whose text would parse as a number, boolean or null (`"1"`, `"true"`) stays a string: current
 * Sentry writes `stacktrace_order` as the string `"-1"`, and guessing would change it.
 *
 * Exact numbers: `JSON.parse` rounds integers beyond 2^53 and turns 1e400 into Infinity. When the
 * parsed value holds a number that is not a safe integer, the value's text is cut from the
 * record's source instead, and PostgreSQL's `jsonb` (arbitrary-precision `numeric`) keeps it.
 */

/** Characters that start the legacy JSON-text encoding of a string, array or object. */
const LEGACY_START = new Set(['"', '[', '{']);

/** Largest decimal exponent PostgreSQL's numeric (hence jsonb) accepts, with a margin. */
const MAX_EXPONENT = 100000;

export interface CanonicalValue {
  /** The value as JSON text, ready for a jsonb column. */
  text: string;
  /** The decoded value, for validation. */
  value: unknown;
  /** True when the export held it as JSON text inside a string. */
  legacy: boolean;
}

/** True when `v` holds a number that `JSON.parse` may have changed. */
export function hasInexactNumber(v: unknown, depth = 0): boolean {
  if (typeof v === 'number') return !Number.isSafeInteger(v);
  if (v === null || typeof v !== 'object' || depth > 10000) return false;
  if (Array.isArray(v)) return v.some((x) => hasInexactNumber(x, depth + 1));
  for (const x of Object.values(v)) if (hasInexactNumber(x, depth + 1)) return true;
  return false;
}

/** Index just past the JSON string starting at `i` (a quote). */
function skipString(s: string, i: number): number {
  i++;
  for (;;) {
    const q = s.indexOf('"', i);
    if (q < 0) return s.length;
    let b = q - 1;
    while (s.charCodeAt(b) === 0x5c) b--;
    if ((q - 1 - b) % 2 === 0) return q + 1;
    i = q + 1;
  }
}

const WS = /\s/y;

function skipWs(s: string, i: number): number {
  while (i < s.length) {
    WS.lastIndex = i;
    if (!WS.test(s)) break;
    i++;
  }
  return i;
}

/** Index just past the JSON value starting at `i`. */
function skipValue(s: string, i: number): number {
  const c = s[i];
  if (c === '"') return skipString(s, i);
  if (c === '{' || c === '[') {
    let depth = 0;
    while (i < s.length) {
      const ch = s[i]!;
      if (ch === '"') { i = skipString(s, i); continue; }
      if (ch === '{' || ch === '[') depth++;
      else if (ch === '}' || ch === ']') { depth--; if (depth === 0) return i + 1; }
      i++;
    }
    return i;
  }
  while (i < s.length && !',}] \t\r\n'.includes(s[i]!)) i++;
  return i;
}

/** [start, end) of the last member named `key` of the object starting at `i`, or undefined. */
function memberSpan(s: string, i: number, key: string): [number, number] | undefined {
  let found: [number, number] | undefined;
  i = skipWs(s, i);
  if (s[i] !== '{') return undefined;
  i++;
  for (;;) {
    i = skipWs(s, i);
    if (s[i] !== '"') return found;
    const kEnd = skipString(s, i);
    const name = JSON.parse(s.slice(i, kEnd)) as string;
    i = skipWs(s, kEnd);
    i = skipWs(s, i + 1);
    const vEnd = skipValue(s, i);
    // JSON.parse keeps the last of repeated keys: so does this.
    if (name === key) found = [i, vEnd];
    i = skipWs(s, vEnd);
    if (s[i] !== ',') return found;
    i++;
  }
}

/** The exact text of `fields.<field>` in a record's JSON source, or undefined. */
export function fieldSource(source: string, field: string): string | undefined {
  const f = memberSpan(source, 0, 'fields');
  if (!f) return undefined;
  const v = memberSpan(source, f[0], field);
  return v ? source.slice(v[0], v[1]) : undefined;
}

/** Why PostgreSQL's numeric would refuse a number in this JSON text, or undefined. */
function numberRangeProblem(text: string): string | undefined {
  const re = /[0-9][eE]([+-]?[0-9]+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text))) {
    if (Math.abs(Number(m[1])) > MAX_EXPONENT) return 'holds a number beyond the range PostgreSQL can store exactly';
  }
  return undefined;
}

/**
 * The canonical form of an option value. `source` gives the record's JSON text when a number
 * needs it. Returns a reason string when the value cannot be stored exactly.
 */
export function canonicalOptionValue(v: unknown, source: (() => string | undefined)): CanonicalValue | string {
  if (typeof v === 'string' && LEGACY_START.has(v[0] ?? '')) {
    let decoded: unknown;
    let ok = true;
    try { decoded = JSON.parse(v); } catch { ok = false; }
    // The string is itself the JSON text of the value: nothing to recover.
    if (ok) return numberRangeProblem(v) ?? { text: v, value: decoded, legacy: true };
  }
  if (!hasInexactNumber(v)) return { text: JSON.stringify(v), value: v, legacy: false };
  const src = source();
  const text = src === undefined ? undefined : fieldSource(src, 'value');
  if (text === undefined) return 'holds a number that cannot be read exactly';
  return numberRangeProblem(text) ?? { text, value: v, legacy: false };
}
