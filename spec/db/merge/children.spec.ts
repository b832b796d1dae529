/**
 * The rows Sentry's signal receivers add. The new users' primary user emails (Sentry's post-save
 * signal gives every new user a row for its own address, unless it has one): an export without
 * user emails makes the merge write one per user into a table that held none of theirs. The
 * anti-join must read that table before its first row goes in: a plan that looped over a scan of
 * the table it inserted into rescanned every page the statement had written so far, once per user
 * (102 s at 100k users, a cliff). The rows are found first, into a table of their own.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { importUsers } from '../../../lib/import.js';
import { beginImportRun, createModelMapper, createPgSink, createTokenizer, createUserFilter, finishImportRun, ImportStats, mergeStaged } from '../../../lib/index.js';
import type { TraceEvent } from '../../../lib/trace.js';
import { freshDatabase, withDb, type TestDb } from '../../helpers/db.js';
import { email, user, useremail, writeExport, type Rec } from '../../helpers/exports.js';
import { insertRow, insertUser } from '../../helpers/sentry-rows.js';
import { TARGET_KINDS, targetDatabase, unavailable } from '../../helpers/targets.js';

/** `n` users with their addresses, nothing else: no Email records, no user emails. */
function usersOnly(n: number, first = 1): string {
  const users: Rec[] = [];
  for (let i = first; i < first + n; i++) users.push(user(i, `u${i}`));
  return writeExport(users);
}

describe('the new users\' primary user emails', function () {
  this.timeout(120000);

  /** Imports 3,000 users alone into `db` with plans; checks the statements' plans and each new user's own user email. */
  async function importUsersAlone(db: TestDb, bulkLoad: 'auto' | 'off') {
    const events: TraceEvent[] = [];
    const stats = await importUsers({ source: usersOnly(3000, 2), databaseUrl: db.url, bulkLoad, explain: true, onTrace: (e) => events.push(e) });
    const plans = events.filter((e): e is Extract<TraceEvent, { kind: 'plan' }> => e.kind === 'plan');
    // The rows are found first, into a table of their own; the INSERT reads only that table.
    const finding = plans.filter((e) => /^\s*CREATE TEMP TABLE up_primary\b/.test(e.sql));
    expect(finding, 'the statement that finds the primary user emails').to.have.length(1);
    expect(finding[0]!.sql).to.match(/NOT EXISTS \(SELECT 1 FROM sentry_useremail\b/);
    const inserting = plans.filter((e) => /INSERT INTO sentry_useremail\b/.test(e.sql) && /\bup_primary\b/.test(e.sql));
    expect(inserting, 'the statement that inserts them').to.have.length(1);
    expect(inserting[0]!.plan.filter((line) => /Scan on sentry_useremail\b/.test(line)), inserting[0]!.plan.join('\n')).to.deep.equal([]);
    expect(inserting[0]!.plan.some((line) => /Scan on up_primary\b/.test(line)), inserting[0]!.plan.join('\n')).to.equal(true);
    expect(stats.adjacent.primaryEmails).to.equal(3000);
    const rows = (await db.knex.raw(`
      SELECT count(*)::int AS n, count(DISTINCT ue.user_id)::int AS users, bool_and(ue.email = a.email) AS own
      FROM sentry_useremail ue JOIN auth_user a ON a.id = ue.user_id WHERE a.username ~ '^u[0-9]+$'`)).rows[0];
    expect(rows).to.deep.equal({ n: 3000, users: 3000, own: true });
  }

  it('reads the user emails before writing any, into a target that holds a user and no user email (the general path), and writes one per new user', async () => {
    await withDb(async (db) => {
      await insertUser(db.knex, { username: 'admin' });
      await importUsersAlone(db, 'off');
    });
  });

  // Sentry's own schemas too: Sentry 9's (integer ids, no email_unique) and 2026's (no sentry_email).
  for (const kind of TARGET_KINDS) {
    for (const freshInstall of [false, true]) {
      it(`reads the user emails before writing any, into ${freshInstall ? `a new ${kind} install holding its admin` : `an empty ${kind} target`}, and writes one per new user`, async function () {
        const why = unavailable(kind);
        if (why) {
          process.stdout.write(`      skipped: ${why}\n`);
          return this.skip();
        }
        const db = await targetDatabase(kind, { freshInstall });
        try {
          await importUsersAlone(db, 'auto');
        } finally {
          await db.close();
        }
      });
    }
  }
});

describe('the signal receivers\' rows (children.ts)', function () {
  this.timeout(120000);

  /**
   * alice has no user email (the receiver gives her one for her own address), bob one for his
   * own address and one for another (no Email record for either), carol one for her own address
   * and an Email record of it in capitals (which is hers, case-insensitively).
   */
  const records = [
    user(1, 'alice'), user(2, 'bob'), user(3, 'carol'),
    email(1, 'CAROL@EXAMPLE.COM'),
    useremail(1, 2, 'bob@example.com'), useremail(2, 2, 'bob.other@example.com'), useremail(3, 3, 'carol@example.com'),
  ];

  // On the bulk path (a target with a few rows, locked) the receivers read the new users from
  // the users' table, from the lowest new id on; on the general path, from the decisions. Both
  // add rows for the new users only: an existing user whose rows Sentry's receivers never made (no
  // user email of its own address, a user email whose address has no Email row) keeps them as
  // they are.
  for (const kind of TARGET_KINDS) {
    for (const bulkLoad of ['auto', 'off'] as const) {
      it(`adds a primary user email and Email rows for the new users only, ${bulkLoad === 'auto' ? 'on the bulk path' : 'on the general path'} into ${kind === 'userport' ? 'userport\'s tables' : kind} holding a user they never served`, async function () {
        const why = unavailable(kind);
        if (why) {
          process.stdout.write(`      skipped: ${why}\n`);
          return this.skip();
        }
        const db = await targetDatabase(kind);
        try {
          const oldId = await insertUser(db.knex, { username: 'old', email: 'old@example.com' });
          await insertRow(db.knex, 'sentry_useremail', { user_id: oldId, email: 'orphan@example.com' });
          const hasEmails = (await db.knex.raw(`SELECT to_regclass('sentry_email') IS NOT NULL AS ok`)).rows[0].ok as boolean;
          const events: TraceEvent[] = [];
          const stats = await importUsers({ source: writeExport(records), databaseUrl: db.url, bulkLoad, onTrace: (e) => events.push(e) });
          // Sentry 9's tables keep an import off the bulk path (the options' deferred foreign keys to
          // sentry_project and sentry_organization, outside the five tables).
          expect(events.some((e) => e.kind === 'bulk-load'), 'the bulk path').to.equal(bulkLoad === 'auto' && kind !== 'sentry-9');
          expect(stats.adjacent.primaryEmails).to.equal(1);
          const userEmails = (await db.knex.raw(`SELECT a.username, ue.email FROM sentry_useremail ue JOIN auth_user a ON a.id = ue.user_id ORDER BY 1, 2`)).rows;
          expect(userEmails).to.deep.equal([
            { username: 'alice', email: 'alice@example.com' },
            { username: 'bob', email: 'bob.other@example.com' }, { username: 'bob', email: 'bob@example.com' },
            { username: 'carol', email: 'carol@example.com' },
            { username: 'old', email: 'orphan@example.com' },
          ]);
          if (!hasEmails) return;
          expect(stats.adjacent.userEmailAddresses).to.equal(3);
          const addresses = (await db.knex.raw(`SELECT email::text AS email FROM sentry_email ORDER BY 1`)).rows.map((r: { email: string }) => r.email);
          expect(addresses).to.deep.equal(['CAROL@EXAMPLE.COM', 'alice@example.com', 'bob.other@example.com', 'bob@example.com']);
        } finally {
          await db.close();
        }
      });
    }
  }

  it('puts the planner settings it changes for the receivers back as the caller\'s transaction had them', async () => {
    const db = await freshDatabase();
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      const stats = new ImportStats();
      const run = await beginImportRun(client, { source: 'children.spec' });
      let settings: unknown;
      await pipeline(
        fs.createReadStream(writeExport(records)), createTokenizer(), createUserFilter(), createModelMapper(),
        createPgSink({
          client, run, transaction: 'whole', stats,
          finalize: async (c) => {
            await c.query(`SET LOCAL parallel_tuple_cost = 0.25`);
            await c.query(`SET LOCAL parallel_setup_cost = 500`);
            await mergeStaged(c, { run, mergeUsers: false, filterActive: false }, stats);
            settings = (await c.query(`SELECT current_setting('parallel_tuple_cost') AS t, current_setting('parallel_setup_cost') AS s`)).rows[0];
            await finishImportRun(c, run);
          },
        }),
      );
      // The receivers ran (they change the settings only then).
      expect(stats.adjacent.primaryEmails).to.equal(1);
      expect(settings).to.deep.equal({ t: '0.25', s: '500' });
    } finally {
      await client.end();
      await db.close();
    }
  });
});
