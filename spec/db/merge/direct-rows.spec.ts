/**
 * Issue #23, item 1: the options and user emails of the import's new users are decided in the
 * client and COPYed straight into the target once the early users step is done
 * (lib/db/merge/direct-rows.ts). The result must be the merge's, to the row and the finding: rows
 * of merged or unknown users and scoped options keep their reasons; a (user, key) or (user,
 * address) that comes twice makes every row of that model go through the merge, which keeps the
 * first by source pk.
 */
import { expect } from 'chai';
import type { TestDb } from '../../helpers/db.js';
import { email, tableSnapshot, user, useremail, useroption, writeExport, type Rec } from '../../helpers/exports.js';
import { adminTargets, tracedImport } from '../../helpers/traced-import.js';
import { targetDatabase, unavailable, type TargetDb } from '../../helpers/targets.js';
import { FilteredUsers, MAX_FILTERED_SPAN, PairCheck } from '../../../lib/db/merge/direct-rows.js';
import { tmpPath } from '../../helpers/setup.js';
import fs from 'node:fs';

// Enough users that they span many read chunks: the early step starts while options are still to come.
const USERS = 3000;

/**
 * Users 1..USERS in Sentry's order (user 5 is named `admin`, as the target's user), then their
 * emails, options and user emails. Every user has `timezone`, every 7th `language` too; user 8 a
 * project-scoped option, the admin and user 99999 (who is not in the export) an organization-scoped
 * one; an option names user 99999. `repeat` adds a
 * second `timezone` for user 9 after all the others, and a second row of user 9's address.
 */
function records(repeat: boolean): Rec[] {
  const users: Rec[] = [];
  const emails: Rec[] = [];
  const options: Rec[] = [];
  const ues: Rec[] = [];
  let opk = 0;
  for (let i = 1; i <= USERS; i++) {
    users.push(user(i, i === 5 ? 'admin' : `u${i}`, { email: `u${i}@example.com` }));
    emails.push(email(i, `u${i}@example.com`));
    options.push(useroption(++opk, i, 'timezone', i % 2 ? 'UTC' : 'Europe/Berlin'));
    if (i % 7 === 0) options.push(useroption(++opk, i, 'language', 'de'));
    ues.push(useremail(i, i, `u${i}@example.com`));
  }
  options.push(useroption(++opk, 8, 'mail:alert', 1, { project_id: 3 }));
  options.push(useroption(++opk, 5, 'workflow:notifications', 1, { organization_id: 4 }));
  options.push(useroption(++opk, 99999, 'workflow:notifications', 1, { organization_id: 4 }));
  options.push(useroption(++opk, 99999, 'timezone', 'UTC'));
  if (repeat) {
    options.push(useroption(++opk, 9, 'timezone', 'America/New_York'));
    ues.push(useremail(USERS + 1, 9, 'u9@example.com'));
  }
  return [...users, ...emails, ...options, ...ues];
}

const cli = (file: string, db: TestDb, ...args: string[]) => tracedImport(file, db.url, '--merge-users', ...args);

/** The rows, the options and user emails in id order (by user and key or address), and the findings. */
async function outcome(db: TestDb) {
  const q = async (sql: string) => (await db.knex.raw(sql)).rows as unknown[];
  return {
    tables: await tableSnapshot(db.knex),
    optionOrder: await q(`SELECT u.username, o.key FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY o.id`),
    userEmailOrder: await q(`SELECT u.username, e.email FROM sentry_useremail e JOIN auth_user u ON u.id = e.user_id ORDER BY e.id`),
    findings: await q(`SELECT kind, model, source_pk, reason FROM userport.findings ORDER BY model, source_pk, reason`),
  };
}

describe('the new users\' options and user emails, written straight in (issue #23)', function () {
  this.timeout(180000);
  /** A new database holding the target's `admin` (a new Sentry's first user: the bulk path still applies). */
  const { target } = adminTargets();
  /** The export of records(repeat) into two such targets: the default path (a), and the merge alone (b, --bulk-load off). */
  const importBoth = async (repeat: boolean) => {
    const file = writeExport(records(repeat));
    const direct = await target();
    const merged = await target();
    return { direct, merged, a: cli(file, direct), b: cli(file, merged, '--bulk-load', 'off') };
  };

  it('writes what the merge writes, the same ids in the same order and the same findings, staging what is not plain', async () => {
    const { direct, merged, a, b } = await importBoth(false);
    // Every row of a new user (the users but the merged admin) went straight in; the admin's and
    // the unknown user's were staged. A new user's scoped option is dropped with its finding
    // straight in; the merged admin's and the unknown user's are the merge's to say why.
    const newUserOptions = USERS - 1 + Math.floor(USERS / 7);
    // No (user, key) twice among the diverted rows: the client's hashes say so, no aggregate runs.
    expect(a.stderr).to.contain(`[direct] sentry_useroption: ${newUserOptions} rows of new users written straight in, 2 staged for the merge, no pair twice (checked in the client)`);
    expect(a.stderr).to.contain('[direct] sentry.useroption: 1 records of new users dropped (scoped to an organization or project), their findings written straight in, 2 staged for the merge');
    expect(a.stderr).to.contain(`[direct] sentry_useremail: ${USERS - 1} rows of new users written straight in, 1 staged for the merge, no pair twice (checked in the client)`);
    expect(b.stderr).to.not.contain('[direct]');
    expect(a.models).to.deep.equal(b.models);
    expect(a.adjacent).to.deep.equal(b.adjacent);
    const got = await outcome(direct);
    expect(got).to.deep.equal(await outcome(merged));
    // The merge's reasons stand: the scoped option and the unknown user's were dropped, the
    // merged user's options went to the user it merged into.
    expect(got.findings).to.deep.include({ kind: 'dropped', model: 'sentry.useroption', source_pk: USERS + Math.floor(USERS / 7) + 1,
      reason: 'scoped to an organization or project (user pk 8)' });
    expect(got.findings.map((f) => (f as { reason: string }).reason).join('\n'))
      .to.match(/user not in the export \(user pk 99999\)/).and.to.match(/user merged into an existing user \(user pk 5\) into user id 1/);
    expect((a.models as Record<string, unknown>)['sentry.useroption']).to.deep.include({ dropped: { 'scoped to an organization or project': 1, 'user not in the export': 2 } });
    // User emails reset as the merge resets them: unverified, a fresh 32-character hash each,
    // hashed at the transaction's start (the lost-password hashes' now()).
    const ues = (await direct.knex.raw(`SELECT count(*)::int AS n, count(DISTINCT validation_hash)::int AS hashes,
        bool_and(validation_hash ~ '^[0-9a-f]{32}$') AS hex, bool_or(is_verified) AS verified,
        count(*) FILTER (WHERE ue.date_hash_added <> h.date_added)::int AS other_time
      FROM sentry_useremail ue JOIN sentry_lostpasswordhash h ON h.user_id = ue.user_id`)).rows[0];
    expect(ues).to.deep.equal({ n: USERS - 1, hashes: USERS - 1, hex: true, verified: false, other_time: 0 });
  });

  it('stages every row of a model when a (user, key) or (user, address) comes twice, and the merge keeps the first by source pk', async () => {
    const { direct, merged, a, b } = await importBoth(true);
    expect(a.stderr).to.contain('[direct] sentry_useroption: a row of a new user came twice');
    expect(a.stderr).to.contain('[direct] sentry_useremail: a row of a new user came twice');
    expect(a.models).to.deep.equal(b.models);
    const got = await outcome(direct);
    expect(got).to.deep.equal(await outcome(merged));
    const u9 = (await direct.knex.raw(`SELECT o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id WHERE u.username = 'u9' AND o.key = 'timezone'`)).rows;
    expect(u9).to.deep.equal([{ value: 'UTC' }]);
    expect(got.findings).to.deep.include({ kind: 'dropped', model: 'sentry.useroption', source_pk: USERS + Math.floor(USERS / 7) + 5, reason: 'duplicate (user, key): the first one wins (user pk 9)' });
  });

  it('a pair the client saw twice among rows that are not written (the merged admin\'s) is checked by the database: the new users\' rows still go straight in', async () => {
    // The admin (user 5, merged into the target's) gets its timezone twice: diverted, then staged.
    const file = writeExport([...records(false), useroption(USERS * 3, 5, 'timezone', 'Asia/Tokyo')]);
    const direct = await target();
    const merged = await target();
    const a = cli(file, direct);
    const b = cli(file, merged, '--bulk-load', 'off');
    const newUserOptions = USERS - 1 + Math.floor(USERS / 7);
    expect(a.stderr).to.match(new RegExp(`\\[direct\\] sentry_useroption: ${newUserOptions} rows of new users written straight in, 3 staged for the merge \\(`));
    expect(a.stderr).to.contain('no pair twice (checked in the client)'); // the user emails
    expect(a.models).to.deep.equal(b.models);
    expect(await outcome(direct)).to.deep.equal(await outcome(merged));
  });

  it('PairCheck: a (user, key) met twice, a key that is not text or more rows than its bound, and the database must check', () => {
    const fresh = (limit?: number) => new PairCheck(limit);
    const c = fresh();
    c.note(1, 'timezone');
    c.note(2, 'timezone');
    c.note(1, 'language');
    c.note(2 ** 40 + 1, 'timezone'); // another user whose pk shares its low 32 bits with user 1's
    expect(c.mayRepeat).to.equal(false);
    c.note(1, 'timezone');
    expect(c.mayRepeat).to.equal(true);
    const nul = fresh();
    nul.note(1, null);
    expect(nul.mayRepeat).to.equal(true);
    const bounded = fresh(2);
    bounded.note(1, 'a');
    bounded.note(2, 'a');
    expect(bounded.mayRepeat).to.equal(false);
    bounded.note(3, 'a');
    expect(bounded.mayRepeat).to.equal(true);
    const released = fresh();
    released.note(1, 'a');
    released.release();
    released.note(2, 'a');
    expect(released.mayRepeat, 'a row after the release').to.equal(true);
  });

  it('diverts from the very row that starts the early step: an option right after the users, repeated at the end, is decided once, the first by source pk', async () => {
    // Users, then options at once (the first of them, user 1's timezone, starts the step and
    // shares its write with thousands of others), the Email records (their dates are the file's,
    // not each transaction's), and user 1's timezone again after all of them.
    const all = records(false);
    const of = (model: string) => all.filter((r) => r.model === model);
    const file = writeExport([...of('sentry.user'), ...of('sentry.useroption'), ...of('sentry.email'), useroption(USERS * 3, 1, 'timezone', 'Asia/Tokyo')]);
    const direct = await target();
    const merged = await target();
    const a = cli(file, direct);
    const b = cli(file, merged, '--bulk-load', 'off');
    expect(a.stderr).to.contain('[sink] early users step started');
    expect(a.stderr).to.contain('[direct] sentry_useroption: a row of a new user came twice');
    expect(a.models).to.deep.equal(b.models);
    expect(await outcome(direct)).to.deep.equal(await outcome(merged));
    const u1 = (await direct.knex.raw(`SELECT o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id WHERE u.username = 'u1' AND o.key = 'timezone'`)).rows;
    expect(u1).to.deep.equal([{ value: 'UTC' }]);
  });

  it('on the general path too (a target that holds more than a few rows): the users step while the file is read, the rows of new users straight in, a repeat staged', async () => {
    for (const repeat of [false, true]) {
      const file = writeExport(records(repeat));
      const many = async () => {
        const d = await target();
        // More rows than FEW_ROWS (1,000): no bulk path.
        await d.knex.raw(`INSERT INTO auth_user (password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
            is_password_expired, flags, date_joined)
          SELECT 'x', 'old' || i, '', 'old' || i || '@example.org', false, true, false, false, false, 0, '2020-01-01T00:00:00Z' FROM generate_series(1, 1500) i`);
        await d.knex.raw('ANALYZE auth_user');
        return d;
      };
      const direct = await many();
      const merged = await many();
      const a = cli(file, direct);
      const b = cli(file, merged, '--bulk-load', 'off');
      expect(a.stderr).to.contain('[sink] early users step started');
      expect(a.stderr).to.not.contain('[bulk]');
      expect(a.stderr).to.contain(repeat ? '[direct] sentry_useremail: a row of a new user came twice'
        : `[direct] sentry_useremail: ${USERS - 1} rows of new users written straight in, 1 staged for the merge`);
      // The Email records go straight in on this path too (direct-emails.spec.ts).
      expect(a.stderr).to.contain(`[direct] sentry_email: ${USERS} rows written straight in, 0 addresses already there`);
      expect(a.models).to.deep.equal(b.models);
      expect(a.adjacent).to.deep.equal(b.adjacent);
      expect(await outcome(direct)).to.deep.equal(await outcome(merged));
    }
  });

  it('with a username filter: the filtered users\' options and user emails dropped straight to the merge\'s findings, the rest as the merge', async () => {
    // Every tenth user is kept (u1, u11, ...); the others, the admin (user 5) among them, are filtered.
    const names = tmpPath('filter-names.txt');
    fs.writeFileSync(names, Array.from({ length: USERS / 10 }, (_, k) => `u${10 * k + 1}`).join('\n'));
    const file = writeExport(records(false));
    const direct = await target();
    const merged = await target();
    const a = cli(file, direct, '--filter-usernames-file', names);
    const b = cli(file, merged, '--filter-usernames-file', names, '--bulk-load', 'off');
    // Options: a timezone each, a language every 7th user; the kept users' (i = 1 mod 10) go
    // straight in, every other user's is filtered, the unknown user's (99999) staged.
    const keptLanguages = Array.from({ length: USERS }, (_, k) => k + 1).filter((i) => i % 10 === 1 && i % 7 === 0).length;
    const kept = USERS / 10 + keptLanguages;
    const filtered = USERS + Math.floor(USERS / 7) - kept;
    expect(a.stderr).to.contain(`[direct] sentry_useroption: ${kept} rows of new users written straight in, ${filtered} of filtered users dropped to their findings straight in, 1 staged for the merge`);
    expect(a.stderr).to.contain(`[direct] sentry_useremail: ${USERS / 10} rows of new users written straight in, ${USERS - USERS / 10} of filtered users dropped to their findings straight in, 0 staged for the merge`);
    // The Email records of the kept users' addresses are staged, the others filtered straight in.
    expect(a.stderr).to.contain(`[direct] sentry_email: ${USERS - USERS / 10} Email records that no kept user's address keeps dropped to their findings straight in, ${USERS / 10} staged for the merge`);
    expect(b.stderr).to.not.contain('[direct]');
    expect(a.models).to.deep.equal(b.models);
    expect((a.models as Record<string, { filtered: number }>)['sentry.useroption']!.filtered).to.equal(filtered + 2); // and the scoped options of users 5 and 8
    const got = await outcome(direct);
    expect(got).to.deep.equal(await outcome(merged));
    expect(got.findings).to.deep.include({ kind: 'filtered', model: 'sentry.useremail', source_pk: 2, reason: 'user filtered out (user pk 2)' });
    // A filtered user's (user, key) twice (user 9's, at the end): each is filtered, as the merge says.
    const again = writeExport(records(true));
    const [c, d] = [await target(), await target()];
    const ac = cli(again, c, '--filter-usernames-file', names);
    const bd = cli(again, d, '--filter-usernames-file', names, '--bulk-load', 'off');
    expect(ac.stderr).to.contain(`[direct] sentry_useremail: ${USERS / 10} rows of new users written straight in, ${USERS - USERS / 10 + 1} of filtered users dropped`);
    expect(ac.models).to.deep.equal(bd.models);
    expect(await outcome(c)).to.deep.equal(await outcome(d));
  });

  it('with a username filter, an Email record is filtered in the client only where no kept address can keep it: other letter case, escapes, unknown users\' addresses and addresses that are not ASCII are the merge\'s', async () => {
    const names = tmpPath('filter-names-emails.txt');
    fs.writeFileSync(names, Array.from({ length: USERS / 10 }, (_, k) => `u${10 * k + 1}`).join('\n'));
    // U1@EXAMPLE.COM is u1's address in other letters; a\\b has an escape in its staging line; the
    // unknown user 99999's user email keeps ghost's address in the client's view (the merge's: not).
    const extras = [email(USERS + 1, 'U1@EXAMPLE.COM'), email(USERS + 2, 'a\\b@example.com'), email(USERS + 3, 'ghost@example.com'),
      useremail(USERS + 1, 99999, 'ghost@example.com')];
    const file = writeExport([...records(false), ...extras]);
    const [direct, merged] = [await target(), await target()];
    const a = cli(file, direct, '--filter-usernames-file', names);
    const b = cli(file, merged, '--filter-usernames-file', names, '--bulk-load', 'off');
    expect(a.stderr).to.contain(`[direct] sentry_email: ${USERS - USERS / 10} Email records that no kept user's address keeps dropped to their findings straight in, ${USERS / 10 + 3} staged for the merge`);
    expect(a.models).to.deep.equal(b.models);
    const got = await outcome(direct);
    expect(got).to.deep.equal(await outcome(merged));
    expect(got.findings).to.deep.include({ kind: 'filtered', model: 'sentry.email', source_pk: USERS + 3, reason: 'not an email of a user kept by --filter-usernames' });
    // A kept user's address that is not ASCII (its lower() may be an ASCII one): every record staged.
    const wide = writeExport([...records(false), useremail(USERS + 1, 1, 'jürgen@example.com'), email(USERS + 1, 'jürgen@example.com')]);
    const [c, d] = [await target(), await target()];
    const ac = cli(wide, c, '--filter-usernames-file', names);
    const bd = cli(wide, d, '--filter-usernames-file', names, '--bulk-load', 'off');
    expect(ac.stderr).to.contain(`[direct] sentry_email: all ${USERS + 1} staged for the merge: a kept user's address is not plain ASCII text`);
    expect(ac.models).to.deep.equal(bd.models);
    expect(await outcome(c)).to.deep.equal(await outcome(d));
  });

  it('FilteredUsers: a bit per pk from the first one\'s, across growths; a pk below the first or too far from it, and it knows none', () => {
    const f = new FilteredUsers();
    const pks = [1000, 1001, 1003, 1000 + 8 * 1024 + 5, 1000 + 70_000, 1000 + 3_000_000];
    for (const pk of pks) f.note(pk);
    for (const pk of pks) expect(f.has(pk), String(pk)).to.equal(true);
    for (const pk of [999, 1002, 1004, 1000 + 8 * 1024 + 4, 1000 + 3_000_001, 1000 + 40_000_000, -5]) expect(f.has(pk), String(pk)).to.equal(false);
    expect(f.bytes).to.be.at.least(3_000_000 / 8).and.at.most(3_000_000 / 4 + 1024);
    const below = new FilteredUsers();
    below.note(10);
    below.note(9);
    expect([below.has(10), below.has(9), below.bytes]).to.deep.equal([false, false, 0]);
    const far = new FilteredUsers();
    far.note(1);
    far.note(1 + MAX_FILTERED_SPAN);
    expect([far.has(1), far.bytes]).to.deep.equal([false, 0]);
  });

  for (const kind of ['sentry-9', 'sentry-2026'] as const) {
    const why = unavailable(kind);
    it(`into a new ${kind} install: the same options, findings and counts as the merge, a new user's scoped option dropped straight to its finding`, async function () {
      if (why) {
        process.stdout.write(`      skipped: ${why}\n`);
        return this.skip();
      }
      const file = writeExport(records(false));
      const targets: TargetDb[] = [];
      try {
        for (let i = 0; i < 2; i++) targets.push(await targetDatabase(kind, { freshInstall: true }));
        const [direct, merged] = targets as [TargetDb, TargetDb];
        const a = cli(file, direct);
        const b = cli(file, merged, '--bulk-load', 'off');
        // The target's admin is named admin@example.com: every user of the export is new (user 5,
        // `admin`, too), so the scoped options of users 5 and 8 are dropped straight to their
        // findings; the unknown user's is staged.
        expect(a.stderr).to.contain('[direct] sentry.useroption: 2 records of new users dropped (scoped to an organization or project), their findings written straight in, 1 staged for the merge');
        expect(b.stderr).to.not.contain('[direct]');
        expect(a.models).to.deep.equal(b.models);
        const q = async (db: TargetDb, sql: string) => (await db.knex.raw(sql)).rows as unknown[];
        for (const sql of [
          `SELECT u.username, o.key, o.value::text, o.project_id, o.organization_id FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY 1, 2`,
          `SELECT kind, model, source_pk, reason FROM userport.findings ORDER BY model, source_pk, reason`,
        ]) expect(await q(direct, sql), sql).to.deep.equal(await q(merged, sql));
        expect(await q(direct, `SELECT reason FROM userport.findings WHERE model = 'sentry.useroption' AND reason LIKE 'scoped%' ORDER BY source_pk`))
          .to.deep.equal([{ reason: 'scoped to an organization or project (user pk 8)' }, { reason: 'scoped to an organization or project (user pk 5)' }]);
      } finally {
        for (const t of targets) await t.close();
      }
    });

    it(`into a new ${kind} install with a username filter: the filtered users' rows and Email records dropped straight to the merge's findings, the rest as the merge`, async function () {
      if (why) {
        process.stdout.write(`      skipped: ${why}\n`);
        return this.skip();
      }
      const names = tmpPath(`filter-names-${kind}.txt`);
      fs.writeFileSync(names, Array.from({ length: USERS / 10 }, (_, k) => `u${10 * k + 1}`).join('\n'));
      const file = writeExport(records(false));
      const targets: TargetDb[] = [];
      try {
        for (let i = 0; i < 2; i++) targets.push(await targetDatabase(kind, { freshInstall: true }));
        const [direct, merged] = targets as [TargetDb, TargetDb];
        const a = cli(file, direct, '--filter-usernames-file', names);
        const b = cli(file, merged, '--filter-usernames-file', names, '--bulk-load', 'off');
        expect(a.stderr).to.contain(`[direct] sentry_useremail: ${USERS / 10} rows of new users written straight in, ${USERS - USERS / 10} of filtered users dropped to their findings straight in, 0 staged for the merge`);
        // Sentry 9 keeps Email rows: those of no kept user's address are filtered in the client;
        // Sentry 2026 has none: every Email record is skipped as it is read, on both paths.
        if (kind === 'sentry-9') {
          expect(a.stderr).to.contain(`[direct] sentry_email: ${USERS - USERS / 10} Email records that no kept user's address keeps dropped to their findings straight in, ${USERS / 10} staged for the merge`);
        } else {
          expect(a.stderr).to.not.contain('[direct] sentry_email');
          for (const r of [a, b]) expect(r.skipped).to.deep.equal({ 'sentry.email': USERS });
        }
        expect(b.stderr).to.not.contain('[direct]');
        expect(a.models).to.deep.equal(b.models);
        const q = async (db: TargetDb, sql: string) => (await db.knex.raw(sql)).rows as unknown[];
        for (const sql of [
          `SELECT u.username, o.key, o.value::text FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY 1, 2`,
          `SELECT u.username, e.email FROM sentry_useremail e JOIN auth_user u ON u.id = e.user_id ORDER BY 1, 2`,
          ...(kind === 'sentry-9' ? ['SELECT email::text, date_added FROM sentry_email ORDER BY 1'] : []),
          `SELECT kind, model, source_pk, ordinal, reason FROM userport.findings ORDER BY model, source_pk, kind, reason`,
        ]) expect(await q(direct, sql), sql).to.deep.equal(await q(merged, sql));
      } finally {
        for (const t of targets) await t.close();
      }
    });
  }

  it('makes the new users\' lost-password hashes in the client, in id order, also when no row was diverted', async () => {
    // The whole export; and its users with the one option none of whose rows is written (project-scoped).
    const scoped = (r: Rec) => r.model === 'sentry.useroption' && (r.fields as { project_id: unknown }).project_id != null;
    for (const [recs, analyses] of [[records(false), 2], [records(false).filter((r) => r.model === 'sentry.user' || scoped(r)), 1]] as const) {
      const file = writeExport(recs);
      const direct = await target();
      const merged = await target();
      const a = cli(file, direct);
      const b = cli(file, merged, '--bulk-load', 'off');
      // The staging table is analysed by the early step, and again by the merge only if rows were
      // staged after it (the whole export: the admin's and the unknown user's rows). The early
      // step's samples a few rows, in the round trip that sets its sample size (a batch's
      // statements printed apart by " ; ").
      expect(a.stderr.match(/ ANALYZE stage /g), `${recs.length} records`).to.have.length(analyses);
      expect(a.stderr.match(/set_config\('default_statistics_target', '10', true\) ; ANALYZE stage /g), 'the early step\'s, with its sample size').to.have.length(1);
      // Every user but the admin (merged into the target's) is new.
      expect(a.stderr).to.contain(`[direct] sentry_lostpasswordhash: ${USERS - 1} rows of new users written straight in`);
      expect(a.adjacent).to.deep.equal(b.adjacent);
      const hashes = async (db: TestDb) => (await db.knex.raw(`SELECT u.username, h.hash ~ '^[0-9a-f]{32}$' AS hex
        FROM sentry_lostpasswordhash h JOIN auth_user u ON u.id = h.user_id ORDER BY h.id`)).rows as { username: string; hex: boolean }[];
      const got = await hashes(direct);
      expect(got).to.have.length(USERS - 1);
      expect(got.map((h) => h.username)).to.deep.equal((await hashes(merged)).map((h) => h.username));
      expect(got.every((h) => h.hex)).to.equal(true);
      expect((await direct.knex.raw(`SELECT count(DISTINCT hash)::int AS n FROM sentry_lostpasswordhash`)).rows[0].n).to.equal(USERS - 1);
    }
  });
});
