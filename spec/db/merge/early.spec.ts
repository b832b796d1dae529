/**
 * Issue #11: an atomic import into empty tables starts the merge's users step while the rest of
 * the file is still read (Sentry writes every user first). The result must not depend on it: the
 * same ids, rows, pk map and sequence positions as the path that merges everything at the end; a
 * user that comes after other models undoes the early step exactly; a failure while it runs
 * leaves nothing behind, not even the spool file.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { UserportError } from '../../../lib/errors.js';
import { importUsers } from '../../../lib/import.js';
import { definitions, freshDatabase, type TestDb } from '../../helpers/db.js';
import { email, TARGET_TABLES, user, useremail, useroption, writeExport, type Rec } from '../../helpers/exports.js';
import { tmpFolder } from '../../helpers/setup.js';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'bin', 'userport.js');
// Enough users that they span many read chunks: the early step starts at the chunk holding the
// first row of another model.
const USERS = 3000;

/**
 * Users 1..USERS (every 50th shares a name, case-insensitively, with others: merged or renamed),
 * then their emails, options and user emails, as Sentry orders them. `lateUser` moves that user
 * (named `Shared0`, the lowest pk of its name) to after the emails.
 */
function records(lateUser?: number): Rec[] {
  const name = (i: number) => (i === lateUser ? 'Shared0' : i % 50 === 0 ? `${i % 100 === 0 ? 'SHARED' : 'shared'}${i % 3}` : `u${i}`);
  const users: Rec[] = [];
  const rest: Rec[][] = [[], [], []];
  for (let i = 1; i <= USERS; i++) {
    users.push(user(i, name(i), { email: `u${i}@example.com` }));
    rest[0]!.push(email(i, `u${i}@example.com`));
    rest[1]!.push(useroption(i, i, 'timezone', 'UTC'));
    rest[2]!.push(useremail(i, i, `u${i}@example.com`));
  }
  const late = users.filter((u) => u.pk === lateUser);
  return [...users.filter((u) => u.pk !== lateUser), ...rest[0]!, ...late, ...rest[1]!, ...rest[2]!];
}

/** Everything an import decides, ids included, and where the id sequences stand. */
async function exactState(db: TestDb): Promise<Record<string, unknown>> {
  const q = async (sql: string) => (await db.knex.raw(sql)).rows as unknown[];
  return {
    users: await q('SELECT id, username, email FROM auth_user ORDER BY id'),
    lph: await q('SELECT id, user_id FROM sentry_lostpasswordhash ORDER BY id'),
    emails: await q('SELECT id, email FROM sentry_email ORDER BY id'),
    ues: await q('SELECT id, user_id, email FROM sentry_useremail ORDER BY id'),
    uos: await q('SELECT id, user_id, key, value FROM sentry_useroption ORDER BY id'),
    map: await q('SELECT model, source_pk, target_id, kind FROM userport.pk_map ORDER BY model, source_pk'),
    sequences: await q(`SELECT last_value, is_called FROM auth_user_id_seq UNION ALL SELECT last_value, is_called FROM sentry_lostpasswordhash_id_seq`),
  };
}

function cli(file: string, db: TestDb, ...args: string[]) {
  return spawnSync(process.execPath, [BIN, 'import', 'users', file, '--database-url', db.url, '--no-progress', '--merge-users', ...args],
    { encoding: 'utf8', env: { ...process.env, USERPORT_TRACE_SQL: '1' } });
}

const spools = (dir: string) => fs.readdirSync(dir).filter((n) => n.startsWith('userport-spool-')).sort();

/** Runs `fn` with a temp dir of its own (importUsers' tmpDir), so no other process's spool counts. */
async function withTmp(fn: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = tmpFolder('userport-early-');
  try { await fn(tmp); } finally { fs.rmSync(tmp, { recursive: true, force: true }); }
}

/**
 * The export of records() in 64 KB chunks, then a user that fails its schema, held back until a
 * spool exists in `tmp`. With `breakOff`, the records stop at the chunk after which the spool
 * appeared (polled without delay), so the input breaks off mid-record right then.
 */
function failingInput(tmp: string, breakOff: boolean): { stream: Readable; sawSpool: () => boolean } {
  const text = JSON.stringify(records(), null, 2);
  const body = text.slice(0, text.lastIndexOf(']')).trimEnd();
  const bad = JSON.stringify(user(USERS + 1, 'late-bad', { date_joined: '2023-02-30T00:00:00Z' }));
  let saw = false;
  async function* chunks() {
    for (let i = 0; i < body.length; i += 65536) {
      yield Buffer.from(body.slice(i, i + 65536));
      if (breakOff && spools(tmp).length) { saw = true; break; }
    }
    for (const until = Date.now() + 30000; !saw && Date.now() < until;) {
      saw = spools(tmp).length > 0;
      await new Promise((r) => (breakOff ? setImmediate(r) : setTimeout(r, 20)));
    }
    yield Buffer.from(`,\n${bad}\n]`);
  }
  return { stream: Readable.from(chunks()), sawSpool: () => saw };
}

describe('the early users step (issue #11)', function () {
  this.timeout(180000);
  const dbs: TestDb[] = [];
  const db = async () => { const d = await freshDatabase(); dbs.push(d); return d; };
  afterEach(async () => { for (const d of dbs.splice(0)) await d.close(); });

  it('runs for a file in Sentry\'s order and writes exactly what the merge at the end writes (ids, pk map, sequences)', async () => {
    const file = writeExport(records());
    const early = await db();
    const r = cli(file, early);
    expect(r.status, r.stderr.slice(-2000)).to.equal(0);
    expect(r.stderr).to.contain('[sink] early users step started');
    expect(r.stderr).to.not.contain('undone');
    const atEnd = await db();
    await importUsers({ source: file, databaseUrl: atEnd.url, mergeUsers: true, bulkLoad: 'off' });
    const expected = await exactState(atEnd);
    expect((expected.users as unknown[]).length).to.equal(USERS - 57); // 60 users share 3 names: 3 inserted, 57 merged
    expect(await exactState(early)).to.deep.equal(expected);
    // The users' tables got their indexes back during the step, the others at the end: all as before.
    expect(r.stderr).to.match(/ADD CONSTRAINT "auth_user_username_key"[^]*early users step done[^]*ADD CONSTRAINT "sentry_useroption/);
    expect(await definitions(early)).to.deep.equal(await definitions(atEnd));
  });

  it('is undone exactly when a user comes after other models: same rows, ids, pk map and sequences as the same file without the early step', async () => {
    const late = writeExport(records(1));
    const undone = await db();
    const r = cli(late, undone);
    expect(r.status, r.stderr.slice(-2000)).to.equal(0);
    expect(r.stderr).to.contain('[sink] early users step started');
    expect(r.stderr).to.contain('[early] a user came after other models: the early users step is undone');
    // The late user has the lowest pk of its name: it keeps the name, the others merge into it.
    expect((await undone.knex.raw(`SELECT username FROM auth_user WHERE lower(username) = 'shared0'`)).rows).to.deep.equal([{ username: 'Shared0' }]);
    // New ids follow the file order (as Sentry's import does): the reference is the same late
    // file, merged at the end without the early step.
    const atEnd = await db();
    const s = await importUsers({ source: late, databaseUrl: atEnd.url, mergeUsers: true, bulkLoad: 'off' });
    expect(s.bulkLoad).to.equal(false);
    expect(await exactState(undone)).to.deep.equal(await exactState(atEnd));
    // The indexes the step rebuilt were rolled back with it, and built again by the merge, once.
    expect(await definitions(undone)).to.deep.equal(await definitions(atEnd));
  });

  it('starts at a skipped record after the users (an out-of-scope model, or one the target skips), and is undone when a user follows it', async () => {
    // Records of a model the import skips: counted, never staged (user scope skips authenticators).
    const skipped = (from: number, n: number): Rec[] => Array.from({ length: n }, (_, i) => ({ model: 'sentry.authenticator', pk: from + i, fields: {} }));
    const all = records();
    const users = all.filter((r) => r.model === 'sentry.user');
    // Users, then skipped records only: no row of another model comes, yet the step starts.
    const onlySkipped = writeExport([...users, ...skipped(1, 50)]);
    const started = await db();
    const a = cli(onlySkipped, started);
    expect(a.status, a.stderr.slice(-2000)).to.equal(0);
    expect(a.stderr).to.contain('[sink] early users step started');
    expect(a.stderr).to.not.contain('undone');
    const reference = await db();
    await importUsers({ source: onlySkipped, databaseUrl: reference.url, mergeUsers: true, bulkLoad: 'off' });
    expect(await exactState(started)).to.deep.equal(await exactState(reference));
    // A user after the skipped records is out of Sentry's order: the step started at them is
    // undone, and that user is merged with the others, not left staged behind the step.
    const late = writeExport([...users.filter((u) => u.pk !== 1), ...skipped(1, 50), ...users.filter((u) => u.pk === 1), ...all.filter((r) => r.model !== 'sentry.user')]);
    const undone = await db();
    const b = cli(late, undone);
    expect(b.status, b.stderr.slice(-2000)).to.equal(0);
    expect(b.stderr).to.contain('[sink] early users step started');
    expect(b.stderr).to.contain('[early] a user came after other models: the early users step is undone');
    const atEnd = await db();
    await importUsers({ source: late, databaseUrl: atEnd.url, mergeUsers: true, bulkLoad: 'off' });
    const state = await exactState(undone);
    expect(state).to.deep.equal(await exactState(atEnd));
    expect((state.users as { email: string }[]).some((u) => u.email === 'u1@example.com')).to.equal(true);
  });

  it('a record that fails while it runs fails the import: nothing written, the spool removed', async () => {
    // The bad record is held back until the spool exists (the early step runs), so it surely
    // fails while the step runs and rows are spooled.
    await withTmp(async (tmp) => {
      const input = failingInput(tmp, false);
      const target = await db();
      const err = await importUsers({ source: input.stream, databaseUrl: target.url, mergeUsers: true, tmpDir: tmp }).then(() => undefined, (e: unknown) => e);
      expect(input.sawSpool(), 'the early step started and spooled').to.equal(true);
      expect((err as UserportError).code).to.equal('USERPORT_RECORD_SCHEMA');
      for (const t of [...TARGET_TABLES, 'userport.pk_map']) expect(await target.count(t), t).to.equal(0);
      expect(spools(tmp)).to.deep.equal([]);
    });
  });

  it('a failure the moment the spool is made (the race of a destroy with the start) leaves no spool and starts nothing', async () => {
    // As soon as the spool folder exists the input breaks off (a record cut short: a JSON error
    // right away), while the sink may still be taking the spool over: repeated, each import must
    // fail cleanly and leave the folder empty.
    await withTmp(async (tmp) => {
      for (let round = 0; round < 3; round++) {
        const input = failingInput(tmp, true);
        const target = await db();
        const err = await importUsers({ source: input.stream, databaseUrl: target.url, tmpDir: tmp }).then(() => undefined, (e: unknown) => e);
        expect(input.sawSpool(), `round ${round}: the spool was made`).to.equal(true);
        expect((err as UserportError).code, `round ${round}`).to.be.oneOf(['USERPORT_PARSE_JSON', 'USERPORT_INPUT_TRUNCATED', 'USERPORT_RECORD_SCHEMA']);
        expect(spools(tmp), `round ${round}`).to.deep.equal([]);
        for (const t of [...TARGET_TABLES, 'userport.pk_map']) expect(await target.count(t), t).to.equal(0);
      }
    });
  });

  it('a dry run with it writes nothing and reports what the real import reports', async () => {
    const file = writeExport(records());
    const target = await db();
    const dry = await importUsers({ source: file, databaseUrl: target.url, mergeUsers: true, dryRun: true });
    for (const t of TARGET_TABLES) expect(await target.count(t), t).to.equal(0);
    const real = await importUsers({ source: file, databaseUrl: target.url, mergeUsers: true });
    expect(dry.models).to.deep.equal(real.models);
    expect(real.models['sentry.user']).to.include({ inserted: USERS - 57, merged: 57 });
  });
});
