/**
 * The users' step (lib/db/merge/users.ts) samples its decision table with a small statistics
 * target, inside the import's transaction. The tables analysed after it must get the session's
 * own target again: a planner fed 11 histogram bounds where it expects 101 misjudges every join
 * that follows.
 */
import { expect } from 'chai';
import { importUsers } from '../../../lib/index.js';
import { withDb } from '../../helpers/db.js';
import { email, user, writeExport, type Rec } from '../../helpers/exports.js';

const USERS = 2000;

describe('the users step: statistics of its decision table', () => {
  it('restores the statistics target for the tables analysed after it', async () => {
    // Emails before users (not Sentry's order): no early step, so the users' step and then the
    // Email records' INSERT (and its ANALYZE of sentry_email) run in the merge, in that order.
    const records: Rec[] = [];
    for (let i = 1; i <= USERS; i++) records.push(email(i, `u${i}@example.com`));
    for (let i = 1; i <= USERS; i++) records.push(user(i, `u${i}`, { email: `u${i}@example.com` }));
    await withDb(async (db) => {
      const summary = await importUsers({ source: writeExport(records), databaseUrl: db.url });
      expect(summary.models['sentry.email']!.inserted).to.equal(USERS);
      const target = Number((await db.knex.raw(`SHOW default_statistics_target`)).rows[0].default_statistics_target);
      const stats = await db.knex.raw(`
        SELECT array_length(histogram_bounds::text::text[], 1) AS bounds
        FROM pg_stats WHERE schemaname = 'public' AND tablename = 'sentry_email' AND attname = 'id'`);
      expect(stats.rows, 'sentry_email.id has statistics').to.have.length(1);
      // Sampled with the step's target (10) it would have 11 bounds.
      expect(stats.rows[0].bounds).to.equal(Math.min(target, USERS - 1) + 1);
    });
  });
});
