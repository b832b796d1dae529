/**
 * Sentry's tests of the config and global scopes (tests/sentry/backup/test_imports.py and
 * test_exports.py; reference `sentry-config-global.md` section 4), one spec each, named after the
 * Sentry test, on the real exports of Sentry's repository. userport never wipes: where Sentry's
 * test clears the database first, the spec starts from an empty one (a fresh `withDb`). Counts
 * include the rows Sentry's signal receivers add (a UserEmail per new User, an Email per new
 * UserEmail).
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { createLocalKeyUnwrapper } from '../../lib/crypto/unwrapper.js';
import { encryptExport } from '../../lib/encrypt.js';
import { importUsers } from '../../lib/import.js';
import { failure, withDb, type TestDb } from '../helpers/db.js';
import { BACKUP, fixture, requireFixtures, tmpExport, type Rec } from '../helpers/sentry-fixtures.js';

/** The spec's demo key pair (spec/fixtures/crypto), as Sentry's DecryptionTests use a local one. */
const KEY = path.resolve('spec/fixtures/crypto/fixture-key.pem');
const PUB = path.resolve('spec/fixtures/crypto/fixture-key.pub');

const FOUR = ['user-with-maximum-privileges.json', 'user-with-minimum-privileges.json',
  'user-with-roles-no-superadmin.json', 'user-with-superadmin-no-roles.json'];

/** Sentry's `generate_tmp_users_json_file`: the four fixtures, sorted by model order then pk. */
function fourUsers(): Rec[] {
  const order = ['sentry.user', 'sentry.userip', 'sentry.userpermission', 'sentry.userrole', 'sentry.userroleuser', 'sentry.email',
    'sentry.authenticator', 'sentry.useroption', 'sentry.useremail'];
  return FOUR.flatMap((f) => fixture(f)).sort((a, b) => order.indexOf(a.model) - order.indexOf(b.model) || a.pk - b.pk);
}

/** A user of `create_exhaustive_instance` as exported: staff, superuser, admin permission, a role and a TOTP. */
function adminExport(username: string, email: string, opts: { pk?: number; role?: string } = {}): Rec[] {
  const pk = opts.pk ?? 1;
  return [
    { model: 'sentry.user', pk, fields: {
      password: 'pbkdf2_sha256$600000$abc$def=', last_login: null, username, name: '', email, is_staff: true, is_active: true,
      is_superuser: true, is_managed: false, is_sentry_app: null, is_password_expired: false, is_unclaimed: false,
      last_password_change: '2024-01-01T00:00:00.000Z', flags: '0', session_nonce: null, date_joined: '2024-01-01T00:00:00.000Z',
      last_active: '2024-01-01T00:00:00.000Z', avatar_type: 0, avatar_url: null } },
    { model: 'sentry.userpermission', pk, fields: { user: pk, permission: 'users.admin' } },
    { model: 'sentry.authenticator', pk, fields: { user: pk, created_at: '2024-01-01T00:00:00.000Z', last_used_at: null, type: 1,
      config: JSON.stringify({ secret: 'JBSWY3DPEHPK3PXP' }) } },
    { model: 'sentry.useremail', pk, fields: { user: pk, email, validation_hash: 'hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh',
      date_hash_added: '2024-01-01T00:00:00.000Z', is_verified: true } },
  ];
}

/** Seeds a claimed admin the way Sentry's create_user would (password, staff, a permission, a TOTP). */
async function seedAdmin(db: TestDb, username: string, email: string): Promise<number> {
  const r = await db.knex.raw(`
    INSERT INTO auth_user (password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
      is_password_expired, is_unclaimed, flags, date_joined, avatar_type)
    VALUES ('pbkdf2_sha256$1$s$existing', ?, '', ?, true, true, true, false, false, false, 0, now(), 0) RETURNING id`, [username, email]);
  const id = r.rows[0].id as number;
  await db.knex.raw(`INSERT INTO sentry_useremail (user_id, email, validation_hash, date_hash_added, is_verified) VALUES (?, ?, 'h', now(), true)`, [id, email]);
  await db.knex.raw(`INSERT INTO sentry_email (email, date_added) VALUES (?, now())`, [email]);
  await db.knex.raw(`INSERT INTO sentry_userpermission (user_id, permission) VALUES (?, 'users.admin')`, [id]);
  await db.knex.raw(`INSERT INTO auth_authenticator (user_id, type, config, created_at) VALUES (?, 1, '{"secret": "EXISTING"}', now())`, [id]);
  return id;
}

describe('Sentry test_imports.py, config and global scopes (../shared/fixtures/sentry-backup)', () => {
  describe('SanitizationTests', function () {
    before(function () { requireFixtures(this); });

    it('test_users_unsanitized_in_config_scope', () => withDb(async (db) => {
      const summary = await importUsers({ source: tmpExport(fourUsers()), databaseUrl: db.url, scope: 'config' });
      expect(await db.count('auth_user')).to.equal(4);
      expect(await db.count('auth_user', 'is_unclaimed')).to.equal(4);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(4);
      expect(await db.count('auth_user', 'is_managed')).to.equal(1);
      expect(await db.count('auth_user', 'is_staff')).to.equal(2);
      expect(await db.count('auth_user', 'is_superuser')).to.equal(2);
      expect(await db.count('auth_user', 'NOT is_managed AND NOT is_staff AND NOT is_superuser')).to.equal(2);
      // Config replaces every password: none of the exported hashes is in the table.
      expect(await db.count('auth_user', `password LIKE 'pbkdf2_sha256$%'`)).to.equal(0);
      expect(await db.count('sentry_useremail')).to.equal(4);
      expect(await db.count('sentry_email')).to.equal(2);
      // "we do not keep authentication information for the config scope"
      expect(await db.count('auth_authenticator')).to.equal(0);
      expect(await db.count('sentry_userip')).to.equal(0);
      expect(await db.count('sentry_useremail', 'is_verified')).to.equal(0);
      expect(await db.count('sentry_useremail', `date_hash_added < '2023-07-01'`)).to.equal(0);
      expect(await db.count('sentry_useremail', `validation_hash = 'mCnWesSVvYQcq7qXQ36AZHwosAd6cghE'`)).to.equal(0);
      expect(await db.count('sentry_userpermission')).to.equal(2);
      // The second "Super Admin" is the first one (Existing in Sentry's chunk).
      expect(await db.count('sentry_userrole')).to.equal(1);
      expect(await db.count('sentry_userrole_users')).to.equal(2);
      expect(summary.models['sentry.userrole']).to.include({ inserted: 1, existing: 1 });
      expect(summary.skipped['sentry.authenticator']).to.equal(4);
      expect(summary.skipped['sentry.userip']).to.equal(4);
      // The role's permissions, read from the Python repr the fixture holds.
      const perms = await db.knex.raw(`SELECT permissions FROM sentry_userrole`);
      expect(perms.rows[0].permissions).to.deep.equal(['broadcasts.admin', 'users.admin', 'options.admin']);
    }));

    it('test_users_unsanitized_in_global_scope', () => withDb(async (db) => {
      const summary = await importUsers({ source: tmpExport(fourUsers()), databaseUrl: db.url, scope: 'global' });
      expect(await db.count('auth_user')).to.equal(4);
      expect(await db.count('auth_user', 'is_unclaimed')).to.equal(0);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(0);
      expect(await db.count('auth_user', 'is_managed')).to.equal(1);
      expect(await db.count('auth_user', 'is_staff')).to.equal(2);
      expect(await db.count('auth_user', 'is_superuser')).to.equal(2);
      expect(await db.count('auth_user', 'NOT is_managed AND NOT is_staff AND NOT is_superuser')).to.equal(2);
      // Global keeps the hashes verbatim.
      expect(await db.count('auth_user', `password = 'pbkdf2_sha256$150000$iEvdIknqYjTr$+QsGn0tfIJ1FZLxQI37mVU1gL2KbL/wqjMtG/dFhsMA='`)).to.equal(4);
      expect(await db.count('sentry_useremail')).to.equal(4);
      expect(await db.count('sentry_email')).to.equal(2);
      expect(await db.count('auth_authenticator')).to.equal(4);
      expect(await db.count('auth_authenticator', `type = 1 AND config = '""'::jsonb AND created_at = '2023-07-27T16:30:53.325Z'`)).to.equal(4);
      expect(await db.count('sentry_useremail', 'is_verified')).to.equal(4);
      expect(await db.count('sentry_useremail', `date_hash_added < '2023-07-01'`)).to.equal(4);
      expect(await db.count('sentry_useremail', `validation_hash = 'mCnWesSVvYQcq7qXQ36AZHwosAd6cghE'`)).to.equal(4);
      expect(await db.count('sentry_userpermission')).to.equal(2);
      expect(await db.count('sentry_userrole')).to.equal(1);
      expect(await db.count('sentry_userrole_users')).to.equal(2);
      expect(await db.count('sentry_userip')).to.equal(4);
      // Global keeps the times (Sentry sets them to now only outside global).
      expect(await db.count('sentry_userip', `first_seen = '2012-04-05T03:29:45.000Z' AND last_seen = '2012-04-05T03:29:45.000Z'`)).to.equal(4);
      expect(summary.adjacent.lostPasswordHashes).to.equal(0);
    }));

    it('test_good_multiple_user_ips_per_user_in_global_scope (self-hosted#2468)', () => withDb(async (db) => {
      const records = fixture('user-with-minimum-privileges.json');
      const ip = records.find((r) => r.model === 'sentry.userip')!;
      ip.fields.ip_address = '8.8.8.8';
      records.push(
        { model: 'sentry.userip', pk: 3, fields: { ...ip.fields, ip_address: '8.8.8.9', country_code: 'ZZ', region_code: 'XX' } },
        { model: 'sentry.userip', pk: 4, fields: { ...ip.fields, ip_address: '8.8.8.9', country_code: 'YY', region_code: 'WW' } },
        { model: 'sentry.userip', pk: 5, fields: { ...ip.fields, ip_address: '8.8.8.7' } },
      );
      const summary = await importUsers({ source: tmpExport(records), databaseUrl: db.url, scope: 'global' });
      // One row per (user, address), as Sentry's get_or_create.
      expect(await db.count('sentry_userip')).to.equal(3);
      for (const a of ['8.8.8.7', '8.8.8.8', '8.8.8.9']) expect(await db.count('sentry_userip', `ip_address = '${a}'`)).to.equal(1);
      // The first of the duplicates (by pk) is kept; the other is a finding.
      expect(await db.count('sentry_userip', `ip_address = '8.8.8.9' AND country_code = 'ZZ'`)).to.equal(1);
      expect(summary.models['sentry.userip']!.dropped).to.deep.equal({ 'duplicate (user, ip_address): the first one is imported': 1 });
    }));

    it('test_bad_invalid_user_ip', () => withDb(async (db) => {
      const records = fixture('user-with-minimum-privileges.json');
      records.find((r) => r.model === 'sentry.userip')!.fields.ip_address = '0.1.2.3.4.5.6.7.8.9.abc.def';
      const err = await failure(importUsers({ source: tmpExport(records), databaseUrl: db.url, scope: 'global' }));
      expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(err.position).to.include({ model: 'sentry.userip', field: 'ip_address' });
      expect(await db.count('auth_user')).to.equal(0);
    }));

    it('test_good_multiple_useremails_per_user_in_global_scope (self-hosted#2571)', () => withDb(async (db) => {
      const records = fixture('user-with-minimum-privileges.json');
      records.push(
        { model: 'sentry.useremail', pk: 100, fields: { user: 2, email: 'second@example.com', validation_hash: '7jvwev0oc8sFyEyEwfvDAwxidtGzpAov',
          date_hash_added: '2023-06-22T22:59:56.521Z', is_verified: true } },
        { model: 'sentry.useremail', pk: 101, fields: { user: 2, email: 'third@example.com', validation_hash: '',
          date_hash_added: '2023-06-22T22:59:57.521Z', is_verified: false } },
      );
      await importUsers({ source: tmpExport(records), databaseUrl: db.url, scope: 'global' });
      expect(await db.count('sentry_useremail')).to.equal(3);
      expect(await db.count('(SELECT DISTINCT user_id FROM sentry_useremail) d')).to.equal(1);
      expect(await db.count('sentry_useremail', `validation_hash = ''`)).to.equal(1);
      expect(await db.count('sentry_useremail', 'is_verified')).to.equal(2);
    }));
  });

  describe('CollisionTests', () => {
    it('test_colliding_api_token (config scope: colliding tokens get new values, nulls kept)', () => withDb(async (db) => {
      const owner = await seedAdmin(db, 'owner', 'owner@example.com');
      // The four tokens exist in the target (Sentry re-creates them after clearing).
      const existing = [
        ['a'.repeat(64), null, null],
        ['b'.repeat(64), 'r'.repeat(64), '2030-01-01T00:00:00Z'],
        ['c'.repeat(64), 's'.repeat(64), '2030-01-01T00:00:00Z'],
        ['d'.repeat(64), 't'.repeat(64), '2030-01-01T00:00:00Z'],
      ];
      for (const [token, refresh, expires] of existing) {
        await db.knex.raw(`INSERT INTO sentry_apitoken (scopes, scope_list, token, refresh_token, expires_at, date_added, user_id)
                           VALUES (0, '{}', ?, ?, ?, now(), ?)`, [token, refresh, expires, owner]);
      }
      const before = (await db.knex.raw(`SELECT token, refresh_token, expires_at FROM sentry_apitoken ORDER BY id`)).rows;
      // The export: the owner (renamed on import) and four tokens, "partly changed": no refresh
      // and no expiry; the same refresh; the same token; the same both.
      const records: Rec[] = [...adminExport('owner', 'owner@example.com', { pk: 1 })];
      const tok = (pk: number, token: string, refresh: string | null, expires: string | null): Rec => ({ model: 'sentry.apitoken', pk, fields: {
        scopes: '0', scope_list: '[]', scoping_organization_id: null, application: null, user: 1, name: null, token, hashed_token: null,
        token_type: null, token_last_characters: null, refresh_token: refresh, hashed_refresh_token: null, expires_at: expires,
        date_added: '2024-01-01T00:00:00.000Z' } });
      records.push(
        tok(1, 'e'.repeat(64), null, null),
        tok(2, 'f'.repeat(64), 'r'.repeat(64), '2030-01-01T00:00:00.000Z'),
        tok(3, 'c'.repeat(64), 'u'.repeat(64), '2030-01-01T00:00:00.000Z'),
        tok(4, 'd'.repeat(64), 't'.repeat(64), '2030-01-01T00:00:00.000Z'),
      );
      const summary = await importUsers({ source: tmpExport(records), databaseUrl: db.url, scope: 'config' });
      expect(await db.count('sentry_apitoken')).to.equal(8);
      // Every pre-existing token unchanged.
      const after = (await db.knex.raw(`SELECT token, refresh_token, expires_at FROM sentry_apitoken WHERE user_id = ? ORDER BY id`, [owner])).rows;
      expect(after).to.deep.equal(before);
      // Nulls preserved on the copies: exactly two tokens without refresh token and expiry.
      expect(await db.count('sentry_apitoken', 'refresh_token IS NULL AND expires_at IS NULL')).to.equal(2);
      // The token without a collision keeps its value (API clients keep working); the three
      // that collided got new ones, hashed as Sentry's save() does.
      expect(await db.count('sentry_apitoken', `token = '${'e'.repeat(64)}'`)).to.equal(1);
      expect(await db.count('sentry_apitoken', `token = '${'f'.repeat(64)}'`)).to.equal(0);
      expect(await db.count('sentry_apitoken', `hashed_token = encode(sha256(convert_to(token, 'UTF8')), 'hex') AND token_last_characters = right(token, 4)`)).to.equal(4);
      expect(summary.adjacent.tokensRegenerated).to.equal(3);
      const findings = (await db.knex.raw(`SELECT reason FROM userport.findings WHERE model = 'sentry.apitoken'`)).rows as { reason: string }[];
      expect(findings).to.have.length(3);
      for (const f of findings) for (const t of ['c', 'd', 'f', 'r', 't', 'u']) expect(f.reason).not.to.include(t.repeat(8));
    }));

    for (const overwrite of [true, false]) {
      it(`test_colliding_configs_overwrite_configs_${overwrite ? 'enabled' : 'disabled'}_in_config_scope (the role)`, () => withDb(async (db) => {
        // The target holds the role, changed after the export.
        await db.knex.raw(`INSERT INTO sentry_userrole (name, permissions, date_added, date_updated) VALUES ('test-admin-role', '{other.admin}', now(), now())`);
        const records: Rec[] = [...adminExport('superadmin', 'superadmin@example.com'),
          { model: 'sentry.userrole', pk: 1, fields: { date_updated: '2024-01-01T00:00:00.000Z', date_added: '2024-01-01T00:00:00.000Z',
            name: 'test-admin-role', permissions: ['users.admin', 'options.admin'] } },
          { model: 'sentry.userroleuser', pk: 1, fields: { date_updated: '2024-01-01T00:00:00.000Z', date_added: '2024-01-01T00:00:00.000Z', user: 1, role: 1 } }];
        const summary = await importUsers({ source: tmpExport(records), databaseUrl: db.url, scope: 'config', overwriteConfigs: overwrite });
        const perms = (await db.knex.raw(`SELECT permissions FROM sentry_userrole WHERE name = 'test-admin-role'`)).rows;
        expect(perms).to.have.length(1);
        expect(perms[0].permissions).to.deep.equal(overwrite ? ['users.admin', 'options.admin'] : ['other.admin']);
        expect(summary.models['sentry.userrole']).to.include(overwrite ? { inserted: 0, existing: 0, overwritten: 1 } : { inserted: 0, existing: 1 });
        // The imported user is linked to the existing role either way.
        expect(await db.count(`sentry_userrole_users ru JOIN sentry_userrole r ON r.id = ru.role_id JOIN auth_user u ON u.id = ru.user_id`,
          `r.name = 'test-admin-role' AND u.username = 'superadmin'`)).to.equal(1);
      }));
    }

    it('test_colliding_user_with_merging_enabled_in_config_scope', () => withDb(async (db) => {
      const existing = await seedAdmin(db, 'owner', 'existing@example.com');
      await importUsers({ source: tmpExport(adminExport('owner', 'importing@example.com')), databaseUrl: db.url, scope: 'config', mergeUsers: true });
      expect(await db.count('auth_user')).to.equal(1);
      expect(await db.count('sentry_useremail')).to.equal(1);
      expect(await db.count('sentry_useremail', `email = 'existing@example.com'`)).to.equal(1);
      expect(await db.count('sentry_userpermission')).to.equal(1);
      expect(await db.count('auth_authenticator')).to.equal(1);
      expect(await db.count('auth_authenticator', `user_id = ${existing} AND config->>'secret' = 'EXISTING'`)).to.equal(1);
      expect(await db.count('auth_user', `username LIKE 'owner-%'`)).to.equal(0);
      expect(await db.count('auth_user', 'is_unclaimed')).to.equal(0);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(0);
    }));

    it('test_colliding_user_with_merging_disabled_in_config_scope', () => withDb(async (db) => {
      await seedAdmin(db, 'owner', 'existing@example.com');
      const summary = await importUsers({ source: tmpExport(adminExport('owner', 'importing@example.com')), databaseUrl: db.url, scope: 'config' });
      expect(await db.count('auth_user')).to.equal(2);
      expect(await db.count('sentry_useremail')).to.equal(2);
      expect(await db.count('sentry_userpermission')).to.equal(2);
      // "Only imported in global scope"
      expect(await db.count('auth_authenticator')).to.equal(1);
      expect(await db.count('auth_user', `username LIKE 'owner-%'`)).to.equal(1);
      expect(await db.count('auth_user', 'is_unclaimed')).to.equal(1);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(1);
      expect(await db.count('auth_user', 'NOT is_unclaimed')).to.equal(1);
      expect(summary.models['sentry.useremail']!.inserted).to.equal(1);
      for (const e of ['existing@example.com', 'importing@example.com']) expect(await db.count('sentry_useremail', `email = '${e}'`)).to.equal(1);
    }));

    it('merging in global scope: the existing user keeps their password, 2FA, permissions and tokens; the imported ones are findings', () => withDb(async (db) => {
      const existing = await seedAdmin(db, 'owner', 'existing@example.com');
      const records = [...adminExport('owner', 'importing@example.com'),
        { model: 'sentry.userip', pk: 1, fields: { user: 1, ip_address: '10.0.0.1', country_code: null, region_code: null,
          first_seen: '2024-01-01T00:00:00.000Z', last_seen: '2024-01-01T00:00:00.000Z' } }];
      const summary = await importUsers({ source: tmpExport(records), databaseUrl: db.url, scope: 'global', mergeUsers: true });
      expect(await db.count('auth_user')).to.equal(1);
      expect(await db.count('auth_user', `password = 'pbkdf2_sha256$1$s$existing'`)).to.equal(1);
      expect(await db.count('auth_authenticator', `user_id = ${existing}`)).to.equal(1);
      expect(await db.count('sentry_userip')).to.equal(0);
      for (const m of ['sentry.userpermission', 'sentry.authenticator', 'sentry.userip']) expect(summary.models[m]!.merged).to.equal(1);
      expect(await db.count('userport.findings', `kind = 'merged' AND model = 'sentry.authenticator'`)).to.equal(1);
    }));
  });

  describe('DecryptionTests', function () {
    before(function () { requireFixtures(this); });
    for (const scope of ['config', 'global'] as const) {
      it(`test_${scope}_import_decryption (fresh-install.json, encrypted)`, () => withDb(async (db) => {
        const tar = tmpExport('');
        const out = fs.createWriteStream(tar);
        await encryptExport({ path: path.join(BACKUP, 'fresh-install.json') }, out, { publicKeyPem: fs.readFileSync(PUB) });
        await new Promise((resolve) => out.close(resolve));
        const summary = await importUsers({ source: tar, databaseUrl: db.url, scope, decrypt: createLocalKeyUnwrapper({ privateKeyPath: KEY }) });
        expect(await db.count('sentry_userrole')).to.be.greaterThan(0);
        expect(await db.count('auth_user')).to.equal(3);
        expect(await db.count('auth_authenticator')).to.equal(scope === 'global' ? 2 : 0);
        expect(summary.skipped['sentry.organization']).to.equal(1);
        // Organisation data the global scope would need: skipped, saying why.
        expect(summary.skippedReasons?.['sentry.apiapplication']).to.match(/organisation data/);
        expect(summary.scope).to.equal(scope);
      }));
    }
  });
});
