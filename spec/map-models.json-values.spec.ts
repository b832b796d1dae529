/**
 * mapRecord's check of JSON values (option values): every key and string, at any depth, still
 * refused when PostgreSQL could not store it, now that the walk reads keys instead of building
 * Object.entries pairs (issue #25 item 3: an 88k-key value made 6 MB of pairs per record).
 */
import { expect } from 'chai';
import type { ScopedRecord } from '../lib/filter-users.js';
import { mapRecord, type StagedRow } from '../lib/map-models.js';
import { STAGE_INDEX } from '../lib/models.js';
import { RecordError } from '../lib/errors.js';
import { useroption } from './helpers/exports.js';

const pos = { offset: 10, line: 2, column: 3, length: 50 };

function option(value: unknown): ScopedRecord {
  const rec = useroption(3, 7, 'custom', value);
  return { kind: 'record', ordinal: 1, ...pos, model: rec.model, pk: rec.pk, fields: rec.fields, filtered: false };
}

describe('mapRecord on JSON option values', () => {
  it('refuses a NUL or a lone surrogate in a key or a string at any depth, naming the field', () => {
    const bad = [{ 'a\u0000': 1 }, { a: { b: [{ c: 'x\u0000' }] } }, { ok: 1, deep: { '\ud800': true } }, [{ a: ['\udc00'] }]];
    for (const value of bad) {
      const run = () => mapRecord(option(value));
      expect(run, JSON.stringify(value)).to.throw(RecordError, /field value/);
    }
  });

  it('stores a large object value as its JSON text, a "__proto__" key included', () => {
    const value = JSON.parse(`{${Array.from({ length: 88000 }, (_, i) => `"k${i}":${i}`).join(',')},"__proto__":{"x":"y"}}`) as Record<string, unknown>;
    const row = mapRecord(option(value)) as StagedRow;
    expect(row.kind).to.equal('row');
    expect(row.values[STAGE_INDEX.opt_value]).to.equal(JSON.stringify(value));
    expect(JSON.parse(row.values[STAGE_INDEX.opt_value] as string)).to.have.property('__proto__').that.deep.equals({ x: 'y' });
  });
});
