/**
 * Regression tests for bugs the hostile-input work found in lib/. Each block names the bug; the
 * reproducer is the smallest input that showed it.
 */
import { expect } from 'chai';
import { Readable } from 'node:stream';
import { RecordSplitter } from '../../lib/tokenize.js';
import { UserportError } from '../../lib/errors.js';
import { importUsers } from '../../lib/import.js';
import { mapRecord } from '../../lib/map-models.js';
import { freshDatabase } from '../helpers/db.js';

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
