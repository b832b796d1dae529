/**
 * Every export under Sentry's fixtures/backup imports or is refused as Sentry does (or as the
 * README's compatibility table says), both encodings of one option give one row, option values
 * are stored exactly, a pre-23.9.1 export lands every row on the right user, and findings say who.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { importUsers } from '../../lib/import.js';
import { canonicalOptionValue, fieldSource } from '../../lib/option-values.js';
import { failure, withDb, type TestDb } from '../helpers/db.js';
import { BACKUP, exhaustiveUser, requireFixtures, tmpExport, type Rec } from '../helpers/sentry-fixtures.js';
import { insertUser } from '../helpers/sentry-rows.js';
import { tmpPath } from '../helpers/setup.js';



async function options(db: TestDb): Promise<[string, string, unknown][]> {
  return (await db.knex.raw(`SELECT u.username, o.key, o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY o.id`))
    .rows.map((r: { username: string; key: string; value: unknown }) => [r.username, r.key, r.value]);
}

describe('Sentry fixtures/backup, file by file (../shared/fixtures/sentry-backup)', function () {
  before(function () { requireFixtures(this); });

  const USERS: Record<string, number> = {
    'app-user-with-empty-email.json': 1, 'duplicate-username-and-organization-slug.json': 2, 'fresh-install.json': 3,
    'user-pk-mapping.json': 1, 'user-with-maximum-privileges.json': 1, 'user-with-minimum-privileges.json': 1,
    'user-with-roles-no-superadmin.json': 1, 'user-with-superadmin-no-roles.json': 1,
    'alt/user-with-maximum-privileges.json': 1, 'alt/user-with-minimum-privileges.json': 1,
    'alt/user-with-roles-no-superadmin.json': 1, 'alt/user-with-superadmin-no-roles.json': 1,
    'single-option.json': 0, 'datetime-millis.json': 0, 'datetime-with-unzeroed-millis.json': 0,
    'datetime-with-zeroed-millis.json': 0, 'org-and-project.json': 0, 'single-integration.json': 0, '23.7.1.json': 4,
  };

  it('lists every export of the folder in this spec', function () {
    const files = [...fs.readdirSync(BACKUP).filter((f) => f.endsWith('.json')),
      ...fs.readdirSync(path.join(BACKUP, 'alt')).map((f) => `alt/${f}`)].sort();
    expect(files).to.deep.equal([...Object.keys(USERS), 'invalid-user.json', 'alt/invalid-user.json'].sort());
  });

  for (const [file, users] of Object.entries(USERS)) {
    it(`${file}: imports ${users} user(s), every one unclaimed and unprivileged, every user email with its Email row`, () => withDb(async (db) => {
      await importUsers({ source: path.join(BACKUP, file), databaseUrl: db.url });
      expect(await db.count('auth_user')).to.equal(users);
      expect(await db.count('auth_user', 'is_staff OR is_superuser OR is_managed OR NOT is_unclaimed')).to.equal(0);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(users);
      expect(await db.count('sentry_useremail ue', `ue.email <> '' AND NOT EXISTS (SELECT 1 FROM sentry_email e WHERE lower(e.email) = lower(ue.email))`)).to.equal(0);
    }));
  }

  for (const file of ['invalid-user.json', 'alt/invalid-user.json']) {
    it(`${file}: refused, as Sentry refuses it (a user without a username)`, () => withDb(async (db) => {
      const err = await failure(importUsers({ source: path.join(BACKUP, file), databaseUrl: db.url }));
      expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(err.position).to.include({ model: 'sentry.user', field: 'username', ordinal: 1 });
      expect(await db.count('auth_user')).to.equal(0);
    }));
  }

  describe('option value encodings (issue #12 item 3)', () => {
    for (const name of ['user-with-maximum-privileges', 'user-with-minimum-privileges', 'user-with-roles-no-superadmin', 'user-with-superadmin-no-roles']) {
      it(`${name}: both versions give the same sentry_useroption row, holding what current Sentry holds`, async () => {
        const rows: unknown[] = [];
        for (const f of [`${name}.json`, `alt/${name}.json`]) {
          await withDb(async (db) => {
            await importUsers({ source: path.join(BACKUP, f), databaseUrl: db.url });
            // The username differs between the two versions; the option must not.
            rows.push((await options(db)).map(([, key, value]) => [key, value]));
            expect(await db.count('sentry_useroption', `value = '"Europe/Vienna"'::jsonb`)).to.equal(1);
          });
        }
        expect(rows[0]).to.deep.equal(rows[1]);
      });
    }
  });

  describe('pre-23.9.1 exports: natural-key foreign keys (issue #12 item 6)', () => {
    it('23.7.1.json: every user email and option lands on the user its natural key names', () => withDb(async (db) => {
      const s = await importUsers({ source: path.join(BACKUP, '23.7.1.json'), databaseUrl: db.url });
      expect(s.models['sentry.useremail']).to.include({ read: 4, inserted: 4 });
      const ues = (await db.knex.raw(`SELECT u.username, e.email FROM sentry_useremail e JOIN auth_user u ON u.id = e.user_id ORDER BY 1, 2`)).rows;
      // Each user's own address, and nothing on anyone else.
      for (const r of ues as { username: string; email: string }[]) {
        if (r.email !== '') expect(r.email, r.username).to.equal(r.username);
      }
      expect(ues.map((r: { username: string }) => r.username)).to.have.members([
        '0be2ff4bec0b4be3ba5ed94d38e79d85@example.com', 'admin@localhost', 'test_app-4d6ae6ac-c652-4de0-bca0-a379430c0151', 'user@example.com']);
      expect(await options(db)).to.deep.equal([['user@example.com', 'timezone', 'Europe/Vienna']]);
    }));

    it('a natural key that names a user absent from the export drops the row, naming the key', () => withDb(async (db) => {
      const findings = tmpPath('userport-nk.json');
      const records: Rec[] = [...exhaustiveUser(1, 'alice').slice(0, 1),
        { model: 'sentry.useremail', pk: 7, fields: { user: ['ghost'], email: 'ghost@example.com' } }];
      const s = await importUsers({ source: tmpExport(records), databaseUrl: db.url, findingsFile: findings });
      expect(s.models['sentry.useremail']!.dropped).to.deep.equal({ 'user not in the export': 1 });
      const f = JSON.parse(fs.readFileSync(findings, 'utf8')) as { pk: number; reason: string }[];
      expect(f.find((x) => x.pk === 7)!.reason).to.include('["ghost"]');
    }));

    it('a natural key naming two users of the export is refused: USERPORT_RECORD_LEGACY_FORMAT, nothing imported', () => withDb(async (db) => {
      // A line separator in the name: the message quotes it escaped (JSON.stringify leaves it as it is).
      const records: Rec[] = [exhaustiveUser(1, 'tw\u2028in')[0]!, exhaustiveUser(2, 'tw\u2028in')[0]!,
        { model: 'sentry.useroption', pk: 3, fields: { user: ['tw\u2028in'], key: 'timezone', value: '"UTC"' } }];
      const err = await failure(importUsers({ source: tmpExport(records), databaseUrl: db.url }));
      expect(err.code).to.equal('USERPORT_RECORD_LEGACY_FORMAT');
      expect(err.message).to.contain('by username "tw\\u2028in"');
      expect(err.message).to.not.match(/[\u2028\u2029\u0000-\u001f]/);
      expect(err.position).to.include({ model: 'sentry.useroption', pk: 3, ordinal: 3, field: 'user' });
      expect(await db.count('auth_user')).to.equal(0);
    }));

    it('a natural key of a user removed by the filter says "user filtered out"', () => withDb(async (db) => {
      const records: Rec[] = [exhaustiveUser(1, 'alice')[0]!, exhaustiveUser(2, 'bob')[0]!,
        { model: 'sentry.useremail', pk: 3, fields: { user: ['bob'], email: 'bob2@example.com' } }];
      const s = await importUsers({ source: tmpExport(records), databaseUrl: db.url, filterUsernames: ['alice'] });
      expect(s.models['sentry.useremail']).to.include({ filtered: 1 });
    }));
  });
});

describe('option values stored exactly (issue #9 item 6)', () => {
  const records = (value: unknown): unknown[] => [exhaustiveUser(1, 'alice')[0]!,
    { model: 'sentry.useroption', pk: 1, fields: { user: 1, project_id: null, organization_id: null, key: 'issues:defaults', value } }];

  it('keeps integers beyond 2^53 and exponents beyond a double, in the raw encoding', () => withDb(async (db) => {
    const text = JSON.stringify(records('@')).replace('"@"', '[123456789012345678901234567890, 1e400, 0.1000000000000000055511151231257827]');
    await importUsers({ source: tmpExport(text), databaseUrl: db.url });
    expect(await db.count('sentry_useroption', `value = '[123456789012345678901234567890, 1e400, 0.1000000000000000055511151231257827]'::jsonb`)).to.equal(1);
  }));

  it('gives the same row for the legacy JSON-text encoding of the same value', () => withDb(async (db) => {
    await importUsers({ source: tmpExport(records('[123456789012345678901234567890, 1e400]')), databaseUrl: db.url });
    expect(await db.count('sentry_useroption', `value = '[123456789012345678901234567890, 1e400]'::jsonb`)).to.equal(1);
  }));

  it('refuses a number PostgreSQL cannot hold, with its code and position, instead of changing it', () => withDb(async (db) => {
    const text = JSON.stringify(records('@')).replace('"@"', '1e999999');
    const err = await failure(importUsers({ source: tmpExport(text), databaseUrl: db.url }));
    expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
    expect(err.position).to.include({ model: 'sentry.useroption', pk: 1, field: 'value', ordinal: 2 });
  }));

  it('decodes the legacy encoding once, and only for JSON text of a string, array or object', () => {
    const c = (v: unknown) => canonicalOptionValue(v, () => undefined);
    expect(c('"Europe/Vienna"')).to.deep.include({ text: '"Europe/Vienna"', value: 'Europe/Vienna', legacy: true });
    expect(c('Europe/Vienna')).to.deep.include({ text: '"Europe/Vienna"', value: 'Europe/Vienna', legacy: false });
    expect(c('-1')).to.deep.include({ text: '"-1"', value: '-1', legacy: false });
    expect(c('true')).to.deep.include({ value: 'true', legacy: false });
    expect(c('"\\"twice\\""')).to.deep.include({ value: '"twice"', legacy: true });
    expect(c(true)).to.deep.include({ text: 'true', value: true });
  });

  it('cuts the last "value" member of "fields" from the record text', () => {
    expect(fieldSource('{"model":"m","fields":{"value":1,"key":"a\\"}","value": [1e400, {"x":"]"}] },"pk":1}', 'value')).to.equal('[1e400, {"x":"]"}]');
    expect(fieldSource('{"fields":{"key":"k"}}', 'value')).to.equal(undefined);
  });
});

describe('findings say who (issue #12 item 8)', () => {
  it('a dropped row names the missing user pk; a merged record names the user it merged into', () => withDb(async (db) => {
    const existing = await insertUser(db.knex, { password: 'x', username: 'bob' });
    const findings = tmpPath('userport-who.json');
    const records: Rec[] = [exhaustiveUser(1, 'alice')[0]!, exhaustiveUser(2, 'bob')[0]!,
      { model: 'sentry.useremail', pk: 5, fields: { user: 99, email: 'ghost@example.com' } },
      { model: 'sentry.useremail', pk: 6, fields: { user: 2, email: 'bob@example.com' } }];
    await importUsers({ source: tmpExport(records), databaseUrl: db.url, mergeUsers: true, findingsFile: findings });
    const f = JSON.parse(fs.readFileSync(findings, 'utf8')) as { model: string; pk: number; reason: string }[];
    const by = (model: string, pk: number) => f.find((x) => x.model === model && x.pk === pk)!.reason;
    expect(by('sentry.useremail', 5)).to.include('user pk 99');
    expect(by('sentry.user', 2)).to.include(`user id ${existing}`);
    expect(by('sentry.useremail', 6)).to.include('user pk 2').and.include(`user id ${existing}`);
  }));
});

describe('rows of a rejected user say so (issue #12 item 8)', () => {
  it('with --rejects-file, the user email and option of a rejected user are dropped as "user rejected", naming its pk', () => withDb(async (db) => {
    const findings = tmpPath('userport-rejected.json');
    const rejects = tmpPath('userport-rejected.jsonl');
    const records: Rec[] = [exhaustiveUser(1, 'alice')[0]!, { model: 'sentry.user', pk: 2, fields: { username: 'bob', is_active: 'yes' } },
      { model: 'sentry.useremail', pk: 3, fields: { user: 2, email: 'bob@example.com' } },
      { model: 'sentry.useroption', pk: 4, fields: { user: 2, key: 'timezone', value: 'UTC' } },
      { model: 'sentry.useremail', pk: 5, fields: { user: 77, email: 'ghost@example.com' } }];
    const s = await importUsers({ source: tmpExport(records), databaseUrl: db.url, rejectsFile: rejects, findingsFile: findings });
    expect(s.models['sentry.user']).to.include({ read: 2, inserted: 1, rejected: 1, filtered: 0 });
    expect(s.models['sentry.useremail']!.dropped).to.deep.equal({ 'user rejected (see the rejects file)': 1, 'user not in the export': 1 });
    expect(s.models['sentry.useroption']!.dropped).to.deep.equal({ 'user rejected (see the rejects file)': 1 });
    const f = JSON.parse(fs.readFileSync(findings, 'utf8')) as { model: string; pk: number; reason: string }[];
    expect(f.find((x) => x.model === 'sentry.useremail' && x.pk === 3)!.reason).to.include('rejected').and.include('user pk 2');
    expect(f.find((x) => x.model === 'sentry.useremail' && x.pk === 5)!.reason).to.include('not in the export').and.include('user pk 77');
    expect(await db.count('auth_user')).to.equal(1);
  }));
});
