/**
 * Issue #25, items 1 and 2: a live Sentry as the target. Other sessions create users with the
 * import's usernames and addresses, and Email rows, while it merges: the import must finish
 * (the rule for a name that appears meanwhile is the rule for one that was there before) and its
 * summary must count what it wrote, not what appeared.
 */
import { expect } from 'chai';
import pg from 'pg';
import { importUsers } from '../../../lib/import.js';
import type { ImportSummary } from '../../../lib/stats.js';
import { freshDatabase, type TestDb } from '../../helpers/db.js';
import { email, user, useremail, writeExport, type Rec } from '../../helpers/exports.js';
import { insertRow } from '../../helpers/sentry-rows.js';

/** Polls `check` until it is true; fails as a precondition when it never is. */
async function reached(what: string, check: () => Promise<boolean>, settled: () => boolean): Promise<void> {
  for (const until = Date.now() + 60000; Date.now() < until;) {
    if (await check()) return;
    if (settled()) throw new Error(`precondition not met: ${what} (the import ended first)`);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`precondition not met: ${what} (not within 60 s)`);
}

/** A session of another writer (Sentry itself), with a transaction left open. */
async function writer(db: TestDb): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: db.url, application_name: 'sentry web' });
  await c.connect();
  await c.query('BEGIN');
  return c;
}

/** Whether an import session waits for a lock while running a statement that matches `sql`. */
async function importWaits(db: TestDb, sql: RegExp): Promise<boolean> {
  const r = await db.knex.raw(`SELECT query FROM pg_stat_activity WHERE application_name LIKE 'userport %' AND wait_event_type = 'Lock'`);
  return (r.rows as { query: string }[]).some((x) => sql.test(x.query));
}

/** The rows the import `run` wrote, counted in the tables through its pk map, per model. */
async function written(db: TestDb, importId: string): Promise<Record<string, number>> {
  const run = (await db.knex.raw(`SELECT run FROM userport.imports WHERE id = ?`, [importId])).rows[0].run;
  const q = async (sql: string) => Number((await db.knex.raw(sql, [run])).rows[0].n);
  return {
    users: await q(`SELECT count(*) AS n FROM userport.pk_map m JOIN auth_user u ON u.id = m.target_id WHERE m.run = ? AND m.model = 'sentry.user' AND m.kind = 'inserted'`),
    emails: await q(`SELECT count(*) AS n FROM userport.pk_map m JOIN sentry_email e ON e.id = m.target_id WHERE m.run = ? AND m.model = 'sentry.email' AND m.kind = 'inserted'`),
    userEmails: await q(`SELECT count(*) AS n FROM sentry_useremail ue JOIN userport.pk_map m ON m.target_id = ue.user_id
                         WHERE m.run = ? AND m.model = 'sentry.user' AND m.kind = 'inserted'`),
  };
}

function expectCounted(s: ImportSummary, rows: Record<string, number>): void {
  expect(s.models['sentry.user']!.inserted, 'users').to.equal(rows.users);
  expect(s.models['sentry.email']!.inserted, 'emails').to.equal(rows.emails);
  expect(s.models['sentry.useremail']!.inserted + s.adjacent.primaryEmails, 'user emails').to.equal(rows.userEmails);
}

function records(n: number, prefix = 'u'): Rec[] {
  const out: Rec[] = [];
  for (let i = 1; i <= n; i++) out.push(user(i, `${prefix}${i}`, { email: `${prefix}${i}@example.com` }));
  for (let i = 1; i <= n; i++) out.push(email(1000 + i, `${prefix}${i}@example.com`));
  for (let i = 1; i <= n; i++) out.push(useremail(2000 + i, i, `${prefix}${i}@example.com`));
  return out;
}

describe('other writers during the import (issue #25)', function () {
  this.timeout(180000);
  let db: TestDb;
  beforeEach(async () => { db = await freshDatabase(); });
  afterEach(async () => { await db.close(); });

  // The Email records of a resumable import go in through ON CONFLICT where sentry_email holds
  // many more rows than the import's (or has no statistics yet), else through an anti-join and a
  // plain INSERT that the unique key stops when another session wrote one of the addresses (the
  // step is then decided again). An atomic import COPYs them straight in at the end of the input
  // (direct-emails.ts): the unique key refuses that COPY, which is undone, and the merge decides
  // every record, now seeing the other session's address (no step decided again).
  const emailPaths = [
    { name: 'ON CONFLICT', analyzed: false, retries: ['users'] },
    { name: 'anti-join, decided again', analyzed: true, retries: ['users', 'emails'] },
  ];
  for (const mode of ['atomic', 'resumable'] as const) for (const path of emailPaths) {
    it(`${mode}, Email records by ${path.name}: a username and an address another session creates while the merge runs are handled as existing ones, and counted as theirs`, async () => {
      // Not empty: the general path, as into a live Sentry (the bulk path locks the tables).
      await insertRow(db.knex, 'auth_user', { username: 'someone-else' });
      await insertRow(db.knex, 'sentry_email', { email: 'someone-else@example.com' });
      if (path.analyzed) await db.knex.raw('ANALYZE sentry_email');
      const file = writeExport(records(5));
      // Sentry signs up "u3" and records the address of u4 before the import commits.
      const signup = await writer(db);
      await signup.query(`INSERT INTO auth_user (password, username, first_name, email, email_unique, is_staff, is_active, is_superuser, is_managed,
        is_password_expired, flags, date_joined) VALUES ('x', 'u3', '', 'u3@example.com', 'u3@example.com', false, true, false, false, false, 0, now())`);
      const address = await writer(db);
      await address.query(`INSERT INTO sentry_email (email, date_added) VALUES ('u4@example.com', now())`);
      let settled = false;
      const retries: string[] = [];
      const direct: unknown[] = [];
      // The users step's decisions, in order, and each retry.
      const decisions: string[] = [];
      const run = importUsers({
        source: file, databaseUrl: db.url, resumable: mode === 'resumable', ...(mode === 'resumable' ? { batchRows: 4 } : {}),
        onTrace: (e) => {
          if (e.kind === 'sql') {
            const made = /^\s*CREATE TEMP TABLE (up_user|up_exc) ON COMMIT DROP AS\s+WITH /.exec(e.sql);
            if (made) decisions.push(made[1]!);
          }
          if (e.kind === 'retry') decisions.push('retry');
          if (e.kind === 'retry') retries.push(e.step);
          if (e.kind === 'direct-emails') direct.push({ written: e.written, staged: e.staged, why: e.why });
        },
      }).finally(() => { settled = true; });
      try {
        await reached('the import waits on the new user u3', () => importWaits(db, /INSERT INTO auth_user/), () => settled);
        await signup.query('COMMIT');
        await reached('the import waits on the new address of u4', () => importWaits(db, mode === 'atomic' ? /COPY sentry_email/ : /INSERT INTO sentry_email/), () => settled);
        await address.query('COMMIT');
      } finally {
        await signup.end();
        await address.end();
      }
      const s = await run;
      // u3 was taken meanwhile: renamed, as a name that was there before the import.
      expect(s.models['sentry.user']).to.include({ inserted: 5, renamed: 1 });
      const names = (await db.knex.raw(`SELECT username FROM auth_user WHERE username LIKE 'u3%' ORDER BY id`)).rows.map((r: { username: string }) => r.username);
      expect(names[0]).to.equal('u3');
      expect(names[1]).to.match(/^u3-[a-z0-9]{2}$/);
      // u4's address was recorded meanwhile: existing, not inserted by the import.
      expect(s.models['sentry.email']).to.include({ inserted: 4, existing: 1 });
      expectCounted(s, await written(db, s.importId));
      // The users' step always decides again (its INSERT has no ON CONFLICT); the emails' step
      // only on the anti-join path of a resumable import. An atomic import's COPY was refused.
      if (mode === 'atomic') {
        expect(retries).to.deep.equal(['users']);
        // The early users step read the target's user into the client and decided the exceptions
        // alone; u3, which it did not see, made the INSERT fail, and the step's next attempt
        // decided every user against the table itself.
        expect(decisions).to.deep.equal(['up_exc', 'retry', 'up_user']);
        expect(direct).to.deep.equal([{ written: 0, staged: 5, why: 'another session inserted one of the addresses meanwhile' }]);
      } else {
        expect(retries).to.deep.equal(path.retries);
        expect(direct).to.deep.equal([]);
      }
    });
  }

  it('20 runs of each mode with writers creating the import\'s names and addresses throughout: every import finishes, counting what it wrote @soak', async () => {
    for (let i = 0; i < 40; i++) {
      const mode = i % 2 ? 'resumable' : 'atomic';
      const prefix = `r${i}x`;
      await insertRow(db.knex, 'auth_user', { username: `${prefix}-seed` });
      // Statistics that grow with the table: the first runs' Email records take the anti-join
      // (sentry_email holds under 10 times their 30 addresses), the later ones ON CONFLICT.
      await db.knex.raw('ANALYZE sentry_email');
      const file = writeExport(records(30, prefix));
      let done = false;
      const writers = [0, 1].map(async (w) => {
        const c = new pg.Client({ connectionString: db.url, application_name: 'sentry web' });
        await c.connect();
        try {
          for (let k = 1 + w; !done && k <= 30; k += 2) {
            await c.query(`INSERT INTO auth_user (password, username, first_name, email, email_unique, is_staff, is_active, is_superuser, is_managed,
              is_password_expired, flags, date_joined) VALUES ('x', $1, '', $2, $2, false, true, false, false, false, 0, now()) ON CONFLICT DO NOTHING`,
            [`${prefix}${k}`, `${prefix}${k}@example.com`]);
            await c.query(`INSERT INTO sentry_email (email, date_added) VALUES ($1, now()) ON CONFLICT DO NOTHING`, [`${prefix}${k + 1}@example.com`]);
          }
        } finally {
          await c.end();
        }
      });
      const s = await importUsers({ source: file, databaseUrl: db.url, resumable: mode === 'resumable', ...(mode === 'resumable' ? { batchRows: 20 } : {}) }).finally(() => { done = true; });
      await Promise.all(writers);
      expect(s.models['sentry.user']!.inserted, `run ${i} (${mode})`).to.equal(30);
      expectCounted(s, await written(db, s.importId));
    }
  });
});
