import { expect } from 'chai';
import fs from 'node:fs';
import { importUsers, type ImportOptions } from '../lib/import.js';
import { freshDatabase, type TestDb } from './helpers/db.js';
import { email, tableSnapshot, TARGET_TABLES, user, useremail, useroption, writeExport, type Rec } from './helpers/exports.js';
import { insertEmail, insertUser } from './helpers/sentry-rows.js';
import { tmpPath } from './helpers/setup.js';

async function run(db: TestDb, records: Rec[] | string, opts: Partial<ImportOptions> = {}) {
  return importUsers({ source: typeof records === 'string' ? records : writeExport(records), databaseUrl: db.url, ...opts });
}

async function failure(p: Promise<unknown>): Promise<Error & { code: string; position?: Record<string, unknown> }> {
  try { await p; } catch (err) { return err as Error & { code: string }; }
  throw new Error('expected the import to fail');
}

describe('importUsers', () => {
  let db: TestDb;
  beforeEach(async () => { db = await freshDatabase(); });
  afterEach(async () => { await db.close(); });

  describe('user scope', () => {
    it('imports the four user models and counts every other model as skipped, per model name', async () => {
      const s = await run(db, [
        user(1, 'alice'), { model: 'sentry.userip', pk: 1, fields: { user: 1 } }, { model: 'Sentry.Organization', pk: 9, fields: {} },
        email(1, 'alice@example.com'), useremail(1, 1, 'alice@example.com'), useroption(1, 1, 'timezone', 'UTC'),
        { model: 'sentry.userip', pk: 2, fields: { user: 1 } },
      ]);
      expect(s.skipped).to.deep.equal({ 'sentry.userip': 2, 'sentry.organization': 1 });
      expect(s.records).to.equal(7);
      for (const m of ['sentry.user', 'sentry.email', 'sentry.useremail', 'sentry.useroption']) {
        expect(s.models[m]!.read, m).to.equal(1);
        expect(s.models[m]!.inserted, m).to.equal(1);
      }
    });

    it('ignores and counts unknown fields', async () => {
      // is_suspended is a known field now (Sentry 2026): it is not counted, whatever the target has.
      const s = await run(db, [user(1, 'alice', { is_suspended: false, is_frobnicated: true, actor: 3 }), user(2, 'bob', { actor: 4 })]);
      expect(s.unknownFields).to.deep.equal({ 'sentry.user': { is_frobnicated: 1, actor: 2 } });
      expect(await db.count('auth_user')).to.equal(2);
    });

    it('imports an export whose unknown field names hold a lone surrogate, atomic and resumable (the summary stored as U+FFFD)', async () => {
      // The file spells the names with JSON escapes ("x\ud800y"); JSON.stringify wrote them back
      // as such into the imports table's jsonb, which PostgreSQL refused at the import's last
      // statement (the long fuzz run, seed 4243): nothing was imported.
      const records = [user(1, 'alice', { 'x\ud800y': 1, '\udc00': 2 }), user(2, 'bob', { 'x\ud800y': 3 })];
      for (const resumable of [false, true]) {
        const other = await freshDatabase();
        try {
          const s = await run(other, records, { resumable, ...(resumable ? { batchRows: 1 } : {}) });
          expect(s.unknownFields, `resumable ${resumable}`).to.deep.equal({ 'sentry.user': { 'x\ud800y': 2, '\udc00': 1 } });
          expect(await other.count('auth_user')).to.equal(2);
          const stored = (await other.knex.raw(`SELECT summary->'unknownFields'->'sentry.user' AS u, state FROM userport.imports`)).rows[0];
          expect(stored).to.deep.equal({ u: { 'x\ufffdy': 2, '\ufffd': 1 }, state: 'done' });
        } finally {
          await other.close();
        }
      }
    });
  });

  describe('users', () => {
    it('strips privileges, marks unclaimed, replaces the password with an unusable one and adds a lost-password hash', async () => {
      await run(db, [user(1, 'alice', { password: 'pbkdf2_sha256$150000$SECRET$x=' })]);
      const [u] = (await db.knex.raw('SELECT * FROM auth_user')).rows;
      expect(u).to.include({ username: 'alice', first_name: 'Name 1', is_staff: false, is_superuser: false, is_managed: false, is_unclaimed: true, is_password_expired: false });
      expect(u.password).to.match(/^![0-9a-f]{40}$/);
      expect(Date.now() - new Date(u.last_password_change).getTime()).to.be.below(120000);
      const [h] = (await db.knex.raw('SELECT * FROM sentry_lostpasswordhash')).rows;
      expect(h.user_id).to.equal(u.id);
      expect(h.hash).to.match(/^[0-9a-f]{32}$/);
    });

    it('gives each new user the unusable password staged for it, and one of its own where the staged row has none (a resumed import an older version staged)', async () => {
      const file = writeExport([user(1, 'alice'), user(2, 'bob'), user(3, 'carol')]);
      // A resumable import stopped in its merge (at the bulk path's lock) keeps what it staged.
      const ac = new AbortController();
      let aborted = false;
      const err = await failure(run(db, file, { resumable: true, signal: ac.signal,
        onTrace: (e) => { if (!aborted && e.kind === 'sql' && /LOCK TABLE/.test(e.sql)) { aborted = true; ac.abort(); } } }));
      expect(err.code).to.equal('USERPORT_ABORTED');
      const staged = (await db.knex.raw(`SELECT src_pk::int AS pk, unusable_password AS p FROM userport.stage WHERE model = 1 ORDER BY src_pk`)).rows as { pk: number; p: string | null }[];
      expect(staged.map((r) => r.pk)).to.deep.equal([1, 2, 3]);
      for (const r of staged) expect(r.p).to.match(/^![0-9a-f]{40}$/);
      // Alice's is one the spec knows; Bob's row has none, as an older version staged it.
      await db.knex.raw(`UPDATE userport.stage SET unusable_password = CASE src_pk WHEN 1 THEN '!' || repeat('c', 40) END WHERE model = 1 AND src_pk IN (1, 2)`);
      await run(db, file, { resumable: true });
      const rows = (await db.knex.raw('SELECT username, password FROM auth_user')).rows as { username: string; password: string }[];
      const password = Object.fromEntries(rows.map((r) => [r.username, r.password]));
      expect(password.alice).to.equal(`!${'c'.repeat(40)}`);
      expect(password.carol).to.equal(staged[2]!.p);
      expect(password.bob).to.match(/^![0-9a-f]{40}$/);
      expect(new Set(Object.values(password)).size).to.equal(3);
    });

    it('gives a user record without last_active the import\'s time (the model\'s default, as Sentry\'s import); an explicit null stays null', async () => {
      const without = user(1, 'alice');
      delete without.fields.last_active;
      const before = Date.now();
      await run(db, [without, user(2, 'bob', { last_active: null }), user(3, 'carol')]);
      const rows = (await db.knex.raw(`SELECT username, last_active FROM auth_user ORDER BY username`)).rows;
      expect(rows[0].username).to.equal('alice');
      expect(new Date(rows[0].last_active).getTime()).to.be.within(before - 5000, Date.now() + 5000);
      expect(rows[1]).to.deep.equal({ username: 'bob', last_active: null });
      expect(new Date(rows[2].last_active).toISOString()).to.equal('2023-06-22T22:59:55.489Z');
    });

    it('adds a primary useremail when the export has none for the user\'s address, and none twice', async () => {
      const s = await run(db, [user(1, 'alice'), user(2, 'bob'), useremail(1, 2, 'bob@example.com')]);
      expect(s.adjacent.primaryEmails).to.equal(1);
      const rows = (await db.knex.raw(`SELECT u.username, e.email FROM sentry_useremail e JOIN auth_user u ON u.id = e.user_id ORDER BY 1`)).rows;
      expect(rows).to.deep.equal([{ username: 'alice', email: 'alice@example.com' }, { username: 'bob', email: 'bob@example.com' }]);
    });

    it('renames a user whose name is taken in the database, case-insensitively, with a 2-character tail', async () => {
      await insertUser(db.knex, { password: 'x', username: 'Alice' });
      const s = await run(db, [user(1, 'alice')]);
      expect(s.models['sentry.user']).to.include({ inserted: 1, renamed: 1 });
      const names = (await db.knex.raw(`SELECT username FROM auth_user ORDER BY id`)).rows.map((r: { username: string }) => r.username);
      expect(names[0]).to.equal('Alice');
      expect(names[1]).to.match(/^alice-[a-z0-9]{2}$/);
    });

    it('renames later users of a name used earlier in the same file; the lowest pk keeps the name whatever the order', async () => {
      await run(db, [user(7, 'BOB'), user(3, 'bob'), user(5, 'Bob')]);
      const rows = (await db.knex.raw(`SELECT username FROM auth_user ORDER BY username`)).rows.map((r: { username: string }) => r.username);
      expect(rows).to.include('bob');
      expect(rows.filter((n: string) => /^(BOB|Bob)-[a-z0-9]{2}$/.test(n))).to.have.length(2);
    });

    it('cuts the base so a renamed username fits 128 characters', async () => {
      const long = 'x'.repeat(128);
      await insertUser(db.knex, { password: 'x', username: long });
      await run(db, [user(1, long)]);
      const names = (await db.knex.raw(`SELECT username FROM auth_user WHERE id > 1`)).rows.map((r: { username: string }) => r.username);
      expect(names[0]).to.have.length(128);
      expect(names[0]).to.match(/^x{125}-[a-z0-9]{2}$/);
    });

    it('with mergeUsers reuses the existing user and skips the imported user\'s emails and options (counted as merged)', async () => {
      await insertUser(db.knex, { password: 'keep', username: 'Alice', email: 'old@example.com' });
      const s = await run(db, [user(1, 'alice'), useremail(1, 1, 'new@example.com'), useroption(1, 1, 'timezone', 'UTC'), email(1, 'new@example.com')],
        { mergeUsers: true });
      expect(s.models['sentry.user']).to.include({ merged: 1, inserted: 0 });
      expect(s.models['sentry.useremail']).to.include({ merged: 1, inserted: 0 });
      expect(s.models['sentry.useroption']).to.include({ merged: 1, inserted: 0 });
      expect(s.models['sentry.email']).to.include({ inserted: 1 });
      expect(await db.count('auth_user')).to.equal(1);
      expect((await db.knex.raw('SELECT password, is_unclaimed FROM auth_user')).rows[0]).to.deep.equal({ password: 'keep', is_unclaimed: false });
      expect(await db.count('sentry_useremail')).to.equal(0);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(0);
      const map = (await db.knex.raw(`SELECT source_pk, target_id, kind FROM userport.pk_map WHERE model = 'sentry.user'`)).rows;
      expect(map).to.deep.equal([{ source_pk: 1, target_id: 1, kind: 'merged' }]);
    });

    it('with mergeUsers merges later users of a name into the first one of the file', async () => {
      const s = await run(db, [user(2, 'Carol'), user(1, 'carol'), useremail(1, 1, 'a@example.com'), useremail(2, 2, 'b@example.com')], { mergeUsers: true });
      expect(s.models['sentry.user']).to.include({ inserted: 1, merged: 1 });
      expect((await db.knex.raw('SELECT username FROM auth_user')).rows).to.deep.equal([{ username: 'carol' }]);
      const ues = (await db.knex.raw('SELECT email FROM sentry_useremail ORDER BY email')).rows.map((r: { email: string }) => r.email);
      expect(ues).to.deep.equal(['a@example.com', 'carol@example.com']);
    });
  });

  describe('emails', () => {
    it('reuses an existing row with the same address, case-insensitively, and dedups within the file', async () => {
      await insertEmail(db.knex, 'Shared@Example.com');
      const s = await run(db, [email(1, 'shared@example.com'), email(2, 'new@example.com'), email(3, 'NEW@example.com')]);
      expect(s.models['sentry.email']).to.include({ inserted: 1, existing: 2 });
      const rows = (await db.knex.raw('SELECT email FROM sentry_email ORDER BY id')).rows.map((r: { email: string }) => r.email);
      expect(rows).to.deep.equal(['Shared@Example.com', 'new@example.com']);
      const map = (await db.knex.raw(`SELECT source_pk, kind FROM userport.pk_map WHERE model = 'sentry.email' ORDER BY 1`)).rows;
      expect(map).to.deep.equal([{ source_pk: 1, kind: 'existing' }, { source_pk: 2, kind: 'inserted' }, { source_pk: 3, kind: 'existing' }]);
    });
  });

  describe('user emails', () => {
    it('remaps the user, resets verification with a new 32-character hash, one row per (user, email)', async () => {
      const s = await run(db, [user(10, 'alice'), useremail(5, 10, 'a@x.io'), useremail(6, 10, 'a@x.io'), useremail(7, 10, 'b@x.io')]);
      expect(s.models['sentry.useremail']).to.include({ read: 3, inserted: 2, existing: 1 });
      const rows = (await db.knex.raw(`SELECT e.* FROM sentry_useremail e WHERE email LIKE '%x.io' ORDER BY email`)).rows;
      expect(rows).to.have.length(2);
      for (const r of rows) {
        expect(r.is_verified).to.equal(false);
        expect(r.validation_hash).to.match(/^[0-9a-f]{32}$/).and.not.equal('mCnWesSVvYQcq7qXQ36AZHwosAd6cghE');
        expect(Date.now() - new Date(r.date_hash_added).getTime()).to.be.below(120000);
      }
      expect(new Set(rows.map((r: { validation_hash: string }) => r.validation_hash)).size).to.equal(2);
    });
  });

  describe('user options', () => {
    it('keeps global options only, first (lowest pk) per (user, key) wins, values stored faithfully in both encodings', async () => {
      const s = await run(db, [
        user(1, 'alice'),
        useroption(9, 1, 'timezone', 'Europe/Paris'),
        useroption(3, 1, 'timezone', '"Europe/Vienna"'),
        useroption(4, 1, 'language', 'en'),
        useroption(5, 1, 'issues:defaults', { dark: true, n: [1, 2.5, null] }),
        useroption(6, 1, 'mail:alert', '1', { project_id: 4 }),
        useroption(7, 1, 'mail:email', 'x', { organization_id: 2 }),
        useroption(8, 1, 'nothing', null),
      ]);
      expect(s.models['sentry.useroption']).to.deep.include({ read: 7, inserted: 4 });
      expect(s.models['sentry.useroption']!.dropped).to.deep.equal({ 'scoped to an organization or project': 2, 'duplicate (user, key): the first one wins': 1 });
      const rows = (await db.knex.raw(`SELECT key, value FROM sentry_useroption ORDER BY key`)).rows;
      expect(rows).to.deep.equal([
        { key: 'issues:defaults', value: { dark: true, n: [1, 2.5, null] } },
        { key: 'language', value: 'en' },
        { key: 'nothing', value: null },
        // The legacy JSON-text encoding is decoded to the value current Sentry stores.
        { key: 'timezone', value: 'Europe/Vienna' },
      ]);
    });

    it('keeps an existing option of a merged-into user untouched', async () => {
      await insertUser(db.knex, { password: 'x', username: 'alice' });
      await db.knex.raw(`INSERT INTO sentry_useroption (user_id, key, value) VALUES (1, 'timezone', '"UTC"')`);
      const s = await run(db, [user(1, 'alice'), useroption(1, 1, 'timezone', 'Europe/Vienna')], { mergeUsers: true });
      expect(s.models['sentry.useroption']).to.include({ merged: 1, inserted: 0 });
      expect((await db.knex.raw('SELECT value FROM sentry_useroption')).rows).to.deep.equal([{ value: 'UTC' }]);
    });
  });

  describe('filterUsernames', () => {
    const records = () => [
      user(1, 'alice'), user(2, 'bob'), user(3, 'carol', { email: 'shared@example.com' }),
      email(1, 'alice@example.com'), email(2, 'bob@example.com'), email(3, 'shared@example.com'), email(4, 'alias@example.com'),
      useremail(1, 1, 'alice@example.com'), useremail(2, 1, 'alias@example.com'), useremail(3, 2, 'bob@example.com'),
      useroption(1, 1, 'timezone', 'UTC'), useroption(2, 2, 'timezone', 'UTC'),
    ];

    it('keeps only the listed users, their user emails and options and their email rows; reports names that matched nothing', async () => {
      const findings = tmpPath('findings-filter.json');
      const s = await run(db, records(), { filterUsernames: ['alice', 'carol', 'nobody'], findingsFile: findings });
      expect(s.unmatchedUsernames).to.deep.equal(['nobody']);
      expect(s.models['sentry.user']).to.include({ inserted: 2, filtered: 1 });
      expect(s.models['sentry.useremail']).to.include({ inserted: 2, filtered: 1 });
      expect(s.models['sentry.useroption']).to.include({ inserted: 1, filtered: 1 });
      expect(s.models['sentry.email']).to.include({ inserted: 3, filtered: 1 });
      const snap = await tableSnapshot(db.knex);
      expect((snap.users as { username: string }[]).map((u) => u.username)).to.deep.equal(['alice', 'carol']);
      expect((snap.emails as { email: string }[]).map((e) => e.email)).to.deep.equal(['alias@example.com', 'alice@example.com', 'shared@example.com']);
      const f = JSON.parse(fs.readFileSync(findings, 'utf8')) as { kind: string; model: string; pk?: number; reason: string }[];
      expect(f.find((x) => x.kind === 'unmatched')!.reason).to.include('nobody');
      expect(f.filter((x) => x.kind === 'filtered').map((x) => `${x.model}:${x.pk}`).sort())
        .to.deep.equal(['sentry.email:2', 'sentry.user:2', 'sentry.useremail:3', 'sentry.useroption:2']);
    });

    it('reads a one-shot iterable of names once: the resume key and the filter see the same names', async () => {
      function* names() { yield 'alice'; yield 'carol'; }
      const s = await run(db, records(), { filterUsernames: names() as unknown as string[] });
      expect(s.models['sentry.user']).to.include({ inserted: 2, filtered: 1 });
      const snap = await tableSnapshot(db.knex);
      expect((snap.users as { username: string }[]).map((u) => u.username)).to.deep.equal(['alice', 'carol']);
    });

    it('imports nothing with an empty list', async () => {
      const s = await run(db, records(), { filterUsernames: [] });
      expect(s.models['sentry.user']).to.include({ inserted: 0, filtered: 3 });
      for (const t of TARGET_TABLES) expect(await db.count(t), t).to.equal(0);
    });
  });

  describe('rows whose user is not imported', () => {
    it('drops them with a reason in the summary and the findings, never silently', async () => {
      const findings = tmpPath('findings-orphans.json');
      const s = await run(db, [user(1, 'alice'), useremail(1, 99, 'ghost@example.com'), useroption(1, 98, 'timezone', 'UTC')], { findingsFile: findings });
      expect(s.models['sentry.useremail']!.dropped).to.deep.equal({ 'user not in the export': 1 });
      expect(s.models['sentry.useroption']!.dropped).to.deep.equal({ 'user not in the export': 1 });
      const f = JSON.parse(fs.readFileSync(findings, 'utf8')) as { kind: string; model: string; pk: number; ordinal: number; offset: number }[];
      expect(f.map((x) => [x.kind, x.model, x.pk, x.ordinal])).to.deep.equal([
        ['dropped', 'sentry.useremail', 1, 2], ['dropped', 'sentry.useroption', 1, 3],
      ]);
      expect(f[0]!.offset).to.be.a('number').and.above(0);
    });
  });

  describe('file order', () => {
    it('gives the same result for any order of the records (children before parents, split model runs)', async () => {
      const recs: Rec[] = [];
      for (let i = 1; i <= 40; i++) {
        recs.push(user(i, i % 7 === 0 ? `dup${i % 3}` : `user${i}`, { email: i % 5 === 0 ? 'shared@example.com' : `u${i}@example.com` }));
        recs.push(email(i, i % 5 === 0 ? 'SHARED@example.com' : `u${i}@example.com`));
        recs.push(useremail(i, i, `u${i}@example.com`), useremail(100 + i, i, 'shared@example.com'));
        recs.push(useroption(i, i, 'issues:defaults', `tz${i}`), useroption(100 + i, i, 'issues:defaults', 'later'), useroption(200 + i, i, 'clock_24_hours', i));
      }
      const shuffled = [...recs];
      let seed = 42;
      for (let i = shuffled.length - 1; i > 0; i--) {
        seed = (seed * 1103515245 + 12345) % 2147483648;
        const j = seed % (i + 1);
        [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
      }
      const sorted = [...recs].sort((a, b) => ['sentry.user', 'sentry.email', 'sentry.useroption', 'sentry.useremail'].indexOf(a.model) -
        ['sentry.user', 'sentry.email', 'sentry.useroption', 'sentry.useremail'].indexOf(b.model) || a.pk - b.pk);
      for (const opts of [{}, { mergeUsers: true }]) {
        const a = await freshDatabase();
        const b = await freshDatabase();
        try {
          const sa = await run(a, sorted, opts);
          const sb = await run(b, shuffled, opts);
          // Email rows Sentry's receivers/email.py adds are dated at import time, like Sentry's.
          const strip = (snap: Record<string, unknown[]>) => JSON.parse(JSON.stringify(snap).replace(/(dup\d)-[a-z0-9]{2}/g, '$1-XX')
            .replace(new RegExp(`"date_added":"${new Date().getUTCFullYear()}-[^"]*"`, 'g'), '"date_added":"(import time)"'));
          expect(strip(await tableSnapshot(b.knex))).to.deep.equal(strip(await tableSnapshot(a.knex)));
          expect({ ...sb.models }).to.deep.equal({ ...sa.models });
        } finally {
          await a.close();
          await b.close();
        }
      }
    });
  });

  describe('atomicity and errors', () => {
    it('leaves nothing in the target tables when a record fails at the end of the file', async () => {
      const err = await failure(run(db, [user(1, 'alice'), email(1, 'a@example.com'), useremail(1, 1, 'a@example.com'), user(2, 'bob', { date_joined: '2023-02-30T00:00:00Z' })]));
      expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
      expect(err.position).to.include({ model: 'sentry.user', pk: 2, ordinal: 4, field: 'date_joined' });
      for (const t of [...TARGET_TABLES, 'userport.imports', 'userport.pk_map', 'userport.stage']) expect(await db.count(t), t).to.equal(0);
    });

    it('says model, pk, ordinal and field when a record fails its schema', async () => {
      const cases: [Rec, string][] = [
        [user(1, 'x'.repeat(129)), 'username'],
        [{ model: 'sentry.user', pk: 1, fields: { name: 'no username' } }, 'username'],
        [user(1, 'a', { is_active: 'yes' }), 'is_active'],
        [user(1, 'a', { flags: '-1' }), 'flags'],
        [user(1, 'a', { avatar_type: 1.5 }), 'avatar_type'],
        [user(1, 'a', { name: 'nul\u0000here' }), 'name'],
        [useremail(1, 'one' as unknown as number, 'a@b.c'), 'user'],
        [useroption(1, 1, 'k'.repeat(65), 1), 'key'],
        [useroption(1, 1, 'k', { s: 'nul\u0000' }), 'value'],
        [email(1, 'e'.repeat(201)), 'email'],
      ];
      for (const [rec, field] of cases) {
        const err = await failure(run(db, [user(50, 'ok'), rec]));
        expect(err.code, field).to.equal('USERPORT_RECORD_SCHEMA');
        expect(err.position, field).to.include({ ordinal: 2, model: rec.model, pk: rec.pk, field });
      }
      expect(await db.count('auth_user')).to.equal(0);
    });

    it('says byte offset, line and column for invalid JSON', async () => {
      const file = writeExport('[\n  {"model": "sentry.user", "pk": 1,\n   "fields": {"username": "a",}}\n]');
      const err = await failure(run(db, file));
      expect(err.code).to.equal('USERPORT_PARSE_JSON');
      expect(err.position).to.include({ ordinal: 1, line: 3, column: 31, offset: 68 });
    });

    it('refuses a pk repeated within a model, pointing at the second one', async () => {
      const err = await failure(run(db, [user(1, 'a'), email(1, 'a@b.c'), user(1, 'b')]));
      expect(err.code).to.equal('USERPORT_RECORD_DUPLICATE_PK');
      expect(err.position).to.include({ model: 'sentry.user', pk: 1, ordinal: 3 });
      expect(await db.count('auth_user')).to.equal(0);
    });

    it('writes the error as a finding when the import fails', async () => {
      const findings = tmpPath('findings-err.json');
      await failure(run(db, [user(1, 'a', { is_active: 1 })], { findingsFile: findings }));
      const f = JSON.parse(fs.readFileSync(findings, 'utf8'));
      expect(f).to.have.length(1);
      expect(f[0]).to.include({ finding: 'ImportError', kind: 'USERPORT_RECORD_SCHEMA', model: 'sentry.user', pk: 1, field: 'is_active' });
    });

    it('validates its options up front, naming them', async () => {
      const cases: [Partial<ImportOptions>, string][] = [
        [{ importId: 'x' }, 'importId'],
        [{ resumable: true, dryRun: true }, 'dryRun'],
        [{ maxRejects: 3 }, 'maxRejects'],
        [{ filterUsernames: 'alice' as unknown as string[] }, 'filterUsernames'],
      ];
      for (const [o, option] of cases) {
        const err = await failure(run(db, [user(1, 'a')], o));
        expect(err.code).to.equal('USERPORT_OPTION_INVALID');
        expect((err as { option?: string }).option).to.equal(option);
      }
    });
  });

  describe('dry run', () => {
    it('reports what would happen and writes nothing', async () => {
      const s = await run(db, [user(1, 'alice'), useremail(1, 1, 'alice@example.com')], { dryRun: true });
      expect(s.mode).to.equal('dry-run');
      expect(s.models['sentry.user']!.inserted).to.equal(1);
      for (const t of [...TARGET_TABLES, 'userport.imports']) expect(await db.count(t), t).to.equal(0);
    });
  });
});
