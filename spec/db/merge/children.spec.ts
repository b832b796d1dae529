/**
 * The new users' primary user emails (Sentry's post-save signal gives every new user a row for
 * its own address, unless it has one): an export without user emails makes the merge write one
 * per user into a table that held none of theirs. The statement's anti-join must read that table
 * before its first row goes in: a plan that loops over a scan of the table it inserts into rescans
 * every page the statement has written so far, once per user (102 s at 100k users, a cliff).
 */
import { expect } from 'chai';
import { importUsers } from '../../../lib/import.js';
import type { TraceEvent } from '../../../lib/trace.js';
import { withDb, type TestDb } from '../../helpers/db.js';
import { user, writeExport, type Rec } from '../../helpers/exports.js';
import { insertUser } from '../../helpers/sentry-rows.js';
import { TARGET_KINDS, targetDatabase, unavailable } from '../../helpers/targets.js';

/**
 * Plan nodes that take every row of their input before they return one, by their exact name (a
 * `Hash Join` streams its outer side; an `Incremental Sort` or a `GroupAggregate` returns rows
 * group by group).
 */
const BLOCKING = /^(?:Sort|Hash|Aggregate|HashAggregate) {2}\(/;

/**
 * Whether every scan of `table` in `plan` (EXPLAIN's text lines) lies below a node that takes all
 * of its input first: each such scan runs to its end before the statement writes a row.
 */
function scansBelowBlockingNode(plan: string[], table: string): boolean {
  const nodes = plan.map((line) => {
    const m = /^(\s*)(?:->\s+)?(.*)$/.exec(line)!;
    return { depth: m[1]!.length, text: m[2]!, node: line.includes('->') || !/^\s/.test(line) };
  }).filter((n) => n.node);
  return nodes.every((n, i) => {
    if (!new RegExp(`Scan on ${table}\\b`).test(n.text)) return true;
    // The ancestors: each earlier node shallower than the one below it.
    let depth = n.depth;
    for (let j = i - 1; j >= 0; j--) {
      const a = nodes[j]!;
      if (a.depth >= depth) continue;
      if (BLOCKING.test(a.text)) return true;
      depth = a.depth;
    }
    return false;
  });
}

/** `n` users with their addresses, nothing else: no Email records, no user emails. */
function usersOnly(n: number, first = 1): string {
  const users: Rec[] = [];
  for (let i = first; i < first + n; i++) users.push(user(i, `u${i}`));
  return writeExport(users);
}

describe('the new users\' primary user emails', function () {
  this.timeout(120000);

  it('tells a plan whose scan of the table is rescanned from one that reads it first', () => {
    // As PostgreSQL printed them for this statement: the loop over the scan (what the merge ran
    // before), and the sort above the anti-join (what it runs now).
    const looped = [
      'Insert on sentry_useremail  (cost=0.00..875.50 rows=0 width=0)',
      '  ->  Nested Loop Anti Join  (cost=0.00..875.50 rows=19900 width=525)',
      '        Join Filter: ((x.user_id = u.new_id) AND ((x.email)::text = u.email))',
      '        ->  Seq Scan on up_user u  (cost=0.00..378.00 rows=19900 width=16)',
      '        ->  Seq Scan on sentry_useremail x  (cost=0.00..0.00 rows=1 width=426)',
    ];
    const sorted = [
      'Insert on sentry_useremail  (cost=12520.84..16271.12 rows=0 width=0)',
      '  ->  Subquery Scan on "*SELECT*"  (cost=12520.84..16271.12 rows=100007 width=525)',
      '        ->  Merge Anti Join  (cost=12520.84..14521.00 rows=100007 width=82)',
      '              ->  Sort  (cost=12520.83..12770.84 rows=100007 width=41)',
      '                    ->  Seq Scan on up_user u  (cost=0.00..4215.38 rows=100007 width=41)',
      '              ->  Sort  (cost=0.01..0.02 rows=1 width=426)',
      '                    ->  Seq Scan on sentry_useremail x  (cost=0.00..0.00 rows=1 width=426)',
    ];
    const loopUnderSort = [
      'Insert on sentry_useremail  (cost=1.00..2.00 rows=0 width=0)',
      '  ->  Subquery Scan on "*SELECT*"  (cost=1.00..2.00 rows=10 width=525)',
      '        ->  Sort  (cost=1.00..1.50 rows=10 width=82)',
      '              ->  Nested Loop Anti Join  (cost=0.00..1.00 rows=10 width=82)',
      '                    ->  Seq Scan on up_user u  (cost=0.00..0.50 rows=10 width=41)',
      '                    ->  Seq Scan on sentry_useremail x  (cost=0.00..0.00 rows=1 width=426)',
    ];
    // A hashed anti-join streams its outer side: a scan there is read while rows go in.
    const hashedOuter = [
      'Insert on sentry_useremail  (cost=5715.48..10050.73 rows=0 width=0)',
      '  ->  Hash Right Anti Join  (cost=5715.48..10050.73 rows=9429 width=50)',
      '        ->  Seq Scan on sentry_useremail x  (cost=0.00..3411.85 rows=119976 width=39)',
      '        ->  Hash  (cost=4215.38..4215.38 rows=100007 width=41)',
      '              ->  Seq Scan on up_user u  (cost=0.00..4215.38 rows=100007 width=41)',
    ];
    expect(scansBelowBlockingNode(looped, 'sentry_useremail')).to.equal(false);
    expect(scansBelowBlockingNode(hashedOuter, 'sentry_useremail')).to.equal(false);
    expect(scansBelowBlockingNode(sorted, 'sentry_useremail')).to.equal(true);
    expect(scansBelowBlockingNode(loopUnderSort, 'sentry_useremail')).to.equal(true);
  });

  /** Imports 3,000 users alone into `db` with plans; checks the statement's plan and each new user's own user email. */
  async function importUsersAlone(db: TestDb, bulkLoad: 'auto' | 'off') {
    const events: TraceEvent[] = [];
    const stats = await importUsers({ source: usersOnly(3000, 2), databaseUrl: db.url, bulkLoad, explain: true, onTrace: (e) => events.push(e) });
    const plans = events.filter((e): e is Extract<TraceEvent, { kind: 'plan' }> => e.kind === 'plan'
      && /INSERT INTO sentry_useremail\b/.test(e.sql) && /NOT EXISTS/.test(e.sql));
    expect(plans, 'the primary user emails\' statement').to.have.length(1);
    expect(scansBelowBlockingNode(plans[0]!.plan, 'sentry_useremail'), plans[0]!.plan.join('\n')).to.equal(true);
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
