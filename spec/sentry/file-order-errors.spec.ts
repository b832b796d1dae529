/**
 * Issue #12 item 7: errors and rejects come in file order, whatever stage finds them, and an
 * array element that is not an object follows the rejects rule (rejected with --rejects-file,
 * else the import fails on it).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { importUsers } from '../../lib/import.js';
import { failure, withDb } from '../helpers/db.js';
import { exhaustiveUser, tmpExport } from '../helpers/sentry-fixtures.js';
import { tmpPath } from '../helpers/setup.js';



/** 11 records; record 4 fails its schema; then `tail` (raw JSON text) as record 12, then a user. */
function exportText(tail: string): string {
  const recs = [1, 2, 3, 5, 6, 7, 8, 9, 10, 11].map((i) => JSON.stringify(exhaustiveUser(i, `u${i}`)[0]));
  recs.splice(3, 0, JSON.stringify({ model: 'sentry.user', pk: 4, fields: { username: 'bad', is_active: 'yes' } }));
  return `[\n${[...recs, tail, JSON.stringify(exhaustiveUser(12, 'u12')[0])].join(',\n')}\n]`;
}

/** A stream of `text` in chunks of `size` bytes, so elements straddle chunk boundaries. */
function chunked(text: string, size: number): Readable {
  const buf = Buffer.from(text);
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

const NON_OBJECTS = ['42', '"a \\"string\\" with ] and } inside"', '["an", {"array": ["record"]}]', 'null', 'true', '-1.5e3'];

describe('errors and rejects in file order (issue #12 item 7)', () => {
  for (const tail of NON_OBJECTS) {
    it(`reports record 4's schema error, not record 12 (${tail})`, () => withDb(async (db) => {
      const err = await failure(importUsers({ source: tmpExport(exportText(tail)), databaseUrl: db.url }));
      expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(err.position).to.include({ ordinal: 4, model: 'sentry.user', pk: 4, field: 'is_active' });
      expect(await db.count('auth_user')).to.equal(0);
    }));

    it(`with --rejects-file, rejects record 4 then record 12 in order and imports the rest (${tail}, 5-byte chunks)`, () => withDb(async (db) => {
      const rejects = tmpPath(`userport-order-${NON_OBJECTS.indexOf(tail)}.jsonl`);
      const s = await importUsers({ source: chunked(exportText(tail), 5), databaseUrl: db.url, rejectsFile: rejects });
      const lines = fs.readFileSync(rejects, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { ordinal: number; code: string; record: unknown });
      expect(lines.map((l) => [l.ordinal, l.code])).to.deep.equal([[4, 'USERPORT_RECORD_SCHEMA'], [12, 'USERPORT_RECORD_NOT_OBJECT']]);
      expect(lines[1]!.record).to.deep.equal(JSON.parse(tail));
      expect(s.records).to.equal(13);
      expect(await db.count('auth_user')).to.equal(11);
    }));
  }

  it('a non-object alone fails with its own code and position', () => withDb(async (db) => {
    const text = `[${JSON.stringify(exhaustiveUser(1, 'a')[0])},\n  "x"]`;
    const err = await failure(importUsers({ source: tmpExport(text), databaseUrl: db.url }));
    expect(err.code).to.equal('USERPORT_RECORD_NOT_OBJECT');
    expect(err.position).to.include({ ordinal: 2, line: 2, column: 3 });
  }));

  it('a syntax error after a schema error: the schema error (earlier in the file) is reported', () => withDb(async (db) => {
    const err = await failure(importUsers({ source: tmpExport(exportText('{"model": oops}')), databaseUrl: db.url }));
    expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
    expect(err.position).to.include({ ordinal: 4 });
  }));

  it('a literal that is not JSON is a syntax error, not a reject', () => withDb(async (db) => {
    const rejects = tmpPath('userport-order-bad.jsonl');
    const err = await failure(importUsers({ source: tmpExport(`[${JSON.stringify(exhaustiveUser(1, 'a')[0])}, tru]`), databaseUrl: db.url, rejectsFile: rejects }));
    expect(err.code).to.equal('USERPORT_PARSE_JSON');
    expect(await db.count('auth_user')).to.equal(0);
  }));
});
