/**
 * The users' step (lib/db/merge/users.ts) samples its decision table with a small statistics
 * target, inside the import's transaction. The tables analysed after it must get the session's
 * own target again: a planner fed 11 histogram bounds where it expects 101 misjudges every join
 * that follows.
 */
import { expect } from 'chai';
import { importUsers } from '../../../lib/index.js';
import { hash32 } from '../../../lib/db/merge/hash-sets.js';
import { MAX_CHECKED_USERS, UserRepeatCheck } from '../../../lib/db/merge/users.js';
import { ErrorCodes } from '../../../lib/errors.js';
import type { TraceEvent } from '../../../lib/trace.js';
import { failure, freshDatabase, withDb, type TestDb } from '../../helpers/db.js';
import { insertUser } from '../../helpers/sentry-rows.js';
import { email, user, useroption, writeExport, type Rec } from '../../helpers/exports.js';

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

/** Two distinct strings of the form `${prefix}${i}${suffix}` whose {@link hash32} is the same (a birthday search). */
function hashTwins(prefix: string, suffix: string, lower: boolean): [string, string] {
  const seen = new Map<number, string>();
  for (let i = 0; ; i++) {
    const s = `${prefix}${i}${suffix}`;
    const h = hash32(s, lower);
    const twin = seen.get(h);
    if (twin !== undefined) return [twin, s];
    seen.set(h, s);
  }
}

describe('the users step ranks only the repeats the client listed (issue #23)', () => {
  it('the check lists every user whose name or email_unique candidate repeats an earlier one, and every non-ASCII name', () => {
    const check = new UserRepeatCheck();
    check.note(1, 'alice', 'a@example.com', null);
    check.note(2, 'ALICE', 'b@example.com', null); // the name again, another case
    check.note(3, 'bob', 'A@example.com', null); // candidates are compared as they are: not a repeat
    check.note(4, 'carol', 'c@example.com', 'a@example.com'); // its email_unique is user 1's address
    check.note(5, 'Änne', '', null); // not ASCII; no candidate
    check.note(6, 'dave', '', ''); // no candidate either
    check.note(7, 'erin', 'b@example.com', null);
    expect(check.take()).to.deep.equal({ names: [2, 5], candidates: [4, 7] });
    // A user noted after the list was taken makes it void.
    check.note(8, 'frank', null, null);
    expect(check.why).to.match(/after the list was taken/);
  });

  it('gives up (the step then finds the repeats itself) beyond its bound of listed users, and of users', () => {
    const check = new UserRepeatCheck();
    for (let i = 1; i <= 100_002; i++) check.note(i, 'same', null, null);
    expect(check.take()).to.equal(undefined);
    expect(check.why).to.match(/too many/);
    const many = new UserRepeatCheck(false);
    for (let i = 1; i <= MAX_CHECKED_USERS; i++) many.note(i, `u${i}`, null, null);
    expect(many.why, 'at the bound').to.equal(undefined);
    many.note(MAX_CHECKED_USERS + 1, 'one more', null, null);
    expect(many.take()).to.equal(undefined);
    expect(many.why).to.match(/more than 1,400,000 users/);
  });

  /**
   * An export in Sentry's order with every kind of repeat: names again in another case, names that
   * differ only in a non-ASCII letter's case, addresses again, an email_unique that is another
   * user's address, no address, and two names and two addresses that are not repeats but share
   * a hash. The early users step (the client's list) must decide as the merge at the end does.
   */
  function repeatsExport(): { file: string; users: number; twins: [string, string, string, string] } {
    const [n1, n2] = hashTwins('twin', '', true);
    const [e1, e2] = hashTwins('mail', '@example.com', false);
    const records: Rec[] = [];
    const add = (name: string, fields: Record<string, unknown>) => records.push(user(records.length + 1, name, fields));
    for (let i = 1; i <= 300; i++) add(`u${i}`, { email: `u${i}@example.com` });
    add('alice', { email: 'alice@example.com' }); // 301
    add('ALICE', { email: 'alice@example.com' }); // renamed; its address is alice's: email_unique left empty
    add('Alice', { email: 'x@example.com', email_unique: 'u7@example.com' }); // renamed; email_unique is u7's
    add('Änne', { email: 'anne@example.com' }); // 304
    add('änne', { email: '' }); // 305: Änne's name in a locale that lower-cases Ä
    add(n1, { email: e1 });
    add(n2, { email: e2 }); // shares both hashes with the user before: listed, not a repeat
    add('u5', { email: 'late@example.com' }); // 308: the name of user 5, renamed
    const users = records.length;
    for (let i = 1; i <= users; i++) records.push(email(i, `e${i}@example.com`));
    for (let i = 1; i <= users; i++) records.push(useroption(i, i, 'timezone', 'UTC'));
    return { file: writeExport(records), users, twins: [n1, n2, e1, e2] };
  }

  const state = async (db: TestDb) => ({
    users: (await db.knex.raw(`SELECT id, regexp_replace(username, '-[a-zA-Z0-9]{2,12}$', '-~') AS u, email, email_unique FROM auth_user ORDER BY id`)).rows,
    findings: (await db.knex.raw(`SELECT kind, model, source_pk, regexp_replace(reason, 'imported as .*', '') AS reason FROM userport.findings ORDER BY 2, 3, 1, 4`)).rows,
  });

  it('the twins of the export below are listed (the import then ranks users that are no repeats)', () => {
    const check = new UserRepeatCheck();
    const [n1, n2] = hashTwins('twin', '', true);
    const [e1, e2] = hashTwins('mail', '@example.com', false);
    check.note(1, n1, e1, null);
    check.note(2, n2, e2, null);
    expect(check.take()).to.deep.equal({ names: [2], candidates: [2] });
  });

  /** The users step's statement of an import, from its trace: how it found the repeats. */
  const usersStatement = (sqls: string[]) => sqls.find((q) => q.includes('CREATE TEMP TABLE up_user ON COMMIT DROP'))!;

  /**
   * Targets: empty (C and ICU en-US), one that holds a few rows (the bulk path, decided against
   * them: an existing alice and an existing holder of u7's address and of u8's email_unique), and
   * one that holds more than a few (the general path, the early step on it); the last two also
   * with --merge-users.
   */
  const variants: { name: string; locale?: string; existing?: number; mergeUsers?: boolean; renamed: number[]; notes: number[] }[] = [
    // ALICE, Alice and u5; and änne where lower() makes it Änne's name (ICU), not in C.
    { name: 'empty target, C database', renamed: [302, 303, 308], notes: [302, 303] },
    { name: 'empty target, ICU en-US database', locale: 'en-US', renamed: [302, 303, 305, 308], notes: [302, 303] },
    // alice is taken by the target's user too; u7's address and u8's email_unique are an existing user's.
    { name: 'a target holding a few rows', existing: 2, renamed: [301, 302, 303, 308], notes: [7, 8, 302, 303] },
    { name: 'a target holding a few rows, --merge-users', existing: 2, mergeUsers: true, renamed: [], notes: [7, 8] },
    { name: 'a target holding more than a few rows (the general path)', existing: 1500, renamed: [301, 302, 303, 308], notes: [7, 8, 302, 303] },
    { name: 'a target holding more than a few rows, --merge-users', existing: 1500, mergeUsers: true, renamed: [], notes: [7, 8] },
  ];
  for (const v of variants) {
    it(`an import in Sentry's order decides as the merge at the end: renames, email_unique, notes and findings (${v.name})`, async () => {
      const { file, twins: [n1, n2, e1, e2] } = repeatsExport();
      const early = await freshDatabase(true, { icuLocale: v.locale });
      const atEnd = await freshDatabase(true, { icuLocale: v.locale });
      try {
        for (const db of [early, atEnd]) {
          if (!v.existing) continue;
          await insertUser(db.knex, { password: 'x', username: 'Alice', email: 'U7@example.com', email_unique: 'u8@example.com' });
          await insertUser(db.knex, { password: 'x', username: 'someone', email: 'someone@example.org', email_unique: null });
          if (v.existing > 2) {
            await db.knex.raw(`INSERT INTO auth_user (password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
                is_password_expired, flags, date_joined)
              SELECT 'x', 'old' || i, '', 'old' || i || '@example.org', false, true, false, false, false, 0, now() FROM generate_series(3, ${v.existing}) i`);
            await db.knex.raw('ANALYZE auth_user');
          }
        }
        const sqls: { early: string[]; atEnd: string[] } = { early: [], atEnd: [] };
        const traced = (into: string[]) => (e: TraceEvent) => { if (e.kind === 'sql') into.push(e.sql); else if (e.kind === 'sink') into.push(`[sink] ${e.moment}`); };
        const options = { source: file, mergeUsers: !!v.mergeUsers };
        const a = await importUsers({ ...options, databaseUrl: early.url, onTrace: traced(sqls.early) });
        const b = await importUsers({ ...options, databaseUrl: atEnd.url, bulkLoad: 'off', onTrace: traced(sqls.atEnd) });
        expect(sqls.early, 'the users step ran early').to.include('[sink] overlap started');
        // Early, the step ranked the client's list; at the end, it found the repeats itself.
        expect(usersStatement(sqls.early)).to.include('unnest(').and.not.include('HAVING count(*) > 1');
        expect(usersStatement(sqls.atEnd)).to.include('HAVING count(*) > 1').and.not.include('unnest(');
        expect(a.bulkLoad).to.equal((v.existing ?? 0) <= 1000);
        expect(a.models).to.deep.equal(b.models);
        expect(a.adjacent).to.deep.equal(b.adjacent);
        const s = await state(early);
        expect(s).to.deep.equal(await state(atEnd));
        const ofKind = async (kind: string) => (await early.knex.raw(`SELECT source_pk FROM userport.findings WHERE kind = ? ORDER BY 1`, [kind])).rows
          .map((r: { source_pk: string }) => Number(r.source_pk));
        expect(await ofKind('renamed')).to.deep.equal(v.renamed);
        expect(await ofKind('address'), 'ALICE\'s address and Alice\'s email_unique are earlier users\'; u7\'s and u8\'s an existing user\'s').to.deep.equal(v.notes);
        if (v.mergeUsers) expect(a.models['sentry.user']!.merged).to.equal(v.existing ? 4 : 3);
        // The twins keep their own names and addresses.
        expect(s.users.filter((u: { u: string }) => u.u === n1 || u.u === n2).map((u: { email_unique: string }) => u.email_unique)).to.deep.equal([e1, e2]);
      } finally {
        await early.close();
        await atEnd.close();
      }
    });
  }

  it('stops before writing when the new users\' ids would not fit the id column, counting one id per name with --merge-users', async () => {
    // Ten users of which three repeat a name (two of the export, one of the target's user):
    // --merge-users needs seven ids, else ten. The column is made 32-bit (Sentry 9's) and its
    // sequence left seven ids from the end.
    const names = ['u1', 'u2', 'u3', 'u4', 'u5', 'u6', 'u7', 'U1', 'u2', 'ZED'].map((n, i) => user(i + 1, n));
    const file = writeExport([...names, email(1, 'x@example.com')]);
    for (const mergeUsers of [true, false]) {
      await withDb(async (db) => {
        await db.knex.raw('ALTER TABLE auth_user ALTER COLUMN id TYPE integer');
        await insertUser(db.knex, { password: 'x', username: 'zed' });
        await db.knex.raw(`SELECT setval(pg_get_serial_sequence('auth_user', 'id'), 2147483647 - 7)`);
        const run = importUsers({ source: file, databaseUrl: db.url, mergeUsers });
        if (mergeUsers) {
          const summary = await run;
          expect(summary.models['sentry.user']).to.include({ inserted: 7, merged: 3 });
          expect((await db.knex.raw('SELECT max(id)::int AS id FROM auth_user')).rows[0].id).to.equal(2147483647);
        } else {
          const err = await failure(run);
          expect(err.code).to.equal(ErrorCodes.TARGET_LIMIT);
          expect(err.message).to.include('importing 10 users would need user ids up to 2147483650');
          expect(await db.count('auth_user')).to.equal(1);
        }
      });
    }
  });
});
