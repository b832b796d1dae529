/**
 * Issue #4 requirement 3: the hostile and malformed corpus. Every file in spec/fixtures/bad/ goes
 * through the real CLI (`node bin/userport.js import users FILE --database-url <fresh db>`):
 * exit code 1, one error line with the expected code and exactly the expected position (record,
 * model, pk, field, byte, line, column), every table still empty, peak RSS under the ceiling.
 * The expected byte is located in the file itself (a marker, the K-th record, the end), so the
 * table says what is wrong and where, not what the implementation happened to print.
 * The two huge cases (a 200 MB string, 100,000 levels of nesting) are generated in the temp folder.
 * Accepted-but-odd files (`accepted-*`) must import and round-trip exactly.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { UserportError } from '../../lib/errors.js';
import { importUsers } from '../../lib/import.js';
import { RecordSplitter } from '../../lib/tokenize.js';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { emptyCounts, parseCliError, runCli, tableCounts, type CliError, type CliResult } from './cli.js';
import { lineColumn } from './gen.js';
import { tmpFolder } from '../helpers/setup.js';

const DIR = path.resolve('spec/fixtures/bad');
/** The memory ceiling of issue #4. */
const MAX_RSS = 150 * 1024 * 1024;

/** Where the error must point: the end of the input, the K-th array element, or a marker in the file. */
type At = 'end' | { record: number } | { find: string | number[]; plus?: number } | { last: string };

interface BadCase {
  file: string;
  code: string;
  record?: number;
  model?: string;
  pk?: string;
  field?: string;
  at: At;
  args?: string[];
}

const user = (file: string, field: string): BadCase =>
  ({ file, code: 'USERPORT_RECORD_SCHEMA', record: 1, model: 'sentry.user', pk: '1', field, at: { record: 1 } });
const schema = (file: string, record: number, model: string, field: string): BadCase =>
  ({ file, code: 'USERPORT_RECORD_SCHEMA', record, model, pk: '1', field, at: { record } });

export const BAD: BadCase[] = [
  // empty and top level
  { file: 'empty.json', code: 'USERPORT_INPUT_EMPTY', at: 'end' },
  { file: 'whitespace-only.json', code: 'USERPORT_INPUT_EMPTY', at: 'end' },
  { file: 'top-level-object.json', code: 'USERPORT_INPUT_NOT_ARRAY', at: { find: '{' } },
  { file: 'top-level-string.json', code: 'USERPORT_INPUT_NOT_ARRAY', at: { find: '"' } },
  { file: 'top-level-null.json', code: 'USERPORT_INPUT_NOT_ARRAY', at: { find: 'null' } },
  { file: 'trailing-garbage.json', code: 'USERPORT_INPUT_TRAILING', at: { find: 'this is not json' } },
  { file: 'trailing-second-array.json', code: 'USERPORT_INPUT_TRAILING', at: { last: '[' } },
  { file: 'trailing-comma-after-array.json', code: 'USERPORT_INPUT_TRAILING', at: { last: ',' } },
  // truncated at many points
  { file: 'truncated-after-open-bracket.json', code: 'USERPORT_INPUT_TRUNCATED', at: 'end' },
  { file: 'truncated-in-key.json', code: 'USERPORT_INPUT_TRUNCATED', record: 1, at: 'end' },
  { file: 'truncated-in-string-escape.json', code: 'USERPORT_INPUT_TRUNCATED', record: 1, at: 'end' },
  { file: 'truncated-in-unicode-escape.json', code: 'USERPORT_INPUT_TRUNCATED', record: 1, at: 'end' },
  { file: 'truncated-in-multibyte-char.json', code: 'USERPORT_INPUT_TRUNCATED', record: 1, at: 'end' },
  { file: 'truncated-in-number.json', code: 'USERPORT_INPUT_TRUNCATED', record: 1, at: 'end' },
  { file: 'truncated-in-third-record.json', code: 'USERPORT_INPUT_TRUNCATED', record: 3, at: 'end' },
  { file: 'truncated-between-records.json', code: 'USERPORT_INPUT_TRUNCATED', at: 'end' },
  { file: 'truncated-before-closing-bracket.json', code: 'USERPORT_INPUT_TRUNCATED', at: 'end' },
  // invalid UTF-8 (the first byte of the ill-formed sequence)
  { file: 'invalid-utf8-in-username.json', code: 'USERPORT_INPUT_UTF8', record: 1, at: { find: [0xff] } },
  { file: 'invalid-utf8-overlong-slash.json', code: 'USERPORT_INPUT_UTF8', record: 1, at: { find: [0xc0] } },
  { file: 'invalid-utf8-encoded-surrogate.json', code: 'USERPORT_INPUT_UTF8', record: 1, at: { find: [0xed] } },
  { file: 'invalid-utf8-cut-sequence.json', code: 'USERPORT_INPUT_UTF8', record: 1, at: { find: [0xc3] } },
  { file: 'invalid-utf8-latin1-text.json', code: 'USERPORT_INPUT_UTF8', record: 2, at: { find: [0xe9] } },
  { file: 'partial-byte-order-mark.json', code: 'USERPORT_INPUT_UTF8', at: { find: [0xef] } },
  // outside any record a non-ASCII byte is first of all not JSON
  { file: 'invalid-utf8-between-records.json', code: 'USERPORT_PARSE_JSON', at: { find: [0xff] } },
  // records that are not objects
  { file: 'record-is-number.json', code: 'USERPORT_RECORD_NOT_OBJECT', record: 2, at: { record: 2 } },
  { file: 'record-is-string.json', code: 'USERPORT_RECORD_NOT_OBJECT', record: 1, at: { record: 1 } },
  { file: 'record-is-array.json', code: 'USERPORT_RECORD_NOT_OBJECT', record: 1, at: { record: 1 } },
  { file: 'record-is-null.json', code: 'USERPORT_RECORD_NOT_OBJECT', record: 3, at: { record: 3 } },
  { file: 'record-is-boolean.json', code: 'USERPORT_RECORD_NOT_OBJECT', record: 1, at: { record: 1 } },
  // JSON syntax (the offending character)
  { file: 'missing-comma-between-records.json', code: 'USERPORT_PARSE_JSON', at: { find: '}\n    {', plus: 6 } },
  { file: 'trailing-comma-in-array.json', code: 'USERPORT_PARSE_JSON', at: { last: ']' } },
  { file: 'comment-between-records.json', code: 'USERPORT_PARSE_JSON', at: { find: '//' } },
  { file: 'bad-literal-in-record.json', code: 'USERPORT_PARSE_JSON', record: 1, at: { find: 'tru,' } },
  { file: 'single-quoted-string.json', code: 'USERPORT_PARSE_JSON', record: 1, at: { find: "'" } },
  { file: 'unquoted-key.json', code: 'USERPORT_PARSE_JSON', record: 1, at: { find: 'flags:' } },
  { file: 'raw-newline-in-string.json', code: 'USERPORT_PARSE_JSON', record: 1, at: { find: 'Jane\nDoe', plus: 4 } },
  { file: 'raw-tab-in-string.json', code: 'USERPORT_PARSE_JSON', record: 1, at: { find: 'Jane\tDoe', plus: 4 } },
  { file: 'bad-escape-in-string.json', code: 'USERPORT_PARSE_JSON', record: 1, at: { find: '\\x41' } },
  { file: 'nan-literal.json', code: 'USERPORT_PARSE_JSON', record: 1, at: { find: 'NaN' } },
  // "01": the number ends at the 0, the 1 is where a ',' was due
  { file: 'leading-zero-number.json', code: 'USERPORT_PARSE_JSON', record: 2, at: { find: ': 01', plus: 3 } },
  { file: 'mismatched-brackets.json', code: 'USERPORT_PARSE_JSON', record: 4, at: { find: '""\n        ]', plus: 11 } },
  // envelope: missing keys, wrong types
  { file: 'missing-model.json', code: 'USERPORT_RECORD_ENVELOPE', record: 2, field: 'model', at: { record: 2 } },
  { file: 'missing-pk.json', code: 'USERPORT_RECORD_ENVELOPE', record: 2, model: 'sentry.email', field: 'pk', at: { record: 2 } },
  { file: 'missing-fields.json', code: 'USERPORT_RECORD_ENVELOPE', record: 2, model: 'sentry.email', pk: '1', field: 'fields', at: { record: 2 } },
  { file: 'model-not-a-string.json', code: 'USERPORT_RECORD_ENVELOPE', record: 1, field: 'model', at: { record: 1 } },
  { file: 'model-bad-name.json', code: 'USERPORT_RECORD_ENVELOPE', record: 1, model: 'sentry user', pk: '1', field: 'model', at: { record: 1 } },
  { file: 'pk-a-string.json', code: 'USERPORT_RECORD_ENVELOPE', record: 1, model: 'sentry.user', pk: '1', field: 'pk', at: { record: 1 } },
  { file: 'pk-a-fraction.json', code: 'USERPORT_RECORD_ENVELOPE', record: 1, model: 'sentry.user', pk: '1.5', field: 'pk', at: { record: 1 } },
  // No pk in the position: past 2^53 the parsed number need not be the one in the file.
  { file: 'pk-beyond-safe-integers.json', code: 'USERPORT_RECORD_ENVELOPE', record: 1, model: 'sentry.user', field: 'pk', at: { record: 1 } },
  { file: 'fields-an-array.json', code: 'USERPORT_RECORD_ENVELOPE', record: 2, model: 'sentry.email', pk: '1', field: 'fields', at: { record: 2 } },
  { file: 'fields-null.json', code: 'USERPORT_RECORD_ENVELOPE', record: 2, model: 'sentry.email', pk: '1', field: 'fields', at: { record: 2 } },
  // schema: a wrong value for every field kind (string, length, required, NUL, surrogate, object,
  // boolean, nullable boolean, date-time, nullable date-time, flags, small integer, foreign key, JSON value)
  user('user-username-a-number.json', 'username'),
  user('user-username-empty.json', 'username'),
  user('user-username-10000-characters.json', 'username'),
  user('user-username-missing.json', 'username'),
  user('user-username-with-nul.json', 'username'),
  user('user-name-lone-surrogate.json', 'name'),
  user('user-name-an-object.json', 'name'),
  user('user-is-active-a-string.json', 'is_active'),
  user('user-is-sentry-app-a-number.json', 'is_sentry_app'),
  user('user-date-joined-impossible-date.json', 'date_joined'),
  user('user-last-login-a-number.json', 'last_login'),
  user('user-flags-negative.json', 'flags'),
  user('user-avatar-type-out-of-range.json', 'avatar_type'),
  user('user-avatar-type-a-fraction.json', 'avatar_type'),
  user('user-session-nonce-too-long.json', 'session_nonce'),
  schema('email-address-missing.json', 2, 'sentry.email', 'email'),
  schema('email-date-added-offset-out-of-range.json', 2, 'sentry.email', 'date_added'),
  schema('useremail-user-a-string.json', 3, 'sentry.useremail', 'user'),
  schema('useroption-key-empty.json', 2, 'sentry.useroption', 'key'),
  schema('useroption-project-id-a-string.json', 2, 'sentry.useroption', 'project_id'),
  schema('useroption-value-with-nul.json', 2, 'sentry.useroption', 'value'),
  // the same pk twice in one model: the second occurrence is reported
  { file: 'duplicate-user-pk.json', code: 'USERPORT_RECORD_DUPLICATE_PK', record: 3, model: 'sentry.user', pk: '1', at: { record: 3 } },
  { file: 'duplicate-useroption-pk.json', code: 'USERPORT_RECORD_DUPLICATE_PK', record: 4, model: 'sentry.useroption', pk: '1', at: { record: 4 } },
  // limits: the bracket that goes past maxDepth 64; the start of the record over --max-record-bytes
  { file: 'nesting-65-levels.json', code: 'USERPORT_LIMIT_DEPTH', record: 2, at: { last: '[' } },
  { file: 'record-over-max-record-bytes.json', code: 'USERPORT_LIMIT_RECORD_SIZE', record: 2, at: { record: 2 }, args: ['--max-record-bytes', '1024'] },
];

export const ACCEPTED = [
  'accepted-byte-order-mark.json',
  'accepted-proto-and-constructor-keys.json',
  'accepted-emoji-and-control-characters.json',
  'accepted-same-pk-in-every-model.json',
];

/** Byte offsets of the top-level array's elements, found without lib/ (strings and nesting only). */
function elementOffsets(buf: Buffer): number[] {
  const out: number[] = [];
  let depth = 0;
  let inString = false;
  let expectValue = false;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i]!;
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) continue;
    if (depth === 1 && expectValue && c !== 0x5d) { out.push(i); expectValue = false; }
    if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) { depth++; if (depth === 1) expectValue = true; }
    else if (c === 0x5d || c === 0x7d) depth--;
    else if (c === 0x2c && depth === 1) expectValue = true;
  }
  return out;
}

function locate(buf: Buffer, at: At): number {
  if (at === 'end') return buf.length;
  if ('record' in at) {
    const offset = elementOffsets(buf)[at.record - 1];
    if (offset === undefined) throw new Error(`no record ${at.record}`);
    return offset;
  }
  if ('last' in at) return buf.lastIndexOf(at.last);
  const i = buf.indexOf(typeof at.find === 'string' ? Buffer.from(at.find) : Buffer.from(at.find));
  if (i < 0) throw new Error(`marker ${JSON.stringify(at.find)} not in the file`);
  return i + (at.plus ?? 0);
}

/** The position the CLI must print for `c`. */
function expectedPosition(c: BadCase, buf: Buffer): CliError['position'] {
  const byte = locate(buf, c.at);
  const { line, column } = lineColumn(buf, byte);
  const p: CliError['position'] = {};
  if (c.record !== undefined) p.record = c.record;
  if (c.model !== undefined) p.model = c.model;
  if (c.pk !== undefined) p.pk = c.pk;
  if (c.field !== undefined) p.field = c.field;
  return { ...p, byte, line, column };
}

interface Run { result: CliResult; counts: Record<string, number> }

/** Imports `file` into a fresh database with the CLI; returns what it printed and what it left. */
async function importFile(file: string, args: string[] = [], inspect?: (db: TestDb) => Promise<void>, env?: NodeJS.ProcessEnv): Promise<Run> {
  const db = await freshDatabase();
  try {
    const result = await runCli(['import', 'users', file, '--database-url', db.url, '--no-progress', ...args], env ? { env } : {});
    const counts = await tableCounts(db);
    if (inspect) await inspect(db);
    return { result, counts };
  } finally {
    await db.close();
  }
}

/** Runs `fn` over `items`, `limit` at a time. */
async function pool<T, R>(items: T[], limit: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  }));
  return out;
}

describe('hostile and malformed input corpus (spec/fixtures/bad)', () => {
  describe('the corpus itself', () => {
    it('has at least 30 bad exports, each in the table and in README.md with its code', () => {
      const files = fs.readdirSync(DIR).filter((f) => f.endsWith('.json')).sort();
      expect([...BAD.map((c) => c.file), ...ACCEPTED].sort()).to.deep.equal(files);
      expect(BAD.length).to.be.at.least(30);
      const readme = fs.readFileSync(path.join(DIR, 'README.md'), 'utf8');
      for (const c of BAD) expect(readme, c.file).to.match(new RegExp(`\\| \`${c.file.replace(/\./g, '\\.')}\` \\| \`${c.code}\` \\|`));
      for (const f of ACCEPTED) expect(readme, f).to.match(new RegExp(`\\| \`${f.replace(/\./g, '\\.')}\` \\| accepted \\|`));
    });
  });

  describe('through the CLI: exit code 1, the code, the exact position, nothing left behind', () => {
    const runs = new Map<string, Run>();
    before(async function () {
      this.timeout(600000);
      // Each case has its own database; a few at a time keeps the wall clock down.
      const results = await pool(BAD, 4, (c) => importFile(path.join(DIR, c.file), c.args));
      BAD.forEach((c, i) => runs.set(c.file, results[i]!));
    });

    for (const c of BAD) {
      it(`${c.file}: ${c.code}${c.record ? ` in record ${c.record}` : ''}`, () => {
        const buf = fs.readFileSync(path.join(DIR, c.file));
        const { result, counts } = runs.get(c.file)!;
        expect(result.code, result.stderr).to.equal(1);
        const err = parseCliError(result.stderr);
        expect(err.code, result.stderr).to.equal(c.code);
        expect(err.position, result.stderr).to.deep.equal(expectedPosition(c, buf));
        expect(result.stdout).to.equal('');
        expect(counts).to.deep.equal(emptyCounts());
        expect(result.peakRss).to.be.above(0).and.below(MAX_RSS);
      });
    }
  });

  describe('from standard input (import users -): the same code and position as from the file', () => {
    for (const file of ['truncated-in-third-record.json', 'invalid-utf8-latin1-text.json', 'user-username-10000-characters.json',
      'duplicate-user-pk.json', 'trailing-garbage.json']) {
      const c = BAD.find((x) => x.file === file)!;
      it(`${file} on stdin: ${c.code}`, async () => {
        const buf = fs.readFileSync(path.join(DIR, file));
        const db = await freshDatabase();
        try {
          const result = await runCli(['import', 'users', '-', '--database-url', db.url, '--no-progress'], { input: buf });
          expect(result.code, result.stderr).to.equal(1);
          const err = parseCliError(result.stderr);
          expect(err.code).to.equal(c.code);
          expect(err.position).to.deep.equal(expectedPosition(c, buf));
          expect(await tableCounts(db)).to.deep.equal(emptyCounts());
        } finally {
          await db.close();
        }
      });
    }
  });

  describe('truncated at every byte', () => {
    const whole = fs.readFileSync(path.join(DIR, 'accepted-same-pk-in-every-model.json'));
    const end = whole.lastIndexOf(']') + 1;

    it('every proper prefix of a valid export is USERPORT_INPUT_TRUNCATED at its end (or EMPTY), in any chunking', () => {
      let truncated = 0;
      for (let cut = 0; cut < end; cut++) {
        const prefix = whole.subarray(0, cut);
        for (const size of [1, 7, 1 << 20]) {
          const splitter = new RecordSplitter();
          let err: unknown;
          try {
            for (let i = 0; i < prefix.length; i += size) splitter.write(prefix.subarray(i, i + size));
            splitter.end();
          } catch (e) {
            err = e;
          }
          expect(err, `cut at ${cut}`).to.be.instanceOf(UserportError);
          const e = err as UserportError;
          expect(e.code, `cut at ${cut}`).to.equal(cut === 0 ? 'USERPORT_INPUT_EMPTY' : 'USERPORT_INPUT_TRUNCATED');
          expect(e.position, `cut at ${cut}`).to.include({ offset: cut, ...lineColumn(whole, cut) });
        }
        truncated++;
      }
      expect(truncated).to.equal(end);
    });

    it('through importUsers, a truncated export leaves every table empty (20 cut points)', async () => {
      const db = await freshDatabase();
      try {
        for (let k = 1; k <= 20; k++) {
          const cut = Math.floor((end * k) / 21);
          const err = await importUsers({ source: Readable.from([whole.subarray(0, cut)]), databaseUrl: db.url }).then(
            () => undefined, (e: unknown) => e as UserportError);
          expect(err?.code, `cut at ${cut}`).to.equal('USERPORT_INPUT_TRUNCATED');
          expect(err?.position?.offset).to.equal(cut);
          expect(await tableCounts(db), `cut at ${cut}`).to.deep.equal(emptyCounts());
        }
      } finally {
        await db.close();
      }
    });
  });

  describe('accepted but odd: exit code 0 and an exact round trip', () => {
    type Rec = { model: string; pk: number; fields: Record<string, unknown> };
    /** JSON with object keys sorted: jsonb stores keys in its own order. */
    const canonical = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x));

    /** What the target tables must hold after importing `recs` (one user, no collisions) into an empty database. */
    function decodeLegacy(v: unknown): unknown {
      if (typeof v !== 'string' || !'"[{'.includes(v[0] ?? 'x')) return v;
      try { return JSON.parse(v) as unknown; } catch { return v; }
    }

    function expectedRows(recs: Rec[]) {
      const users = recs.filter((r) => r.model === 'sentry.user').map((r) => r.fields);
      const sorted = <T>(xs: T[]) => xs.map(canonical).sort();
      return {
        auth_user: sorted(users.map((f) => ({ username: f.username, first_name: f.name ?? '', email: f.email ?? '',
          session_nonce: f.session_nonce ?? null, avatar_url: f.avatar_url ?? null }))),
        // The export's email rows, plus a row for every other user-email address (Sentry's
        // receivers/email.py gives each new UserEmail one).
        sentry_email: sorted([...new Set([...recs.filter((r) => r.model === 'sentry.email').map((r) => r.fields.email as string),
          ...recs.filter((r) => r.model === 'sentry.useremail').map((r) => r.fields.email as string),
          ...users.map((f) => f.email as string).filter(Boolean)])].map((email) => ({ email }))),
        sentry_useremail: sorted([...new Set([...recs.filter((r) => r.model === 'sentry.useremail').map((r) => r.fields.email as string),
          ...users.map((f) => f.email as string).filter(Boolean)])].map((email) => ({ email }))),
        // Values in the legacy JSON-text-in-a-string encoding are stored decoded, as current Sentry holds them.
        sentry_useroption: sorted(recs.filter((r) => r.model === 'sentry.useroption').map((r) => ({ key: r.fields.key, value: decodeLegacy(r.fields.value) }))),
      };
    }

    async function actualRows(db: TestDb) {
      const sorted = <T>(xs: T[]) => xs.map(canonical).sort();
      return {
        auth_user: sorted(await db.knex('auth_user').select('username', 'first_name', 'email', 'session_nonce', 'avatar_url')),
        sentry_email: sorted(await db.knex('sentry_email').select('email')),
        sentry_useremail: sorted(await db.knex('sentry_useremail').select('email')),
        sentry_useroption: sorted(await db.knex('sentry_useroption').select('key', 'value')),
      };
    }

    for (const file of ACCEPTED) {
      it(`${file}: imported, every value stored exactly as written`, async () => {
        const buf = fs.readFileSync(path.join(DIR, file));
        const text = buf.toString('utf8').replace(/^\uFEFF/, '');
        const recs = JSON.parse(text) as Rec[];
        let rows: Awaited<ReturnType<typeof actualRows>> | undefined;
        const { result } = await importFile(path.join(DIR, file), ['--json'], async (db) => { rows = await actualRows(db); });
        expect(result.code, result.stderr).to.equal(0);
        expect(result.stderr).to.equal('');
        const summary = JSON.parse(result.stdout) as { records: number; unknownFields: Record<string, Record<string, number>> };
        expect(summary.records).to.equal(recs.length);
        expect(rows).to.deep.equal(expectedRows(recs));
        expect(rows!.auth_user).to.have.length(1);
        expect(result.peakRss).to.be.below(MAX_RSS);
        if (file === 'accepted-proto-and-constructor-keys.json') {
          // Plain data all the way: unknown fields counted under their own names, option values kept whole.
          expect(Object.keys(summary.unknownFields['sentry.user']!).sort()).to.deep.equal(['__proto__', 'constructor']);
          expect(rows!.sentry_useroption.some((r) => r.includes('"__proto__":{"polluted":1}'))).to.equal(true);
        }
        if (file === 'accepted-byte-order-mark.json') expect(buf.subarray(0, 3)).to.deep.equal(Buffer.from([0xef, 0xbb, 0xbf]));
      });
    }
  });

  describe('the limits are options, checked before anything runs', () => {
    const cases: [string[], RegExp][] = [
      [['--max-depth', '1'], /--max-depth must be an integer >= 2, got 1\b/],
      [['--max-depth', 'deep'], /--max-depth/],
      [['--max-record-bytes', '15'], /--max-record-bytes must be an integer >= 16, got 15\b/],
      [['--max-record-bytes', '8e6'], /--max-record-bytes/],
      [['--max-record-bytes', '-1'], /--max-record-bytes/],
      // A limit whose worst-case record this process's heap cannot hold: V8 would abort on it.
      [['--max-record-bytes', '1000000000'], /--max-record-bytes must be at most \d+ in this process: a record can take 22 times its size in heap once parsed, and the heap holds \d+ MB \(node --max-old-space-size=\d+ makes room for this one; the launcher gives 96 MB\), got 1000000000/],
    ];
    for (const [args, message] of cases) {
      it(`${args.join(' ')}: USERPORT_OPTION_INVALID naming the option, exit code 2 (usage), nothing imported`, async () => {
        const { result, counts } = await importFile(path.join(DIR, 'accepted-same-pk-in-every-model.json'), args);
        expect(result.code).to.equal(2);
        const err = parseCliError(result.stderr);
        expect(err.code).to.equal('USERPORT_OPTION_INVALID');
        expect(err.message).to.match(message);
        expect(err.position).to.deep.equal({});
        expect(counts).to.deep.equal(emptyCounts());
      });
    }
  });

  describe('huge inputs, generated in the temp folder, in bounded memory', () => {
    let tmp: string;
    before(() => { tmp = tmpFolder('userport-hostile-'); });
    after(() => fs.rmSync(tmp, { recursive: true, force: true }));

    /** A user whose name is a 200 MB string (written once, in 1 MiB blocks). */
    function bigStringFile(): string {
      const file = path.join(tmp, 'string-200mb.json');
      if (fs.existsSync(file)) return file;
      const fd = fs.openSync(file, 'w');
      fs.writeSync(fd, '[\n  {"model": "sentry.user", "pk": 1, "fields": {"username": "big", "name": "');
      const block = Buffer.alloc(1 << 20, 'a');
      for (let i = 0; i < 200; i++) fs.writeSync(fd, block);
      fs.writeSync(fd, '"}}\n]\n');
      fs.closeSync(fd);
      return file;
    }

    it('a 200 MB string value: USERPORT_LIMIT_RECORD_SIZE at the record start, peak RSS under 150 MB', async function () {
      this.timeout(300000);
      const file = bigStringFile();
      expect(fs.statSync(file).size).to.be.above(200 * 1024 * 1024);
      const { result, counts } = await importFile(file);
      expect(result.code, result.stderr).to.equal(1);
      const err = parseCliError(result.stderr);
      expect(err.code).to.equal('USERPORT_LIMIT_RECORD_SIZE');
      expect(err.position).to.deep.equal({ record: 1, byte: 4, line: 2, column: 3 });
      expect(counts).to.deep.equal(emptyCounts());
      expect(result.peakRss).to.be.above(0).and.below(MAX_RSS);
    });

    it('control: with --max-record-bytes raised past the 200 MB string, the probe does see the memory go over 150 MB @soak', async function () {
      this.timeout(300000);
      const file = bigStringFile();
      // A heap that can hold a worst-case record of that size (22 times it): the limit is refused otherwise.
      const { result, counts } = await importFile(file, ['--max-record-bytes', String(400 * 1024 * 1024)], undefined,
        { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --max-old-space-size=10240`.trim() });
      // The record is then read whole; it fails later (name longer than 200 characters), and the
      // peak shows what the limit saves.
      expect(result.code, result.stderr).to.equal(1);
      expect(parseCliError(result.stderr).code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(counts).to.deep.equal(emptyCounts());
      expect(result.peakRss).to.be.above(MAX_RSS);
    });

    it('nesting 100,000 levels deep: USERPORT_LIMIT_DEPTH at the 65th level, peak RSS under 150 MB', async function () {
      this.timeout(120000);
      const file = path.join(tmp, 'nesting-100k.json');
      const head = '[{"model": "sentry.useroption", "pk": 1, "fields": {"user": 1, "key": "k", "value": ';
      fs.writeFileSync(file, head + '['.repeat(100000) + ']'.repeat(100000) + '}}]');
      const { result, counts } = await importFile(file);
      expect(result.code, result.stderr).to.equal(1);
      const err = parseCliError(result.stderr);
      expect(err.code).to.equal('USERPORT_LIMIT_DEPTH');
      // The record is level 1, fields level 2: the 63rd '[' of the value is level 65.
      const byte = Buffer.byteLength(head) + 62;
      expect(err.position).to.deep.equal({ record: 1, byte, line: 1, column: byte + 1 });
      expect(counts).to.deep.equal(emptyCounts());
      expect(result.peakRss).to.be.above(0).and.below(MAX_RSS);
    });

    it('100,000 levels with the depth limit raised: USERPORT_RECORD_SCHEMA on the value, not a stack overflow', async function () {
      this.timeout(120000);
      const file = path.join(tmp, 'nesting-100k-allowed.json');
      const head = '[{"model": "sentry.useroption", "pk": 1, "fields": {"user": 1, "key": "k", "value": ';
      fs.writeFileSync(file, head + '['.repeat(100000) + ']'.repeat(100000) + '}}]');
      const { result, counts } = await importFile(file, ['--max-depth', '100002']);
      expect(result.code, result.stderr).to.equal(1);
      const err = parseCliError(result.stderr);
      expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(err.position).to.deep.equal({ record: 1, model: 'sentry.useroption', pk: '1', field: 'value', byte: 1, line: 1, column: 2 });
      expect(counts).to.deep.equal(emptyCounts());
      expect(result.peakRss).to.be.above(0).and.below(MAX_RSS);
    });
  });
});
