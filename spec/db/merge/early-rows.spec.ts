/**
 * Issue #23, item 3: once the early users step is done while the file is still read, the new
 * users' rows of the models already over (their options, the scoped options' findings) are written
 * then, not after the input's end (lib/db/merge/early.ts, the early part). The result must be the
 * merge's at the end, to the row and the finding, whatever comes after: a row of a model already
 * written (a file not in Sentry's order), a user after other models, a pk out of order each
 * undo the early rows, and the end writes those models as ever.
 *
 * The input is held: the user emails come in small pieces until the early part has written (or
 * 30 s passed), so the step is done while the file is still read, on any machine.
 */
import { expect } from 'chai';
import { Readable } from 'node:stream';
import { importUsers } from '../../../lib/import.js';
import type { TraceEvent } from '../../../lib/trace.js';
import { traceLine } from '../../../pipelines/trace.js';
import { definitions, freshDatabase, type TestDb } from '../../helpers/db.js';
import { email, tableSnapshot, user, useremail, useroption, writeExport, type Rec } from '../../helpers/exports.js';
import { insertUser } from '../../helpers/sentry-rows.js';
import { targetDatabase, unavailable, type TargetDb } from '../../helpers/targets.js';

const USERS = 2000;

/**
 * Users 1..USERS in Sentry's order, then their emails and options (a timezone each, a language
 * every 7th, a project-scoped option for user 8, an option of user 99999, not in the export),
 * then their user emails (even pks), then `after`.
 */
function parts(after: Rec[] = []): { head: Rec[]; userEmails: Rec[]; after: Rec[] } {
  const users: Rec[] = [];
  const emails: Rec[] = [];
  const options: Rec[] = [];
  const userEmails: Rec[] = [];
  let opk = 0;
  for (let i = 1; i <= USERS; i++) {
    users.push(user(i, i === 5 ? 'admin' : `u${i}`, { email: `u${i}@example.com` }));
    emails.push(email(i, `u${i}@example.com`));
    options.push(useroption(++opk, i, 'timezone', 'UTC'));
    if (i % 7 === 0) options.push(useroption(++opk, i, 'language', 'de'));
    userEmails.push(useremail(2 * i, i, `u${i}@example.com`));
  }
  options.push(useroption(++opk, 8, 'mail:alert', 1, { project_id: 3 }));
  options.push(useroption(++opk, 99999, 'timezone', 'UTC'));
  return { head: [...users, ...emails, ...options], userEmails, after };
}

/**
 * The export of `p` as a stream: the head at once, then the user emails a few at a time, 20 ms
 * apart, until `wrote()` (or 30 s), then the rest.
 */
function heldSource(p: ReturnType<typeof parts>, wrote: () => boolean): Readable {
  const json = (recs: Rec[]) => recs.map((r) => JSON.stringify(r)).join(',\n');
  async function* chunks() {
    yield Buffer.from(`[\n${json(p.head)}`);
    let i = 0;
    for (const until = Date.now() + 30000; i < p.userEmails.length && !wrote() && Date.now() < until; i += 10) {
      yield Buffer.from(`,\n${json(p.userEmails.slice(i, i + 10))}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const rest = [...p.userEmails.slice(i), ...p.after];
    yield Buffer.from(`${rest.length ? `,\n${json(rest)}` : ''}\n]\n`);
  }
  return Readable.from(chunks());
}

/**
 * The rows, the options and user emails with their ids, the id sequences, the findings, the pk map. An Email row the receivers add for an address no record holds is dated by its
 * import's transaction: said so, not compared.
 */
async function outcome(db: TestDb) {
  const q = async (sql: string) => (await db.knex.raw(sql)).rows as unknown[];
  const tables = await tableSnapshot(db.knex);
  tables.emails = (tables.emails as { email: string; date_added: Date }[])
    .map((e) => ({ ...e, date_added: Date.now() - e.date_added.getTime() < 3_600_000 ? 'this import' : e.date_added }));
  return {
    tables,
    // Ids too: an undo puts the sequences back, so the rows written again get the merge's ids.
    options: await q(`SELECT o.id, u.username, o.key, o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY o.id`),
    userEmails: await q(`SELECT e.id, u.username, e.email FROM sentry_useremail e JOIN auth_user u ON u.id = e.user_id ORDER BY e.id`),
    sequences: await q(`SELECT last_value, is_called FROM sentry_useroption_id_seq UNION ALL SELECT last_value, is_called FROM sentry_useremail_id_seq`),
    findings: await q(`SELECT kind, model, source_pk, reason FROM userport.findings ORDER BY model, source_pk, reason`),
    map: await q('SELECT model, source_pk, target_id, kind FROM userport.pk_map ORDER BY model, source_pk'),
  };
}

describe('the new users\' rows of the models already over, written while the file is still read (issue #23)', function () {
  this.timeout(180000);
  const dbs: TestDb[] = [];
  afterEach(async () => { for (const d of dbs.splice(0)) await d.close(); });
  /** A new database: empty, holding a new Sentry's admin, or more users than a few (the general path). */
  const target = async (kind: 'empty' | 'admin' | 'many') => {
    const d = await freshDatabase();
    dbs.push(d);
    if (kind !== 'empty') await insertUser(d.knex, { username: 'admin', email: 'admin@example.com' });
    if (kind === 'many') {
      await d.knex.raw(`INSERT INTO auth_user (password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
          is_password_expired, flags, date_joined)
        SELECT 'x', 'old' || i, '', 'old' || i || '@example.org', false, true, false, false, false, 0, '2020-01-01T00:00:00Z' FROM generate_series(1, 1500) i`);
      await d.knex.raw('ANALYZE auth_user');
    }
    return d;
  };

  /** The outcome and the definitions of two userport targets: the same ({@link outcome}; every index and constraint back, once). */
  const sameOnUserport = async (a: TestDb, b: TestDb) => {
    expect(await outcome(a)).to.deep.equal(await outcome(b));
    expect(await definitions(a)).to.deep.equal(await definitions(b));
  };

  /**
   * `p` held until the early part wrote, into a target `make` makes, and the same file merged at
   * the end (--bulk-load off) into another: the trace's lines, and both summaries and outcomes
   * the same (`same`).
   */
  const both = async (p: ReturnType<typeof parts>, make: () => Promise<TestDb>, extra: { filterUsernames?: string[] } = {},
    same: (a: TestDb, b: TestDb) => Promise<void> = sameOnUserport) => {
    const lines: string[] = [];
    const onTrace = (e: TraceEvent) => { if (e.kind !== 'plan') lines.push(traceLine(e)); };
    const wrote = () => lines.some((l) => l.startsWith('[early] written before the input ended') || l.startsWith('[early] the rows written'));
    const a = await make();
    const sa = await importUsers({ source: heldSource(p, wrote), databaseUrl: a.url, mergeUsers: true, onTrace, ...extra });
    const b = await make();
    const sb = await importUsers({ source: writeExport([...p.head, ...p.userEmails, ...p.after]), databaseUrl: b.url, mergeUsers: true, bulkLoad: 'off', ...extra });
    const trace = lines.join('\n');
    expect(sa.models).to.deep.equal(sb.models);
    expect(sa.adjacent).to.deep.equal(sb.adjacent);
    await same(a, b);
    return { trace, a, summary: sa };
  };

  const newUserOptions = USERS - 1 + Math.floor(USERS / 7); // every user's but the admin's where the target holds one

  for (const kind of ['empty', 'admin', 'many'] as const) {
    it(`into ${kind === 'empty' ? 'an empty target' : kind === 'admin' ? 'a new Sentry\'s admin (the bulk path)' : 'a target holding more than a few users (the general path)'}: the options go in before the input's end, and the result is the merge's`, async () => {
      const { trace } = await both(parts(), () => target(kind));
      const options = kind === 'empty' ? newUserOptions + 1 : newUserOptions;
      // Written by the early part, before the input ended; the end kept them.
      expect(trace).to.match(/\[early\] written before the input ended: userport\.findings, sentry_useroption \(\d+ ms\)[^]*\[sink\] all rows sent/);
      expect(trace).to.contain(`[direct] sentry_useroption: ${options} rows of new users written straight in, ${kind === 'empty' ? 1 : 2} staged for the merge, no pair twice (checked in the client), before the input ended`);
      expect(trace).to.contain('[direct] sentry.useroption: 1 records of new users dropped (scoped to an organization or project), their findings written straight in, 0 staged for the merge, before the input ended');
      // The user emails were still arriving: written at the end.
      expect(trace).to.match(/\[direct\] sentry_useremail: \d+ rows of new users written straight in, \d staged for the merge, no pair twice \(checked in the client\) \(/);
      expect(trace).to.not.contain('undone');
      // On the bulk path the options' table is complete then: its indexes and constraints are built
      // before the input's end too (on the general path they stand).
      const built = /CREATE INDEX sentry_useroption_user_id[^]*ADD CONSTRAINT "sentry_useroption_pkey"[^]*\[early\] written before the input ended/;
      if (kind === 'many') expect(trace).to.not.match(/CREATE INDEX sentry_useroption/);
      else expect(trace).to.match(built);
    });
  }

  it('with a username filter: the kept users\' options before the input\'s end, the filtered users\' findings at the end, the result the merge\'s', async () => {
    const kept = Array.from({ length: USERS / 10 }, (_, k) => `u${10 * k + 1}`);
    const { trace } = await both(parts(), () => target('empty'), { filterUsernames: kept });
    expect(trace).to.contain('[early] written before the input ended: userport.findings, sentry_useroption');
    expect(trace).to.match(/\[direct\] sentry_useroption: \d+ rows of new users written straight in, \d+ of filtered users dropped to their findings straight in, 1 staged for the merge, no pair twice \(checked in the client\), before the input ended/);
    expect(trace).to.not.contain('undone');
  });

  it('an option after the user emails undoes them: the end decides every option, the first by source pk', async () => {
    // User 9's timezone again, and a new key of user 10: both after another model's rows.
    const late = [useroption(USERS * 3, 9, 'timezone', 'Asia/Tokyo'), useroption(USERS * 3 + 1, 10, 'mail:email', 'x@example.com')];
    const { trace, a } = await both(parts(late), () => target('admin'));
    expect(trace).to.contain('[early] written before the input ended: userport.findings, sentry_useroption');
    expect(trace).to.contain('[early] the rows written before the input ended are undone: a row of a model written came after rows of another model');
    // Its indexes were built with them, undone with them, and built again at the end.
    expect(trace).to.match(/\[early\] the rows written before the input ended are undone[^]*ADD CONSTRAINT "sentry_useroption_pkey"/);
    // Then written at the end as without the early part: user 9's pair twice, so the merge decides them.
    expect(trace).to.contain('[direct] sentry_useroption: a row of a new user came twice');
    const u9 = (await a.knex.raw(`SELECT o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id WHERE u.username = 'u9' AND o.key = 'timezone'`)).rows;
    expect(u9).to.deep.equal([{ value: 'UTC' }]);
  });

  it('a pk out of order after them undoes them (the end stages everything, as for such a file)', async () => {
    // A user email whose pk is below the one before it.
    const { trace } = await both(parts([useremail(3, 7, 'again7@example.com')]), () => target('empty'));
    expect(trace).to.contain('[direct] sentry_email: all');
    expect(trace).to.contain('[early] written before the input ended: userport.findings, sentry_useroption');
    expect(trace).to.contain('[early] the rows written before the input ended are undone: the file is not in source pk order');
    expect(trace).to.not.match(/\[direct\] sentry_useroption: \d+ rows of new users written straight in/);
  });

  it('a user after them undoes the early step, the early rows with it: the result is the merge\'s', async () => {
    const { trace, summary } = await both(parts([user(USERS + 1, 'late', { email: 'late@example.com' })]), () => target('empty'));
    expect(trace).to.contain('[early] written before the input ended: userport.findings, sentry_useroption');
    expect(trace).to.contain('[early] a user came after other models: the early users step is undone');
    // Its savepoint went with the step's: nothing of it to undo again.
    expect(trace).to.not.contain('[early] the rows written before the input ended are undone');
    expect(summary.models['sentry.user']!.inserted).to.equal(USERS + 1);
  });

  /**
   * On Sentry's own schemas: the new users' options (with their ids, values as the target stores
   * them), user emails, the id sequences, findings and pk map, and the options table's indexes
   * and constraints, the same as the merge's at the end.
   */
  const sameOnSentry = async (a: TestDb, b: TestDb) => {
    const facts = async (db: TestDb) => {
      const q = async (sql: string) => (await db.knex.raw(sql)).rows as unknown[];
      const sequence = async (table: string) => q(`SELECT last_value, is_called FROM ${
        ((await q(`SELECT pg_get_serial_sequence('${table}', 'id') AS s`))[0] as { s: string }).s}`);
      return {
        users: await q('SELECT id, username FROM auth_user ORDER BY id'),
        options: await q(`SELECT o.id, u.username, o.key, o.value::text FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY o.id`),
        userEmails: await q(`SELECT e.id, u.username, e.email::text FROM sentry_useremail e JOIN auth_user u ON u.id = e.user_id ORDER BY e.id`),
        sequences: [await sequence('sentry_useroption'), await sequence('sentry_useremail')],
        findings: await q(`SELECT kind, model, source_pk, reason FROM userport.findings ORDER BY model, source_pk, reason`),
        map: await q('SELECT model, source_pk, target_id, kind FROM userport.pk_map ORDER BY model, source_pk'),
        definitions: await q(`SELECT conname AS name, pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'sentry_useroption'::regclass
          UNION ALL SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'sentry_useroption' ORDER BY 1, 2`),
      };
    };
    expect(await facts(a)).to.deep.equal(await facts(b));
  };

  for (const kind of ['sentry-9', 'sentry-2026'] as const) {
    const why = unavailable(kind);
    /** A new `kind` install holding its first admin, closed after the test. */
    const install = async (): Promise<TargetDb> => {
      const d = await targetDatabase(kind, { freshInstall: true });
      dbs.push(d);
      return d;
    };
    it(`into a new ${kind} install: the options go in before the input's end, the result is the merge's; a later option undoes them`, async function () {
      if (why) {
        process.stdout.write(`      skipped: ${why}\n`);
        return this.skip();
      }
      const kept = await both(parts(), install, {}, sameOnSentry);
      expect(kept.trace).to.match(/\[early\] written before the input ended: userport\.findings, sentry_useroption \(\d+ ms\)[^]*\[sink\] all rows sent/);
      expect(kept.trace).to.not.contain('undone');
      const late = await both(parts([useroption(USERS * 3, 9, 'timezone', 'Asia/Tokyo')]), install, {}, sameOnSentry);
      expect(late.trace).to.contain('[early] the rows written before the input ended are undone: a row of a model written came after rows of another model');
    });
  }
});
