/**
 * StagedFacts: what the sink saw while staging, which lets the merge skip scans that cannot find
 * anything (issue #11). Each skip must be exact: whenever a scan could find something, it runs.
 */
import { expect } from 'chai';
import { StagedFacts } from '../lib/staged-facts.js';
import type { FilteredMarker, StagedRow } from '../lib/map-models.js';
import { modelInfo, REJECTED_USER_CODE, STAGE_COLUMNS, STAGE_INDEX, type StageValue } from '../lib/models.js';
import { importUsers } from '../lib/import.js';
import { UserportError } from '../lib/errors.js';
import { freshDatabase } from './helpers/db.js';
import { user, useremail, useroption, writeExport } from './helpers/exports.js';

const code = (model: string) => modelInfo(model)!.mapping.code;
const at = { ordinal: 1, offset: 0, line: 1, column: 1, length: 1 };

function row(model: string, pk: number, set: Partial<Record<(typeof STAGE_COLUMNS)[number][0], StageValue>> = {}): StagedRow {
  const values: StageValue[] = STAGE_COLUMNS.map(() => null);
  for (const [k, v] of Object.entries(set)) values[STAGE_INDEX[k as keyof typeof STAGE_INDEX]] = v as StageValue;
  return { kind: 'row', ...at, model, code: code(model), pk, values } as StagedRow;
}

describe('StagedFacts', () => {
  it('pks that grow within every model, models interleaved: increasing', () => {
    const f = new StagedFacts();
    for (const r of [row('sentry.user', 1, { username: 'a' }), row('sentry.email', 1), row('sentry.user', 2, { username: 'b' }), row('sentry.email', 7), row('sentry.user', 10, { username: 'c' })]) f.note(r);
    expect([f.pksIncreasing, f.rejectedUsers, f.naturalKeys]).to.deep.equal([true, false, false]);
  });

  it('a pk not above the last one of its model: not increasing (a repeat, or merely out of order)', () => {
    for (const pks of [[1, 2, 2], [3, 1], [5, 6, 4]]) {
      const f = new StagedFacts();
      for (const pk of pks) f.note(row('sentry.useroption', pk, { user_pk: 1 }));
      expect(f.pksIncreasing, String(pks)).to.equal(false);
    }
  });

  it('a filtered user counts like a staged user; a rejected user\'s pk (code 5) is a fact of its own', () => {
    const f = new StagedFacts();
    f.note(row('sentry.user', 4, { username: 'a' }));
    const filtered: FilteredMarker = { kind: 'filtered', ...at, model: 'sentry.user', code: code('sentry.user'), pk: 4 };
    f.note(filtered);
    expect(f.pksIncreasing).to.equal(false);
    const g = new StagedFacts();
    g.note({ kind: 'filtered', ...at, model: 'sentry.user', code: REJECTED_USER_CODE, pk: 9 });
    expect([g.pksIncreasing, g.rejectedUsers]).to.deep.equal([true, true]);
  });

  it('a user email or option that names its user by username is a natural key; a user is not', () => {
    const f = new StagedFacts();
    f.note(row('sentry.user', 1, { username: 'alice' }));
    f.note(row('sentry.useremail', 1, { user_pk: 1, email: 'a@example.com' }));
    expect(f.naturalKeys).to.equal(false);
    f.note(row('sentry.useroption', 1, { username: 'alice', opt_key: 'theme' }));
    expect(f.naturalKeys).to.equal(true);
  });

  it('users first (kept, filtered or rejected), then other models: leading users counted, none after; a user after another model is noted', () => {
    const f = new StagedFacts();
    expect([f.usersOnly, f.leadingUsers, f.usersAfterOthers]).to.deep.equal([true, 0, false]);
    f.note(row('sentry.user', 1, { username: 'a' }));
    f.note({ kind: 'filtered', ...at, model: 'sentry.user', code: code('sentry.user'), pk: 2 });
    f.note({ kind: 'filtered', ...at, model: 'sentry.user', code: REJECTED_USER_CODE, pk: 3 });
    expect([f.usersOnly, f.leadingUsers, f.usersAfterOthers]).to.deep.equal([true, 3, false]);
    f.note(row('sentry.email', 1, { email: 'a@example.com' }));
    f.note(row('sentry.useroption', 1, { user_pk: 1, opt_key: 'theme' }));
    expect([f.usersOnly, f.leadingUsers, f.usersAfterOthers]).to.deep.equal([false, 3, false]);
    f.note(row('sentry.user', 4, { username: 'd' }));
    expect([f.usersOnly, f.leadingUsers, f.usersAfterOthers]).to.deep.equal([false, 3, true]);
    const g = new StagedFacts();
    g.note(row('sentry.email', 1, { email: 'a@example.com' }));
    g.note(row('sentry.user', 1, { username: 'a' }));
    expect([g.usersOnly, g.leadingUsers, g.usersAfterOthers]).to.deep.equal([false, 0, true]);
  });

  describe('the import still finds what the skipped scans would', function () {
    this.timeout(60000);

    it('a repeated pk out of order, a legacy natural key and a rejected user, each in an otherwise increasing file', async () => {
      const db = await freshDatabase();
      try {
        const dup = writeExport([user(1, 'ann'), user(2, 'bob'), useroption(1, 1, 'theme', 'dark'), user(1, 'cyd')]);
        const err = await importUsers({ source: dup, databaseUrl: db.url }).then(() => undefined, (e: unknown) => e);
        expect((err as UserportError).code).to.equal('USERPORT_RECORD_DUPLICATE_PK');

        const legacy = writeExport([user(1, 'ann'), { model: 'sentry.useroption', pk: 1, fields: { user: ['ann'], project_id: null, organization_id: null, key: 'theme', value: 'dark' } }]);
        const s = await importUsers({ source: legacy, databaseUrl: db.url });
        expect(s.models['sentry.useroption']!.inserted).to.equal(1);

        const rejected = writeExport([user(5, 'zed', { username: null }), useremail(1, 5, 'zed@example.com')]);
        const r = await importUsers({ source: rejected, databaseUrl: db.url, rejectsFile: `${rejected}.rejects` });
        expect(r.models['sentry.useremail']!.dropped).to.deep.equal({ 'user rejected (see the rejects file)': 1 });
      } finally {
        await db.close();
      }
    });
  });
});
