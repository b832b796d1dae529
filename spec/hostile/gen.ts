/**
 * Seeded generators for the hostile-input tests: a PRNG, random JSON values with nasty strings,
 * a serializer with random whitespace and escapes, valid Sentry user exports, and the byte-level
 * and structural mutations the fuzzers apply to them. No test framework here: the long fuzz run
 * (`npm run fuzz`) uses it too.
 */

/** A small, fast, seeded PRNG (mulberry32). Same seed, same sequence, on every platform. */
export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
}

/** Pieces nasty strings are made of: JSON escapes, backslash runs, quotes, COPY's special bytes, unicode. */
const NASTY_PIECES = [
  'a', 'Z', ' ', '0', '"', '\\', '\\\\', '\\"', '"\\', '\\\\\\"', '\n', '\r\n', '\t', '\\.', '\n\\.\n', '\\N', '\\n',
  '{', '}', '[', ']', ',', ':', '/', "'", "''", '$$', ';', '--', "'); DROP TABLE auth_user; --",
  '\u0001', '\u001f', '\u007f', '\u0085', '\u00a0', '\u2028', '\u2029', '\ufeff', '\ufffd', '\u202e',
  'é', 'ß', '€', '中文', 'عربى', '𝄞', '😀', '👩‍👩‍👧‍👦', '🏳️‍🌈', 'e\u0301',
] as const;

/** A string built from {@link NASTY_PIECES}; never contains NUL or a lone surrogate. */
export function nastyString(rng: Rng, maxPieces = 8): string {
  let s = '';
  const n = rng.int(maxPieces + 1);
  for (let i = 0; i < n; i++) s += rng.pick(NASTY_PIECES);
  return s;
}

/** Also strings PostgreSQL refuses (NUL, lone surrogates): for values the mapper must reject. */
export function anyString(rng: Rng): string {
  const s = nastyString(rng);
  if (!rng.chance(0.1)) return s;
  const at = rng.int(s.length + 1);
  return s.slice(0, at) + rng.pick(['\u0000', '\ud800', '\udfff', '\udc00\ud800']) + s.slice(at);
}

/** A random JSON value, nesting at most `depth` more levels. */
export function randomValue(rng: Rng, depth: number): unknown {
  const k = rng.int(depth > 0 ? 10 : 7);
  switch (k) {
    case 0: return null;
    case 1: return rng.chance(0.5);
    case 2: return rng.range(-1000, 1000);
    case 3: return rng.pick([0, -0, 1.5, -2.25e-7, 1e21, 9007199254740991, -9007199254740993, 123456789012345680000, 5e-324]);
    case 4: case 5: case 6: return anyString(rng);
    case 7: case 8: {
      const arr: unknown[] = [];
      const n = rng.int(5);
      for (let i = 0; i < n; i++) arr.push(randomValue(rng, depth - 1));
      return arr;
    }
    default: {
      const obj: Record<string, unknown> = {};
      const n = rng.int(5);
      for (let i = 0; i < n; i++) {
        const key = rng.chance(0.1) ? rng.pick(['__proto__', 'constructor', 'prototype', 'toString', '']) : nastyString(rng, 3);
        // defineProperty: a "__proto__" key must be an own key, as JSON.parse makes it.
        Object.defineProperty(obj, key, { value: randomValue(rng, depth - 1), enumerable: true, writable: true, configurable: true });
      }
      return obj;
    }
  }
}

const WS_CHOICES = ['', '', '', ' ', '\n', '\t', '\r\n', '  ', '\n    ', ' \t\r\n '] as const;

/** Random JSON whitespace (or none). */
export function ws(rng: Rng): string {
  return rng.pick(WS_CHOICES);
}

/** A JSON string literal for `s`, escaped at random (\uXXXX for any character, \/ for /). */
export function stringLiteral(s: string, rng: Rng): string {
  if (rng.chance(0.5)) return JSON.stringify(s);
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (rng.chance(0.15)) {
      // \uXXXX, as a surrogate pair for astral characters.
      for (let i = 0; i < ch.length; i++) out += '\\u' + ch.charCodeAt(i).toString(16).padStart(4, '0')[rng.chance(0.5) ? 'toUpperCase' : 'toLowerCase']();
    } else if (ch === '/' && rng.chance(0.5)) {
      out += '\\/';
    } else if (c < 0x20 || ch === '"' || ch === '\\' || (c >= 0xd800 && c <= 0xdfff)) {
      out += JSON.stringify(ch).slice(1, -1);
    } else {
      out += ch;
    }
  }
  return out + '"';
}

/** Serializes `v` as JSON with random whitespace and random string escapes. JSON.parse gives `v` back. */
export function serialize(v: unknown, rng: Rng): string {
  if (v === null || typeof v === 'boolean') return String(v);
  if (typeof v === 'number') {
    if (Object.is(v, -0)) return rng.pick(['-0', '-0.0', '-0e0']);
    return JSON.stringify(v);
  }
  if (typeof v === 'string') return stringLiteral(v, rng);
  if (Array.isArray(v)) {
    if (!v.length) return `[${ws(rng)}]`;
    return `[${v.map((x) => ws(rng) + serialize(x, rng) + ws(rng)).join(',')}]`;
  }
  const entries = Object.entries(v as Record<string, unknown>);
  if (!entries.length) return `{${ws(rng)}}`;
  return `{${entries.map(([k, x]) => `${ws(rng)}${stringLiteral(k, rng)}${ws(rng)}:${ws(rng)}${serialize(x, rng)}${ws(rng)}`).join(',')}}`;
}

/** Serializes a top-level array of records with random whitespace between and inside them. */
export function serializeExport(records: readonly unknown[], rng: Rng): string {
  if (!records.length) return `${ws(rng)}[${ws(rng)}]${ws(rng)}`;
  return `${ws(rng)}[${records.map((r) => ws(rng) + serialize(r, rng) + ws(rng)).join(',')}]${ws(rng)}`;
}

function isoDate(rng: Rng): string {
  const d = new Date(Date.UTC(rng.range(1990, 2030), rng.int(12), rng.range(1, 28), rng.int(24), rng.int(60), rng.int(60), rng.int(1000)));
  return d.toISOString();
}

/** A nasty string that fits a column of `max` characters and has at least `min`. */
function fitted(rng: Rng, max: number, min = 0): string {
  let s = [...nastyString(rng, 4)].slice(0, max).join('');
  while ([...s].length < min) s += 'x';
  return s;
}

/**
 * A valid Sentry user export: users with their emails, user emails and options, plus some
 * out-of-scope records, in a random order. Every value passes the schemas.
 */
export function validExportRecords(rng: Rng, users = rng.range(1, 5)): Record<string, unknown>[] {
  const recs: Record<string, unknown>[] = [];
  let emailPk = 100;
  let uePk = 200;
  let uoPk = 300;
  for (let u = 1; u <= users; u++) {
    const email = `${fitted(rng, 20)}user${u}@example.com`;
    recs.push({
      model: 'sentry.user', pk: u, fields: {
        password: `pbkdf2_sha256$150000$salt${u}$hash`, last_login: rng.chance(0.5) ? null : isoDate(rng),
        username: `${fitted(rng, 40)}u${u}`, name: fitted(rng, 60), email, is_staff: rng.chance(0.5), is_active: rng.chance(0.8),
        is_superuser: false, is_managed: false, is_sentry_app: rng.pick([null, false, true]), is_password_expired: false,
        last_password_change: rng.chance(0.5) ? null : isoDate(rng), flags: rng.pick(['0', 0, 5, '12']),
        session_nonce: rng.chance(0.5) ? null : fitted(rng, 12), date_joined: isoDate(rng), last_active: rng.chance(0.3) ? null : isoDate(rng),
        avatar_type: rng.int(3), avatar_url: rng.chance(0.5) ? null : fitted(rng, 120),
      },
    });
    recs.push({ model: 'sentry.email', pk: emailPk++, fields: { email, date_added: isoDate(rng) } });
    recs.push({
      model: 'sentry.useremail', pk: uePk++, fields: {
        user: u, email, validation_hash: 'mCnWesSVvYQcq7qXQ36AZHwosAd6cghE', date_hash_added: isoDate(rng), is_verified: rng.chance(0.5),
      },
    });
    const options = rng.int(3);
    for (let o = 0; o < options; o++) {
      recs.push({
        model: 'sentry.useroption', pk: uoPk++, fields: {
          user: u, project_id: rng.chance(0.2) ? rng.range(1, 9) : null, organization_id: null,
          key: `${fitted(rng, 20, 1)}${o}`, value: randomValue(rng, 3),
        },
      });
    }
  }
  if (rng.chance(0.5)) recs.push({ model: 'sentry.userip', pk: 1, fields: { user: 1, ip_address: '127.0.0.1' } });
  if (rng.chance(0.3)) recs.push({ model: 'sentry.organization', pk: 1, fields: { name: nastyString(rng), slug: 'org' } });
  // Shuffle: the importer must not depend on file order.
  for (let i = recs.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [recs[i], recs[j]] = [recs[j]!, recs[i]!];
  }
  return recs;
}

const STRUCTURAL = Buffer.from('"{}[],:\\ \n0-.etfnu');
const NASTY_BYTES = [0x00, 0x01, 0x1f, 0x7f, 0x80, 0xbf, 0xc0, 0xc3, 0xe2, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xfe, 0xff];
const NASTY_TOKENS = [
  '"', '\\', '\\u', '\\ud800', '\\u0000', '{', '}', '[', ']', ',', ':', 'null', 'true', '1e999', '-', '01', 'NaN', '//',
  '"__proto__":{"a":1},', '"constructor":1,', '{"model":"sentry.user","pk":1,"fields":{"username":"x"}},', '\uFEFF',
  '\u2028', '😀', '\xef\xbb', '"\\\\"', '\\\\\\"', '[[[[[[[[', ']]]]',
].map((t) => Buffer.from(t, t === '\xef\xbb' ? 'latin1' : 'utf8'));

/** One random byte-level mutation: flips, truncations, splices, deletions, duplications, insertions. */
export function mutateBytes(buf: Buffer, rng: Rng, donors: readonly Buffer[] = []): Buffer {
  const n = buf.length;
  const at = rng.int(n + 1);
  switch (rng.int(8)) {
    case 0: { // byte flip
      if (!n) return Buffer.from(rng.pick(NASTY_TOKENS));
      const b = Buffer.from(buf);
      b[Math.min(at, n - 1)] = rng.chance(0.5) ? rng.pick([...STRUCTURAL]) : rng.chance(0.5) ? rng.pick(NASTY_BYTES) : rng.int(256);
      return b;
    }
    case 1: { // bit flip
      if (!n) return buf;
      const b = Buffer.from(buf);
      b[Math.min(at, n - 1)]! ^= 1 << rng.int(8);
      return b;
    }
    case 2: // truncation
      return buf.subarray(0, at);
    case 3: { // splice in a slice of this or another export
      const donor = donors.length && rng.chance(0.5) ? rng.pick(donors) : buf;
      const from = rng.int(donor.length + 1);
      const len = rng.int(Math.min(200, donor.length - from) + 1);
      return Buffer.concat([buf.subarray(0, at), donor.subarray(from, from + len), buf.subarray(at)]);
    }
    case 4: { // deletion
      const len = rng.range(1, 40);
      return Buffer.concat([buf.subarray(0, at), buf.subarray(at + len)]);
    }
    case 5: { // duplication of a range
      const len = rng.range(1, 80);
      return Buffer.concat([buf.subarray(0, at + len), buf.subarray(at, at + len), buf.subarray(at + len)]);
    }
    case 6: // insertion of a nasty token
      return Buffer.concat([buf.subarray(0, at), rng.pick(NASTY_TOKENS), buf.subarray(at)]);
    default: { // swap two ranges
      const a = rng.int(n + 1);
      const len = rng.range(1, 30);
      const b = rng.int(n + 1);
      const [x, y] = a < b ? [a, b] : [b, a];
      if (x + len > y) return buf;
      return Buffer.concat([buf.subarray(0, x), buf.subarray(y, y + len), buf.subarray(x + len, y), buf.subarray(x, x + len), buf.subarray(y + len)]);
    }
  }
}

const FIELD_NAMES = [
  'username', 'name', 'email', 'password', 'is_active', 'is_sentry_app', 'last_login', 'date_joined', 'last_active', 'flags',
  'session_nonce', 'avatar_type', 'avatar_url', 'user', 'key', 'value', 'project_id', 'organization_id', 'date_added',
  'validation_hash', 'is_verified', '__proto__', 'constructor',
];
const MODELS = ['sentry.user', 'sentry.email', 'sentry.useremail', 'sentry.useroption', 'Sentry.User', 'sentry.userip', 'sentry', 'a.b.c', ''];

/** A value meant to break a field: wrong types, out of range, strings PostgreSQL refuses. */
export function hostileValue(rng: Rng): unknown {
  return rng.pick<() => unknown>([
    () => randomValue(rng, 2),
    () => anyString(rng),
    () => 'x'.repeat(rng.pick([0, 12, 13, 64, 65, 120, 121, 128, 129, 200, 201, 10000])),
    () => rng.pick([-1, 0, 1.5, 32767, 32768, -9007199254740992, 9007199254740992, 1e300, -0]),
    () => rng.pick(['2023-02-29T00:00:00Z', '2024-02-29T23:59:59.999999999+15:59', '0000-01-01T00:00:00Z', '2020-01-01T00:00:60Z',
      '2020-01-01T00:00:00+16:00', '2020-01-01', '9999-12-31 23:59:59-1559', '2020-13-01T00:00:00Z']),
    () => rng.pick(['0', '18446744073709551615', '999999999999999999', '-1', '1e3', '']),
    () => rng.pick([null, true, false, [], {}]),
  ])();
}

const DATES = ['2023-02-29T00:00:00Z', '2024-02-29T23:59:59.999999999+15:59', '2020-01-01T00:00:00+16:00', '2020-01-01T00:00:00-1559',
  '0001-01-01T00:00:00+14:00', '9999-12-31T23:59:59.9999999-15:59', '2020-01-01 00:00:00', '2020-01-01T00:00:00+10:60', '1969-12-31T23:59:59Z'];
const STRING_LIMITS: Record<string, number> = {
  username: 128, name: 200, email: 200, password: 128, session_nonce: 12, avatar_url: 120, key: 64, validation_hash: 32,
};

/** A value at the edge of what `field` accepts: limits, calendar corners, offsets, emoji at the length limit. */
export function edgeValue(field: string, rng: Rng): unknown {
  if (/date|last_login|last_active|last_password_change/.test(field)) return rng.pick(DATES);
  const max = STRING_LIMITS[field];
  if (max !== undefined) {
    const unit = rng.pick(['x', '😀', 'é', '\\', '"', '\n', '\t', '👩‍👩‍👧‍👦'.slice(0, 2)]);
    return unit.repeat(Math.max(1, Math.floor((max + rng.pick([-1, 0, 1])) / [...unit].length)));
  }
  if (field === 'avatar_type') return rng.pick([0, 32767, 32768, -1, 1.0]);
  if (field === 'flags') return rng.pick(['999999999999999999', '9999999999999999999', 9007199254740991, '00', 0]);
  return rng.pick([9007199254740991, -9007199254740991, 9007199254740992, 0, null]);
}

const MODEL_FIELDS: Record<string, string[]> = {
  'sentry.user': ['username', 'name', 'email', 'password', 'last_login', 'date_joined', 'last_active', 'flags', 'session_nonce', 'avatar_type', 'avatar_url', 'last_password_change'],
  'sentry.email': ['email', 'date_added'],
  'sentry.useremail': ['user', 'email', 'validation_hash', 'date_hash_added'],
  'sentry.useroption': ['user', 'key', 'project_id', 'organization_id'],
};

/** One structural mutation of parsed records: a field gets a hostile value, keys vanish or appear, records repeat. */
export function mutateRecords(recs: unknown[], rng: Rng): unknown[] {
  const out = recs.slice();
  if (!out.length) return [{ model: rng.pick(MODELS), pk: rng.int(5), fields: {} }];
  const i = rng.int(out.length);
  const rec = out[i];
  const isObj = (x: unknown): x is Record<string, unknown> => !!x && typeof x === 'object' && !Array.isArray(x);
  const copy = isObj(rec) ? { ...rec } : {};
  const fields = isObj(copy.fields) ? { ...copy.fields } : {};
  switch (rng.int(9)) {
    case 0: case 1: case 2: { // a field gets a hostile or edge value (or a new field appears)
      const own = MODEL_FIELDS[String(copy.model)];
      const field = own && rng.chance(0.6) ? rng.pick(own) : rng.pick(FIELD_NAMES);
      const value = own && rng.chance(0.6) ? edgeValue(field, rng) : hostileValue(rng);
      Object.defineProperty(fields, field, { value, enumerable: true, writable: true, configurable: true });
      copy.fields = fields;
      break;
    }
    case 3: // a field vanishes
      delete fields[rng.pick(FIELD_NAMES)];
      copy.fields = fields;
      break;
    case 4: // the envelope breaks
      if (rng.chance(0.5)) delete copy[rng.pick(['model', 'pk', 'fields'])];
      else copy[rng.pick(['model', 'pk', 'fields'])] = hostileValue(rng);
      break;
    case 5: // another model's name on these fields
      copy.model = rng.pick(MODELS);
      break;
    case 6: // a duplicate (same model and pk)
      out.splice(rng.int(out.length + 1), 0, rec);
      return out;
    case 7: // the record is no longer an object
      out[i] = hostileValue(rng);
      return out;
    default: // deep nesting inside a value
      fields.deep = nest(rng.range(55, 70));
      copy.fields = fields;
      break;
  }
  out[i] = copy;
  return out;
}

function nest(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

/** 1-based line and byte column of `offset` in `buf`. */
export function lineColumn(buf: Buffer, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  let i = buf.indexOf(10);
  while (i !== -1 && i < offset) {
    line++;
    lineStart = i + 1;
    i = buf.indexOf(10, i + 1);
  }
  return { line, column: offset - lineStart + 1 };
}

/**
 * Offset of the first ill-formed UTF-8 sequence in `buf` (its lead byte, or the stray byte), or
 * -1. Written from the Unicode table of well-formed sequences (3-7), independently of lib/.
 */
export function firstInvalidUtf8(buf: Buffer): number {
  let i = 0;
  while (i < buf.length) {
    const c = buf[i]!;
    if (c < 0x80) { i++; continue; }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c >= 0xe0 && c <= 0xef) { need = 2; if (c === 0xe0) lo = 0xa0; if (c === 0xed) hi = 0x9f; }
    else if (c >= 0xf0 && c <= 0xf4) { need = 3; if (c === 0xf0) lo = 0x90; if (c === 0xf4) hi = 0x8f; }
    else return i;
    for (let k = 1; k <= need; k++) {
      const d = buf[i + k];
      if (d === undefined) return i;
      if (k === 1 ? d < lo || d > hi : d < 0x80 || d > 0xbf) return i;
    }
    i += need + 1;
  }
  return -1;
}
