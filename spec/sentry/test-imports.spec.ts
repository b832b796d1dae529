/**
 * Sentry's own user-scope import tests (tests/sentry/backup/test_imports.py), one spec each,
 * named after the Sentry test, on the real exports of Sentry's repository
 * (../shared/fixtures/sentry-backup). Where Sentry builds its input in memory (four fixtures
 * combined, an existing user seeded first, 40 and 41 users), the spec builds it here. Counts
 * include the rows Sentry's signal receivers add (a UserEmail per new User, an Email per new
 * UserEmail).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { createLocalKeyUnwrapper } from '../../lib/crypto/unwrapper.js';
import { encryptExport } from '../../lib/encrypt.js';
import { importUsers } from '../../lib/import.js';
import { failure, freshDatabase, withDb, type TestDb } from '../helpers/db.js';
import { BACKUP, exhaustiveUser, fixture, requireFixtures, seedUser, tmpExport, type Rec } from '../helpers/sentry-fixtures.js';

const FOUR = ['user-with-maximum-privileges.json', 'user-with-minimum-privileges.json',
  'user-with-roles-no-superadmin.json', 'user-with-superadmin-no-roles.json'];

describe('Sentry test_imports.py, user scope (../shared/fixtures/sentry-backup)', () => {
  // Only these read Sentry's fixtures; the tests whose input Sentry builds in memory always run.
  describe('SanitizationTests', function () {
    before(function () { requireFixtures(this); });
    for (const variant of ['', 'alt/']) {
      it(`test_users_sanitized_in_user_scope (the four user fixtures combined${variant ? ', older encodings in alt/' : ''})`, () => withDb(async (db) => {
        const records = FOUR.flatMap((f) => fixture(variant + f));
        await importUsers({ source: tmpExport(records), databaseUrl: db.url });
        expect(await db.count('auth_user')).to.equal(4);
        expect(await db.count('auth_user', 'NOT is_managed AND NOT is_staff AND NOT is_superuser')).to.equal(4);
        // Every user except max_user shares an email (in the older alt/ exports max_user has that
        // address too).
        expect(await db.count('sentry_email')).to.equal(variant ? 1 : 2);
        expect(await db.count('sentry_useremail')).to.equal(4);
        expect(await db.count('sentry_useremail', 'is_verified')).to.equal(0);
        expect(await db.count('sentry_useremail', `date_hash_added < '2023-07-01'`)).to.equal(0);
        expect(await db.count('sentry_useremail', `validation_hash = 'mCnWesSVvYQcq7qXQ36AZHwosAd6cghE'`)).to.equal(0);
        expect(await db.count('auth_user', 'is_unclaimed')).to.equal(4);
        expect(await db.count('sentry_lostpasswordhash')).to.equal(4);
      }));
    }

    it('test_generate_suffix_for_already_taken_username (min_user seeded, the fixture imported twice)', () => withDb(async (db) => {
      await seedUser(db, 'min_user', 'seeded@example.com');
      const file = tmpExport(fixture('user-with-minimum-privileges.json'));
      await importUsers({ source: file, databaseUrl: db.url });
      // userport refuses a file already imported (README, "Importing a file twice") unless asked.
      expect((await importUsers({ source: file, databaseUrl: db.url })).state).to.equal('already-done');
      await importUsers({ source: file, databaseUrl: db.url, allowReimport: true });
      expect(await db.count('auth_user')).to.equal(3);
      expect(await db.count('(SELECT DISTINCT username FROM auth_user WHERE username LIKE \'%min_user%\') d')).to.equal(3);
      expect(await db.count('auth_user', `lower(username) = 'min_user'`)).to.equal(1);
      expect(await db.count('auth_user', `username LIKE 'min\\_user-%'`)).to.equal(2);
    }));

    it('test_bad_invalid_user (a username of 129 characters)', () => withDb(async (db) => {
      const records = fixture('user-with-minimum-privileges.json');
      for (const r of records) if (r.model === 'sentry.user') r.fields.username = 'x'.repeat(129);
      const err = await failure(importUsers({ source: tmpExport(records), databaseUrl: db.url }));
      expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(err.position).to.include({ model: 'sentry.user', field: 'username' });
      expect(await db.count('auth_user')).to.equal(0);
    }));

    it('test_good_multiple_useremails_per_user_in_user_scope', () => withDb(async (db) => {
      const records = fixture('user-with-minimum-privileges.json');
      records.push(
        { model: 'sentry.useremail', pk: 100, fields: { user: 2, email: 'second@example.com', validation_hash: '7jvwev0oc8sFyEyEwfvDAwxidtGzpAov',
          date_hash_added: '2023-06-22T22:59:56.521Z', is_verified: true } },
        { model: 'sentry.useremail', pk: 101, fields: { user: 2, email: 'third@example.com', validation_hash: '',
          date_hash_added: '2023-06-22T22:59:57.521Z', is_verified: false } },
      );
      await importUsers({ source: tmpExport(records), databaseUrl: db.url });
      expect(await db.count('sentry_useremail')).to.equal(3);
      expect(await db.count('(SELECT DISTINCT user_id FROM sentry_useremail) d')).to.equal(1);
      for (const e of ['testing@example.com', 'second@example.com', 'third@example.com']) {
        expect(await db.count('sentry_useremail', `email = '${e}'`)).to.equal(1);
        // receivers/email.py: every new UserEmail gets an Email row.
        expect(await db.count('sentry_email', `email = '${e}'`)).to.equal(1);
      }
      expect(await db.count('sentry_useremail', `validation_hash = ''`)).to.equal(0);
      expect(await db.count('sentry_useremail', 'is_verified')).to.equal(0);
    }));

    // Sentry's ChoiceField: exact names only (Python's ZoneInfo refuses "europe/vienna"), and never null.
    for (const value of ['"MiddleEarth/Gondor"', 'MiddleEarth/Gondor', '"europe/vienna"', null]) {
      it(`test_bad_invalid_user_option (timezone ${JSON.stringify(value)})`, () => withDb(async (db) => {
        const records = fixture('user-with-minimum-privileges.json');
        for (const r of records) if (r.model === 'sentry.useroption' && r.fields.key === 'timezone') r.fields.value = value;
        const err = await failure(importUsers({ source: tmpExport(records), databaseUrl: db.url }));
        expect(err.code).to.equal('USERPORT_RECORD_OPTION_VALUE');
        expect(err.position).to.include({ model: 'sentry.useroption', pk: 2, field: 'value' });
        // A wrong letter case is told the name Sentry takes.
        if (value === '"europe/vienna"') expect(err.message).to.match(/is not allowed for option timezone \(Sentry takes zone names as written: "Europe\/Vienna"\)/);
        else expect(err.message).not.to.include('Sentry takes');
        expect(await db.count('auth_user')).to.equal(0);
        expect(await db.count('sentry_useroption')).to.equal(0);
      }));
    }

    it('beyond Sentry: with rejectsFile, a bad option value is rejected with its code and the rest imported', () => withDb(async (db) => {
      const records = fixture('user-with-minimum-privileges.json');
      for (const r of records) if (r.model === 'sentry.useroption' && r.fields.key === 'timezone') r.fields.value = 'MiddleEarth/Gondor';
      const rejectsFile = tmpExport('');
      const summary = await importUsers({ source: tmpExport(records), databaseUrl: db.url, rejectsFile });
      const lines = fs.readFileSync(rejectsFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { model: string; pk: number; code: string });
      expect(lines.map((l) => [l.model, l.pk, l.code])).to.deep.equal([['sentry.useroption', 2, 'USERPORT_RECORD_OPTION_VALUE']]);
      expect(summary.models['sentry.useroption']!.rejected).to.equal(1);
      expect(await db.count('auth_user')).to.equal(1);
      expect(await db.count('sentry_useroption')).to.equal(0);
    }));
  });

  describe('DecryptionTests', function () {
    before(function () { requireFixtures(this); });
    // Sentry encrypts fresh-install.json to a local key pair, imports it with --decrypt-with in
    // user scope, and expects what the plain file gives. The key pair is the spec's demo fixture.
    const KEY = path.resolve('spec/fixtures/crypto/fixture-key.pem');
    const PUB = path.resolve('spec/fixtures/crypto/fixture-key.pub');
    const snapshot = async (db: TestDb) => ({
      users: (await db.knex.raw(`SELECT username, email, is_unclaimed, is_staff, is_superuser FROM auth_user ORDER BY username`)).rows,
      emails: (await db.knex.raw(`SELECT lower(email) AS email FROM sentry_email ORDER BY 1`)).rows,
      userEmails: (await db.knex.raw(`SELECT u.username, e.email, e.is_verified FROM sentry_useremail e JOIN auth_user u ON u.id = e.user_id ORDER BY 1, 2`)).rows,
      options: (await db.knex.raw(`SELECT u.username, o.key, o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY 1, 2`)).rows,
      lostPasswordHashes: await db.count('sentry_lostpasswordhash'),
    });
    it('test_user_import_decryption (fresh-install.json encrypted to a local key, imported with it, equals the plain import)', async () => {
      const plainFile = path.join(BACKUP, 'fresh-install.json');
      const tar = tmpExport('');
      const out = fs.createWriteStream(tar);
      await encryptExport({ path: plainFile }, out, { publicKeyPem: fs.readFileSync(PUB) });
      await new Promise((resolve) => out.close(resolve));
      const plain = await freshDatabase();
      const encrypted = await freshDatabase();
      try {
        await importUsers({ source: plainFile, databaseUrl: plain.url });
        await importUsers({ source: tar, databaseUrl: encrypted.url, decrypt: createLocalKeyUnwrapper({ privateKeyPath: KEY }) });
        const expected = await snapshot(plain);
        // fresh-install.json: three superusers, none of them staff or superuser once imported.
        expect(expected.users).to.have.length(3);
        expect(expected.users.every((u: { is_unclaimed: boolean; is_staff: boolean; is_superuser: boolean }) => u.is_unclaimed && !u.is_staff && !u.is_superuser)).to.equal(true);
        expect(expected.lostPasswordHashes).to.equal(3);
        expect(await snapshot(encrypted)).to.deep.equal(expected);
      } finally {
        await plain.close();
        await encrypted.close();
      }
    });
  });

  describe('SignalingTests', () => {
    it('test_import_signaling_user (a User alone gets its UserEmail and Email)', () => withDb(async (db) => {
      await importUsers({ source: tmpExport([exhaustiveUser(1, 'user', 'me@example.com')[0]]), databaseUrl: db.url });
      expect(await db.count('auth_user')).to.equal(1);
      expect(await db.count('auth_user', `email = 'me@example.com'`)).to.equal(1);
      expect(await db.count('sentry_useremail')).to.equal(1);
      expect(await db.count('sentry_useremail', `email = 'me@example.com'`)).to.equal(1);
      expect(await db.count('sentry_email')).to.equal(1);
      expect(await db.count('sentry_email', `email = 'me@example.com'`)).to.equal(1);
    }));
  });

  describe('FilterTests', () => {
    it('test_import_filter_users', () => withDb(async (db) => {
      const records = [...exhaustiveUser(1, 'user_1'), ...exhaustiveUser(2, 'user_2')];
      await importUsers({ source: tmpExport(records), databaseUrl: db.url, filterUsernames: ['user_2'] });
      expect(await db.count('auth_user')).to.equal(1);
      expect(await db.count('sentry_useremail')).to.equal(1);
      expect(await db.count('sentry_email')).to.equal(1);
      expect(await db.count('auth_user', `username = 'user_1'`)).to.equal(0);
      expect(await db.count('auth_user', `username = 'user_2'`)).to.equal(1);
    }));

    it('test_export_filter_users_shared_email', () => withDb(async (db) => {
      const records = [...exhaustiveUser(1, 'user_1', 'a@example.com'), ...exhaustiveUser(2, 'user_2', 'b@example.com'),
        ...exhaustiveUser(3, 'user_3', 'a@example.com'), ...exhaustiveUser(4, 'user_4', 'b@example.com')];
      await importUsers({ source: tmpExport(records), databaseUrl: db.url, filterUsernames: ['user_1', 'user_2', 'user_3'] });
      expect(await db.count('auth_user')).to.equal(3);
      expect(await db.count('sentry_useremail')).to.equal(3);
      expect(await db.count('sentry_email')).to.equal(2);
      expect(await db.count('auth_user', `username = 'user_4'`)).to.equal(0);
    }));

    it('test_import_filter_users_empty (an empty set of names, through the library)', () => withDb(async (db) => {
      const records = [...exhaustiveUser(1, 'user_1'), ...exhaustiveUser(2, 'user_2')];
      await importUsers({ source: tmpExport(records), databaseUrl: db.url, filterUsernames: [] });
      expect(await db.count('auth_user')).to.equal(0);
      expect(await db.count('sentry_useremail')).to.equal(0);
      expect(await db.count('sentry_email')).to.equal(0);
    }));
  });

  describe('CollisionTests', () => {
    it('test_colliding_user_with_merging_enabled_in_user_scope', () => withDb(async (db) => {
      await seedUser(db, 'owner', 'existing@example.com');
      const s = await importUsers({ source: tmpExport(exhaustiveUser(1, 'owner', 'importing@example.com')), databaseUrl: db.url, mergeUsers: true });
      expect(s.models['sentry.user']).to.include({ inserted: 0, merged: 1 });
      expect(await db.count('auth_user')).to.equal(1);
      expect(await db.count('sentry_useremail')).to.equal(1);
      expect(await db.count('sentry_email')).to.equal(2);
      expect(await db.count('auth_user', `lower(username) = 'owner'`)).to.equal(1);
      expect(await db.count('auth_user', `username LIKE 'owner-%'`)).to.equal(0);
      expect(await db.count('auth_user', 'is_unclaimed')).to.equal(0);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(0);
      expect(await db.count('sentry_useremail', `email LIKE 'existing@%'`)).to.equal(1);
      expect(await db.count('sentry_useremail', `email LIKE 'importing@%'`)).to.equal(0);
    }));

    it('test_colliding_user_with_merging_disabled_in_user_scope', () => withDb(async (db) => {
      await seedUser(db, 'owner', 'existing@example.com');
      const s = await importUsers({ source: tmpExport(exhaustiveUser(1, 'owner', 'importing@example.com')), databaseUrl: db.url });
      expect(s.models['sentry.user']).to.include({ inserted: 1, renamed: 1, merged: 0 });
      expect(await db.count('auth_user')).to.equal(2);
      expect(await db.count('sentry_useremail')).to.equal(2);
      expect(await db.count('sentry_email')).to.equal(2);
      expect(await db.count('auth_user', `username = 'owner'`)).to.equal(1);
      expect(await db.count('auth_user', `username LIKE 'owner-%'`)).to.equal(1);
      expect(await db.count('auth_user', 'is_unclaimed')).to.equal(1);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(1);
      expect(await db.count('sentry_useremail', `email LIKE 'existing@%'`)).to.equal(1);
      expect(await db.count('sentry_useremail', `email LIKE 'importing@%'`)).to.equal(1);
    }));
  });

  describe('DatabaseResetTests', () => {
    it('test_persist_existing_models_in_user_scope (an empty export keeps existing users)', () => withDb(async (db) => {
      for (const u of ['admin', 'owner', 'user']) await seedUser(db, u, `${u}@example.com`);
      await importUsers({ source: tmpExport([]), databaseUrl: db.url });
      expect(await db.count('auth_user')).to.equal(3);
    }));
  });

  describe('BatchingTests', () => {
    for (const n of [40, 41]) {
      it(`${n} generated users, one UserEmail and one raw-encoded option each, all imported (Sentry batches of 20)`, () => withDb(async (db) => {
        const records: Rec[] = [];
        for (let i = 1; i <= n; i++) {
          records.push(exhaustiveUser(i, `user-${i}`)[0]!,
            { model: 'sentry.useremail', pk: i, fields: { user: i, email: `user-${i}@example.com`, validation_hash: '', is_verified: false } },
            { model: 'sentry.useroption', pk: i, fields: { user: i, project_id: null, organization_id: null, key: 'issue:defaults', value: `user-${i}` } });
        }
        const s = await importUsers({ source: tmpExport(records), databaseUrl: db.url });
        expect(s.models['sentry.user']!.inserted).to.equal(n);
        expect(await db.count('auth_user')).to.equal(n);
        expect(await db.count('sentry_useremail')).to.equal(n);
        expect(await db.count('sentry_email')).to.equal(n);
        expect(await db.count('sentry_useroption')).to.equal(n);
        expect(await db.count('sentry_useroption o JOIN auth_user u ON u.id = o.user_id', `o.value = to_jsonb(u.username)`)).to.equal(n);
      }));
    }
  });
});
