/**
 * The empty-target path (issue #11 target 2): into empty tables the merge loads the rows first and
 * builds the indexes and constraints after, in the import's transaction. It must write exactly
 * what the incremental path writes, leave the very same definitions behind, never lock or alter
 * a table that holds data, never wait for another session, and leave nothing behind on failure.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { importUsers, type ImportOptions } from '../../../lib/import.js';
import { UserportError } from '../../../lib/errors.js';
import { definitions, freshDatabase, type TestDb } from '../../helpers/db.js';
import { tableSnapshot, TARGET_TABLES, user, useremail, useroption, generatedExport, writeExport } from '../../helpers/exports.js';
import { insertEmail, insertRow, insertUser } from '../../helpers/sentry-rows.js';
import { targetDatabase, unavailable } from '../../helpers/targets.js';
import { STATEMENTS_APART, type TraceEvent } from '../../../lib/trace.js';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'bin', 'userport.js');

function generated(users: number, seed: number): Promise<string> {
  return generatedExport({ users, seed, collisionRate: 0.05 });
}

/** Rows with their ids (renamed users' random tails masked), and the other tables as plain data. */
async function rowsWithIds(db: TestDb) {
  const ids = {
    users: (await db.knex.raw(`SELECT id, regexp_replace(username, '-[a-z0-9]{2,12}$', '-~') AS u FROM auth_user ORDER BY id`)).rows,
    emails: (await db.knex.raw('SELECT id, email FROM sentry_email ORDER BY id')).rows,
    userEmails: (await db.knex.raw('SELECT user_id, email FROM sentry_useremail ORDER BY user_id, email')).rows,
    options: (await db.knex.raw('SELECT user_id, key, value FROM sentry_useroption ORDER BY user_id, key')).rows,
    hashes: (await db.knex.raw('SELECT user_id FROM sentry_lostpasswordhash ORDER BY user_id')).rows,
  };
  const snap = JSON.parse(JSON.stringify(await tableSnapshot(db.knex)).replace(/-[a-z0-9]{2,12}(?=["@])/g, '-~'));
  return { ids, snap };
}

describe('bulk load into empty target tables', function () {
  this.timeout(180000);

  let file: string;
  let pristine: string[];
  let usernames: string[];
  /** Each user's address, and its email_unique candidate (the exported one, else the address). */
  let addresses: string[];
  let candidates: (string | null)[];
  before(async () => {
    file = await generated(3000, 11);
    const users = (JSON.parse(fs.readFileSync(file, 'utf8')) as { model: string; fields: { username: string; email: string; email_unique?: string | null } }[])
      .filter((r) => r.model === 'sentry.user');
    usernames = users.map((r) => r.fields.username);
    addresses = users.map((r) => r.fields.email);
    candidates = users.map((r) => r.fields.email_unique || r.fields.email || null);
    const db = await freshDatabase();
    try { pristine = await definitions(db); } finally { await db.close(); }
    expect(pristine.length, 'the migration made indexes and constraints').to.be.greaterThan(10);
  });

  const cases: [string, () => Partial<ImportOptions>][] = [
    ['default options', () => ({})],
    ['--merge-users', () => ({ mergeUsers: true })],
    ['a username filter', () => ({ filterUsernames: [...usernames.slice(0, 40), usernames[2999]!, 'nobody'] })],
  ];
  for (const [name, options] of cases) {
    it(`writes exactly the rows and ids of the incremental path and leaves the same definitions (${name})`, async () => {
      const bulk = await freshDatabase();
      const incremental = await freshDatabase();
      const extra = options();
      try {
        const a = await importUsers({ source: file, databaseUrl: bulk.url, ...extra });
        const b = await importUsers({ source: file, databaseUrl: incremental.url, bulkLoad: 'off', ...extra });
        expect([a.bulkLoad, b.bulkLoad]).to.deep.equal([true, false]);
        expect(a.models).to.deep.equal(b.models);
        expect(a.adjacent).to.deep.equal(b.adjacent);
        expect(await bulk.count('auth_user'), 'the export was imported').to.be.greaterThan(0);
        expect(await rowsWithIds(bulk)).to.deep.equal(await rowsWithIds(incremental));
        expect(await definitions(bulk)).to.deep.equal(pristine);
        expect(await definitions(incremental)).to.deep.equal(pristine);
        // The rebuilt constraints work: a duplicate username is refused, a dangling user id too.
        // (A full valid row, so that the UNIQUE on username is what refuses it, not a NOT NULL.)
        const taken = (await bulk.knex.raw(`SELECT username FROM auth_user ORDER BY id LIMIT 1`)).rows[0].username as string;
        const err = await insertUser(bulk.knex, { password: 'x', username: taken }).then(() => undefined, (e: { code?: string; constraint?: string }) => e);
        expect(err?.code).to.equal('23505');
        expect(err?.constraint).to.equal((await bulk.knex.raw(`SELECT conname FROM pg_constraint WHERE conrelid = 'auth_user'::regclass AND contype = 'u'
          AND conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = 'auth_user'::regclass AND attname = 'username')]`)).rows[0].conname);
        const fk = await bulk.knex.raw(`INSERT INTO sentry_useroption (user_id, key, value) VALUES (999999999, 'k', '1')`).then(() => undefined, (e: { code?: string }) => e.code);
        expect(fk).to.equal('23503');
        // The rebuilt primary keys too (dropped for the load: nothing outside the five tables hangs on them).
        // A copy of each table's first row with another value in its unique columns, so that only the primary key can refuse it.
        const hashless = (await bulk.knex.raw(`DELETE FROM sentry_lostpasswordhash WHERE id = (SELECT max(id) FROM sentry_lostpasswordhash) RETURNING user_id`)).rows[0].user_id as number;
        const other: Record<string, Record<string, unknown>> = {
          sentry_useroption: { key: 'another-key' }, sentry_useremail: { email: 'another@example.com' },
          sentry_email: { email: 'another@example.com' }, sentry_lostpasswordhash: { user_id: hashless },
        };
        for (const [table, change] of Object.entries(other)) {
          const row = { ...(await bulk.knex.raw(`SELECT * FROM ${table} ORDER BY id LIMIT 1`)).rows[0] as Record<string, unknown>, ...change };
          const cols = Object.keys(row).join(', ');
          const refused = await bulk.knex.raw(`INSERT INTO ${table} (${cols}) OVERRIDING SYSTEM VALUE SELECT ${cols} FROM json_populate_record(NULL::${table}, ?)`, [JSON.stringify(row)])
            .then(() => 'inserted', (e: { code?: string; constraint?: string }) => `${e.code} ${e.constraint}`);
          const pkey = (await bulk.knex.raw(`SELECT conname FROM pg_constraint WHERE conrelid = ?::regclass AND contype = 'p'`, [table])).rows[0].conname as string;
          expect(refused, table).to.equal(`23505 ${pkey}`);
        }
      } finally {
        await bulk.close();
        await incremental.close();
      }
    });
  }

  it('over a few existing rows (a new Sentry\'s admin): the same rows, ids, outcomes and findings as the incremental path, decided against them', async () => {
    const bulk = await freshDatabase();
    const incremental = await freshDatabase();
    try {
      // The admin holds one of the export's usernames (another case) and another user's address;
      // a second user holds a third one's email_unique candidate.
      const holder = candidates.findIndex((c, i) => i > 12 && c);
      for (const db of [bulk, incremental]) {
        const id = await insertUser(db.knex, { password: 'x', username: usernames[5]!.toUpperCase(), email: addresses[9]!.toUpperCase(), email_unique: null });
        await db.knex.raw(`INSERT INTO sentry_useremail (user_id, email, validation_hash, date_hash_added, is_verified) VALUES (?, 'admin@example.com', 'h', now(), true)`, [id]);
        await insertEmail(db.knex, 'admin@example.com');
        await insertUser(db.knex, { password: 'x', username: 'second-admin', email: 'second-admin@example.org', email_unique: candidates[holder] });
      }
      const a = await importUsers({ source: file, databaseUrl: bulk.url });
      const b = await importUsers({ source: file, databaseUrl: incremental.url, bulkLoad: 'off' });
      expect([a.bulkLoad, b.bulkLoad]).to.deep.equal([true, false]);
      expect(a.models).to.deep.equal(b.models);
      expect(a.models['sentry.user']!.renamed, 'the admin\'s name is taken').to.be.greaterThan(0);
      expect(a.adjacent).to.deep.equal(b.adjacent);
      expect(await rowsWithIds(bulk)).to.deep.equal(await rowsWithIds(incremental));
      const findings = async (db: typeof bulk) => (await db.knex.raw(`SELECT kind, model, source_pk, regexp_replace(reason, 'imported as .*', '') AS reason FROM userport.findings ORDER BY 2, 3, 1, 4`)).rows;
      const found = await findings(bulk);
      expect(found).to.deep.equal(await findings(incremental));
      // Each of the three holders was found: the name, the address, the email_unique.
      const reasons = (found as { reason: string }[]).map((f) => f.reason).join('\n');
      expect(reasons).to.contain('username taken');
      expect(reasons).to.contain('address also held by existing user id');
      expect(reasons).to.contain(`email_unique left empty: ${candidates[holder]} is the email_unique of existing user id`);
      expect(await definitions(bulk)).to.deep.equal(pristine);
    } finally {
      await bulk.close();
      await incremental.close();
    }
  });

  it('takes the incremental path when a target table holds more than a few rows (1,000), and changes no definition', async () => {
    const db = await freshDatabase();
    try {
      await db.knex.raw(`INSERT INTO sentry_email (email, date_added) SELECT 'someone' || i || '@example.com', now() FROM generate_series(1, 1001) i`);
      const s = await importUsers({ source: file, databaseUrl: db.url });
      expect(s.bulkLoad).to.equal(false);
      expect(await db.count('auth_user')).to.equal(s.models['sentry.user']!.inserted);
      expect(await definitions(db)).to.deep.equal(pristine);
    } finally {
      await db.close();
    }
  });

  it('does not wait for a session that reads a target table: it takes the incremental path', async () => {
    const db = await freshDatabase();
    const reader = new pg.Client({ connectionString: db.url });
    await reader.connect();
    try {
      await reader.query('BEGIN');
      await reader.query('SELECT count(*) FROM auth_user');
      const s = await importUsers({ source: file, databaseUrl: db.url });
      expect(s.bulkLoad).to.equal(false);
      expect(await db.count('auth_user')).to.equal(3000);
    } finally {
      await reader.query('ROLLBACK').catch(() => undefined);
      await reader.end();
      await db.close();
    }
  });

  it('keeps the definitions other tables depend on, and never touches those tables', async () => {
    const db = await freshDatabase();
    try {
      // Another table of a Sentry database: it holds data and points at auth_user by username, and
      // at a user email by its primary key (which the load then keeps, as it keeps auth_user's).
      await db.knex.raw(`CREATE TABLE other_member (id serial PRIMARY KEY, username varchar(128) REFERENCES auth_user (username) DEFERRABLE INITIALLY DEFERRED,
                           user_id bigint REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED,
                           useremail_id bigint REFERENCES sentry_useremail (id) DEFERRABLE INITIALLY DEFERRED)`);
      await db.knex.raw(`INSERT INTO other_member (username, user_id) VALUES (NULL, NULL)`);
      const before = await definitions(db);
      const s = await importUsers({ source: file, databaseUrl: db.url });
      expect(s.bulkLoad).to.equal(true);
      expect(await definitions(db)).to.deep.equal(before);
      expect((await db.knex.raw(`SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint WHERE conrelid = 'other_member'::regclass AND contype = 'f' ORDER BY conname`)).rows.map((r: { d: string }) => r.d))
        .to.deep.equal(['FOREIGN KEY (user_id) REFERENCES auth_user(id) DEFERRABLE INITIALLY DEFERRED', 'FOREIGN KEY (useremail_id) REFERENCES sentry_useremail(id) DEFERRABLE INITIALLY DEFERRED',
          'FOREIGN KEY (username) REFERENCES auth_user(username) DEFERRABLE INITIALLY DEFERRED']);
    } finally {
      await db.close();
    }
  });

  it('a deferred foreign key to a table outside the five (older Sentry schemas) keeps the incremental path, and the import works', async () => {
    const db = await freshDatabase();
    try {
      await db.knex.raw('CREATE TABLE sentry_project (id bigserial PRIMARY KEY)');
      await db.knex.raw(`ALTER TABLE sentry_useroption ADD CONSTRAINT sentry_useroption_project_id_fk FOREIGN KEY (project_id)
                           REFERENCES sentry_project (id) DEFERRABLE INITIALLY DEFERRED`);
      const before = await definitions(db);
      const s = await importUsers({ source: file, databaseUrl: db.url });
      expect(s.bulkLoad).to.equal(false);
      expect(await db.count('auth_user')).to.equal(3000);
      expect(await definitions(db)).to.deep.equal(before);
    } finally {
      await db.close();
    }
  });

  it('a commented index keeps the incremental path (a rebuild would lose the comment)', async () => {
    const db = await freshDatabase();
    try {
      await db.knex.raw(`COMMENT ON INDEX auth_user_username_6821ab7c_like IS 'kept as is'`);
      const s = await importUsers({ source: file, databaseUrl: db.url });
      expect(s.bulkLoad).to.equal(false);
      expect((await db.knex.raw(`SELECT obj_description('auth_user_username_6821ab7c_like'::regclass, 'pg_class') AS d`)).rows[0].d).to.equal('kept as is');
    } finally {
      await db.close();
    }
  });

  it('a dry run and a failed import leave the tables empty and every definition as it was', async () => {
    const db = await freshDatabase();
    try {
      const dry = await importUsers({ source: file, databaseUrl: db.url, dryRun: true });
      expect(dry.bulkLoad).to.equal(true);
      expect(await db.count('auth_user')).to.equal(0);
      expect(await definitions(db)).to.deep.equal(pristine);

      // A Sentry database with a rule userport does not know: a unique index on auth_user.email.
      // Rebuilt after the load, it fails there, as the incremental insert would fail on it.
      await db.knex.raw('CREATE UNIQUE INDEX auth_user_email_strict ON auth_user (email)');
      const withExtra = await definitions(db);
      const twins = writeExport([user(1, 'ann', { email: 'same@example.com' }), user(2, 'bob', { email: 'same@example.com' }),
        useremail(3, 1, 'same@example.com'), useroption(4, 2, 'timezone', 'UTC')]);
      const codes: string[] = [];
      for (const bulkLoad of ['auto', 'off'] as const) {
        const err = await importUsers({ source: twins, databaseUrl: db.url, bulkLoad }).then(() => undefined, (e: unknown) => e);
        expect(err).to.be.instanceOf(UserportError);
        codes.push((err as UserportError).code);
        for (const t of TARGET_TABLES) expect(await db.count(t), t).to.equal(0);
        expect(await definitions(db)).to.deep.equal(withExtra);
      }
      expect(codes[0]).to.equal(codes[1]);
    } finally {
      await db.close();
    }
  });

  it('a target whose id sequence is behind its rows (a restore that did not reset it) fails before writing anything, saying which table and how to fix it', async () => {
    const small = writeExport([user(1, 'ann', { email: 'ann@example.com' }), useremail(2, 1, 'ann@example.com'), useroption(3, 1, 'timezone', 'UTC')]);
    for (const bulkLoad of ['auto', 'off'] as const) {
      const db = await freshDatabase();
      try {
        // A new Sentry's admin, restored with its ids: its user email holds id 7, the sequence was never moved.
        const admin = await insertUser(db.knex, { username: 'admin', email: 'admin@example.com' });
        await insertRow(db.knex, 'sentry_useremail', { id: 7, user_id: admin, email: 'admin@example.com' });
        const before = await tableSnapshot(db.knex);
        const defs = await definitions(db);
        const err = await importUsers({ source: small, databaseUrl: db.url, bulkLoad }).then(() => undefined, (e: unknown) => e);
        expect(err, bulkLoad).to.be.instanceOf(UserportError);
        expect((err as UserportError).code).to.equal('USERPORT_TARGET_SCHEMA');
        expect((err as Error).message).to.equal('sentry_useremail in the target database holds id 7, but its id sequence public.sentry_useremail_id_seq '
          + 'would give 1 next: new rows would take ids already there (a restore that did not reset the sequences?). '
          + "Fix it with: SELECT setval('public.sentry_useremail_id_seq', (SELECT max(id) FROM sentry_useremail)); nothing was written");
        expect(await tableSnapshot(db.knex)).to.deep.equal(before);
        expect(await definitions(db)).to.deep.equal(defs);
        // The fix it names, and the import goes through.
        await db.knex.raw(`SELECT setval('public.sentry_useremail_id_seq', (SELECT max(id) FROM sentry_useremail))`);
        await importUsers({ source: small, databaseUrl: db.url, bulkLoad });
        expect(await db.count('sentry_useremail')).to.equal(2);
      } finally {
        await db.close();
      }
    }
  });

  for (const kind of ['sentry-9', 'sentry-2026'] as const) {
    const why = unavailable(kind);
    it(`the same check on a new ${kind} install: an auth_user restored at id 50 with the sequence at its admin, refused, fixed by the statement it names`, async function () {
      if (why) {
        process.stdout.write(`      skipped: ${why}\n`);
        return this.skip();
      }
      const small = writeExport([user(1, 'ann', { email: 'ann@example.com' }), useremail(2, 1, 'ann@example.com'), useroption(3, 1, 'timezone', 'UTC')]);
      const db = await targetDatabase(kind, { freshInstall: true });
      try {
        await insertRow(db.knex, 'auth_user', { id: 50, username: 'restored', email: 'restored@example.com' });
        const r = spawnSync(process.execPath, [BIN, 'import', 'users', small, '--database-url', db.url, '--no-progress'], { encoding: 'utf8' });
        expect(r.status, r.stderr).to.equal(1);
        const m = /^userport: auth_user in the target database holds id 50, but its id sequence (\S+) would give 2 next: new rows would take ids already there \(a restore that did not reset the sequences\?\)\. Fix it with: (SELECT setval\('\S+', \(SELECT max\(id\) FROM auth_user\)\)); nothing was written \[USERPORT_TARGET_SCHEMA\]$/m.exec(r.stderr);
        expect(m, r.stderr).to.not.equal(null);
        expect(await db.count('auth_user')).to.equal(2);
        await db.knex.raw(m![2]!);
        const ok = spawnSync(process.execPath, [BIN, 'import', 'users', small, '--database-url', db.url, '--no-progress'], { encoding: 'utf8' });
        expect(ok.status, ok.stderr).to.equal(0);
        expect((await db.knex.raw(`SELECT id FROM auth_user WHERE username = 'ann'`)).rows).to.deep.equal([{ id: 51 }]);
      } finally {
        await db.close();
      }
    });
  }

  it('the early steps build without a parallel worker (Node reads the export meanwhile); the last rebuild has the server\'s own setting back', async () => {
    const db = await freshDatabase();
    try {
      const events: TraceEvent[] = [];
      const stats = await importUsers({ source: file, databaseUrl: db.url, onTrace: (e) => events.push(e) });
      expect(stats.bulkLoad).to.equal(true);
      const server = (await db.knex.raw(`SELECT current_setting('max_parallel_maintenance_workers') AS v`)).rows[0].v as string;
      expect(server, 'the server may give a build workers (its default is 2)').to.not.equal('0');
      const batches = events.flatMap((e) => (e.kind === 'sql' ? [e.sql.split(STATEMENTS_APART)] : []));
      const builds = batches.map((b, i) => ({ b, i })).filter(({ b }) => b.some((sql) => /^(CREATE (UNIQUE )?INDEX|ALTER TABLE \S+ ADD CONSTRAINT)/.test(sql)));
      const setting = /max_parallel_maintenance_workers/;
      const early = builds.filter(({ b }) => b.some((sql) => setting.test(sql)));
      // The users' tables' (the early users step), and the options' when their rows were over
      // before the input (the early rows); the rest at the end.
      expect(early.length, 'the early steps\' builds').to.be.within(1, 2);
      expect(early[0]!.b.some((sql) => /^ALTER TABLE auth_user ADD CONSTRAINT/.test(sql)), 'the users\' table\'s constraints among the first').to.equal(true);
      for (const { b, i } of early) {
        expect(b.slice(0, 2)).to.deep.equal([`SELECT current_setting('max_parallel_maintenance_workers') AS s0`,
          `SELECT set_config('max_parallel_maintenance_workers', '0', true)`]);
        expect(b.slice(2).some((sql) => setting.test(sql)), 'changed once, before its builds').to.equal(false);
        expect(batches[i + 1], 'put back right after its builds').to.deep.equal([`SELECT set_config('max_parallel_maintenance_workers', '${server}', true)`]);
      }
      const last = builds[builds.length - 1]!;
      expect(early.map(({ i }) => i), 'the last rebuild is not an early one').to.not.include(last.i);
      expect(batches.slice(early[early.length - 1]!.i + 2).flat().some((sql) => setting.test(sql)), 'nothing changes it after').to.equal(false);
      expect(await definitions(db)).to.deep.equal(pristine);
    } finally {
      await db.close();
    }
  });

  it('the CLI: --bulk-load is checked before any database work, and every bulk statement has a plan without a nested loop over a scan', async () => {
    const bad = spawnSync(process.execPath, [BIN, 'import', 'users', file, '--bulk-load', 'sometimes', '--database-url', 'postgresql://nobody@127.0.0.1:1/none'], { encoding: 'utf8' });
    expect(bad.status).to.equal(2);
    expect(bad.stderr).to.contain('--bulk-load must be "auto" or "off", got a string ("sometimes")');

    const db = await freshDatabase();
    const offDb = await freshDatabase();
    try {
      const run = spawnSync(process.execPath, [BIN, 'import', 'users', file, '--database-url', db.url, '--no-progress'],
        { encoding: 'utf8', env: { ...process.env, USERPORT_EXPLAIN_SQL: '1' } });
      expect(run.status, run.stderr.slice(-2000)).to.equal(0);
      expect(run.stdout).to.contain('Bulk path: rows loaded first, indexes and constraints built after');
      const plans = [...run.stderr.matchAll(/\[plan\] (.*)\n([\s\S]*?)\n\[\/plan\]/g)].map((m) => ({ sql: m[1]!, plan: m[2]! }));
      // The signal receivers' anti-joins (the user emails and options went straight in, and none
      // of the rows found is missing: nothing to insert after them).
      expect(plans.filter((p) => /^CREATE TEMP TABLE up_(primary|signalled)\b/.test(p.sql)).length, 'both receivers\' anti-joins were planned').to.equal(2);
      for (const p of plans) expect(p.plan, p.sql).to.not.match(/Nested Loop[\s\S]*->\s+Seq Scan/);
      const off = spawnSync(process.execPath, [BIN, 'import', 'users', file, '--database-url', offDb.url, '--no-progress', '--bulk-load', 'off'], { encoding: 'utf8' });
      expect(off.status, off.stderr.slice(-2000)).to.equal(0);
      expect(off.stdout).to.not.contain('Bulk path');
    } finally {
      await db.close();
      await offDb.close();
    }
  });
});
