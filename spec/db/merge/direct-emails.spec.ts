/**
 * Issue #23, item 1: the export's Email records are decided in the client and COPYed straight
 * into sentry_email once the early users step is done (lib/db/merge/direct-emails.ts). The result
 * must be the merge's, to the id, the date and the pk map; an address the target holds is reused;
 * anything the client cannot decide exactly (a repeated address, a non-ASCII one) sends every
 * Email record through the merge.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { EmailCheck, MAX_ADDRESSES, MAX_HELD, MAX_LISTED, MAX_SORTED, TARGET_RATIO, writeDirectEmails } from '../../../lib/db/merge/direct-emails.js';
import { lineColumn } from '../../../lib/db/merge/staging-lines.js';
import { LEAD_COLUMNS } from '../../../lib/copy-text.js';
import { STAGE_COLUMNS } from '../../../lib/models.js';
import { definitions, freshDatabase, withDbClient, type TestDb } from '../../helpers/db.js';
import { email, generatedExport, tableSnapshot, user, useremail, useroption, writeExport, type Rec } from '../../helpers/exports.js';
import { adminTargets, tracedImport } from '../../helpers/traced-import.js';
import { tmpPath } from '../../helpers/setup.js';
import { targetDatabase, unavailable, type TargetDb } from '../../helpers/targets.js';

// Enough users that they span many read chunks: the early step starts while the emails are still to come.
const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'bin', 'userport.js');
const USERS = 3000;
const NO_DATE = 'no-date@example.com';
const NO_DATE_PK = USERS * 2 + 1;

/**
 * Users 1..USERS, then (the first record after them, the one that starts the early step) their
 * Email records, with gaps in the pks; the admin's address in other case; one Email without a
 * date; then options and user emails. `extra` Email records come last.
 */
function records(extra: Rec[] = [], reused = true): Rec[] {
  const users: Rec[] = [];
  const emails: Rec[] = [];
  const rest: Rec[] = [];
  for (let i = 1; i <= USERS; i++) {
    users.push(user(i, `u${i}`, { email: `u${i}@example.com` }));
    // Pks 1, 2, 4, 5, 7, ...: the pk map breaks into ranges.
    emails.push(email(i + Math.floor(i / 3), `u${i}@example.com`));
    rest.push(useroption(i, i, 'timezone', 'UTC'), useremail(i, i, `u${i}@example.com`));
  }
  if (reused) emails.push(email(USERS * 2, 'ADMIN@example.com'));
  emails.push({ model: 'sentry.email', pk: NO_DATE_PK, fields: { email: NO_DATE } });
  return [...users, ...emails, ...extra, ...rest];
}

const cli = (file: string, db: TestDb, ...args: string[]) => tracedImport(file, db.url, ...args);

/** A staging line of an Email record (the side spool's layout): src_pk, ord, off, the address, no date. */
const line = (pk: number, address: string) => {
  const cols: string[] = new Array(LEAD_COLUMNS.length + STAGE_COLUMNS.length).fill('\\N');
  cols[lineColumn('src_pk')] = String(pk);
  cols[lineColumn('ord')] = String(pk);
  cols[lineColumn('off')] = String(pk * 100);
  cols[lineColumn('email')] = address;
  return Buffer.from(cols.join('\t'));
};

/**
 * Every Email row with its id, the emails' pk map, the sequence's next id, the tables and the
 * findings; the undated Email's id apart (its date is each transaction's own).
 */
async function outcome(db: TestDb) {
  const q = async (sql: string) => (await db.knex.raw(sql)).rows as unknown[];
  const tables = await tableSnapshot(db.knex);
  tables.emails = tables.emails!.filter((e) => (e as { email: string }).email !== NO_DATE);
  return {
    emails: await q(`SELECT id::int, email::text, date_added FROM sentry_email WHERE email::text <> '${NO_DATE}' ORDER BY id`),
    noDate: await q(`SELECT id::int FROM sentry_email WHERE email::text = '${NO_DATE}'`),
    pkMap: await q(`SELECT source_pk::int, target_id::int, kind FROM userport.pk_map WHERE model = 'sentry.email' AND source_pk <> ${NO_DATE_PK} ORDER BY source_pk`),
    next: await q(`SELECT nextval(pg_get_serial_sequence('sentry_email', 'id'))::int AS id`),
    tables,
    findings: await q(`SELECT kind, model, source_pk, reason FROM userport.findings ORDER BY model, source_pk, reason`),
  };
}

describe('the export\'s Email rows, written straight in (issue #23)', function () {
  this.timeout(180000);
  /** A new Sentry's database: its first user, and that user's Email row (`admin@Example.com`). */
  const { target } = adminTargets((k) => k.raw(`INSERT INTO sentry_email (email, date_added) VALUES ('admin@Example.com', '2020-01-01T00:00:00Z')`));
  /** The export into two such targets: the default path (a), and the merge alone (b, --bulk-load off). */
  const importBoth = async (extra: Rec[] = [], reused = true) => {
    const file = writeExport(records(extra, reused));
    const direct = await target();
    const merged = await target();
    return { direct, merged, a: cli(file, direct), b: cli(file, merged, '--bulk-load', 'off') };
  };

  it('writes what the merge writes: ids, dates, the reused address, the pk map and the sequence', async () => {
    const { direct, merged, a, b } = await importBoth();
    expect(a.stderr).to.contain(`[direct] sentry_email: ${USERS + 1} rows written straight in, 1 addresses already there`);
    expect(b.stderr).to.not.contain('[direct]');
    expect(a.models).to.deep.equal(b.models);
    expect(a.adjacent).to.deep.equal(b.adjacent);
    const { noDate, next, ...got } = await outcome(direct);
    const { noDate: mergedNoDate, next: mergedNext, ...want } = await outcome(merged);
    expect(got).to.deep.equal(want);
    // The reused address draws no id, as Sentry's get_or_create draws none: the admin's row is 1,
    // the export's addresses 2.., the undated one (the highest pk) USERS + 2. (The merge's ON
    // CONFLICT DO NOTHING on the general path draws one for it, and leaves a gap.)
    expect({ noDate, next }).to.deep.equal({ noDate: [{ id: USERS + 2 }], next: [{ id: USERS + 3 }] });
    expect({ noDate: mergedNoDate, next: mergedNext }).to.deep.equal({ noDate: [{ id: USERS + 3 }], next: [{ id: USERS + 4 }] });
    // The admin's address was reused, not inserted again. Where the pks skip (a third of them) and
    // the ids do not, the pk map lists the pks, at most MAX_LISTED a row; the merge's ranges break.
    expect(got.pkMap).to.deep.include({ source_pk: USERS * 2, target_id: 1, kind: 'existing' });
    const ranges = async (db: TestDb) => (await db.knex.raw(`SELECT count(*)::int AS n, count(source_pks)::int AS listed, max(span) AS longest
      FROM userport.pk_ranges WHERE model = 'sentry.email'`)).rows[0];
    expect(await ranges(direct)).to.deep.equal({ n: Math.ceil(USERS / MAX_LISTED) + 2, listed: Math.ceil(USERS / MAX_LISTED), longest: MAX_LISTED });
    expect((await ranges(merged)).n).to.be.above(USERS / 3);
    // A record without a date is dated at the transaction's start, as the merge's now().
    const dated = (await direct.knex.raw(`SELECT e.date_added = h.date_added AS same FROM sentry_email e,
      (SELECT min(date_added) AS date_added FROM sentry_lostpasswordhash) h WHERE e.email::text = '${NO_DATE}'`)).rows;
    expect(dated).to.deep.equal([{ same: true }]);
  });

  for (const [what, extra, why] of [
    ['an address that comes twice (in other case)', [email(USERS * 3, 'U7@EXAMPLE.COM')], 'two addresses are the same, or share a hash'],
    ['an address that is not plain ASCII', [email(USERS * 3, 'zoë@example.com')], 'an address is not plain ASCII text'],
  ] as const) {
    it(`stages every Email record for ${what}, and the merge decides as ever`, async () => {
      // No address of the target's in the file: the merge's general path draws no id it does not use.
      const { direct, merged, a, b } = await importBoth([...extra], false);
      expect(a.stderr).to.contain(`[direct] sentry_email: all ${USERS + 2} staged for the merge: ${why}`);
      expect(a.models).to.deep.equal(b.models);
      expect(await outcome(direct)).to.deep.equal(await outcome(merged));
    });
  }

  /** `n` addresses `old<i>@example.org` in the target besides the admin's: more than a few rows, so the general path. */
  const holding = (n: number) => async () => {
    const d = await target();
    await d.knex.raw(`INSERT INTO sentry_email (email, date_added) SELECT 'old' || i || '@example.org', '2020-01-01T00:00:00Z' FROM generate_series(1, ${n}) i`);
    await d.knex.raw('ANALYZE sentry_email');
    return d;
  };

  it('on the general path too (a target holding many addresses): the addresses it holds, in other case, are reused; the rest is the merge\'s to the id', async () => {
    // Three of the target's addresses, in other case, and the admin's: each maps to the target's row.
    const file = writeExport(records([email(USERS * 3, 'OLD7@Example.ORG'), email(USERS * 3 + 1, 'old1200@EXAMPLE.org'), email(USERS * 3 + 5, 'Old1@example.org')]));
    const direct = await holding(1500)();
    const merged = await holding(1500)();
    const a = cli(file, direct);
    const b = cli(file, merged, '--bulk-load', 'off');
    expect(a.stderr).to.contain('[sink] early users step started');
    expect(a.stderr).to.not.contain('[bulk]');
    expect(a.stderr).to.contain(`[direct] sentry_email: ${USERS + 1} rows written straight in, 4 addresses already there`);
    expect(a.models).to.deep.equal(b.models);
    const got = await outcome(direct);
    const want = await outcome(merged);
    expect(got).to.deep.equal(want);
    const old = async (db: TestDb) => (await db.knex.raw(`SELECT id::int FROM sentry_email WHERE email::text IN ('old7@example.org', 'old1200@example.org', 'old1@example.org') ORDER BY email::text`)).rows;
    // old1200, old1, old7 (in text order): ids 1201, 2, 8 (the admin's row is 1).
    expect(await old(direct)).to.deep.equal([{ id: 1201 }, { id: 2 }, { id: 8 }]);
    expect(got.pkMap).to.deep.include.members([
      { source_pk: USERS * 3, target_id: 8, kind: 'existing' },
      { source_pk: USERS * 3 + 1, target_id: 1201, kind: 'existing' },
      { source_pk: USERS * 3 + 5, target_id: 2, kind: 'existing' },
    ]);
  });

  it(`stages every Email record into a target holding more than ${TARGET_RATIO} times the file's addresses (the merge probes its key instead of a scan)`, async () => {
    const file = writeExport(records([], false));
    const many = TARGET_RATIO * (USERS + 1) + 1;
    const direct = await holding(many)();
    const merged = await holding(many)();
    const a = cli(file, direct);
    const b = cli(file, merged, '--bulk-load', 'off');
    expect(a.stderr).to.contain(`[direct] sentry_email: all ${USERS + 1} staged for the merge: the target holds more than ${TARGET_RATIO} times the file's addresses`);
    expect(a.models).to.deep.equal(b.models);
    expect(await outcome(direct)).to.deep.equal(await outcome(merged));
  });

  describe('writeDirectEmails on its own, in a transaction', () => {
    const addresses = ['a1@x.io', 'Old2@Example.org', 'a3@x.io', 'a4@x.io'];
    const run = 77;

    /**
     * Writes `addresses` as Email records of `run` into a target holding old1, OLD2 and old3@example.org,
     * and (not plain ASCII, so no match for any of the file's) 'zoë@example.org'. `meanwhile` runs
     * on another connection after the target's addresses are read, before the COPY.
     */
    const write = (meanwhile?: (other: pg.Client) => Promise<unknown>) => new Promise<unknown>((resolve, reject) => {
      withDbClient(async (db, client) => {
        // old2 in upper case: only the server's lower() of the target's side matches the file's Old2.
        await client.query(`INSERT INTO sentry_email (email, date_added)
          SELECT CASE WHEN i = 2 THEN 'OLD2@EXAMPLE.ORG' ELSE 'old' || i || '@example.org' END, now() FROM generate_series(1, 3) i`);
        await client.query(`INSERT INTO sentry_email (email, date_added) VALUES ('zoë@example.org', now())`);
        const check = new EmailCheck();
        for (const a of addresses) check.note(a);
        const staged: string[] = [];
        let passes = 0;
        await client.query('BEGIN');
        const result = await writeDirectEmails(client, run, 'sentry_email', 'sentry_email_id_seq', check, async function* lines() {
          if (passes++ === 0 && meanwhile) {
            const other = new pg.Client({ connectionString: db.url });
            await other.connect();
            try { await meanwhile(other); } finally { await other.end(); }
          }
          yield addresses.map((a, i) => line(i + 1, a));
        }, async (chunk) => { staged.push(...chunk.map((l) => l.toString().split('\t')[lineColumn('email')]!)); });
        await client.query('COMMIT');
        const rows = (await client.query(`SELECT id::int, email::text FROM sentry_email ORDER BY id`)).rows;
        const pkMap = (await client.query(`SELECT source_pk::int, target_id::int, kind FROM userport.pk_map WHERE run = $1 ORDER BY source_pk`, [run])).rows;
        resolve({ result, staged, rows, pkMap });
      }).catch(reject);
    });

    it('reads the target\'s addresses by the server\'s lower(): a held one in other case is reused, one that is not plain ASCII is no obstacle', async () => {
      expect(await write()).to.deep.equal({
        result: { written: 3, existing: 1, staged: 0 },
        staged: [],
        rows: [
          { id: 1, email: 'old1@example.org' }, { id: 2, email: 'OLD2@EXAMPLE.ORG' }, { id: 3, email: 'old3@example.org' }, { id: 4, email: 'zoë@example.org' },
          { id: 5, email: 'a1@x.io' }, { id: 6, email: 'a3@x.io' }, { id: 7, email: 'a4@x.io' },
        ],
        pkMap: [
          { source_pk: 1, target_id: 5, kind: 'inserted' }, { source_pk: 2, target_id: 2, kind: 'existing' },
          { source_pk: 3, target_id: 6, kind: 'inserted' }, { source_pk: 4, target_id: 7, kind: 'inserted' },
        ],
      });
    });

    it('another session inserting one of the addresses after the read: the COPY is refused and undone, and every record is staged', async () => {
      const got = await write((other) => other.query(`INSERT INTO sentry_email (email, date_added) VALUES ('A3@X.IO', now())`)) as { result: { written: number; staged: number; why?: string } };
      expect(got).to.deep.equal({
        result: { written: 0, existing: 0, staged: 4, why: 'another session inserted one of the addresses meanwhile' },
        staged: addresses,
        // The other session's row (id 9: the block drawn first took 5-8, and stays unused) and nothing of this import.
        rows: [
          { id: 1, email: 'old1@example.org' }, { id: 2, email: 'OLD2@EXAMPLE.ORG' }, { id: 3, email: 'old3@example.org' }, { id: 4, email: 'zoë@example.org' },
          { id: 9, email: 'A3@X.IO' },
        ],
        pkMap: [],
      });
    });
  });

  it(`keeps at most MAX_HELD (${MAX_HELD.toLocaleString('en-US')}) of the target's addresses in the process: one more, and every record is staged`, async function () {
    this.timeout(120_000);
    /** A target and a file both holding `n` addresses h1..hn@x.io (the file's in upper case): what writeDirectEmails does. */
    const both = async (n: number) => {
      let got: unknown;
      await withDbClient(async (_db, client) => {
        await client.query(`INSERT INTO sentry_email (email, date_added) SELECT 'h' || i || '@x.io', now() FROM generate_series(1, $1) i`, [n]);
        const check = new EmailCheck();
        const file: Buffer[] = [];
        for (let i = 1; i <= n; i++) {
          check.note(`H${i}@X.IO`);
          file.push(line(i, `H${i}@X.IO`));
        }
        let staged = 0;
        await client.query('BEGIN');
        const result = await writeDirectEmails(client, 78, 'sentry_email', 'sentry_email_id_seq', check, async function* lines() { yield file; },
          async (chunk) => { staged += chunk.length; });
        const rows = Number((await client.query('SELECT count(*) AS n FROM sentry_email')).rows[0].n);
        await client.query('ROLLBACK');
        got = { result, staged, rows };
      });
      return got;
    };
    expect(await both(MAX_HELD)).to.deep.equal({ result: { written: 0, existing: MAX_HELD, staged: 0 }, staged: 0, rows: MAX_HELD });
    expect(await both(MAX_HELD + 1)).to.deep.equal({
      result: { written: 0, existing: 0, staged: MAX_HELD + 1, why: `the target holds more than ${MAX_HELD.toLocaleString('en-US')} of the file's addresses (the client keeps no more)` },
      staged: MAX_HELD + 1,
      rows: MAX_HELD + 1,
    });
  });

  describe('into an empty target on the bulk path: in the unique key\'s order, so its rebuild needs no sort', () => {
    /** The file's addresses (u1..u3000@example.com, then the undated one) in the order of sentry_email's citext key in a C database. */
    const keyOrder = () => [...Array.from({ length: USERS }, (_, i) => `u${i + 1}@example.com`), NO_DATE]
      .sort((a, b) => (a.toLowerCase() < b.toLowerCase() ? -1 : 1));
    /** The table's rows as they lie in the heap (the order an index build reads them). */
    const heap = async (db: TestDb) => ((await db.knex.raw('SELECT email::text FROM sentry_email ORDER BY ctid')).rows as { email: string }[]).map((r) => r.email);
    const byId = async (db: TestDb) => ((await db.knex.raw('SELECT email::text FROM sentry_email ORDER BY id')).rows as { email: string }[]).map((r) => r.email);

    it('writes the rows in key order with the merge\'s ids, dates and pk map; the key is rebuilt as it was', async () => {
      const file = writeExport(records([], false));
      const direct = await freshDatabase();
      const merged = await freshDatabase();
      try {
        const a = cli(file, direct);
        const b = cli(file, merged, '--bulk-load', 'off');
        expect(a.stderr).to.contain('[bulk] load first, then build');
        expect(a.stderr).to.contain(`[direct] sentry_email: ${USERS + 1} rows written straight in, in its unique key's order, 0 addresses already there`);
        expect(a.models).to.deep.equal(b.models);
        expect(await outcome(direct)).to.deep.equal(await outcome(merged));
        // The ids follow the file (u1, u2, ...); the heap follows the key ('@' sorts after the digits: u1000, u1001, ...).
        const want = keyOrder();
        expect(want.slice(0, 3)).to.deep.equal(['no-date@example.com', 'u1000@example.com', 'u1001@example.com']);
        expect(await heap(direct)).to.deep.equal(want);
        expect(await heap(merged)).to.not.deep.equal(want);
        expect(await byId(direct)).to.deep.equal(await byId(merged));
        expect(await definitions(direct)).to.deep.equal(await definitions(merged));
      } finally {
        await direct.close();
        await merged.close();
      }
    });

    it(`more than MAX_SORTED (${MAX_SORTED.toLocaleString('en-US')}) Email records through the CLI: sorted runs in the spool's folder, merged, removed; ids in file order @soak`, async function () {
      this.timeout(300000);
      // 90,000 generated users bring about 107,500 Email records in source pk order.
      const file = await generatedExport({ users: 90000, seed: 7, collisionRate: 0 });
      const db = await freshDatabase();
      const tmp = fs.mkdtempSync(tmpPath('scratch-'));
      try {
        const r = spawnSync(process.execPath, [BIN, 'import', 'users', file, '--database-url', db.url, '--no-progress', '--json'],
          { encoding: 'utf8', env: { ...process.env, USERPORT_TRACE_SQL: '1', TMPDIR: tmp }, maxBuffer: 64 << 20 });
        expect(r.status, r.stderr.slice(-2000)).to.equal(0);
        const read = (JSON.parse(r.stdout) as { models: Record<string, { read: number }> }).models['sentry.email']!.read;
        expect(read).to.be.above(MAX_SORTED);
        expect(r.stderr).to.contain(`[direct] sentry_email: ${read} rows written straight in, in its unique key's order, 0 addresses already there`);
        // The whole heap in key order: more rows than one sorted run holds, so only the runs' merge puts them so.
        const q = async (sql: string) => (await db.knex.raw(sql)).rows[0] as Record<string, unknown>;
        expect(await q(`SELECT count(*)::int AS n, bool_and(k >= p) AS sorted FROM (
          SELECT lower(email::text) COLLATE "C" AS k, lag(lower(email::text)) OVER (ORDER BY ctid) COLLATE "C" AS p FROM sentry_email) x`))
          .to.deep.equal({ n: read, sorted: true });
        // The ids: one block, drawn in file (source pk) order, as the pk map says.
        expect(await q(`SELECT (max(id) - min(id) + 1)::int AS span FROM sentry_email`)).to.deep.equal({ span: read });
        expect(await q(`SELECT bool_and(target_id > p) AS ascending FROM (
          SELECT target_id, lag(target_id + span - 1) OVER (ORDER BY source_pk) AS p FROM userport.pk_ranges WHERE model = 'sentry.email') x`))
          .to.deep.equal({ ascending: true });
        // The spool's private folder, scratch files and all, went with the import.
        expect(fs.readdirSync(tmp)).to.deep.equal([]);
      } finally {
        await db.close();
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    });

    it('keeps the file\'s order in a database whose collation does not order the addresses as bytes (ICU en-US)', async () => {
      const file = writeExport(records([], false));
      const db = await freshDatabase(true, { icuLocale: 'en-US' });
      try {
        const a = cli(file, db);
        expect(a.stderr).to.contain(`[direct] sentry_email: ${USERS + 1} rows written straight in, 0 addresses already there`);
        expect(await heap(db)).to.deep.equal(await byId(db));
      } finally {
        await db.close();
      }
    });

    describe('writeDirectEmails with bulk, on its own: the key\'s order only into an empty table nothing else depends on', () => {
      // File order b2, A1, c3, a0, B1: key order a0, A1, B1, b2, c3.
      const file = ['b2@x.io', 'A1@X.io', 'c3@x.io', 'a0@x.io', 'B1@x.io'];
      /**
       * Writes `file` with `bulk` after `prepare` (in the same transaction, rolled back after): the
       * result, the heap's order, whether the table was truncated; with `scratch`, the files it made.
       */
      const write = (prepare: (client: pg.Client) => Promise<unknown>,
        { maxSorted, sortRun, scratch, lock = true, meanwhile, failAt, failed }: {
          maxSorted?: number; sortRun?: number; scratch?: (name: string) => string; lock?: boolean;
          /** The caller's next work, given the client and how many lines were read so far. */
          meanwhile?: (client: pg.Client, read: () => number) => Promise<void>;
          /** The line whose read fails. */
          failAt?: number;
          /** Called the moment the write fails, with how many lines were read. */
          failed?: (read: number) => void;
        } = {}) => new Promise<unknown>((resolve, reject) => {
        withDbClient(async (_db, client) => {
          await client.query('BEGIN');
          await prepare(client);
          if (lock) await client.query('LOCK TABLE sentry_email IN ACCESS EXCLUSIVE MODE');
          const node = async () => (await client.query(`SELECT pg_relation_filenode('sentry_email') AS f`)).rows[0].f as string;
          const before = await node();
          const check = new EmailCheck();
          for (const a of file) check.note(a);
          let read = 0;
          const result = await writeDirectEmails(client, 79, 'sentry_email', 'sentry_email_id_seq', check,
            // A line a chunk (the client sorts what it holds at a chunk's end).
            async function* lines() {
              for (const [i, a] of file.entries()) {
                if (i === failAt) throw new Error(`line ${i + 1} cannot be read`);
                read++;
                yield [line(i + 1, a)];
              }
            },
            async () => { throw new Error('a line was staged'); }, {
              bulk: true, ...(maxSorted === undefined ? {} : { maxSorted }), ...(sortRun === undefined ? {} : { sortRun }), ...(scratch ? { scratch } : {}),
              ...(meanwhile ? { meanwhile: () => meanwhile(client, () => read) } : {}),
            }).catch(async (err: Error) => { failed?.(read); await client.query('ROLLBACK'); throw err; });
          const rows = (await client.query(`SELECT email::text FROM sentry_email WHERE email::text ILIKE '%@x.io' ORDER BY ctid`)).rows.map((r) => r.email as string);
          const ids = (await client.query(`SELECT email::text FROM sentry_email WHERE email::text ILIKE '%@x.io' ORDER BY id`)).rows.map((r) => r.email as string);
          const truncated = before !== await node();
          await client.query('ROLLBACK');
          resolve({ result, heap: rows, ids, truncated });
        }).catch(reject);
      });
      const sorted = ['a0@x.io', 'A1@X.io', 'B1@x.io', 'b2@x.io', 'c3@x.io'];

      it('an empty table: truncated (a new file, no row changed), the rows in key order, their ids in file order', async () => {
        expect(await write(async () => undefined)).to.deep.equal({
          result: { written: 5, existing: 0, staged: 0, keyOrder: true }, heap: sorted, ids: file, truncated: true,
        });
      });

      it('more rows than maxSorted, with scratch files: sorted runs of maxSorted rows, merged into the COPY, their files removed', async () => {
        const dir = fs.mkdtempSync(tmpPath('runs-'));
        const made: string[] = [];
        const scratch = (name: string) => { made.push(name); return path.join(dir, name); };
        expect(await write(async () => undefined, { maxSorted: 2, scratch })).to.deep.equal({
          result: { written: 5, existing: 0, staged: 0, keyOrder: true }, heap: sorted, ids: file, truncated: true,
        });
        // Runs of 2, 2 and 1 rows.
        expect(made).to.deep.equal(['email_run_0', 'email_run_1', 'email_run_2']);
        expect(fs.readdirSync(dir)).to.deep.equal([]);
      });

      it('with scratch files, runs of sortRun rows even where maxSorted would hold them all', async () => {
        const dir = fs.mkdtempSync(tmpPath('runs-'));
        const made: string[] = [];
        const scratch = (name: string) => { made.push(name); return path.join(dir, name); };
        expect(await write(async () => undefined, { maxSorted: 100, sortRun: 3, scratch })).to.deep.equal({
          result: { written: 5, existing: 0, staged: 0, keyOrder: true }, heap: sorted, ids: file, truncated: true,
        });
        expect(made).to.deep.equal(['email_run_0', 'email_run_1']);
        expect(fs.readdirSync(dir)).to.deep.equal([]);
      });

      describe('the caller\'s next work (meanwhile)', () => {
        const scratchDir = () => {
          const dir = fs.mkdtempSync(tmpPath('runs-'));
          return { dir, scratch: (name: string) => path.join(dir, name) };
        };

        it('in the key\'s order: runs while the client reads and sorts, on the connection, before the COPY', async () => {
          const seen: unknown[] = [];
          const { dir, scratch } = scratchDir();
          expect(await write(async () => undefined, {
            sortRun: 2, scratch,
            meanwhile: async (client, read) => {
              seen.push({ startedAfter: read() });
              // The connection is this work's: the rows are not in yet, the table truncated.
              seen.push((await client.query(`SELECT count(*)::int AS n FROM sentry_email`)).rows[0]);
              seen.push({ endedAfter: read() });
            },
          })).to.deep.equal({ result: { written: 5, existing: 0, staged: 0, keyOrder: true }, heap: sorted, ids: file, truncated: true });
          // Started once the first line was read: the read went on during its query.
          expect(seen.slice(0, 2)).to.deep.equal([{ startedAfter: 1 }, { n: 0 }]);
          expect((seen[2] as { endedAfter: number }).endedAfter).to.be.above(1);
          expect(fs.readdirSync(dir)).to.deep.equal([]);
        });

        it('in the file\'s order (a table holding a row): runs once, after the rows are in', async () => {
          const seen: unknown[] = [];
          expect(await write((c) => c.query(`INSERT INTO sentry_email (email, date_added) VALUES ('z@y.io', now())`), {
            meanwhile: async (client, read) => {
              seen.push({ read: read(), ...(await client.query(`SELECT count(*)::int AS n FROM sentry_email`)).rows[0] });
            },
          })).to.deep.equal({ result: { written: 5, existing: 0, staged: 0 }, heap: file, ids: file, truncated: false });
          expect(seen).to.deep.equal([{ read: 5, n: 6 }]);
        });

        it('a failure of the next work fails the write once the client\'s read has ended, with that error', async () => {
          const { dir, scratch } = scratchDir();
          const at: Record<string, number> = {};
          const failure = await write(async () => undefined, {
            sortRun: 2, scratch, failed: (read) => { at.failed = read; },
            meanwhile: async (_client, read) => { at.meanwhile = read(); throw new Error('the options could not be written'); },
          }).then(() => undefined, (err: Error) => err.message);
          expect(failure).to.equal('the options could not be written');
          // It failed after the first line, but the write waited for the read to end before saying so.
          expect(at).to.deep.equal({ meanwhile: 1, failed: 5 });
          expect(fs.readdirSync(dir)).to.have.length.above(0);
          fs.rmSync(dir, { recursive: true, force: true });
        });

        it('a failure of the client\'s read fails the write once the next work has ended, with the read\'s error', async () => {
          const { dir, scratch } = scratchDir();
          let ended = false;
          let endedAtFailure: boolean | undefined;
          const failure = await write(async () => undefined, {
            sortRun: 2, scratch, failAt: 2, failed: () => { endedAtFailure = ended; },
            meanwhile: async (client) => { await client.query('SELECT pg_sleep(0.2)'); ended = true; },
          }).then(() => undefined, (err: Error) => err.message);
          expect(failure).to.equal('line 3 cannot be read');
          expect(endedAtFailure).to.equal(true);
          fs.rmSync(dir, { recursive: true, force: true });
        });
      });

      const none = async () => undefined;
      for (const [what, prepare, options] of [
        ['a table holding a row', (c: pg.Client) => c.query(`INSERT INTO sentry_email (email, date_added) VALUES ('z@y.io', now())`), {}],
        ['a table another table\'s foreign key points at', (c: pg.Client) => c.query('CREATE TABLE email_ref (e int REFERENCES sentry_email (id))'), {}],
        ['a table with an inheritance child (TRUNCATE would reach it)', (c: pg.Client) => c.query('CREATE TABLE email_child () INHERITS (sentry_email)'), {}],
        ['an address column in a collation of its own', (c: pg.Client) => c.query('ALTER TABLE sentry_email ALTER COLUMN email TYPE citext COLLATE "C"'), {}],
        ['a database with a publication (it may replicate the TRUNCATE)', (c: pg.Client) => c.query('CREATE PUBLICATION userport_spec FOR TABLE auth_user'), {}],
        ['a table this session has not locked', none, { lock: false }],
        ['more rows than maxSorted', none, { maxSorted: 4 }],
      ] as const) {
        it(`${what}: the file's order, nothing truncated`, async () => {
          expect(await write(prepare, options)).to.deep.equal({ result: { written: 5, existing: 0, staged: 0 }, heap: file, ids: file, truncated: false });
        });
      }
    });
  });

  const noTable = unavailable('sentry-2026');
  it('into a new Sentry 2026 (no sentry_email) skips every Email record as it is read, on every path, counted with the reason and one finding', async function () {
    if (noTable) {
      process.stdout.write(`      skipped: ${noTable}\n`);
      return this.skip();
    }
    // Sentry 2026 removed the Email model, and its importer skips the models it does not know
    // before reading their fields: so is an Email record whose address is not even text.
    const file = writeExport(records([{ model: 'sentry.email', pk: USERS * 3, fields: { email: 42 } }]));
    const targets: TargetDb[] = [];
    try {
      for (let i = 0; i < 3; i++) targets.push(await targetDatabase('sentry-2026', { freshInstall: true }));
      const [early, merged, resumed] = targets as [TargetDb, TargetDb, TargetDb];
      const files = targets.map((_, i) => tmpPath(`findings-no-email-${i}.json`));
      const runs = [cli(file, early, '--findings-file', files[0]!), cli(file, merged, '--bulk-load', 'off', '--findings-file', files[1]!),
        cli(file, resumed, '--resumable', '--findings-file', files[2]!)];
      const reason = 'no sentry_email table in the target database (Sentry removed the Email model in 2026)';
      for (const r of runs) {
        expect(r.skipped).to.deep.equal({ 'sentry.email': USERS + 3 });
        expect(r.skippedReasons).to.deep.equal({ 'sentry.email': reason });
        // Nothing read, nothing dropped: the model's column stays at zero.
        expect((r.models as Record<string, unknown>)['sentry.email']).to.deep.include({ read: 0, inserted: 0, dropped: {}, rejected: 0 });
        expect(r.models).to.deep.equal(runs[0]!.models);
        expect(r.stderr).to.not.contain('[direct] sentry_email');
      }
      // The first Email record, right after the users, started the early step: the options and
      // user emails still went straight in.
      expect(runs[0]!.stderr).to.contain('[sink] early users step started');
      expect(runs[0]!.stderr).to.contain(`[direct] sentry_useroption: ${USERS} rows of new users written straight in`);
      for (const [i, t] of targets.entries()) {
        expect((await t.knex.raw(`SELECT count(*)::int AS n FROM userport.findings WHERE model = 'sentry.email'`)).rows[0].n).to.equal(0);
        const entries = (JSON.parse(fs.readFileSync(files[i]!, 'utf8')) as { model: string }[]).filter((f) => f.model === 'sentry.email');
        expect(entries).to.deep.equal([{ finding: 'ImportFinding', kind: 'skipped', model: 'sentry.email', pk: null, count: USERS + 3, ordinal: null, offset: null, reason }]);
      }
    } finally {
      for (const t of targets) await t.close();
    }
  });

  it('EmailCheck: says why the first time an address cannot be told apart in the client, and gives up beyond MAX_ADDRESSES', () => {
    const why = (...addresses: unknown[]) => {
      const check = new EmailCheck();
      for (const a of addresses) check.note(a);
      return [check.count, check.why];
    };
    expect(why('a@x.io', 'b@x.io', 'A@x.iO.')).to.deep.equal([3, undefined]);
    expect(why('a@x.io', 'b@x.io', 'A@X.IO', 'zoë@x.io')).to.deep.equal([4, 'two addresses are the same, or share a hash']);
    expect(why('a@x.io', 'zoë@x.io', 'a@x.io')).to.deep.equal([3, 'an address is not plain ASCII text']);
    expect(why('a\\b@x.io')).to.deep.equal([1, 'an address is not plain ASCII text']);
    expect(why('a\tb@x.io')).to.deep.equal([1, 'an address is not plain ASCII text']);
    expect(why(null)).to.deep.equal([1, 'an Email record has no address']);
    const many = new EmailCheck();
    for (let i = 0; i <= MAX_ADDRESSES; i++) many.note(`u${i}@example.com`);
    expect([many.count, many.why]).to.deep.equal([MAX_ADDRESSES + 1, 'more than 1,400,000 Email records (the client keeps no more)']);
    // Released at the end of the input (the COPY needs only the verdict): the verdict stays; a
    // record noted after it cannot be vouched for, so it sends them all to the exact path.
    const released = new EmailCheck();
    released.note('a@x.io');
    released.release();
    expect([released.count, released.why]).to.deep.equal([1, undefined]);
    released.note('b@x.io');
    expect([released.count, released.why]).to.deep.equal([2, 'an Email record came after the check was released']);
  });

});
