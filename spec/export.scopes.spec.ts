/**
 * `createExporter` / `exportUsers` in config and global scope, and `userport export
 * config|global`: which users and rows each scope writes (Sentry's `exports.py` and
 * `get_all_globally_privileged_users()`), Sentry's model and field order, the encodings of
 * authenticator configs and text[] columns in every generation of the target, secrets kept out
 * of summaries, 0600 and the plaintext warning, encryption. Rows are inserted with SQL, as
 * Sentry itself writes them.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { Knex } from 'knex';
import { createExporter, type ExportScope, type ExportSummary } from '../lib/export.js';
import { createLocalKeyUnwrapper, decryptExport } from '../lib/decrypt.js';
import { encodePickledField } from '../lib/pickle.js';
import { insertRow, insertUser } from './helpers/sentry-rows.js';
import { TARGET_KINDS, targetDatabase, unavailable, type TargetKind } from './helpers/targets.js';
import { fixture as cryptoFixture } from './crypto/helpers.js';
import { tmpFolder } from './helpers/setup.js';

interface Rec { model: string; pk: number; fields: Record<string, unknown> }

const ROOT = path.resolve('.');
const BIN = path.join(ROOT, 'bin/userport.js');
const TOTP_SECRET = 'JBSWY3DPEHPK3PXP';
const TOKEN = 'sntryu_0123456789abcdef0123456789abcdef01234567';
const DATE = '2024-05-16T20:51:24.421Z';

async function exportOf(url: string, scope: ExportScope, filterUsernames?: string[]): Promise<{ out: string; recs: Rec[]; summary: ExportSummary }> {
  const exporter = createExporter({ databaseUrl: url, scope, ...(filterUsernames ? { filterUsernames } : {}) });
  const chunks: Buffer[] = [];
  for await (const c of exporter) chunks.push(c as Buffer);
  const out = Buffer.concat(chunks).toString('utf8');
  return { out, recs: JSON.parse(out) as Rec[], summary: exporter.summary };
}

/** Models in the order the export wrote them, each once. */
function modelOrder(recs: Rec[]): string[] {
  return recs.map((r) => r.model).filter((m, i, all) => all[i - 1] !== m);
}

const hasTable = async (k: Knex, t: string) => (await k.raw('SELECT to_regclass(?) IS NOT NULL AS ok', [t])).rows[0].ok as boolean;

/**
 * Sentry's Python test users (test_exports.py): `regular`, `admin` (a permission and a role),
 * `staff`, `superuser`; each with a user email, and `regular` and `admin` with a TOTP
 * authenticator, a user IP and a personal API token.
 */
async function seedPrivileges(k: Knex, kind: TargetKind): Promise<Record<string, number>> {
  const ids: Record<string, number> = {};
  for (const [name, flags] of [['regular', {}], ['admin', {}], ['staff', { is_staff: true }], ['superuser', { is_superuser: true }]] as const) {
    ids[name] = await insertUser(k, { username: name, email: `${name}@example.com`, password: `pbkdf2_sha256$1$${name}$hash`, ...flags });
    await insertRow(k, 'sentry_useremail', { user_id: ids[name], email: `${name}@example.com` });
  }
  await insertRow(k, 'sentry_userpermission', { user_id: ids.admin, permission: 'users.admin' });
  if (await hasTable(k, 'sentry_userrole')) {
    const role = await insertRow(k, 'sentry_userrole', { date_updated: DATE, date_added: DATE, name: 'test-admin-role', permissions: ['broadcasts.admin', 'users.admin'] });
    await insertRow(k, 'sentry_userrole_users', { date_updated: DATE, date_added: DATE, role_id: role, user_id: ids.admin });
  }
  // Sentry 9 stores the config as a pickle, later Sentry as JSON (jsonb since 2025).
  const config = (v: Record<string, unknown>) => (kind === 'sentry-9' ? encodePickledField(v as never) : JSON.stringify(v));
  // The largest id auth_authenticator's 32-bit key holds.
  await insertRow(k, 'auth_authenticator', { id: 2147483647, user_id: ids.admin, created_at: DATE, type: 1, config: config({ secret: TOTP_SECRET }) });
  await insertRow(k, 'auth_authenticator', { id: 7, user_id: ids.regular, created_at: DATE, type: 0, config: config({ salt: 'a1b2', used: 0 }) });
  for (const name of ['regular', 'admin']) {
    await insertRow(k, 'sentry_userip', { user_id: ids[name], ip_address: '127.0.0.2', first_seen: '2012-04-05T03:29:45Z', last_seen: '2012-04-05T03:29:45Z' });
    await insertRow(k, 'sentry_apitoken', {
      user_id: ids[name], scopes: 0, scope_list: ['org:read'], token: `${TOKEN.slice(0, -2)}${name.slice(0, 2)}`, date_added: DATE, name: `${name} token`,
      token_type: 'sntryu_', refresh_token: null, expires_at: null,
    });
    await insertRow(k, 'sentry_apiauthorization', { user_id: ids[name], scopes: 0, scope_list: [], date_added: DATE });
  }
  return ids;
}

describe('createExporter, config and global scopes', () => {
  describe('config scope', () => {
    it('test_export_keep_only_admin_users_in_config_scope: admin, staff and superuser, not regular; one role, role link and permission', async () => {
      const db = await targetDatabase('userport');
      try {
        const ids = await seedPrivileges(db.knex, 'userport');
        const { recs, summary } = await exportOf(db.url, 'config');
        expect(recs.filter((r) => r.model === 'sentry.user').map((r) => r.fields.username)).to.deep.equal(['admin', 'staff', 'superuser']);
        expect(recs.filter((r) => r.model === 'sentry.userrole')).to.have.length(1);
        expect(recs.filter((r) => r.model === 'sentry.userroleuser')).to.have.length(1);
        expect(recs.filter((r) => r.model === 'sentry.userpermission')).to.have.length(1);
        // Global-only models stay out; the personal token and authorization of admin are in.
        expect(modelOrder(recs)).to.deep.equal([
          'sentry.user', 'sentry.userpermission', 'sentry.userrole', 'sentry.userroleuser', 'sentry.email', 'sentry.useremail',
          'sentry.apitoken', 'sentry.apiauthorization',
        ].filter((m) => m !== 'sentry.email'));
        expect(recs.filter((r) => r.model === 'sentry.apitoken').map((r) => r.fields.user)).to.deep.equal([ids.admin]);
        expect(recs.filter((r) => r.model === 'sentry.useremail').map((r) => r.fields.email))
          .to.deep.equal(['admin@example.com', 'staff@example.com', 'superuser@example.com']);
        // Sentry writes fields verbatim in config scope: the password hash is there.
        expect(recs.find((r) => r.fields.username === 'admin')!.fields.password).to.equal('pbkdf2_sha256$1$admin$hash');
        expect(summary.models).to.not.have.property('sentry.authenticator');
        expect(summary.excluded).to.deep.include({ kind: 'excluded', model: 'sentry.user', count: 1,
          reason: 'not globally privileged (Sentry\'s config export holds only staff, superusers and users with a permission or a role)' });
        expect(summary.excluded.find((e) => e.model === 'sentry.apitoken')!.count).to.equal(1);
      } finally {
        await db.close();
      }
    });

    it('leaves an application-bound token and authorization to global scope, which writes them with their application pk', async () => {
      const db = await targetDatabase('userport');
      try {
        const ids = await seedPrivileges(db.knex, 'userport');
        await insertRow(db.knex, 'sentry_apitoken', { user_id: ids.staff, application_id: 5, scopes: 0, scope_list: [], token: 'app-token', date_added: DATE });
        await insertRow(db.knex, 'sentry_apiauthorization', { user_id: ids.staff, application_id: 5, scopes: 0, scope_list: [], date_added: DATE });
        const config = await exportOf(db.url, 'config');
        expect(config.recs.filter((r) => r.model === 'sentry.apitoken' && r.fields.application !== null)).to.deep.equal([]);
        expect(config.recs.filter((r) => r.model === 'sentry.apiauthorization' && r.fields.user === ids.staff)).to.deep.equal([]);
        const global = await exportOf(db.url, 'global');
        expect(global.recs.filter((r) => r.model === 'sentry.apitoken' && r.fields.application === 5).map((r) => r.fields.token)).to.deep.equal(['app-token']);
        expect(global.recs.filter((r) => r.model === 'sentry.apiauthorization' && r.fields.application === 5)).to.have.length(1);
      } finally {
        await db.close();
      }
    });
  });

  describe('global scope, every generation of the target', () => {
    for (const kind of TARGET_KINDS) {
      it(`${kind}: every user and privilege row, in Sentry's model and field order and encodings`, async function () {
        const why = unavailable(kind);
        if (why) this.skip();
        const db = await targetDatabase(kind);
        try {
          const ids = await seedPrivileges(db.knex, kind);
          const { out, recs, summary } = await exportOf(db.url, 'global');
          const roles = kind !== 'sentry-9';
          const emailTable = await hasTable(db.knex, 'sentry_email');
          expect(modelOrder(recs)).to.deep.equal([
            'sentry.user', 'sentry.userip', 'sentry.userpermission', 'sentry.userrole', 'sentry.userroleuser', 'sentry.email',
            'sentry.authenticator', 'sentry.useremail', 'sentry.apitoken', 'sentry.apiauthorization',
          ].filter((m) => (roles || !m.startsWith('sentry.userrole')) && m !== 'sentry.email'));
          expect(recs.filter((r) => r.model === 'sentry.user')).to.have.length(4);
          if (!roles) {
            expect(Object.keys(summary.absentModels).sort()).to.deep.equal(['sentry.userrole', 'sentry.userroleuser']);
          }
          if (emailTable) expect(summary.models['sentry.email']).to.equal(0);

          const auth = recs.filter((r) => r.model === 'sentry.authenticator');
          expect(auth.map((r) => r.pk)).to.deep.equal([7, 2147483647]);
          expect(Object.keys(auth[1]!.fields)).to.deep.equal(['user', 'created_at', 'last_used_at', 'type', 'config']);
          // A string holding compact JSON, as Sentry's PickledObjectField writes it, from jsonb,
          // JSON text and Sentry 9's pickle alike.
          expect(auth[1]!.fields).to.deep.equal({ user: ids.admin, created_at: DATE, last_used_at: null, type: 1, config: `{"secret":"${TOTP_SECRET}"}` });
          expect(auth[0]!.fields.config).to.equal('{"salt":"a1b2","used":0}');
          expect(out).to.include(`"config": "{\\"secret\\":\\"${TOTP_SECRET}\\"}"`);

          const ip = recs.find((r) => r.model === 'sentry.userip')!;
          expect(Object.keys(ip.fields)).to.deep.equal(['user', 'ip_address', 'country_code', 'region_code', 'first_seen', 'last_seen']);
          expect(ip.fields.ip_address).to.equal('127.0.0.2');
          if (roles) {
            const role = recs.find((r) => r.model === 'sentry.userrole')!;
            expect(role.fields).to.deep.equal({ date_updated: DATE, date_added: DATE, name: 'test-admin-role', permissions: '["broadcasts.admin", "users.admin"]' });
            expect(Object.keys(recs.find((r) => r.model === 'sentry.userroleuser')!.fields)).to.deep.equal(['date_updated', 'date_added', 'user', 'role']);
          }
          const token = recs.find((r) => r.model === 'sentry.apitoken' && r.fields.user === ids.admin)!;
          expect(Object.keys(token.fields)).to.deep.equal(kind === 'sentry-9'
            ? ['scopes', 'scope_list', 'application', 'user', 'token', 'refresh_token', 'expires_at', 'date_added']
            : ['scopes', 'scope_list', 'application', 'user', 'scoping_organization_id', 'name', 'token', 'hashed_token', 'token_type',
              'token_last_characters', 'refresh_token', 'hashed_refresh_token', 'expires_at', 'date_added']);
          expect(token.fields.scopes).to.equal('0');
          expect(token.fields.scope_list).to.equal('["org:read"]');
          expect(token.fields.token).to.equal(`${TOKEN.slice(0, -2)}ad`);
          expect(recs.find((r) => r.model === 'sentry.apiauthorization')!.fields.scope_list).to.equal('[]');
          // Secrets are in the export, never in the summary.
          expect(JSON.stringify(summary)).to.not.match(new RegExp(`${TOTP_SECRET}|a1b2|sntryu_|pbkdf2`));
        } finally {
          await db.close();
        }
      });
    }

    it('sentry-9: an authenticator whose pickle holds something other than plain values is left out and named, not run', async function () {
      if (unavailable('sentry-9')) this.skip();
      const db = await targetDatabase('sentry-9');
      try {
        const id = await insertUser(db.knex, { username: 'eve', email: 'eve@example.com' });
        // cos\nsystem\n(S'touch pwned'\ntR. : os.system('touch pwned') when unpickled.
        const hostile = Buffer.from("\x80\x02cos\nsystem\n(S'touch pwned'\ntR.", 'latin1').toString('base64');
        await insertRow(db.knex, 'auth_authenticator', { id: 3, user_id: id, created_at: DATE, type: 1, config: hostile });
        await insertRow(db.knex, 'auth_authenticator', { id: 4, user_id: id, created_at: DATE, type: 0, config: encodePickledField({ salt: 'ff', used: 1 }) });
        const { recs, summary, out } = await exportOf(db.url, 'global');
        expect(recs.filter((r) => r.model === 'sentry.authenticator').map((r) => [r.pk, r.fields.config])).to.deep.equal([[4, '{"salt":"ff","used":1}']]);
        expect(summary.unreadable.map((u) => [u.model, u.pk])).to.deep.equal([['sentry.authenticator', 3]]);
        expect(summary.excluded.filter((e) => e.model === 'sentry.authenticator').map((e) => e.count)).to.deep.equal([1]);
        expect(out).to.not.include('system');
        expect(fs.existsSync(path.join(ROOT, 'pwned'))).to.equal(false);
      } finally {
        await db.close();
      }
    });
  });

  describe('options', () => {
    it('refuses an unknown scope synchronously, naming the option', () => {
      expect(() => createExporter({ databaseUrl: 'postgresql://localhost/x', scope: 'organization' as never }))
        .to.throw().with.property('code', 'USERPORT_OPTION_INVALID');
    });
  });
});

interface Result { code: number | null; stdout: Buffer; stderr: string }

function userport(args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...process.env, DATABASE_URL: '' }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.stdin.end();
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr }));
  });
}

describe('userport export config|global', function () {
  it('warns once about an unencrypted file (0600), not with --encrypt-with, whose tarball decrypts to the same bytes', async () => {
    const db = await targetDatabase('userport');
    const dir = tmpFolder('userport-export-scopes-');
    try {
      await seedPrivileges(db.knex, 'userport');
      const plain = path.join(dir, 'global.json');
      const r = await userport(['export', 'global', plain, '--database-url', db.url, '--no-progress']);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stderr.split('\n').filter((l) => /^warning: /.test(l))).to.have.length(1);
      expect(r.stderr).to.include('--encrypt-with');
      expect(fs.statSync(plain).mode & 0o777).to.equal(0o600);
      expect(r.stderr + r.stdout.toString()).to.not.match(new RegExp(`${TOTP_SECRET}|sntryu_|pbkdf2`));
      const config = await userport(['export', 'config', path.join(dir, 'config.json'), '--database-url', db.url, '--no-progress']);
      expect(config.code, config.stderr).to.equal(0);
      expect(config.stderr.split('\n').filter((l) => /^warning: /.test(l))).to.have.length(1);
      const toStdout = await userport(['export', 'global', '-', '--database-url', db.url, '--no-progress']);
      expect(toStdout.code, toStdout.stderr).to.equal(0);
      expect(toStdout.stderr).to.not.include('warning');
      expect(toStdout.stdout.toString()).to.equal(fs.readFileSync(plain, 'utf8'));

      const tar = path.join(dir, 'global.tar');
      const enc = await userport(['export', 'global', tar, '--database-url', db.url, '--no-progress', '--encrypt-with', cryptoFixture('fixture-key.pub')]);
      expect(enc.code, enc.stderr).to.equal(0);
      expect(enc.stderr).to.not.include('warning');
      const out = new PassThrough();
      const chunks: Buffer[] = [];
      out.on('data', (c: Buffer) => chunks.push(c));
      await decryptExport({ path: tar }, out, { unwrapper: createLocalKeyUnwrapper({ privateKeyPem: fs.readFileSync(cryptoFixture('fixture-key.pem')) }) });
      expect(Buffer.concat(chunks).toString('utf8')).to.equal(fs.readFileSync(plain, 'utf8'));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
      await db.close();
    }
  });

  it('refuses an unknown scope with a usage error (exit 2)', async () => {
    const r = await userport(['export', 'organization', 'x.json']);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.equal('userport: unknown export scope "organization" (users, config or global: userport export users DEST) [USERPORT_OPTION_INVALID]\n');
  });
});
