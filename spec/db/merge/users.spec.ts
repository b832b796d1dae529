/**
 * The users' step (lib/db/merge/users.ts) samples its decision table with a small statistics
 * target, inside the import's transaction. The tables analysed after it must get the session's
 * own target again: a planner fed 11 histogram bounds where it expects 101 misjudges every join
 * that follows.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { importUsers } from '../../../lib/index.js';
import { hash32 } from '../../../lib/db/merge/hash-sets.js';
import { MAX_CHECKED_USERS, randomTail, UserOrdinals, UserRepeatCheck } from '../../../lib/db/merge/users.js';
import { migrate } from '../../../lib/db/knex.js';
import { ErrorCodes } from '../../../lib/errors.js';
import type { TraceEvent } from '../../../lib/trace.js';
import { failure, freshDatabase, withDb, type TestDb } from '../../helpers/db.js';
import { insertUser } from '../../helpers/sentry-rows.js';
import { TARGET_KINDS, targetDatabase, unavailable } from '../../helpers/targets.js';
import { tmpFolder } from '../../helpers/setup.js';
import { email, user, useremail, useroption, writeExport, type Rec } from '../../helpers/exports.js';

const USERS = 2000;

/** Whether a traced statement is the users step's draw of a block of ids. */
const isBlockDraw = (sql: string) => sql.includes('WITH drawn AS MATERIALIZED (SELECT nextval(');

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

  it('meets a target\'s few users: lists the values of theirs that may equal a noted user\'s, and no address once one is not plain ASCII', () => {
    const check = new UserRepeatCheck();
    check.note(1, 'alice', 'A@x.io', null); // candidate A@x.io (its address)
    check.note(2, 'Bob', 'b@x.io', 'bob-unique');
    const existing = [
      { ln: 'alice', le: 'zed@x.io', eu: null }, // alice's name
      { ln: 'dave', le: 'a@x.io', eu: 'bob-unique' }, // alice's address (lower-cased), Bob's email_unique
      { ln: 'bob', le: null, eu: 'a@x.io' }, // Bob's name; a@x.io is not alice's candidate (A@x.io, compared as it is)
      { ln: 'ärger', le: 'é@x.io', eu: '' }, // not plain ASCII after lower(): no ASCII value equals it
      { ln: 'erin', le: 'e@x.io', eu: 'A@x.io' }, // alice's candidate
    ];
    check.meet(existing);
    expect(check.take()).to.deep.equal({ names: [], candidates: [], existing: { names: ['alice', 'bob'], candidates: ['bob-unique', 'A@x.io'], addresses: ['a@x.io'] } });
    // A staged address that is not plain ASCII: its lower() is the database's, so every address is probed.
    const other = new UserRepeatCheck();
    other.note(1, 'alice', 'Ärger@x.io', null);
    other.meet(existing);
    expect(other.take()!.existing).to.deep.equal({ names: ['alice'], candidates: [], addresses: undefined });
    // No address noted (the target was empty when the import began): every address is probed.
    const unnoted = new UserRepeatCheck(true, false);
    unnoted.note(1, 'alice', 'A@x.io', null);
    unnoted.meet(existing);
    expect(unnoted.take()!.existing).to.deep.equal({ names: ['alice'], candidates: ['A@x.io'], addresses: undefined });
    // Given up (too many users): no list, and nothing met.
    const many = new UserRepeatCheck();
    for (let i = 1; i <= 100_002; i++) many.note(i, 'same', null, null);
    many.meet(existing);
    expect(many.take()).to.equal(undefined);
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
    // Repeats of the target's users alone (where it holds some): someone's address, someone's name.
    add('u309', { email: 'Someone@Example.org' }); // 309
    add('SomeOne', { email: 'u310@example.com' }); // 310
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


  /** The users step's decision statement of an import, from its trace: how it found the repeats. */
  const usersStatement = (sqls: string[]) => sqls.find((q) => /CREATE TEMP TABLE up_(user|exc) ON COMMIT DROP AS\s+WITH /.test(q))!;

  /** `file` imported into `early` (the users step started while the file is read, its SQL traced) and into `atEnd` (`bulkLoad: 'off'`: the merge at the end). */
  const importBothWays = async (file: string, early: { url: string }, atEnd: { url: string }) => {
    const sqls: string[] = [];
    const a = await importUsers({ source: file, databaseUrl: early.url, onTrace: (e) => { if (e.kind === 'sql') sqls.push(e.sql); } });
    const b = await importUsers({ source: file, databaseUrl: atEnd.url, bulkLoad: 'off' });
    return { a, b, statement: usersStatement(sqls) };
  };

  /**
   * Each renamed user's finding names the name the user holds now, the user found by the pk map
   * (where only the exceptions were decided, up_user is a view that reads the names from them).
   */
  const expectRenamedAsNamed = async (db: TestDb, renamed: number) => {
    const named = (await db.knex.raw(`
      SELECT f.source_pk, substring(f.reason from 'imported as (.*)$') AS named, a.username
      FROM userport.findings f
        JOIN userport.pk_ranges r ON r.run = f.run AND r.model = 'sentry.user' AND f.source_pk >= r.source_pk AND f.source_pk < r.source_pk + r.span
        JOIN auth_user a ON a.id = r.target_id + (f.source_pk - r.source_pk)
      WHERE f.kind = 'renamed' ORDER BY 1`)).rows as { named: string | null; username: string }[];
    expect(named.length, 'every renamed user found by the pk map').to.equal(renamed);
    for (const r of named) expect(r.named, 'the finding names the user\'s new name').to.equal(r.username).and.match(/-[a-z0-9]{2,12}$/);
  };

  /**
   * Targets: empty (C and ICU en-US), one that holds a few rows (the bulk path, decided against
   * them: an existing alice and an existing holder of u7's address and of u8's email_unique, and
   * someone, whose address and name users 309 and 310 repeat, and nothing else does), the same
   * two users beside more than a few Email rows (the general path, their users read by the
   * client), and one that holds more than a few users (the general path, the early step on it,
   * deciding every user); the few rows and the many users also with --merge-users.
   */
  const variants: { name: string; locale?: string; existing?: number; emailRows?: number; mergeUsers?: boolean; renamed: number[]; notes: number[] }[] = [
    // ALICE, Alice and u5; and änne where lower() makes it Änne's name (ICU), not in C.
    { name: 'empty target, C database', renamed: [302, 303, 308], notes: [302, 303] },
    { name: 'empty target, ICU en-US database', locale: 'en-US', renamed: [302, 303, 305, 308], notes: [302, 303] },
    // alice is taken by the target's user too; u7's address and u8's email_unique are an existing user's.
    { name: 'a target holding a few rows', existing: 2, renamed: [301, 302, 303, 308, 310], notes: [7, 8, 302, 303, 309] },
    { name: 'a target holding a few rows, --merge-users', existing: 2, mergeUsers: true, renamed: [], notes: [7, 8, 309] },
    // The general path (sentry_email holds more than a few rows), over users the client reads: no
    // more than twice the import's 310 (at least 1,000 are read), so it decides the exceptions alone.
    { name: 'a target holding a few users and more than a few Email rows (the general path, its users read by the client)', existing: 2, emailRows: 1500,
      renamed: [301, 302, 303, 308, 310], notes: [7, 8, 302, 303, 309] },
    { name: 'a target holding more than a few rows (the general path)', existing: 1500, renamed: [301, 302, 303, 308, 310], notes: [7, 8, 302, 303, 309] },
    { name: 'a target holding more than a few rows, --merge-users', existing: 1500, mergeUsers: true, renamed: [], notes: [7, 8, 309] },
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
          if (v.emailRows) {
            await db.knex.raw(`INSERT INTO sentry_email (email, date_added) SELECT 'old' || i || '@example.net', now() FROM generate_series(1, ${v.emailRows}) i`);
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
        // Without --merge-users every kept user is new and they came one after another: early,
        // the ids are one block, by ordinal; at the end (and with --merge-users), nextval per user.
        expect(sqls.early.some(isBlockDraw), 'a block drawn').to.equal(!v.mergeUsers);
        expect(usersStatement(sqls.early).includes('nextval('), 'nextval per user').to.equal(!!v.mergeUsers);
        expect(sqls.atEnd.some(isBlockDraw)).to.equal(false);
        // Early, with a block and no more than a few existing users (on the bulk path, or read by
        // the client on the general path), it decided only the users that may be exceptions
        // (up_exc); every other user is inserted as it is.
        const subset = !v.mergeUsers && (v.existing ?? 0) <= 1000;
        expect(usersStatement(sqls.early).includes('CREATE TEMP TABLE up_exc'), 'exceptions alone decided').to.equal(subset);
        // Over a few existing users, only the values of theirs the client's hashes met are probed
        // (alice's and someone's names, someone's address, u8@example.com): not all of theirs for every staged user.
        if (subset && v.existing) {
          expect(usersStatement(sqls.early)).to.not.include('SELECT lower(x.email) FROM auth_user x')
            .and.not.include('UNION ALL SELECT lower(x.username) FROM auth_user x').and.not.include('UNION ALL SELECT x.email_unique FROM auth_user x');
        }
        expect(usersStatement(sqls.atEnd)).to.include('CREATE TEMP TABLE up_user');
        expect(a.bulkLoad).to.equal((v.existing ?? 0) <= 1000 && !v.emailRows);
        expect(a.models).to.deep.equal(b.models);
        expect(a.adjacent).to.deep.equal(b.adjacent);
        const s = await state(early);
        expect(s).to.deep.equal(await state(atEnd));
        const ofKind = async (kind: string) => (await early.knex.raw(`SELECT source_pk FROM userport.findings WHERE kind = ? ORDER BY 1`, [kind])).rows
          .map((r: { source_pk: string }) => Number(r.source_pk));
        expect(await ofKind('renamed')).to.deep.equal(v.renamed);
        for (const db of [early, atEnd]) await expectRenamedAsNamed(db, v.renamed.length);
        expect(await ofKind('address'), 'ALICE\'s address and Alice\'s email_unique are earlier users\'; u7\'s and u8\'s an existing user\'s').to.deep.equal(v.notes);
        if (v.mergeUsers) expect(a.models['sentry.user']!.merged).to.equal(v.existing ? 5 : 3);
        // The twins keep their own names and addresses.
        expect(s.users.filter((u: { u: string }) => u.u === n1 || u.u === n2).map((u: { email_unique: string }) => u.email_unique)).to.deep.equal([e1, e2]);
      } finally {
        await early.close();
        await atEnd.close();
      }
    });
  }

  it('with --filter-usernames, users the filter removed before and after the kept ones: the same findings and counts as the merge at the end', async () => {
    // The kept users still come one after another (a block of ids, only the exceptions decided):
    // the removed ones are not among the decided exceptions but among the view's other users.
    const kept = [user(3, 'alice'), user(4, 'ALICE'), user(5, 'bob')];
    for (let pk = 6; pk <= 40; pk++) kept.push(user(pk, `u${pk}`));
    const file = writeExport([
      user(1, 'gone1'), user(2, 'gone2'), ...kept, user(41, 'gone3', { email: 'bob@example.com' }),
      useremail(1, 3, 'alice@example.com'), useremail(2, 1, 'gone1@example.com'), useroption(1, 5, 'timezone', 'UTC'),
    ]);
    const filterUsernames = kept.map((u) => (u.fields as { username: string }).username);
    const early = await freshDatabase();
    const atEnd = await freshDatabase();
    try {
      const sqls: string[] = [];
      const a = await importUsers({ source: file, databaseUrl: early.url, filterUsernames, onTrace: (e) => { if (e.kind === 'sql') sqls.push(e.sql); } });
      const b = await importUsers({ source: file, databaseUrl: atEnd.url, filterUsernames, bulkLoad: 'off' });
      expect(usersStatement(sqls), 'exceptions alone decided').to.include('CREATE TEMP TABLE up_exc');
      expect(a.models['sentry.user']!.filtered).to.equal(3);
      expect(a.models).to.deep.equal(b.models);
      expect(a.adjacent).to.deep.equal(b.adjacent);
      const s = await state(early);
      expect(s).to.deep.equal(await state(atEnd));
      type Finding = { kind: string; model: string; source_pk: string; reason: string };
      const of = (kind: string): [string, number, string][] => s.findings.filter((f: Finding) => f.kind === kind).map((f: Finding) => [f.model, Number(f.source_pk), f.reason]);
      expect(of('filtered')).to.deep.equal([
        ['sentry.user', 1, 'username not in --filter-usernames'], ['sentry.user', 2, 'username not in --filter-usernames'],
        ['sentry.user', 41, 'username not in --filter-usernames'], ['sentry.useremail', 2, 'user filtered out (user pk 1)'],
      ]);
      expect(of('renamed').map(([, pk]) => pk)).to.deep.equal([4]);
      expect(of('address').map(([, pk]) => pk)).to.deep.equal([4]);
    } finally {
      await early.close();
      await atEnd.close();
    }
  });

  /** Users (renames' tails blurred) and findings, of any generation's auth_user. */
  const anyState = async (db: TestDb) => ({
    users: (await db.knex.raw(`SELECT id, regexp_replace(username, '-[a-zA-Z0-9]{2,12}$', '-~') AS u, email FROM auth_user ORDER BY id`)).rows,
    findings: (await db.knex.raw(`SELECT kind, model, source_pk, regexp_replace(reason, 'imported as .*', '') AS reason FROM userport.findings ORDER BY 2, 3, 1, 4`)).rows,
  });

  for (const kind of TARGET_KINDS) {
    it(`over a new Sentry's admin (${kind}), whom no staged user meets, probes no address: the same users and findings as the merge at the end`, async function () {
      const why = unavailable(kind);
      if (why) {
        process.stdout.write(`      skipped: ${why}\n`);
        return this.skip();
      }
      const { file } = repeatsExport();
      const early = await targetDatabase(kind, { freshInstall: true });
      const atEnd = await targetDatabase(kind, { freshInstall: true });
      try {
        const { a, b, statement } = await importBothWays(file, early, atEnd);
        // Sentry 9's tables keep the import off the bulk path (the users step then decides every
        // user on the general path, hashes unused): only the result is compared there.
        expect(a.bulkLoad).to.equal(kind !== 'sentry-9');
        if (a.bulkLoad) expect(statement).to.include('CREATE TEMP TABLE up_exc').and.not.include('lower(s.email) IN');
        expect(a.models).to.deep.equal(b.models);
        expect(await anyState(early)).to.deep.equal(await anyState(atEnd));
        for (const db of [early, atEnd]) await expectRenamedAsNamed(db, a.models['sentry.user']!.renamed);
      } finally {
        await early.close();
        await atEnd.close();
      }
    });
  }

  for (const kind of TARGET_KINDS) {
    it(`into a ${kind} install holding more than a few users (the general path), reads them into the client and decides only the exceptions: the same users and findings as the merge at the end`, async function () {
      const why = unavailable(kind);
      if (why) {
        process.stdout.write(`      skipped: ${why}\n`);
        return this.skip();
      }
      // 1,100 users besides the admin: more than the bulk path takes, at most twice the import's 700.
      const records: Rec[] = [];
      for (let i = 1; i <= 699; i++) records.push(user(i, `u${i}`, { email: `u${i}@example.com` }));
      records.push(user(700, 'OLD5', { email: 'new5@example.com' })); // old5's name in another case: renamed
      records.push(useroption(1, 1, 'timezone', 'UTC'));
      const file = writeExport(records);
      const early = await targetDatabase(kind, { freshInstall: true });
      const atEnd = await targetDatabase(kind, { freshInstall: true });
      try {
        for (const db of [early, atEnd]) {
          await db.knex.transaction(async (t) => {
            for (let i = 1; i <= 1100; i++) await insertUser(t, { username: `old${i}`, email: `old${i}@example.org` });
          });
          await db.knex.raw('ANALYZE auth_user');
        }
        const sqls: string[] = [];
        const a = await importUsers({ source: file, databaseUrl: early.url, onTrace: (e) => { if (e.kind === 'sql') sqls.push(e.sql); } });
        const b = await importUsers({ source: file, databaseUrl: atEnd.url, bulkLoad: 'off' });
        expect(a.bulkLoad).to.equal(false);
        expect(usersStatement(sqls)).to.include('CREATE TEMP TABLE up_exc');
        expect(a.models['sentry.user']).to.include({ inserted: 700, renamed: 1 });
        expect(a.models).to.deep.equal(b.models);
        expect(await anyState(early)).to.deep.equal(await anyState(atEnd));
        for (const db of [early, atEnd]) await expectRenamedAsNamed(db, 1);
      } finally {
        await early.close();
        await atEnd.close();
      }
    });
  }

  it('over a new Sentry\'s admin in a database whose lower() is not ASCII\'s (ICU tr-TR: I is ı), probes every address and name of the target, as without the hashes', async () => {
    const { file } = repeatsExport();
    const early = await freshDatabase(true, { icuLocale: 'tr-TR' });
    const atEnd = await freshDatabase(true, { icuLocale: 'tr-TR' });
    try {
      for (const db of [early, atEnd]) {
        // An ICU database is made bare: its tables first.
        await migrate(db.knex);
        await insertUser(db.knex, { password: 'x', username: 'admin@example.com', email: 'admin@example.com', email_unique: 'admin@example.com' });
      }
      const { a, b, statement } = await importBothWays(file, early, atEnd);
      expect(a.bulkLoad).to.equal(true);
      expect(statement).to.include('CREATE TEMP TABLE up_exc')
        .and.include('SELECT lower(x.email) FROM auth_user x').and.include('UNION ALL SELECT lower(x.username) FROM auth_user x');
      expect(a.models).to.deep.equal(b.models);
      expect(await state(early)).to.deep.equal(await state(atEnd));
    } finally {
      await early.close();
      await atEnd.close();
    }
  });

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

  it('UserOrdinals: a run only while every kept user comes at the next ordinal with a greater pk', () => {
    const run = (notes: [number, number][]) => {
      const o = new UserOrdinals();
      for (const [ord, pk] of notes) o.note(ord, pk);
      return o.run();
    };
    expect(run([])).to.equal(undefined);
    expect(run([[3, 10], [4, 11], [5, 40]])).to.deep.equal({ first: 3, count: 3 });
    expect(run([[3, 10], [5, 11]]), 'a record between (a filtered or rejected user, another model)').to.equal(undefined);
    expect(run([[3, 10], [4, 10]]), 'a pk again').to.equal(undefined);
    expect(run([[3, 10], [4, 9]]), 'a pk going down').to.equal(undefined);
  });
});

describe('the users step draws the new ids as one block where it can (issue #23)', function () {
  this.timeout(120000);
  /** Users 1..n in Sentry's order (every 40th name again in another case: renamed), their emails, options and user emails. */
  function records(n: number, extra: (i: number) => Record<string, unknown> = () => ({})): Rec[] {
    const users: Rec[] = [];
    for (let i = 1; i <= n; i++) users.push(user(i, i % 40 === 0 ? `U${i - 1}` : `u${i}`, { email: `u${i}@example.com`, ...extra(i) }));
    return [...users, ...users.map((u) => email(u.pk as number, `u${u.pk}@example.com`)),
      ...users.map((u) => useroption(u.pk as number, u.pk as number, 'timezone', 'UTC')),
      ...users.map((u) => useremail(u.pk as number, u.pk as number, `u${u.pk}@example.com`))];
  }
  /** Ids and what they hold, tails of renamed names masked, and whether the pk map points every source user at its row. */
  const state = async (db: TestDb) => ({
    users: (await db.knex.raw(`SELECT id, regexp_replace(username, '-[a-zA-Z0-9]{2,12}$', '-~') AS u, email, email_unique FROM auth_user ORDER BY id`)).rows,
    map: (await db.knex.raw(`SELECT m.source_pk, m.target_id, m.kind FROM userport.pk_map m WHERE m.model = 'sentry.user' ORDER BY 1`)).rows,
    lph: (await db.knex.raw('SELECT user_id FROM sentry_lostpasswordhash ORDER BY id')).rows,
    children: (await db.knex.raw(`SELECT (SELECT count(*) FROM sentry_useremail ue JOIN auth_user a ON a.id = ue.user_id AND a.email = ue.email)::int AS ue,
      (SELECT count(*) FROM sentry_useroption)::int AS uo`)).rows,
    seq: (await db.knex.raw(`SELECT last_value::text AS v FROM auth_user_id_seq`)).rows,
  });
  const traced = (into: string[]) => (e: TraceEvent) => {
    if (e.kind === 'sql') into.push(e.sql);
    else if (e.kind === 'sink') into.push(`[sink] ${e.moment}`);
    else if (e.kind === 'early-undone') into.push('[early] undone');
  };

  const cases: { name: string; recs: () => Rec[]; options?: Record<string, unknown>; block: boolean; undone?: boolean }[] = [
    { name: 'every kept user one after another, renames among them', recs: () => records(1200), block: true },
    // Pks with gaps (every hundredth user five on): runs of consecutive pks, each a range of the pk map.
    { name: 'pks with gaps', recs: () => records(1200).map((r) => {
      const p = (pk: number) => pk + 5 * Math.floor(pk / 100);
      return r.model === 'sentry.user' ? { ...r, pk: p(r.pk) } : r.model === 'sentry.email' ? r : { ...r, fields: { ...r.fields, user: p(r.fields.user as number) } };
    }), block: true },
    // A user the filter removes is staged, not kept: the kept users' ordinals have a hole.
    { name: 'a username filter', recs: () => records(1200), options: { filterUsernames: Array.from({ length: 1200 }, (_, i) => `u${i + 1}`).filter((_, i) => i !== 600) }, block: false },
    // A rejected user (its date is not a date) leaves a hole too.
    { name: 'a rejected user among them', recs: () => records(1200, (i) => (i === 700 ? { date_joined: '2023-02-30T00:00:00Z' } : {})), options: { maxRejects: 1 }, block: false },
    // A record of another model between the users (skipped, where Sentry orders userip after
    // every user): it ends the users' run, so the step starts there, on the first 500 users (one
    // block), and the next user undoes it; the merge at the end then draws an id per user.
    { name: 'a skipped record between them: the step starts at it, and the next user undoes it', recs: () => { const r = records(1200); r.splice(500, 0, { model: 'sentry.userip', pk: 1, fields: { user: 1, ip_address: '127.0.0.1', last_seen: '2023-06-22T22:59:55.531Z', first_seen: '2023-06-22T22:59:55.531Z' } }); return r; }, block: true, undone: true },
  ];
  for (const c of cases) {
    it(`${c.block ? 'draws one block' : 'draws an id per user'} (${c.name}): the same ids, rows and pk map as the merge at the end`, async () => {
      const file = writeExport(c.recs());
      const tmp = tmpFolder('userport-block-');
      const early = await freshDatabase();
      const atEnd = await freshDatabase();
      try {
        const sqls: string[] = [];
        const rejects = (which: string) => (c.options?.maxRejects ? { rejectsFile: path.join(tmp, `${which}.rejects.json`) } : {});
        const a = await importUsers({ source: file, databaseUrl: early.url, ...c.options, ...rejects('early'), onTrace: traced(sqls) });
        const b = await importUsers({ source: file, databaseUrl: atEnd.url, ...c.options, ...rejects('atEnd'), bulkLoad: 'off' });
        expect(sqls, 'the users step ran early').to.include('[sink] overlap started');
        expect(sqls.includes('[early] undone'), 'the early step undone').to.equal(!!c.undone);
        expect(sqls.some(isBlockDraw), 'a block drawn').to.equal(c.block);
        expect(a.models).to.deep.equal(b.models);
        if (c.block) expect(a.models['sentry.user']!.renamed).to.equal(30);
        const s = await state(early);
        expect(s).to.deep.equal(await state(atEnd));
        // Ids follow the file order: the pk map pairs ascend together.
        const ids = s.map.map((r: { target_id: string }) => Number(r.target_id));
        expect(ids).to.deep.equal([...ids].sort((x, y) => x - y));
      } finally {
        await early.close();
        await atEnd.close();
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    });
  }

  // A sequence that counts by 2 draws a block with holes, as another session drawing at the same
  // moment leaves it: the drawn ids go to the users in file order (up_ids), none drawn twice. One
  // that counts down draws no block (nextval per user).
  for (const seq of [{ alter: 'INCREMENT BY 2', kept: true }, { alter: 'INCREMENT BY -1 MINVALUE 1 RESTART WITH 100000', kept: false }]) {
    it(`a sequence altered by ${seq.alter}: ${seq.kept ? 'the block\'s ids, holes and all, kept in file order' : 'no block'}, the same ids, rows and pk map as the merge at the end`, async () => {
      const file = writeExport(records(300));
      const early = await freshDatabase();
      const atEnd = await freshDatabase();
      try {
        for (const db of [early, atEnd]) await db.knex.raw(`ALTER SEQUENCE auth_user_id_seq ${seq.alter}`);
        const sqls: string[] = [];
        const a = await importUsers({ source: file, databaseUrl: early.url, onTrace: traced(sqls) });
        await importUsers({ source: file, databaseUrl: atEnd.url, bulkLoad: 'off' });
        expect(sqls, 'the users step ran early').to.include('[sink] overlap started');
        expect(sqls.some(isBlockDraw), 'a block drawn').to.equal(seq.kept);
        expect(sqls.includes('ANALYZE up_ids'), 'the drawn ids kept').to.equal(seq.kept);
        expect(a.models['sentry.user']!.inserted).to.equal(300);
        const s = await state(early);
        expect(s).to.deep.equal(await state(atEnd));
        const ids = s.users.map((r: { id: string }) => Number(r.id));
        expect(ids.slice(0, 3)).to.deep.equal(seq.kept ? [1, 3, 5] : [99701, 99702, 99703]);
        // Every source user maps to its own row.
        const rows = (await early.knex.raw(`SELECT m.source_pk::int AS pk, a.email FROM userport.pk_map m JOIN auth_user a ON a.id = m.target_id
          WHERE m.model = 'sentry.user'`)).rows as { pk: number; email: string }[];
        expect(rows.length).to.equal(300);
        expect(rows.every((r) => r.email === `u${r.pk}@example.com`)).to.equal(true);
      } finally {
        await early.close();
        await atEnd.close();
      }
    });
  }

  it('a block drawn past the id column\'s limit stops the import before anything is written, as nextval per user does', async () => {
    // 300 users fit by the count (the sequence 400 ids from the end of a 32-bit column), but a
    // sequence that counts by 2 draws up to 600 further.
    const file = writeExport(records(300));
    for (const bulkLoad of ['auto', 'off'] as const) {
      await withDb(async (db) => {
        await db.knex.raw('ALTER TABLE auth_user ALTER COLUMN id TYPE integer');
        await db.knex.raw('ALTER SEQUENCE auth_user_id_seq INCREMENT BY 2');
        await db.knex.raw(`SELECT setval('auth_user_id_seq', 2147483647 - 400)`);
        const err = await failure(importUsers({ source: file, databaseUrl: db.url, bulkLoad }));
        expect(err.code, bulkLoad).to.equal(ErrorCodes.TARGET_LIMIT);
        expect(err.message, bulkLoad).to.match(/importing more than 300 users would need user ids (up to|past the end)/);
        for (const t of ['auth_user', 'sentry_email', 'sentry_useremail', 'sentry_useroption']) expect(await db.count(t), `${bulkLoad}: ${t}`).to.equal(0);
      });
    }
  });
});

describe('the renamed users\' random tails (issue #23)', () => {
  /** Every tail of 2 characters, upper-cased (a renamed user's tails are lower-case: the same names case-insensitively). */
  const chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const tails = [...chars].flatMap((a) => [...chars].map((b) => a + b));
  it('randomTail draws, per row, len characters of a-z and 0-9, as the migrations\' userport.random_string does', async () => {
    await withDb(async (db) => {
      for (const len of [1, 3, 12]) {
        const r = (await db.knex.raw(`
          SELECT count(*)::int AS n, count(DISTINCT t)::int AS distinct_tails, bool_and(t ~ '^[a-z0-9]{${len}}$') AS shaped,
            (SELECT count(DISTINCT c)::int FROM regexp_split_to_table(string_agg(t, ''), '') c) AS characters,
            bool_and(length(f) = ${len} AND f ~ '^[a-z0-9]+$') AS function_shaped
          FROM (SELECT ${randomTail(len)} AS t, userport.random_string(${len}) AS f FROM generate_series(1, 4000)) x`)).rows[0];
        expect(r.n).to.equal(4000);
        expect(r.shaped, `every tail of ${len}`).to.equal(true);
        expect(r.function_shaped).to.equal(true);
        // Every character of the alphabet occurs (4000 draws of 36), and the tails are drawn per
        // row: 4000 draws of 36^3 tails give about 3,834 distinct ones (a few below 3,700 is
        // beyond 10 standard deviations), of 36^12 all 4000 (a repeat has odds of about 1e-12).
        expect(r.characters).to.equal(36);
        if (len === 1) expect(r.distinct_tails).to.equal(36);
        if (len === 3) expect(r.distinct_tails).to.be.within(3700, 3950);
        if (len === 12) expect(r.distinct_tails).to.equal(4000);
      }
      expect(() => randomTail(0)).to.throw(RangeError);
    });
  });

  it('renames every user of one name with its own tail (2,000 users named alike)', async () => {
    await withDb(async (db) => {
      const users: Rec[] = [];
      for (let i = 1; i <= USERS; i++) users.push(user(i, i % 2 ? 'same' : 'SAME', { email: `s${i}@example.com` }));
      const stats = await importUsers({ source: writeExport(users), databaseUrl: db.url });
      expect(stats.models['sentry.user']!.renamed).to.equal(USERS - 1);
      const r = (await db.knex.raw(`
        SELECT count(*)::int AS n, count(DISTINCT lower(username))::int AS names,
          count(*) FILTER (WHERE username = 'same')::int AS kept,
          bool_and(username = 'same' OR username ~ '^(same|SAME)-[a-z0-9]+$') AS shaped
        FROM auth_user`)).rows[0];
      expect(r).to.deep.equal({ n: USERS, names: USERS, kept: 1, shaped: true });
    });
  });

  for (const bulkLoad of ['auto', 'off'] as const) {
    it(`draws again a tail whose name an existing user holds in another case: every 2-character one taken, a 3-character tail (bulk load ${bulkLoad})`, async () => {
      await withDb(async (db) => {
        // BOB and BOB-<every tail of 2>: 1,297 users, the general path (the early step reads them
        // into the client where bulk load is auto; the merge at the end decides where it is off).
        // A tail is drawn per round until one is free: 2 characters at first, then 3.
        await db.knex.raw(`INSERT INTO auth_user (password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
            is_password_expired, flags, date_joined)
          SELECT 'x', n, '', '', false, true, false, false, false, 0, now() FROM unnest(?::text[]) n`, [['BOB', ...tails.map((t) => `BOB-${t}`)]]);
        await db.knex.raw('ANALYZE auth_user');
        // Bob and 699 others (the client reads a target of up to twice the import's users), then
        // a record of another model: the early step starts there.
        const others = Array.from({ length: 699 }, (_, i) => user(i + 2, `u${i + 2}`, { email: `u${i + 2}@example.com` }));
        const file = writeExport([user(1, 'bob', { email: 'bob@example.com' }), ...others, useroption(1, 1, 'timezone', 'UTC')]);
        const sqls: string[] = [];
        const stats = await importUsers({ source: file, databaseUrl: db.url, bulkLoad, onTrace: (e) => { if (e.kind === 'sql') sqls.push(e.sql); } });
        expect(stats.bulkLoad).to.equal(false);
        // Early, only the exceptions were decided, over what the client read of the target's users.
        expect(sqls.some((q) => q.includes('CREATE TEMP TABLE up_exc')), 'exceptions alone decided').to.equal(bulkLoad === 'auto');
        expect(stats.models['sentry.user']).to.include({ inserted: 700, renamed: 1 });
        const names = (await db.knex.raw(`SELECT username FROM auth_user WHERE email = 'bob@example.com'`)).rows.map((r: { username: string }) => r.username);
        expect(names).to.have.length(1);
        expect(names[0]).to.match(/^bob-[a-z0-9]{3}$/);
      });
    });

    it(`draws again a tail whose name a user of the export holds in another case: every 2-character one taken, a 3-character tail (bulk load ${bulkLoad})`, async () => {
      await withDb(async (db) => {
        // bob, BOB-<every tail of 2> and Bob in the file itself, into an empty target: Bob is
        // renamed, and no tail of 2 is free among the export's own names (each holds a '-').
        const users = [user(1, 'bob', { email: 'bob@example.com' }), ...tails.map((t, i) => user(i + 2, `BOB-${t}`, { email: `b${i + 2}@example.com` })),
          user(tails.length + 2, 'Bob', { email: 'bob2@example.com' })];
        const stats = await importUsers({ source: writeExport([...users, useroption(1, 1, 'timezone', 'UTC')]), databaseUrl: db.url, bulkLoad });
        expect(stats.models['sentry.user']).to.include({ inserted: tails.length + 2, renamed: 1 });
        const names = (await db.knex.raw(`SELECT username FROM auth_user WHERE email = 'bob2@example.com'`)).rows.map((r: { username: string }) => r.username);
        expect(names).to.have.length(1);
        expect(names[0]).to.match(/^Bob-[a-z0-9]{3}$/);
      });
    });
  }
});
