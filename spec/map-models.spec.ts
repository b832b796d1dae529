/** The model mapper (lib/map-models.ts) as a stage: validation, staging-column layout, rejects, and its stream compliance. */
import { expect } from 'chai';
import { Readable } from 'node:stream';
import { type FlowItem, type ScopedRecord } from '../lib/filter-users.js';
import { createModelMapper, mapRecord, stagedValues, type FilteredMarker, type StagedRow } from '../lib/map-models.js';
import { STAGE_COLUMNS, STAGE_INDEX } from '../lib/models.js';
import { copyLine } from './helpers/copy-oracle.js';
import { collect, collectError } from './helpers/streams.js';
import { streamCompliance } from './helpers/compliance.js';
import { user, useroption } from './helpers/exports.js';

const pos = { offset: 10, line: 2, column: 3, length: 50 };
const objects = <T>(items: T[]) => Readable.from(items, { objectMode: true });
/** The item as a staged row; fails the test when it is anything else. */
function asRow(item: StagedRow | FilteredMarker): StagedRow {
  if (item.kind !== 'row') throw new Error(`expected a row, got ${item.kind}`);
  return item;
}

describe('createModelMapper', () => {
  const scoped = (ordinal: number, rec: { model: string; pk: number; fields: Record<string, unknown> }, filtered = false): ScopedRecord =>
    ({ kind: 'record', ordinal, ...pos, model: rec.model, pk: rec.pk, fields: rec.fields, filtered });

  it('lays values out in staging-column order and lists unknown fields', () => {
    const row = asRow(mapRecord(scoped(1, user(7, 'alice', { extra: 1 }))));
    const at = (c: string) => row.values[STAGE_COLUMNS.findIndex(([n]) => n === c)];
    expect(row).to.include({ kind: 'row', model: 'sentry.user', code: 1, pk: 7 });
    expect(at('username')).to.equal('alice');
    expect(at('first_name')).to.equal('Name 7');
    expect(at('date_joined')).to.equal('2023-06-22T22:59:55.488Z');
    expect(at('user_pk')).to.equal(null);
    expect(row.unknownFields).to.deep.equal(['extra']);
    const opt = asRow(mapRecord(scoped(2, useroption(3, 7, 'tz', '"UTC"'))));
    expect(opt.values[STAGE_COLUMNS.findIndex(([n]) => n === 'opt_value')]).to.equal('"UTC"');
  });

  it('turns a filtered user into a filtered marker with its pk only, without validating it', () => {
    const item = mapRecord(scoped(1, { model: 'sentry.user', pk: 3, fields: { username: 5 } }, true));
    expect(item).to.deep.equal({ kind: 'filtered', ordinal: 1, ...pos, model: 'sentry.user', code: 1, pk: 3 });
    // The sink stages its pk alone, marked not kept, every data column NULL (and no new password).
    const cols = copyLine(5, item as FilteredMarker).replace(/\n$/, '').split('\t');
    expect(cols.slice(0, 8)).to.deep.equal(['5', '1', '1', '10', '2', '3', '3', 'f']);
    expect(cols.slice(8)).to.deep.equal([...STAGE_COLUMNS, 'unusable_password'].map(() => '\\N'));
  });

  it('stages a filtered user\'s username too (pre-23.9.1 rows name their user by it)', () => {
    const item = mapRecord(scoped(1, { model: 'sentry.user', pk: 3, fields: { username: 'bob\tb' } }, true));
    expect(item).to.include({ kind: 'filtered', pk: 3, username: 'bob\tb' });
    const cols = copyLine(5, item as FilteredMarker).replace(/\n$/, '').split('\t');
    expect(cols[7]).to.equal('f');
    expect(cols.slice(8, 10)).to.deep.equal(['bob\\tb', '\\N']);
    expect(cols.length).to.equal(8 + STAGE_COLUMNS.length + 1);
  });

  it('gives named access to a row: STAGE_INDEX and stagedValues() agree with the positional values', () => {
    const row = asRow(mapRecord(scoped(1, user(7, 'alice'))));
    expect(row.values[STAGE_INDEX.username]).to.equal('alice');
    expect(row.values[STAGE_INDEX.email]).to.equal('alice@example.com');
    const view = stagedValues(row);
    expect(Object.keys(view)).to.deep.equal(STAGE_COLUMNS.map(([c]) => c));
    expect(view.username).to.equal('alice');
    expect(view.user_pk).to.equal(null);
  });

  it('accepts real calendar dates only', async () => {
    for (const [d, ok] of [['2024-02-29T00:00:00Z', true], ['2023-02-29T00:00:00Z', false], ['2023-06-22T22:59:57.023Z', true],
      ['2023-06-22', false], ['0000-01-01T00:00:00Z', false], ['2023-13-01T00:00:00Z', false], ['2023-06-22T24:00:00Z', false]] as const) {
      const run = () => mapRecord(scoped(1, user(1, 'a', { date_joined: d })));
      if (ok) expect(run, d).not.to.throw(); else expect(run, d).to.throw(/date_joined/);
    }
  });

  it('quotes an option value it refuses with its control characters and line separators escaped', () => {
    // U+2028 and U+0085 pass JSON.stringify as they are: on a terminal they would start a line.
    let err: unknown;
    try {
      mapRecord(scoped(3, useroption(1, 7, 'timezone', JSON.stringify('Europe/Vi\u2028en\u0085na'))));
    } catch (e) {
      err = e;
    }
    expect((err as { code?: string }).code).to.equal('USERPORT_RECORD_OPTION_VALUE');
    const message = (err as Error).message;
    expect(message).to.contain('Europe/Vi\\u2028en\\u0085na');
    expect(message).to.not.match(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/);
  });

  it('passes markers through and fails (or rejects) invalid records with model, pk, ordinal and field', async () => {
    const skip: FlowItem = { kind: 'skip', ordinal: 1, ...pos, model: 'sentry.team' };
    const bad = scoped(2, user(9, 'a', { is_staff: 'yes' }));
    const out = await collect<FlowItem | StagedRow>(objects([skip, bad]), createModelMapper({ collectRejects: true }));
    expect(out.map((i) => i.kind)).to.deep.equal(['skip', 'reject']);
    const err = await collectError(objects([bad]), createModelMapper());
    expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
    expect(err.position).to.include({ model: 'sentry.user', pk: 9, ordinal: 2, field: 'is_staff', offset: 10 });
  });
});

// Stream compliance: exactly one 'finish' on success, exactly one 'error' on failure, destroy() and
// pipeline()/finished() (spec/helpers/compliance.ts).
const scopedUsers = (bad: boolean) => objects(Array.from({ length: bad ? 1 : 300 }, (_, i) => {
  const rec = user(i + 1, `u${i + 1}`, bad ? { is_active: 'yes' } : {});
  return { kind: 'record', ordinal: i + 1, ...pos, model: rec.model, pk: rec.pk, fields: rec.fields, filtered: false } satisfies ScopedRecord;
}));
streamCompliance('createModelMapper', () => createModelMapper(), () => scopedUsers(false), () => scopedUsers(true), 'USERPORT_RECORD_SCHEMA');
