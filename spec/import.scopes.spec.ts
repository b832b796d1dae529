/**
 * Issue #22: `import config` and `import global` on every generation of the target, credentials
 * that still work after the restore (Django's password check, TOTP codes), and secrets that stay
 * secret (rejects, findings, messages, the CLI's output).
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import { importUsers } from '../lib/import.js';
import { ErrorCodes } from '../lib/errors.js';
import { decodePickledField } from '../lib/pickle.js';
import { failure, withDb } from './helpers/db.js';
import { djangoCheckPassword, djangoItselfChecks, djangoPbkdf2, totp } from './helpers/credentials.js';
import { email, user, useremail, writeExport, type Rec } from './helpers/exports.js';
import { runDir } from './helpers/setup.js';
import { sentrySchema, TARGET_KINDS, targetDatabase, unavailable, type TargetKind } from './helpers/targets.js';

const SECRET = 'JBSWY3DPEHPK3PXP';
const PASSWORD = 'correct horse battery staple';
const TOKEN = 'sntryu_' + 'a1'.repeat(32);

/** An admin as `sentry export global` writes it: a password, a TOTP, a recovery code, a permission, a role, an IP, a token. */
function adminRecords(pk: number, username: string, hash: string, token = TOKEN): Rec[] {
  return [
    user(pk, username, { password: hash, is_password_expired: false }),
    email(pk, `${username}@example.com`),
    { model: 'sentry.userip', pk, fields: { user: pk, ip_address: '2001:db8::1', country_code: 'AT', region_code: '9',
      first_seen: '2020-01-01T00:00:00.000Z', last_seen: '2024-01-01T00:00:00.000Z' } },
    { model: 'sentry.userpermission', pk, fields: { user: pk, permission: 'users.admin' } },
    { model: 'sentry.userrole', pk, fields: { date_updated: '2024-01-01T00:00:00.000Z', date_added: '2023-01-01T00:00:00.000Z',
      name: 'Operators', permissions: "['users.admin', 'options.admin']" } },
    { model: 'sentry.userroleuser', pk, fields: { date_updated: '2024-01-01T00:00:00.000Z', date_added: '2023-01-01T00:00:00.000Z', user: pk, role: pk } },
    { model: 'sentry.authenticator', pk: pk * 10, fields: { user: pk, created_at: '2023-05-01T00:00:00.000Z', last_used_at: '2024-02-01T00:00:00.000Z',
      type: 1, config: JSON.stringify({ secret: SECRET }) } },
    { model: 'sentry.authenticator', pk: pk * 10 + 1, fields: { user: pk, created_at: '2023-05-01T00:00:00.000Z', last_used_at: null,
      type: 0, config: JSON.stringify({ salt: 'ab12cd34', used: 5 }) } },
    { model: 'sentry.apitoken', pk, fields: { scopes: '0', scope_list: '[\'project:read\']', scoping_organization_id: null, application: null,
      user: pk, name: 'ci', token, hashed_token: null, token_type: 'sntryu_', token_last_characters: null, refresh_token: null,
      hashed_refresh_token: null, expires_at: null, date_added: '2024-01-01T00:00:00.000Z' } },
    { model: 'sentry.apitoken', pk: pk + 1000, fields: { scopes: '0', scope_list: '[]', application: 3, user: pk, token: 'b2'.repeat(32),
      refresh_token: 'c3'.repeat(32), expires_at: null, date_added: '2024-01-01T00:00:00.000Z' } },
    useremail(pk, pk, `${username}@example.com`),
  ];
}

const exportFile = (records: unknown[]) => writeExport(records, 0);

/**
 * User 5 (`ops`) with one address three times (pks 5, 9 and, last in the file, 7: the pk's order
 * counts) and another address once: Sentry saves each repeat over the row it found, so in the
 * global scope the row takes pk 9's values, and the other address keeps its own.
 */
function repeatedAddressRecords(token = TOKEN): Rec[] {
  const ue = (pk: number, address: string, values: Record<string, unknown>) => ({ ...useremail(pk, 5, address), fields: { ...useremail(pk, 5, address).fields, ...values } });
  const first = ue(5, 'ops@example.com', { validation_hash: 'H1'.repeat(16), is_verified: false, date_hash_added: '2021-01-01T00:00:00.000Z' });
  const last = ue(9, 'ops@example.com', { validation_hash: 'H2'.repeat(16), is_verified: true, date_hash_added: '2022-02-02T00:00:00.000Z' });
  const middle = ue(7, 'ops@example.com', { validation_hash: 'H7'.repeat(16), is_verified: false });
  const other = ue(11, 'Ops@example.com', { validation_hash: 'H3'.repeat(16), is_verified: true, date_hash_added: '2020-03-03T00:00:00.000Z' });
  // Between the first repeat's pk and the last's: its row's id says which of them made the repeated one.
  const between = ue(6, 'second@example.com', { validation_hash: 'H4'.repeat(16), is_verified: true, date_hash_added: '2020-04-04T00:00:00.000Z' });
  return [...adminRecords(5, 'ops', 'x', token).filter((r) => r.model !== 'sentry.useremail'), first, last, other, middle, between];
}

/**
 * After a global import of {@link repeatedAddressRecords}: the repeated address is one row, made by
 * its first repeat (rows are written in source pk order, so its id is below that of pk 6's row),
 * holding the last repeat's values; the other addresses keep their own.
 */
async function expectLastRepeatWins(knex: Knex): Promise<void> {
  const rows = (await knex.raw(`SELECT id::int, validation_hash, is_verified, date_hash_added FROM sentry_useremail WHERE email = 'ops@example.com'`)).rows;
  expect(rows).to.have.length(1);
  const ids = (await knex.raw(`SELECT email, id::int FROM sentry_useremail WHERE user_id = (SELECT user_id FROM sentry_useremail WHERE email = 'ops@example.com') ORDER BY id`)).rows;
  expect(ids.map((r: { email: string }) => r.email)).to.deep.equal(['ops@example.com', 'second@example.com', 'Ops@example.com']);
  expect(rows[0]).to.deep.include({ validation_hash: 'H2'.repeat(16), is_verified: true });
  expect(new Date(rows[0].date_hash_added).toISOString()).to.equal('2022-02-02T00:00:00.000Z');
  const kept = (await knex.raw(`SELECT validation_hash, is_verified, date_hash_added FROM sentry_useremail WHERE email = 'Ops@example.com'`)).rows;
  expect(kept).to.have.length(1);
  expect(kept[0]).to.deep.include({ validation_hash: 'H3'.repeat(16), is_verified: true });
  expect(new Date(kept[0].date_hash_added).toISOString()).to.equal('2020-03-03T00:00:00.000Z');
}

describe('import config and global (issue #22)', function () {
  this.timeout(180000);

  it('oracles: Django\'s pbkdf2_sha256 and RFC 6238 give their published results', () => {
    // RFC 6238 appendix B, SHA-1, T = 59: 94287082 (8 digits), so 287082 in 6.
    expect(totp('GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ', 59)).to.equal('287082');
    // Django's own test vector (tests/auth_tests/test_hashers.py, test_pbkdf2).
    expect(djangoPbkdf2('lètmein', 'seasalt', 260000)).to.equal('pbkdf2_sha256$260000$seasalt$YlZ2Vggtqdc61YjArZuoApoBh9JNGYoDRBUGu6tcJQo=');
  });

  for (const kind of TARGET_KINDS) {
    describe(`target: ${kind}`, function () {
      const why = unavailable(kind);
      if (why) {
        it(`skipped: ${why}`, function () { process.stdout.write(`      skipped: ${why}\n`); this.skip(); });
        return;
      }
      const hash = djangoPbkdf2(PASSWORD, 'restoresalt', 1000);
      // Sentry 9's tokens are 64 characters (a longer one is a record error naming the column).
      const token = kind === 'sentry-9' ? 'd4'.repeat(32) : TOKEN;

      it('global: the admin logs in with the old password and the old TOTP; tokens keep working; Sentry\'s schema unchanged', async () => {
        const db = await targetDatabase(kind as TargetKind, { freshInstall: true });
        try {
          const schema = await sentrySchema(db.knex);
          const summary = await importUsers({ source: exportFile(adminRecords(5, 'ops', hash, token)), databaseUrl: db.url, scope: 'global' });
          const u = (await db.knex.raw(`SELECT id, password, (to_jsonb(a)->>'is_unclaimed')::boolean AS is_unclaimed, is_staff, is_superuser
            FROM auth_user a WHERE username = 'ops'`)).rows[0];
          // Sentry 9 has no is_unclaimed column.
          expect(u).to.include({ is_unclaimed: kind === 'sentry-9' ? null : false, is_staff: true, is_superuser: true });
          // The way Sentry checks a password: Django's hasher recomputes the stored hash.
          expect(djangoCheckPassword(PASSWORD, u.password)).to.equal(true);
          expect(djangoCheckPassword('wrong password', u.password)).to.equal(false);
          const django = djangoItselfChecks(PASSWORD, u.password);
          if (django === undefined) process.stdout.write('      (Django itself is not installed here: checked with the spec\'s pbkdf2 oracle only)\n');
          else expect(django).to.equal(true);
          expect(await db.count('sentry_lostpasswordhash', `user_id = ${u.id}`)).to.equal(0);
          // The TOTP secret, read back as the target stores it (jsonb, JSON text, or Sentry 9's pickles).
          const configs = (await db.knex.raw(`SELECT type, config::text AS config FROM auth_authenticator WHERE user_id = ? ORDER BY type`, [u.id])).rows as { type: number; config: string }[];
          expect(configs.map((c) => c.type)).to.deep.equal([0, 1]);
          const decode = (text: string) => (kind === 'sentry-9' ? decodePickledField(text) : JSON.parse(text)) as Record<string, unknown>;
          const stored = decode(configs[1]!.config);
          for (const t of [0, 1_700_000_000, 1_900_000_029]) expect(totp(stored.secret as string, t)).to.equal(totp(SECRET, t));
          expect(decode(configs[0]!.config)).to.deep.equal({ salt: 'ab12cd34', used: 5 });
          // The personal token keeps its value (CI jobs keep working); the app-bound one is skipped, with the reason.
          expect(await db.count('sentry_apitoken', `user_id = ${u.id} AND token = '${token}'`)).to.equal(1);
          expect(summary.models['sentry.apitoken']!.dropped).to.have.property('bound to an API application: sentry.apiapplication is organisation data, which userport does not import', 1);
          expect(await db.count('sentry_userip', `user_id = ${u.id} AND ip_address = '2001:db8::1' AND first_seen = '2020-01-01T00:00:00Z'`)).to.equal(1);
          expect(await db.count('sentry_useremail', `user_id = ${u.id} AND is_verified`)).to.equal(1);
          expect(await db.count('sentry_userpermission', `user_id = ${u.id}`)).to.equal(1);
          if (kind === 'sentry-9') {
            // Sentry 9 has no roles: dropped, with the reason.
            expect(summary.models['sentry.userrole']!.dropped).to.deep.equal({ 'no sentry_userrole table in the target database': 1 });
          } else {
            const role = (await db.knex.raw(`SELECT permissions FROM sentry_userrole WHERE name = 'Operators'`)).rows[0];
            expect(role.permissions).to.deep.equal(['users.admin', 'options.admin']);
            expect(await db.count('sentry_userrole_users', `user_id = ${u.id}`)).to.equal(1);
          }
          expect(await sentrySchema(db.knex)).to.deep.equal(schema);
        } finally {
          await db.close();
        }
      });

      it('global: a repeated (user, address) user email takes the last one\'s values, the other address keeps its own', async () => {
        const db = await targetDatabase(kind as TargetKind, { freshInstall: true });
        try {
          const summary = await importUsers({ source: exportFile(repeatedAddressRecords(token)), databaseUrl: db.url, scope: 'global' });
          await expectLastRepeatWins(db.knex);
          expect(summary.models['sentry.useremail']).to.include({ inserted: 3, existing: 2 });
        } finally {
          await db.close();
        }
      });

      it('config: privileges kept, the password replaced and claimable (a lost-password hash), no 2FA', async () => {
        const db = await targetDatabase(kind as TargetKind, { freshInstall: true });
        try {
          const summary = await importUsers({ source: exportFile(adminRecords(5, 'ops', hash, token)), databaseUrl: db.url, scope: 'config' });
          const u = (await db.knex.raw(`SELECT id, password, (to_jsonb(a)->>'is_unclaimed')::boolean AS is_unclaimed, is_staff
            FROM auth_user a WHERE username = 'ops'`)).rows[0];
          expect(u).to.include({ is_unclaimed: kind === 'sentry-9' ? null : true, is_staff: true });
          expect(djangoCheckPassword(PASSWORD, u.password)).to.equal(false);
          expect(await db.count('sentry_lostpasswordhash', `user_id = ${u.id}`)).to.equal(1);
          expect(await db.count('auth_authenticator', `user_id = ${u.id}`)).to.equal(0);
          expect(summary.skipped['sentry.authenticator']).to.equal(2);
          expect(await db.count('sentry_useremail', `user_id = ${u.id} AND is_verified`)).to.equal(0);
          expect(await db.count('sentry_userpermission', `user_id = ${u.id}`)).to.equal(1);
        } finally {
          await db.close();
        }
      });
    });
  }

  it('global: an unclaimed user gets a new password and a lost-password hash (Sentry gives none: the user could not log in)', () => withDb(async (db) => {
    const records = adminRecords(5, 'ops', djangoPbkdf2(PASSWORD, 's', 1000));
    records[0]!.fields.is_unclaimed = true;
    const summary = await importUsers({ source: exportFile(records), databaseUrl: db.url, scope: 'global' });
    const u = (await db.knex.raw(`SELECT id, password, is_unclaimed FROM auth_user WHERE username = 'ops'`)).rows[0];
    expect(u.is_unclaimed).to.equal(true);
    expect(djangoCheckPassword(PASSWORD, u.password)).to.equal(false);
    expect(await db.count('sentry_lostpasswordhash', `user_id = ${u.id}`)).to.equal(1);
    expect(summary.adjacent.lostPasswordHashes).to.equal(1);
  }));

  it('global: a repeated (user, address) user email keeps the first row\'s id and takes the last one\'s values, as Sentry saves each over the row it found', () => withDb(async (db) => {
    const records = repeatedAddressRecords();
    const summary = await importUsers({ source: exportFile(records), databaseUrl: db.url, scope: 'global' });
    await expectLastRepeatWins(db.knex);
    expect(summary.models['sentry.useremail']).to.include({ inserted: 3, existing: 2 });
    // In user scope the values are reset anyway: one row, unverified, a new hash.
    await db.knex.raw('TRUNCATE auth_user, sentry_useremail, sentry_email, sentry_lostpasswordhash, sentry_useroption CASCADE');
    await importUsers({ source: exportFile(records), databaseUrl: db.url, scope: 'users', allowReimport: true });
    const reset = (await db.knex.raw(`SELECT validation_hash, is_verified FROM sentry_useremail WHERE email = 'ops@example.com'`)).rows;
    expect(reset).to.have.length(1);
    expect(await db.count('sentry_useremail', `email = 'Ops@example.com'`)).to.equal(1);
    expect(reset[0].is_verified).to.equal(false);
    expect(reset[0].validation_hash).to.not.be.oneOf(['H1'.repeat(16), 'H2'.repeat(16), 'H7'.repeat(16)]);
  }));

  it('authenticator ids are 32-bit: an import that would pass 2,147,483,647 stops before writing', () => withDb(async (db) => {
    await db.knex.raw(`SELECT setval(pg_get_serial_sequence('auth_authenticator', 'id'), 2147483646)`);
    const err = await failure(importUsers({ source: exportFile(adminRecords(5, 'ops', 'x')), databaseUrl: db.url, scope: 'global' }));
    expect(err.code).to.equal(ErrorCodes.TARGET_LIMIT);
    expect(err.message).to.include('auth_authenticator');
    expect(await db.count('auth_user')).to.equal(0);
  }));

  it('duplicate (user, permission) and (user, role) pairs are imported once, with a finding', () => withDb(async (db) => {
    const records = adminRecords(5, 'ops', 'x');
    records.push(
      { model: 'sentry.userpermission', pk: 99, fields: { user: 5, permission: 'users.admin' } },
      { model: 'sentry.userroleuser', pk: 99, fields: { date_updated: '2024-01-01T00:00:00.000Z', date_added: null, user: 5, role: 5 } },
    );
    const summary = await importUsers({ source: exportFile(records), databaseUrl: db.url, scope: 'config' });
    expect(await db.count('sentry_userpermission')).to.equal(1);
    expect(await db.count('sentry_userrole_users')).to.equal(1);
    expect(summary.models['sentry.userpermission']!.dropped).to.deep.equal({ 'duplicate (user, permission): imported once': 1 });
    expect(summary.models['sentry.userroleuser']!.dropped).to.deep.equal({ 'duplicate (user, role): imported once': 1 });
    expect(await db.count('userport.findings', `model IN ('sentry.userpermission', 'sentry.userroleuser') AND source_pk = 99`)).to.equal(2);
  }));

  it('a user-scope import of the same file skips every privilege model (counted, not imported)', () => withDb(async (db) => {
    const summary = await importUsers({ source: exportFile(adminRecords(5, 'ops', 'x')), databaseUrl: db.url });
    expect(summary.skipped).to.include({ 'sentry.authenticator': 2, 'sentry.userpermission': 1, 'sentry.userrole': 1, 'sentry.apitoken': 2 });
    // Each with the scope that would import it, in the summary (and the CLI's text).
    expect(summary.skippedReasons).to.include({ 'sentry.authenticator': 'imported by import global only', 'sentry.userpermission': 'imported by import config only' });
    expect(summary.scope).to.equal(undefined);
    expect(await db.count('auth_user', 'is_staff OR NOT is_unclaimed')).to.equal(0);
    expect(await db.count('sentry_userpermission')).to.equal(0);
  }));

  describe('secrets stay secret', () => {
    const secrets = [SECRET, TOKEN, 'b2'.repeat(32), 'c3'.repeat(32), 'ab12cd34', 'restoresalt'];

    it('the rejects file masks a rejected record\'s secret fields; findings, the summary and the CLI\'s output quote none', () => withDb(async (db) => {
      const records = adminRecords(5, 'ops', djangoPbkdf2(PASSWORD, 'restoresalt', 1000));
      // Rejected: an authenticator whose type is negative, a token whose user is a string.
      records.push(
        { model: 'sentry.authenticator', pk: 77, fields: { user: 5, type: -1, config: JSON.stringify({ secret: SECRET }), created_at: '2023-05-01T00:00:00.000Z' } },
        { model: 'sentry.apitoken', pk: 78, fields: { user: 'ops', token: TOKEN, scopes: '0', scope_list: '[]', date_added: '2024-01-01T00:00:00.000Z' } },
      );
      const file = exportFile(records);
      const dir = runDir();
      const rejects = path.join(dir, 'scopes-rejects.jsonl');
      const findings = path.join(dir, 'scopes-findings.json');
      const bin = path.resolve('bin/userport.js');
      const r = spawnSync(process.execPath, [bin, 'import', 'global', file, '--database-url', db.url, '--rejects-file', rejects,
        '--findings-file', findings, '--json'], { encoding: 'utf8', env: { ...process.env, USERPORT_TRACE_SQL: '1' } });
      expect(r.status, r.stderr).to.equal(0);
      const lines = fs.readFileSync(rejects, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { record: { model: string; fields: Record<string, unknown> } });
      expect(lines.map((l) => l.record.model)).to.deep.equal(['sentry.authenticator', 'sentry.apitoken']);
      expect(lines[0]!.record.fields.config).to.equal('[redacted]');
      expect(lines[1]!.record.fields.token).to.equal('[redacted]');
      const everything = [fs.readFileSync(rejects, 'utf8'), fs.readFileSync(findings, 'utf8'), r.stdout, r.stderr].join('\n');
      for (const s of secrets) expect(everything, `secret ${s.slice(0, 6)}...`).not.to.include(s);
      expect(everything).not.to.include('pbkdf2_sha256$');
      // The import itself kept them (they are in the database, where they belong).
      expect(await db.count('auth_authenticator')).to.equal(2);
      expect(await db.count('auth_user', `password LIKE 'pbkdf2_sha256$1000$restoresalt$%'`)).to.equal(1);
    }));

    it('a record error names the field, never its value', () => withDb(async (db) => {
      const records = adminRecords(5, 'ops', 'x');
      (records.find((r) => r.model === 'sentry.apitoken')!.fields).token = TOKEN + 'x'.repeat(80);
      const err = await failure(importUsers({ source: exportFile(records), databaseUrl: db.url, scope: 'config' }));
      expect(err.code).to.equal(ErrorCodes.RECORD_SCHEMA);
      expect(err.position).to.include({ model: 'sentry.apitoken', field: 'token' });
      expect(err.message).not.to.include(TOKEN);
    }));
  });

  it('CLI: import config|global with the Sentry flags; usage mistakes exit 2 before any database work', () => withDb(async (db) => {
    const bin = path.resolve('bin/userport.js');
    const file = exportFile(adminRecords(5, 'ops', 'x'));
    const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
    const bad = run('import', 'globl', file, '--database-url', 'postgresql://nobody@127.0.0.1:1/none');
    expect(bad.status).to.equal(2);
    expect(bad.stderr).to.include('unknown import scope "globl"');
    const flag = run('import', 'users', file, '--overwrite-configs', '--database-url', 'postgresql://nobody@127.0.0.1:1/none');
    expect(flag.status).to.equal(2);
    expect(flag.stderr).to.include('--overwrite-configs needs import config or global');
    await db.knex.raw(`INSERT INTO sentry_userrole (name, permissions, date_added, date_updated) VALUES ('Operators', '{}', now(), now())`);
    const ok = run('import', 'config', file, '--database-url', db.url, '--overwrite_configs', '--no-prompt', '--silent');
    expect(ok.status, ok.stderr).to.equal(0);
    expect(ok.stdout + ok.stderr).to.equal('');
    expect((await db.knex.raw(`SELECT permissions FROM sentry_userrole WHERE name = 'Operators'`)).rows[0].permissions).to.deep.equal(['users.admin', 'options.admin']);
  }));
});
