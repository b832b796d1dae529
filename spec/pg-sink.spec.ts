/**
 * The sink (lib/pg-sink.ts) in isolation, and its stream compliance: exactly one 'finish' on
 * success, exactly one 'error' on failure, destroy() rolls back, and it works with pipeline() and
 * finished().
 */
import { expect } from 'chai';
import { Readable, finished } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { mapRecord, type FilteredMarker, type StagedRow } from '../lib/map-models.js';
import { createPgSink } from '../lib/pg-sink.js';
import type { TraceEvent } from '../lib/trace.js';
import { optionErrorOf } from './helpers/options.js';
import { freshDatabase, type TestDb } from './helpers/db.js';
import { user } from './helpers/exports.js';
import { reached } from './helpers/moments.js';

const pos = { offset: 10, line: 2, column: 3, length: 50 };
/** A full valid auth_user row (Sentry's tables have no database defaults for most columns). */
const INSERT_USER = `INSERT INTO auth_user (password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
  is_password_expired, flags, date_joined) VALUES ('x', $1, '', '', false, true, false, false, false, 0, now())`;
const objects = <T>(items: T[]) => Readable.from(items, { objectMode: true });
/** The item as a staged row; fails the test when it is anything else. */
function asRow(item: StagedRow | FilteredMarker): StagedRow {
  if (item.kind !== 'row') throw new Error(`expected a row, got ${item.kind}`);
  return item;
}

describe('createPgSink', () => {
  let db: TestDb;
  let client: pg.Client;
  beforeEach(async () => {
    db = await freshDatabase();
    client = new pg.Client({ connectionString: db.url });
    await client.connect();
  });
  afterEach(async () => {
    await client.end().catch(() => undefined);
    await db.close();
  });

  const rows = (n: number): StagedRow[] => Array.from({ length: n }, (_, i) =>
    asRow(mapRecord({ kind: 'record', ordinal: i + 1, ...pos, model: 'sentry.user', pk: i + 1, fields: user(i + 1, `u${i}`).fields, filtered: false })));

  it('stages every row, runs finalize inside the transaction, then commits; emits finish exactly once', async () => {
    let staged = -1;
    const sink = createPgSink({
      client, run: 1, transaction: 'whole',
      finalize: async (c) => {
        // An atomic import stages into a temp table of its session.
        staged = (await c.query('SELECT count(*)::int AS n FROM pg_temp.stage')).rows[0].n;
        await c.query(INSERT_USER, ['made-in-finalize']);
      },
    });
    let finishes = 0;
    sink.on('finish', () => finishes++);
    await pipeline(objects(rows(3000)), sink);
    expect(staged).to.equal(3000);
    expect(finishes).to.equal(1);
    expect(await db.count('auth_user')).to.equal(1);
    // The temp staging table went away with the transaction, and nothing went to the persistent one.
    expect((await client.query(`SELECT to_regclass('pg_temp.stage') AS t`)).rows[0].t).to.equal(null);
    expect(await db.count('userport.stage')).to.equal(0);
  });

  it('overlap: asks when() for each row until "now", stages the rows before that one, runs the work while that row and the rest go to a spool, finishes it, then COPYs the spool', async () => {
    const log: string[] = [];
    let asked = 0;
    const count = async (c: pg.ClientBase) => (await c.query('SELECT count(*)::int AS n FROM pg_temp.stage')).rows[0].n as number;
    const overlap = {
      when: () => (++asked < 3 ? 'later' as const : 'now' as const),
      start: async (c: pg.ClientBase) => {
        log.push(`start with ${await count(c)} rows staged`);
        return {
          run: async () => { await c.query('SELECT pg_sleep(0.1)'); log.push('run'); },
          finish: async () => { log.push('finish'); },
        };
      },
    };
    const events: TraceEvent[] = [];
    let staged = -1;
    const sink = createPgSink({
      client, run: 1, transaction: 'whole', overlap, onTrace: (e) => events.push(e),
      finalize: async (c) => { staged = await count(c); log.push('finalize'); },
    });
    await pipeline(objects(rows(3000)), sink);
    expect(asked).to.equal(3);
    // Exactly the two rows before the third were staged, whatever else its write held.
    expect(log).to.deep.equal(['start with 2 rows staged', 'run', 'finish', 'finalize']);
    expect(staged).to.equal(3000);
    const moments = events.map((e) => (e.kind === 'sink' ? e.moment : e.kind));
    expect(moments).to.include.members(['overlap started', 'overlap done', 'rows sent', 'spool copied']);
    expect(moments).to.not.include('copy confirmed');
  });

  it('overlap: "never" stops the asking, and a start that declines lets the COPY go on, with the rows it would have diverted', async () => {
    for (const answer of ['never', 'decline'] as const) {
      let asked = 0;
      let started = 0;
      const events: TraceEvent[] = [];
      const sink = createPgSink({
        client, run: 1, transaction: 'whole', onTrace: (e) => events.push(e),
        overlap: {
          when: () => { asked++; return answer === 'never' ? 'never' : 'now'; }, start: async () => { started++; return undefined; },
          divert: () => 'side',
        },
        finalize: async (c) => { expect((await c.query('SELECT count(*)::int AS n FROM pg_temp.stage')).rows[0].n).to.equal(100); },
      });
      await pipeline(objects(rows(100)), sink);
      expect([asked, started], answer).to.deep.equal(answer === 'never' ? [1, 0] : [1, 1]);
      expect(events.map((e) => e.kind === 'sink' && e.moment)).to.deep.equal(['rows sent', 'copy confirmed']);
    }
  });

  it('rolls back when finalize fails, emitting error exactly once', async () => {
    const boom = new Error('boom');
    const sink = createPgSink({
      client, run: 1, transaction: 'whole',
      finalize: async (c) => {
        await c.query(INSERT_USER, ['y']);
        throw boom;
      },
    });
    let errors = 0;
    sink.on('error', () => errors++);
    const err = await pipeline(objects(rows(10)), sink).catch((e) => e);
    expect(err.code).to.equal('USERPORT_CALLBACK');
    expect(err.cause).to.equal(boom);
    expect(errors).to.equal(1);
    expect(await db.count('auth_user')).to.equal(0);
  });

  it('on destroy() mid-COPY sends CopyFail and rolls back, leaving the connection usable', async () => {
    let finalized = false;
    const sink = createPgSink({ client, run: 1, transaction: 'whole', finalize: async () => { finalized = true; } });
    const source = new Readable({ objectMode: true, read() {} });
    for (const r of rows(2000)) source.push(r);
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const done = new Promise<Error | null | undefined>((resolve) => finished(sink, (e) => resolve(e)));
    source.pipe(sink);
    // Mid-COPY: the server runs the sink's COPY, and the sink has taken every row (the source never ends).
    await reached('the sink\'s COPY runs and every row is in the sink', async () => {
      const copying = (await db.knex.raw(`SELECT 1 FROM pg_stat_activity WHERE pid = ? AND state = 'active' AND query LIKE 'COPY pg_temp.stage%'`, [pid])).rows.length > 0;
      return copying && source.readableLength === 0 && sink.writableLength === 0 ? true : undefined;
    });
    sink.destroy(new Error('stop'));
    expect((await done)?.message).to.equal('stop');
    expect(finalized).to.equal(false);
    expect((await client.query('SELECT 1 AS ok')).rows[0].ok).to.equal(1);
    expect((await client.query(`SELECT to_regclass('pg_temp.stage') AS t`)).rows[0].t).to.equal(null);
  });

  it('leaves the caller\'s session as it was: a client that used temp tables already works, and its settings are unchanged', async () => {
    await client.query('CREATE TEMP TABLE my_scratch (x int)');
    const before = (await client.query('SHOW temp_buffers')).rows[0].temp_buffers as string;
    const sink = createPgSink({ client, run: 1, transaction: 'whole', finalize: async (c) => { await c.query(INSERT_USER, ['in-a-used-session']); } });
    await pipeline(objects(rows(50)), sink);
    expect(await db.count('auth_user')).to.equal(1);
    expect((await client.query('SHOW temp_buffers')).rows[0].temp_buffers).to.equal(before);
    expect((await client.query('SELECT count(*)::int AS n FROM my_scratch')).rows[0].n).to.equal(0);
  });

  it('after a failed pipeline(), the client is usable once the sink has closed (its ROLLBACK done)', async () => {
    const sink = createPgSink({ client, run: 1, transaction: 'whole', finalize: async () => undefined });
    const failing = new Readable({
      objectMode: true,
      read() { this.push(rows(1)[0]); this.destroy(new Error('the caller\'s source failed')); },
    });
    const err = await pipeline(failing, sink).catch((e: Error) => e);
    expect(err?.message).to.equal('the caller\'s source failed');
    if (!sink.closed) await new Promise((resolve) => sink.once('close', resolve));
    expect((await client.query('SELECT 1 AS ok')).rows[0].ok).to.equal(1);
    // Not inside the sink's transaction any more: a statement of its own starts a transaction of its own.
    expect((await client.query('SELECT now() = statement_timestamp() AS own')).rows[0].own).to.equal(true);
  });

  it('a connection that goes away mid-COPY fails the pipeline with USERPORT_DB_CONNECT, not a TypeError of the COPY stream', async () => {
    client.on('error', () => undefined);   // the caller's client reports the termination too
    const sink = createPgSink({ client, run: 1, transaction: 'whole', batchRows: 100, finalize: async () => undefined });
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    const all = rows(3000);
    let sent = 0;
    const source = new Readable({
      objectMode: true,
      read() {
        if (sent === 500) {
          // Mid-COPY: the backend is terminated, then more rows come.
          void db.knex.raw('SELECT pg_terminate_backend(?)', [pid]).then(() => setTimeout(() => { this.push(all[sent++]); }, 200));
          sent++;
          return;
        }
        if (sent < all.length) this.push(all[sent++]);
        else this.push(null);
      },
    });
    const err = await pipeline(source, sink).catch((e: Error & { code?: string }) => e);
    expect(err?.code, String(err)).to.equal('USERPORT_DB_CONNECT');
    expect(err?.name).not.to.equal('TypeError');
  });

  it('in batches mode stages the batch\'s rows before its checkpoint, in the same transaction', async () => {
    const seen: number[] = [];
    const sink = createPgSink({
      client, run: 1, transaction: 'batches', batchRows: 400,
      checkpoint: async (c, last) => {
        seen.push(last.ordinal);
        // The batch's rows are visible inside its own transaction, before the commit.
        expect((await c.query('SELECT count(*)::int AS n FROM userport.stage WHERE run = 1')).rows[0].n).to.be.at.least(last.ordinal);
      },
      finalize: async () => undefined,
    });
    await pipeline(objects(rows(1000)), sink);
    expect(seen.length).to.be.at.least(2);
    expect(seen[seen.length - 1]).to.equal(1000);
    expect(await db.count('userport.stage', 'run = 1')).to.equal(1000);
  });

  it('in batches mode calls a write back only once its batch is committed (seen from another session)', async () => {
    const observer = new pg.Client({ connectionString: db.url });
    await observer.connect();
    try {
      const sink = createPgSink({ client, run: 1, transaction: 'batches', batchRows: 100, finalize: async () => undefined });
      const committed = async () => (await observer.query('SELECT count(*)::int AS n FROM userport.stage WHERE run = 1')).rows[0].n as number;
      const seen: [number, number][] = [];
      const all = rows(250);
      // One write at a time: each callback is awaited, then another session counts what is committed.
      for (let i = 0; i < all.length; i++) {
        await new Promise<void>((resolve, reject) => sink.write(all[i], (err) => (err ? reject(err) : resolve())));
        if (i === 98 || i === 99 || i === 199) seen.push([i + 1, await committed()]);
      }
      await new Promise<void>((resolve, reject) => { sink.once('error', reject); sink.end(resolve); });
      // Rows 1-99 are not committed when their writes return; the 100th write returns after the commit.
      expect(seen).to.deep.equal([[99, 0], [100, 100], [200, 200]]);
      expect(await committed()).to.equal(250);
    } finally {
      await observer.end();
    }
  });

  it('validates its options up front, naming them', () => {
    const finalize = async () => undefined;
    expect(optionErrorOf(() => createPgSink({ client, run: 0, transaction: 'whole', finalize }))).to.equal('run');
    expect(optionErrorOf(() => createPgSink({ client, run: 1, transaction: 'x' as 'whole', finalize }))).to.equal('transaction');
    expect(optionErrorOf(() => createPgSink({ client, run: 1, transaction: 'batches', batchRows: 0, finalize }))).to.equal('batchRows');
    expect(optionErrorOf(() => createPgSink({ client, run: 1, transaction: 'whole', finalize, batchRow: 5 } as never))).to.equal('batchRow');
    expect(optionErrorOf(() => createPgSink({ client, run: 1, transaction: 'whole' } as never))).to.equal('finalize');
  });
});
