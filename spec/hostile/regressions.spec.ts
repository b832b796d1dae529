/**
 * Regression tests for bugs the hostile-input work found in lib/. Each block names the bug; the
 * reproducer is the smallest input that showed it.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { RecordSplitter } from '../../lib/tokenize.js';
import { UserportError } from '../../lib/errors.js';
import { importUsers, type ImportOptions } from '../../lib/import.js';
import { mapRecord } from '../../lib/map-models.js';
import { freshDatabase } from '../helpers/db.js';
import { parseCliError, runCli } from './cli.js';
import { tmpFolder } from '../helpers/setup.js';

function splitError(buf: Buffer, chunk = buf.length): UserportError {
  const splitter = new RecordSplitter();
  try {
    for (let i = 0; i < buf.length; i += chunk) splitter.write(buf.subarray(i, i + chunk));
    splitter.end();
  } catch (err) {
    expect(err).to.be.instanceOf(UserportError);
    return err as UserportError;
  }
  throw new Error('expected the splitter to fail');
}

describe('regressions', () => {
  describe('invalid UTF-8 position', () => {
    // The binary search for the first bad byte reused one streaming TextDecoder: the pending
    // bytes of one probe were prepended to the next, so a multi-byte character before the bad
    // byte moved the reported offset backwards (here to 11 instead of 13).
    it('reports the first byte of the ill-formed sequence, after multi-byte characters', () => {
      const buf = Buffer.from('5b7b2273223a22e282ac78c3a9e282ffac71227d5d', 'hex'); // [{"s":"€xé\xe2\x82\xff¬q"}]
      const err = splitError(buf);
      expect(err.code).to.equal('USERPORT_INPUT_UTF8');
      expect(err.position).to.include({ offset: 13, line: 1, column: 14, ordinal: 1 });
    });

    it('reports a truncated sequence at its lead byte, after emoji', () => {
      const buf = Buffer.concat([Buffer.from('[{"s":"😀😀😀x'), Buffer.from([0xe2, 0x82]), Buffer.from('"}]')]);
      const err = splitError(buf, 3);
      expect(err.code).to.equal('USERPORT_INPUT_UTF8');
      expect(err.position?.offset).to.equal(Buffer.byteLength('[{"s":"😀😀😀x'));
    });
  });
});

describe('regressions: a partial byte-order mark', () => {
  // The BOM skipper consumed EF BB (or EF) and then went on as if the mark were complete:
  // "\xEF\xBB[]" was accepted as an empty export although it is not valid UTF-8.
  for (const [what, hex] of [['EF BB', 'efbb5b5d'], ['EF', 'ef5b5d'], ['EF BB alone', 'efbb']] as const) {
    it(`refuses ${what} with USERPORT_INPUT_UTF8 at byte 0, whole and byte by byte`, () => {
      for (const chunk of [1, 100]) {
        const err = splitError(Buffer.from(hex, 'hex'), chunk);
        expect(err.code).to.equal('USERPORT_INPUT_UTF8');
        expect(err.position).to.include({ offset: 0, line: 1, column: 1 });
      }
    });
  }

  it('still accepts a whole mark split over chunks', () => {
    const splitter = new RecordSplitter();
    const buf = Buffer.from('\uFEFF[{"a":1}]');
    const out = [];
    for (let i = 0; i < buf.length; i++) out.push(...splitter.write(buf.subarray(i, i + 1)));
    splitter.end();
    expect(out.map((r) => r.value)).to.deep.equal([{ a: 1 }]);
  });
});

describe('regressions: UTC offsets PostgreSQL refuses', () => {
  // isDateTime accepted any two-digit offset, so "+16:00" or "+10:60" passed the schema and then
  // failed the whole COPY with USERPORT_DB_QUERY (not rejectable, no record position).
  const user = (date: string) => JSON.stringify([{ model: 'sentry.user', pk: 7, fields: { username: 'tz', date_joined: date } }]);

  for (const date of ['2020-01-01T00:00:00+16:00', '2020-01-01T00:00:00+10:60', '2020-01-01T00:00:00-9999']) {
    it(`refuses ${date} as USERPORT_RECORD_SCHEMA on field date_joined, with the record's position`, async () => {
      const db = await freshDatabase();
      try {
        const err = await importUsers({ source: Readable.from([Buffer.from(user(date))]), databaseUrl: db.url }).then(
          () => { throw new Error('expected the import to fail'); }, (e: unknown) => e as UserportError);
        expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
        expect(err.position).to.include({ ordinal: 1, offset: 1, field: 'date_joined', model: 'sentry.user', pk: 7 });
        expect(await db.count('auth_user')).to.equal(0);
      } finally {
        await db.close();
      }
    });
  }

  it('accepts the extreme offsets PostgreSQL takes (+15:59, -1559) and stores the instant', async () => {
    const db = await freshDatabase();
    try {
      const text = JSON.stringify([
        { model: 'sentry.user', pk: 1, fields: { username: 'east', date_joined: '2020-01-01T00:00:00+15:59' } },
        { model: 'sentry.user', pk: 2, fields: { username: 'west', date_joined: '2020-01-01T00:00:00-1559' } },
      ]);
      await importUsers({ source: Readable.from([Buffer.from(text)]), databaseUrl: db.url });
      const rows = await db.knex('auth_user').select('username', 'date_joined').orderBy('username');
      expect(rows.map((r: { username: string; date_joined: Date }) => [r.username, r.date_joined.toISOString()])).to.deep.equal([
        ['east', '2019-12-31T08:01:00.000Z'], ['west', '2020-01-01T15:59:00.000Z'],
      ]);
    } finally {
      await db.close();
    }
  });
});

describe('regressions: a JSON value nested thousands of levels deep', () => {
  // With --max-depth raised, a useroption value nested ~5000 levels passed the tokenizer, then
  // JSON.stringify / the string check in mapRecord overflowed the stack: the import failed with
  // "Maximum call stack size exceeded" wrapped as USERPORT_DB_QUERY, without a position.
  it('is refused by mapRecord as USERPORT_RECORD_SCHEMA on the field', () => {
    let value: unknown = 1;
    for (let i = 0; i < 100000; i++) value = [value];
    const rec = { kind: 'record' as const, model: 'sentry.useroption', pk: 3, fields: { user: 1, key: 'k', value }, filtered: false,
      ordinal: 2, offset: 10, line: 1, column: 11, length: 5 };
    let err: unknown;
    try { mapRecord(rec); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(UserportError);
    expect((err as UserportError).code).to.equal('USERPORT_RECORD_SCHEMA');
    expect((err as UserportError).position).to.include({ ordinal: 2, offset: 10, field: 'value', model: 'sentry.useroption', pk: 3 });
  });
});

describe('regressions: file-system errors are USERPORT_IO, not database errors', () => {
  // A missing source file, a source that is a folder, or an unwritable --rejects-file or
  // --findings-file were all reported as USERPORT_DB_QUERY ("the import failed: ENOENT ..."):
  // importUsers wrapped every non-userport error with wrapDbError, and the first read of the
  // source (its fingerprint) happens before the check that would say "cannot read".
  const good = JSON.stringify([{ model: 'sentry.user', pk: 1, fields: { username: 'io' } }]);
  const cases: [string, (dir: string) => Omit<ImportOptions, 'databaseUrl'>][] = [
    ['a missing source file', (dir) => ({ source: `${dir}/missing.json` })],
    ['a source that is a folder', (dir) => ({ source: dir })],
    ['a rejects file in a missing folder', (dir) => ({ source: Readable.from([Buffer.from(good)]), rejectsFile: `${dir}/no/such/rejects.jsonl` })],
    ['a findings file in a missing folder', (dir) => ({ source: Readable.from([Buffer.from(good)]), findingsFile: `${dir}/no/such/findings.json` })],
  ];
  for (const [what, options] of cases) {
    it(`${what}: USERPORT_IO, nothing imported`, async () => {
      const db = await freshDatabase();
      const dir = tmpFolder('userport-io-');
      try {
        const err = await importUsers({ ...options(dir), databaseUrl: db.url }).then(
          () => { throw new Error('expected the import to fail'); }, (e: unknown) => e as UserportError);
        expect(err).to.be.instanceOf(UserportError);
        expect(err.code).to.equal('USERPORT_IO');
        expect(await db.count('auth_user')).to.equal(0);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
        await db.close();
      }
    });
  }
});

describe('regressions: a "__proto__" field in a rejected record', () => {
  // redact() copied fields with assignments: copy["__proto__"] = value set the copy's prototype
  // to the record's data instead of copying the key, so the rejects file silently lost the field
  // (and the copy inherited attacker-chosen properties such as is_staff).
  it('is kept as a plain key in the rejects file, secrets redacted, no prototype set', async () => {
    const text = '[{"model": "sentry.user", "pk": 1, "fields": {"username": "x", "is_active": "no", "password": "pw-secret",' +
      ' "__proto__": {"is_staff": true, "note": "kept"}}}]';
    const dir = tmpFolder('userport-proto-');
    const db = await freshDatabase();
    try {
      const rejectsFile = path.join(dir, 'rejects.jsonl');
      await importUsers({ source: Readable.from([Buffer.from(text)]), databaseUrl: db.url, rejectsFile });
      const line = fs.readFileSync(rejectsFile, 'utf8').trim();
      expect(line).to.not.include('pw-secret');
      const rejected = JSON.parse(line) as { code: string; field: string; record: { fields: Record<string, unknown> } };
      expect(rejected.code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(rejected.field).to.equal('is_active');
      expect(Object.keys(rejected.record.fields)).to.deep.equal(['username', 'is_active', 'password', '__proto__']);
      expect(rejected.record.fields.password).to.equal('[redacted]');
      expect(Object.getOwnPropertyDescriptor(rejected.record.fields, '__proto__')?.value).to.deep.equal({ is_staff: true, note: 'kept' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      await db.close();
    }
  });
});

describe('regressions: export data shown on the terminal is made printable', () => {
  // The error line printed a bad record's model and pk as they were, and the summary printed
  // unknown field names as they were: a newline split the one-line error, and escape sequences
  // (colours, window title) reached the terminal from the export.
  const ESC = '\u001b';
  async function cli(text: string, args: string[] = []) {
    const dir = tmpFolder('userport-tty-');
    const db = await freshDatabase();
    try {
      const file = path.join(dir, 'export.json');
      fs.writeFileSync(file, text);
      return await runCli(['import', 'users', file, '--database-url', db.url, '--no-progress', ...args]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      await db.close();
    }
  }

  it('an envelope error with control characters in model and pk is one escaped line', async () => {
    const r = await cli('[{"model": "evil\\n\\u001b[31mline2", "pk": "x\\ny\\u2028z", "fields": {}}]');
    expect(r.code).to.equal(1);
    expect(r.stderr.endsWith('\n')).to.equal(true);
    // The error is one line; what follows is the CLI's own hint (indented), never a line of data.
    const [line, ...hint] = r.stderr.trimEnd().split('\n');
    expect(hint.join('\n')).to.equal('  hint: with --rejects-file F, records that fail validation are written to F and\n    the import goes on');
    expect(r.stderr).to.not.include(ESC).and.not.include('\u2028');
    const err = parseCliError(`${line}\n`);
    expect(err.code).to.equal('USERPORT_RECORD_ENVELOPE');
    expect(err.position).to.deep.equal({ record: 1, model: 'evil\\u000a\\u001b[31mline2', pk: 'x\\u000ay\\u2028z', field: 'model', byte: 1, line: 1, column: 2 });
  });

  it('unknown field names in the summary cannot add lines or escape sequences', async () => {
    const r = await cli('[{"model": "sentry.user", "pk": 1, "fields": {"username": "a", "x\\u001b]0;title\\u0007\\nFAKE LINE": 1}}]');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.not.include(ESC).and.not.include('\u0007');
    expect(r.stdout.split('\n').some((l) => l.startsWith('FAKE LINE'))).to.equal(false);
    expect(r.stdout).to.include('sentry.user.x\\u001b]0;title\\u0007\\u000aFAKE LINE 1');
  });
});
