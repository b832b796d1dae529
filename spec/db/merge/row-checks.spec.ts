/**
 * Issue #23, scenario b: the per-row foreign-key checks of the rows written for the users an
 * import creates are off for its transaction (lib/db/merge/row-checks.ts). They cannot fail, and
 * they cost about 3 s at COMMIT per 100k users (on the bulk path, the foreign keys stay in place
 * instead of being dropped and checked again when added back). What is checked here: the rows are
 * those of an import whose checks ran (a role that may not turn them off); the checks really did
 * not run (PostgreSQL's check locks each user row it finds, FOR KEY SHARE, which leaves its xmax
 * set); whatever the caller's transaction writes after the merge is checked again; and a table with
 * a trigger of its own, or a scope that writes rows pointing at existing rows, keeps them.
 */
import { expect } from 'chai';
import pg from 'pg';
import { freshDatabase, serverUrl, type TestDb } from '../../helpers/db.js';
import { email, tableSnapshot, user, useremail, useroption, writeExport, type Rec } from '../../helpers/exports.js';
import { adminTargets, tracedImport } from '../../helpers/traced-import.js';
import { targetDatabase, unavailable, type TargetKind } from '../../helpers/targets.js';
import { beginImportRun } from '../../../lib/db/runs.js';
import { mergeStaged, planFor } from '../../../lib/db/merge/index.js';
import { enterWritePath } from '../../../lib/db/merge/row-checks.js';
import { runner } from '../../../lib/db/merge/run.js';
import { ImportStats } from '../../../lib/stats.js';
import type { TraceEvent } from '../../../lib/trace.js';
import { importUsers } from '../../../lib/import.js';

/** 40 users in Sentry's order (user 3 named `admin`, as the target's user, so --merge-users merges it), their emails, options and user emails. */
function records(): Rec[] {
  const out: Rec[] = [];
  for (let i = 1; i <= 40; i++) out.push(user(i, i === 3 ? 'admin' : `u${i}`, { email: `u${i}@example.com` }));
  for (let i = 1; i <= 40; i++) out.push(email(i, `u${i}@example.com`));
  for (let i = 1; i <= 40; i++) out.push(useroption(i, i, 'timezone', 'UTC'));
  for (let i = 1; i <= 40; i++) out.push(useremail(i, i, `u${i}@example.com`));
  return out;
}

const CHECKS = /^\[checks\] .*$/m;

/** Rows of the new users (all but the target's first) whose tuple a foreign-key check locked (FOR KEY SHARE sets xmax). */
const locked = async (db: TestDb) => Number((await db.knex.raw(`SELECT count(*) FILTER (WHERE xmax <> 0) AS n FROM auth_user WHERE id > (SELECT min(id) FROM auth_user)`)).rows[0].n);

/** Child rows whose user does not exist: none, or a check that did not run let a wrong row through. */
const orphans = async (db: TestDb) => Number((await db.knex.raw(`SELECT
    (SELECT count(*) FROM sentry_useroption o WHERE NOT EXISTS (SELECT 1 FROM auth_user u WHERE u.id = o.user_id))
  + (SELECT count(*) FROM sentry_useremail e WHERE NOT EXISTS (SELECT 1 FROM auth_user u WHERE u.id = e.user_id))
  + (SELECT count(*) FROM sentry_lostpasswordhash h WHERE NOT EXISTS (SELECT 1 FROM auth_user u WHERE u.id = h.user_id)) AS n`)).rows[0].n);

/** The foreign keys of the rows written for new users into auth_user, and whether each is validated. */
const foreignKeys = async (db: TestDb) => (await db.knex.raw(`SELECT conrelid::regclass::text || '.' || conname AS k, convalidated AS v
  FROM pg_constraint WHERE contype = 'f' AND confrelid = 'auth_user'::regclass
    AND conrelid IN ('sentry_useroption'::regclass, 'sentry_useremail'::regclass, 'sentry_lostpasswordhash'::regclass) ORDER BY 1`)).rows as { k: string; v: boolean }[];

/** What the `[bulk]` trace line says the bulk path dropped (none: no bulk path). */
const dropped = (stderr: string) => (stderr.match(/^\[bulk\] load first, then build: (.*)$/m)?.[1] ?? '').split(', ').filter(Boolean);

describe('the new users\' rows without their per-row foreign-key checks (issue #23)', function () {
  this.timeout(120000);
  const { target } = adminTargets();

  /** A login role of its own on `db`, allowed to write every table; `setting`: also GRANT SET ON PARAMETER session_replication_role. */
  const roles: string[] = [];
  after(async () => {
    const c = new pg.Client({ connectionString: serverUrl() });
    await c.connect();
    try {
      // DROP OWNED takes back the grant on the parameter (shared); the tests' databases, and their grants, are gone.
      for (const r of roles) {
        if ((await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [r])).rowCount) await c.query(`DROP OWNED BY ${r}; DROP ROLE ${r}`);
      }
    } finally { await c.end(); }
  });
  const plainRole = async (db: TestDb, setting: boolean): Promise<string> => {
    const name = `up_plain_${process.pid}_${roles.length}`;
    roles.push(name);
    await db.knex.raw(`CREATE ROLE ${name} LOGIN PASSWORD 'plain'`);
    await db.knex.raw(`GRANT CREATE ON DATABASE ${new URL(db.url).pathname.slice(1)} TO ${name}`);
    for (const s of ['public', 'userport']) {
      await db.knex.raw(`GRANT USAGE, CREATE ON SCHEMA ${s} TO ${name}`);
      await db.knex.raw(`GRANT ALL ON ALL TABLES IN SCHEMA ${s} TO ${name}`);
      await db.knex.raw(`GRANT ALL ON ALL SEQUENCES IN SCHEMA ${s} TO ${name}`);
    }
    if (setting) await db.knex.raw(`GRANT SET ON PARAMETER session_replication_role TO ${name}`);
    const u = new URL(db.url);
    u.username = name;
    u.password = 'plain';
    return u.toString();
  };

  it('writes the rows an import whose checks ran writes, and its checks did not run', async () => {
    const file = writeExport(records());
    const off = await target();
    const kept = await target();
    const keptUrl = await plainRole(kept, false);
    // The general path (--bulk-load off), with the admin merged: its option and user email are dropped.
    const a = tracedImport(file, off.url, '--bulk-load', 'off', '--merge-users');
    const b = tracedImport(file, keptUrl, '--bulk-load', 'off', '--merge-users');
    expect(a.stderr.match(CHECKS)?.[0]).to.equal('[checks] the new users\' rows: per-row foreign-key checks off for this transaction (they cannot fail)');
    expect(b.stderr.match(CHECKS)?.[0]).to.equal('[checks] the new users\' rows: per-row foreign-key checks not turned off: this role may not set session_replication_role');
    expect(a.models).to.deep.equal(b.models);
    expect(await tableSnapshot(off.knex)).to.deep.equal(await tableSnapshot(kept.knex));
    // 39 new users: each row the checks found is locked where they ran, none where they did not.
    expect(await locked(kept)).to.equal(39);
    expect(await locked(off)).to.equal(0);
    expect(await orphans(off)).to.equal(0);
  });

  it('turns them off for a role granted SET on session_replication_role (PostgreSQL 15+), not only for a superuser', async () => {
    const db = await target();
    const url = await plainRole(db, true);
    const r = tracedImport(writeExport(records()), url, '--bulk-load', 'off');
    expect(r.stderr.match(CHECKS)?.[0]).to.match(/checks off for this transaction/);
    expect(await locked(db)).to.equal(0);
    expect(await orphans(db)).to.equal(0);
  });

  it('keeps them where the table has a trigger of its own, and that trigger fires for every row', async () => {
    const db = await target();
    await db.knex.raw(`CREATE TABLE option_log (user_id bigint)`);
    await db.knex.raw(`CREATE FUNCTION log_option() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO option_log VALUES (NEW.user_id); RETURN NEW; END $$`);
    await db.knex.raw(`CREATE TRIGGER log_option AFTER INSERT ON sentry_useroption FOR EACH ROW EXECUTE FUNCTION log_option()`);
    const r = tracedImport(writeExport(records()), db.url, '--bulk-load', 'off');
    expect(r.stderr.match(CHECKS)?.[0]).to.equal('[checks] the new users\' rows: per-row foreign-key checks not turned off: triggers other than foreign keys\' on sentry_useroption');
    expect(await db.count('option_log')).to.equal(40);
    expect(await locked(db)).to.equal(40);
  });

  it('keeps them where a unique constraint is deferrable (its recheck is a trigger that must run)', async () => {
    const db = await target();
    await db.knex.raw(`ALTER TABLE sentry_useremail ADD CONSTRAINT ue_deferrable UNIQUE (email, user_id) DEFERRABLE INITIALLY DEFERRED`);
    const r = tracedImport(writeExport(records()), db.url, '--bulk-load', 'off');
    expect(r.stderr.match(CHECKS)?.[0]).to.equal('[checks] the new users\' rows: per-row foreign-key checks not turned off: triggers other than foreign keys\' on sentry_useremail');
  });

  it('leaves a session_replication_role set outside the import as it is (here local, whose checks run)', async () => {
    const db = await target();
    await db.knex.raw(`ALTER DATABASE ${new URL(db.url).pathname.slice(1)} SET session_replication_role = local`);
    const r = tracedImport(writeExport(records()), db.url, '--bulk-load', 'off');
    expect(r.stderr.match(CHECKS)?.[0]).to.equal('[checks] the new users\' rows: per-row foreign-key checks not turned off: session_replication_role is already local (left as it is)');
    expect(r.stderr).to.not.match(/SET LOCAL session_replication_role/);
    expect(await locked(db)).to.equal(40);
  });

  it('keeps them in the config scope, whose rows may point at existing rows', async () => {
    const db = await target();
    const seen: TraceEvent[] = [];
    await importUsers({ source: writeExport(records()), databaseUrl: db.url, bulkLoad: 'off', scope: 'config', onTrace: (e) => seen.push(e) });
    expect(seen.filter((e) => e.kind === 'row-checks')).to.deep.equal([{ kind: 'row-checks', off: false, why: 'the config scope writes rows that point at existing rows' }]);
    expect(await locked(db)).to.equal(40);
  });

  it('turns them on again when mergeStaged ends: the caller\'s own rows after it are checked at COMMIT', async () => {
    const db = await freshDatabase();
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      const seen: TraceEvent[] = [];
      await c.query('BEGIN');
      const run = await beginImportRun(c, { source: 'row-checks.spec' });
      await mergeStaged(c, { run, mergeUsers: false, filterActive: false, onTrace: (e) => seen.push(e) }, new ImportStats());
      expect(seen.filter((e) => e.kind === 'row-checks')).to.deep.equal([{ kind: 'row-checks', off: true }]);
      expect(seen.filter((e) => e.kind === 'sql' && /session_replication_role/.test(e.sql)).map((e) => (e as { sql: string }).sql))
        .to.deep.equal(['SET LOCAL session_replication_role = replica', 'SET LOCAL session_replication_role = origin']);
      expect((await c.query(`SELECT current_setting('session_replication_role') AS r`)).rows[0].r).to.equal('origin');
      // A row of the caller's that names no user: its check runs at COMMIT and refuses it.
      await c.query(`INSERT INTO sentry_useroption (user_id, key, value) VALUES (987654, 'timezone', '"UTC"')`);
      const err = await c.query('COMMIT').then(() => undefined, (e: { code?: string }) => e);
      expect(err?.code).to.equal('23503');
    } finally {
      await c.end();
      await db.close();
    }
  });

  it('on the bulk path, leaves the foreign keys among the tables in place, unchecked; where the checks stay on, drops them and adds each back', async () => {
    const file = writeExport(records());
    const off = await target();
    const kept = await target();
    await kept.knex.raw(`ALTER DATABASE ${new URL(kept.url).pathname.slice(1)} SET session_replication_role = local`);
    const before = await foreignKeys(off);
    expect(before.map((f) => f.k)).to.include.members(['sentry_useroption.sentry_useroption_user_id_28e7c8bb_fk_auth_user_id', 'sentry_useremail.sentry_useremail_user_id_4f1e0087_fk_auth_user_id']);
    // The admin merged (a rename's random tail would differ between the two).
    const a = tracedImport(file, off.url, '--merge-users');
    const b = tracedImport(file, kept.url, '--merge-users');
    // Both took the bulk path: the unique constraints were dropped and built again.
    expect(dropped(a.stderr)).to.include('auth_user.auth_user_username_key');
    expect(dropped(b.stderr)).to.include('auth_user.auth_user_username_key');
    // The foreign keys: left in place, the rows' checks off; or dropped, and added back checked.
    expect(a.stderr.match(CHECKS)?.[0]).to.match(/checks off for this transaction/);
    expect(dropped(a.stderr).filter((o) => /_fk_/.test(o))).to.deep.equal([]);
    expect(a.stderr).to.not.match(/ADD CONSTRAINT \S+_fk_/);
    expect(b.stderr).to.not.match(CHECKS);
    expect(dropped(b.stderr).filter((o) => /_fk_/.test(o)).sort()).to.deep.equal(before.map((f) => f.k).sort());
    expect(b.stderr).to.match(/ADD CONSTRAINT "sentry_useroption_user_id_28e7c8bb_fk_auth_u/);
    expect(a.models).to.deep.equal(b.models);
    expect(await tableSnapshot(off.knex)).to.deep.equal(await tableSnapshot(kept.knex));
    expect(await foreignKeys(off)).to.deep.equal(before);
    expect(await foreignKeys(kept)).to.deep.equal(before);
    expect(await locked(off)).to.equal(0);
    expect(await orphans(off)).to.equal(0);
    expect((await off.knex.raw(`SELECT current_setting('session_replication_role') AS r`)).rows[0].r).to.equal('origin');
  });

  it('on the bulk path, asks again once the tables are locked: a trigger another session added just before the lock fires', async () => {
    const db = await target();
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      const plan = await planFor(c);
      // Right before the bulk path's LOCK, another session adds a trigger to sentry_useroption
      // (committed: the first answer, read before it, said the checks could go).
      const other = async (sql: string) => { const o = new pg.Client({ connectionString: db.url }); await o.connect(); try { await o.query(sql); } finally { await o.end(); } };
      let added = false;
      const client = new Proxy(c, {
        get(t, k) {
          if (k !== 'query') return Reflect.get(t, k);
          return async (sql: unknown, ...rest: unknown[]) => {
            if (!added && typeof sql === 'string' && sql.startsWith('LOCK TABLE')) {
              added = true;
              await other(`CREATE TABLE seen (user_id bigint);
                CREATE FUNCTION note_option() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO seen VALUES (NEW.user_id); RETURN NEW; END $$;
                CREATE TRIGGER note_option AFTER INSERT ON sentry_useroption FOR EACH ROW EXECUTE FUNCTION note_option()`);
            }
            return (t.query as (...a: unknown[]) => unknown).call(t, sql, ...rest);
          };
        },
      }) as pg.Client;
      const events: TraceEvent[] = [];
      await c.query('BEGIN');
      const entered = await enterWritePath(runner(client, { onTrace: (e) => events.push(e) }), client, plan, true);
      expect(added, 'the trigger was added before the lock').to.equal(true);
      expect(entered.bulk, 'the bulk path').to.not.equal(undefined);
      expect(entered.rowChecks).to.equal(undefined);
      expect((await c.query(`SELECT current_setting('session_replication_role') AS r`)).rows[0].r).to.equal('origin');
      expect(events.find((e) => e.kind === 'row-checks')).to.deep.include({ off: false, why: 'triggers other than foreign keys\' on sentry_useroption' });
      // The trigger fires for a row written now.
      const admin = (await c.query('SELECT id FROM auth_user LIMIT 1')).rows[0].id as string;
      await c.query(`INSERT INTO sentry_useroption (user_id, key, value) VALUES ($1, 'timezone', '"UTC"')`, [admin]);
      expect((await c.query('SELECT count(*)::int AS n FROM seen')).rows[0].n).to.equal(1);
      await c.query('ROLLBACK');
    } finally {
      await c.end();
    }
  });

  for (const kind of ['sentry-9', 'sentry-2026'] as TargetKind[]) {
    for (const general of [true, false]) {
      it(`turns them off on a new ${kind} install ${general ? 'taken by the general path' : 'by the default path'}, every row's user exists, its foreign keys in place and validated`, async function () {
        const why = unavailable(kind);
        if (why) { console.log(`      skipped: ${why}`); this.skip(); }
        const db = await targetDatabase(kind, { freshInstall: true });
        try {
          const before = await foreignKeys(db);
          expect(before).to.have.length(3);
          expect(before.every((f) => f.v)).to.equal(true);
          const r = tracedImport(writeExport(records()), db.url, ...(general ? ['--bulk-load', 'off'] : []));
          expect(r.stderr.match(CHECKS)?.[0]).to.match(/checks off for this transaction/);
          // By default Sentry 2026 takes the bulk path (Sentry 9's deferred foreign keys to projects
          // keep the general path): its foreign keys into auth_user are neither dropped nor added back.
          if (kind === 'sentry-2026' && !general) expect(dropped(r.stderr)).to.include('auth_user.auth_user_username_key');
          expect(dropped(r.stderr).filter((o) => /_fk_/.test(o))).to.deep.equal([]);
          expect(r.stderr).to.not.match(/ADD CONSTRAINT \S+_fk_/);
          expect(await foreignKeys(db)).to.deep.equal(before);
          expect(await db.count('auth_user')).to.equal(41);
          expect(await db.count('sentry_useroption')).to.equal(40);
          expect(await locked(db)).to.equal(0);
          expect(await orphans(db)).to.equal(0);
        } finally {
          await db.close();
        }
      });
    }
  }
});
