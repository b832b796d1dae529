/**
 * The trace (issue #24, item 6): the library tells an `onTrace` subscriber how it works, as typed
 * events, and reads no environment variable; the CLI prints those events to stderr as it always did
 * (USERPORT_TRACE_SQL=1, USERPORT_EXPLAIN_SQL=1; the CLI specs of the early users step and the
 * bulk load read those lines).
 */
import { expect } from 'chai';
import { PassThrough } from 'node:stream';
import { OptionError } from '../lib/errors.js';
import { importUsers } from '../lib/import.js';
import { STATEMENTS_APART, type TraceEvent } from '../lib/trace.js';
import { traceFromEnv, traceLine } from '../pipelines/trace.js';
import { failure, withDb } from './helpers/db.js';
import { email, user, useremail, useroption, writeExport, type Rec } from './helpers/exports.js';

/**
 * `n` users, then their emails, options and user emails (Sentry's order); `late` moves user 1 after
 * the emails, reached in a later read than the first email when `n` is large.
 */
function exportFile(n: number, late = false): string {
  const users: Rec[] = [];
  const rest: Rec[][] = [[], [], []];
  for (let i = 1; i <= n; i++) {
    users.push(user(i, `u${i}`, { email: `u${i}@example.com` }));
    rest[0]!.push(email(i, `u${i}@example.com`));
    rest[1]!.push(useroption(i, i, 'timezone', 'UTC'));
    rest[2]!.push(useremail(i, i, `u${i}@example.com`));
  }
  return writeExport(late ? [...users.slice(1), ...rest[0]!, users[0]!, ...rest[1]!, ...rest[2]!] : [...users, ...rest.flat()]);
}

const of = <K extends TraceEvent['kind']>(events: TraceEvent[], kind: K) => events.filter((e): e is Extract<TraceEvent, { kind: K }> => e.kind === kind);

describe('onTrace', function () {
  this.timeout(60000);

  it('importUsers tells each statement of the merge with its time, the bulk load and the sink\'s moments, and no plan unless asked', async () => {
    await withDb(async (db) => {
      const events: TraceEvent[] = [];
      await importUsers({ source: exportFile(50), databaseUrl: db.url, onTrace: (e) => events.push(e) });
      const sql = of(events, 'sql');
      expect(sql.some((e) => /INSERT INTO auth_user\b/.test(e.sql))).to.equal(true);
      for (const e of sql) expect(e.ms).to.be.a('number').and.to.be.at.least(0);
      expect(of(events, 'plan')).to.deep.equal([]);
      expect(of(events, 'bulk-load')).to.have.length(1);
      expect(of(events, 'bulk-load')[0]!.dropped).to.include.members(['auth_user.auth_user_username_key']);
      const moments = of(events, 'sink').map((e) => e.moment);
      expect(moments).to.include.members(['overlap started', 'overlap done', 'rows sent', 'spool copied']);
      expect(moments.indexOf('overlap started')).to.be.below(moments.indexOf('rows sent'));
      expect(moments.indexOf('rows sent')).to.be.below(moments.indexOf('spool copied'));
      expect(of(events, 'early-undone')).to.deep.equal([]);
    });
  });

  it('tells that the early users step was undone when a user comes after other models', async () => {
    await withDb(async (db) => {
      const events: TraceEvent[] = [];
      await importUsers({ source: exportFile(2000, true), databaseUrl: db.url, onTrace: (e) => events.push(e) });
      expect(events.filter((e) => e.kind === 'early-undone' || (e.kind === 'sink' && e.moment === 'overlap started')).map((e) => e.kind))
        .to.deep.equal(['sink', 'early-undone']);
    });
  });

  it('with explain, tells the plan of each statement before the statement itself', async () => {
    await withDb(async (db) => {
      const events: TraceEvent[] = [];
      await importUsers({ source: exportFile(20), databaseUrl: db.url, bulkLoad: 'off', onTrace: (e) => events.push(e), explain: true });
      const plans = of(events, 'plan');
      expect(plans.some((p) => /INSERT INTO sentry_useremail\b/.test(p.sql) && p.plan.some((l) => /Insert on sentry_useremail/.test(l)))).to.equal(true);
      for (const p of plans) {
        expect(p.plan).to.not.be.empty;
        const at = events.indexOf(p);
        expect(events[at + 1]).to.include({ kind: 'sql', sql: p.sql });
      }
    });
  });

  it('a subscriber that throws fails the import (USERPORT_CALLBACK), and nothing is written', async () => {
    await withDb(async (db) => {
      for (const kind of ['sql', 'sink'] as const) {
        const err = await failure(importUsers({ source: exportFile(20), databaseUrl: db.url, onTrace: (e) => { if (e.kind === kind) throw new Error('no'); } }));
        expect(err.code, kind).to.equal('USERPORT_CALLBACK');
        expect(await db.count('auth_user')).to.equal(0);
      }
    });
  });

  it('is checked with the other options: a function, and explain needs it', async () => {
    for (const [options, option] of [[{ onTrace: 'stderr' }, 'onTrace'], [{ explain: 'yes', onTrace: () => undefined }, 'explain'], [{ explain: true }, 'explain']] as const) {
      const err = await failure(importUsers({ source: exportFile(1), databaseUrl: 'postgresql://nobody@127.0.0.1:1/none', ...options } as never));
      expect(err, option).to.be.instanceOf(OptionError);
      expect((err as OptionError).option).to.equal(option);
    }
  });
});

describe('the CLI\'s trace (pipelines/trace.ts)', () => {
  it('prints each event as the line it printed when the library wrote stderr itself', () => {
    const lines: [TraceEvent, string][] = [
      [{ kind: 'sql', ms: 12.6, sql: '  INSERT INTO sentry_email (email)\n    SELECT x FROM y' }, '[sql 13 ms] INSERT INTO sentry_email (email) SELECT x FROM y'],
      [{ kind: 'plan', sql: 'SELECT 1', plan: ['Result  (cost=0.00..0.01 rows=1 width=4)'] }, '[plan] SELECT 1\nResult  (cost=0.00..0.01 rows=1 width=4)\n[/plan]'],
      [{ kind: 'retry', step: 'users', attempt: 2 }, '[users] another session took a name or address meanwhile: deciding again (attempt 2)'],
      [{ kind: 'bulk-load', dropped: ['auth_user.auth_user_username_key', 'sentry_email.sentry_email_email_key'] }, '[bulk] load first, then build: auth_user.auth_user_username_key, sentry_email.sentry_email_email_key'],
      [{ kind: 'early-undone' }, '[early] a user came after other models: the early users step is undone'],
      [{ kind: 'sink', moment: 'overlap started', ms: 1500.2 }, '[sink] early users step started after 1500 ms; rows go to the spool'],
      [{ kind: 'sink', moment: 'overlap done', ms: 2 }, '[sink] early users step done after 2 ms'],
      [{ kind: 'sink', moment: 'rows sent', ms: 3 }, '[sink] all rows sent after 3 ms'],
      [{ kind: 'sink', moment: 'copy confirmed', ms: 4 }, '[sink] COPY confirmed after 4 ms'],
      [{ kind: 'sink', moment: 'spool copied', ms: 5 }, '[sink] spooled rows COPYed after 5 ms'],
    ];
    for (const [e, line] of lines) expect(traceLine(e)).to.equal(line);
    expect(traceLine({ kind: 'sql', ms: 0, sql: 'x'.repeat(200) })).to.equal(`[sql 0 ms] ${'x'.repeat(90)}`);
  });

  it('prints statements sent together on one line, each shortened, apart by " ; "', () => {
    const sql = ['SELECT set_config(\'a\', \'1\', true)', `CREATE INDEX i ON t (${'c'.repeat(100)})`, 'ANALYZE t -- a comment'].join(STATEMENTS_APART);
    expect(traceLine({ kind: 'sql', ms: 396.4, sql }))
      .to.equal(`[sql 396 ms] SELECT set_config('a', '1', true) ; ${`CREATE INDEX i ON t (${'c'.repeat(100)}`.slice(0, 90)} ; ANALYZE t -- a comment`);
  });

  it('subscribes only when USERPORT_TRACE_SQL=1 or USERPORT_EXPLAIN_SQL=1 asks, and prints what each asks for', () => {
    expect(traceFromEnv({})).to.deep.equal({});
    expect(traceFromEnv({ USERPORT_TRACE_SQL: '0' })).to.deep.equal({});
    const printed = (env: NodeJS.ProcessEnv) => {
      const out = new PassThrough();
      const t = traceFromEnv(env, out);
      t.onTrace!({ kind: 'sql', ms: 1, sql: 'SELECT 1' });
      t.onTrace!({ kind: 'plan', sql: 'SELECT 1', plan: ['Result'] });
      return { explain: t.explain ?? false, text: String(out.read() ?? '') };
    };
    expect(printed({ USERPORT_TRACE_SQL: '1' })).to.deep.equal({ explain: false, text: '[sql 1 ms] SELECT 1\n' });
    expect(printed({ USERPORT_EXPLAIN_SQL: '1' })).to.deep.equal({ explain: true, text: '[plan] SELECT 1\nResult\n[/plan]\n' });
    expect(printed({ USERPORT_TRACE_SQL: '1', USERPORT_EXPLAIN_SQL: '1' })).to.deep.equal({ explain: true, text: '[sql 1 ms] SELECT 1\n[plan] SELECT 1\nResult\n[/plan]\n' });
  });
});
