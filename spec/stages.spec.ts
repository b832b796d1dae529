/**
 * Each object stage in isolation (the tokenizer has its own spec), and the sink's stream
 * compliance: exactly one 'finish' on success, exactly one 'error' on failure, destroy() rolls
 * back, and it works with pipeline() and finished().
 */
import { expect } from 'chai';
import { Readable, finished } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { createUserFilter, parseUsernameList, scopeRecord, type FlowItem, type ScopedRecord } from '../lib/filter-users.js';
import { createModelMapper, mapRecord, stagedValues, type FilteredMarker, type StagedRow } from '../lib/map-models.js';
import { isDateTime, isTimeZone, STAGE_COLUMNS, STAGE_INDEX } from '../lib/models.js';
import { CopyText } from '../lib/copy-text.js';
import { createPgSink } from '../lib/pg-sink.js';
import type { TraceEvent } from '../lib/trace.js';
import { copyLine, copyValue } from './helpers/copy-oracle.js';
import type { RawRecord } from '../lib/tokenize.js';
import { collect, collectError } from './helpers/streams.js';
import { optionErrorOf } from './helpers/options.js';
import { streamCompliance } from './helpers/compliance.js';
import { freshDatabase, type TestDb } from './helpers/db.js';
import { user, useroption } from './helpers/exports.js';
import { reached } from './helpers/moments.js';

const pos = { offset: 10, line: 2, column: 3, length: 50 };
/** A full valid auth_user row (Sentry's tables have no database defaults for most columns). */
const INSERT_USER = `INSERT INTO auth_user (password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
  is_password_expired, flags, date_joined) VALUES ('x', $1, '', '', false, true, false, false, false, 0, now())`;
const raw = (ordinal: number, value: unknown): RawRecord => ({ ordinal, ...pos, value: value as Record<string, unknown> });
const objects = <T>(items: T[]) => Readable.from(items, { objectMode: true });
/** The item as a staged row; fails the test when it is anything else. */
function asRow(item: StagedRow | FilteredMarker): StagedRow {
  if (item.kind !== 'row') throw new Error(`expected a row, got ${item.kind}`);
  return item;
}

describe('parseUsernameList', () => {
  it('splits on commas and newlines, trims, drops empties', () => {
    expect(parseUsernameList(' alice, bob\n carol \r\n\n,dave,')).to.deep.equal(['alice', 'bob', 'carol', 'dave']);
  });
});

describe('createUserFilter', () => {
  it('passes user-scope records on, lower-cases model names, and turns other models into skip markers', async () => {
    const out = await collect<FlowItem>(objects([raw(1, user(1, 'a')), raw(2, { model: 'Sentry.UserIP', pk: 1, fields: {} }),
      raw(3, { model: 'SENTRY.USEREMAIL', pk: 1, fields: {} })]), createUserFilter());
    expect(out.map((i) => [i.kind, i.model, i.ordinal])).to.deep.equal([['record', 'sentry.user', 1], ['skip', 'sentry.userip', 2], ['record', 'sentry.useremail', 3]]);
  });

  it('marks users not in the list as filtered (exact, case-sensitive match) and leaves other models alone', async () => {
    const out = await collect<ScopedRecord>(objects([raw(1, user(1, 'alice')), raw(2, user(2, 'Alice')), raw(3, useroption(1, 2, 'k', 1))]),
      createUserFilter({ usernames: ['alice'] }));
    expect(out.map((r) => r.filtered)).to.deep.equal([false, true, false]);
  });

  it('fails on a bad envelope with its position, or passes a reject marker on when collecting rejects', async () => {
    for (const bad of [{ pk: 1, fields: {} }, { model: 'sentry.user', pk: 'x', fields: {} }, { model: 'sentry.user', pk: 1, fields: [] }, { model: 'nodot', pk: 1, fields: {} }]) {
      const err = await collectError(objects([raw(4, bad)]), createUserFilter());
      expect(err.code).to.equal('USERPORT_RECORD_ENVELOPE');
      expect(err.position).to.include({ ordinal: 4, offset: 10, line: 2, column: 3 });
    }
    const [marker] = await collect<FlowItem>(objects([raw(4, { model: 'sentry.user', fields: {} })]), createUserFilter({ collectRejects: true }));
    expect(marker).to.include({ kind: 'reject', model: 'sentry.user', ordinal: 4 });
  });

  it('is a pure function underneath', () => {
    expect(scopeRecord(raw(1, { model: 'sentry.team', pk: 1, fields: {} }), undefined)).to.include({ kind: 'skip', model: 'sentry.team' });
  });
});

describe('createModelMapper', () => {
  const scoped = (ordinal: number, rec: { model: string; pk: number; fields: Record<string, unknown> }, filtered = false): ScopedRecord =>
    ({ kind: 'record', ordinal, ...pos, model: rec.model, pk: rec.pk, fields: rec.fields, filtered });

  it('lays values out in staging-column order and lists unknown fields', () => {
    const row = asRow(mapRecord(scoped(1, user(7, 'alice', { extra: 1 }))));
    const at = (c: string) => row.values[STAGE_COLUMNS.findIndex(([n]) => n === c)];
    expect(row).to.include({ kind: 'row', model: 'sentry.user', code: 1, pk: 7 });
    expect(at('username')).to.equal('alice');
    expect(at('first_name')).to.equal('Name 7');
    expect(at('date_joined')).to.equal('2023-06-22T22:59:55.488Z');
    expect(at('user_pk')).to.equal(null);
    expect(row.unknownFields).to.deep.equal(['extra']);
    const opt = asRow(mapRecord(scoped(2, useroption(3, 7, 'tz', '"UTC"'))));
    expect(opt.values[STAGE_COLUMNS.findIndex(([n]) => n === 'opt_value')]).to.equal('"UTC"');
  });

  it('turns a filtered user into a filtered marker with its pk only, without validating it', () => {
    const item = mapRecord(scoped(1, { model: 'sentry.user', pk: 3, fields: { username: 5 } }, true));
    expect(item).to.deep.equal({ kind: 'filtered', ordinal: 1, ...pos, model: 'sentry.user', code: 1, pk: 3 });
    // The sink stages its pk alone, marked not kept, every data column NULL.
    const cols = copyLine(5, item as FilteredMarker).replace(/\n$/, '').split('\t');
    expect(cols.slice(0, 8)).to.deep.equal(['5', '1', '1', '10', '2', '3', '3', 'f']);
    expect(cols.slice(8)).to.deep.equal(STAGE_COLUMNS.map(() => '\\N'));
  });

  it('stages a filtered user\'s username too (pre-23.9.1 rows name their user by it)', () => {
    const item = mapRecord(scoped(1, { model: 'sentry.user', pk: 3, fields: { username: 'bob\tb' } }, true));
    expect(item).to.include({ kind: 'filtered', pk: 3, username: 'bob\tb' });
    const cols = copyLine(5, item as FilteredMarker).replace(/\n$/, '').split('\t');
    expect(cols[7]).to.equal('f');
    expect(cols.slice(8, 10)).to.deep.equal(['bob\\tb', '\\N']);
    expect(cols.length).to.equal(8 + STAGE_COLUMNS.length);
  });

  it('gives named access to a row: STAGE_INDEX and stagedValues() agree with the positional values', () => {
    const row = asRow(mapRecord(scoped(1, user(7, 'alice'))));
    expect(row.values[STAGE_INDEX.username]).to.equal('alice');
    expect(row.values[STAGE_INDEX.email]).to.equal('alice@example.com');
    const view = stagedValues(row);
    expect(Object.keys(view)).to.deep.equal(STAGE_COLUMNS.map(([c]) => c));
    expect(view.username).to.equal('alice');
    expect(view.user_pk).to.equal(null);
  });

  it('accepts real calendar dates only', async () => {
    for (const [d, ok] of [['2024-02-29T00:00:00Z', true], ['2023-02-29T00:00:00Z', false], ['2023-06-22T22:59:57.023Z', true],
      ['2023-06-22', false], ['0000-01-01T00:00:00Z', false], ['2023-13-01T00:00:00Z', false], ['2023-06-22T24:00:00Z', false]] as const) {
      const run = () => mapRecord(scoped(1, user(1, 'a', { date_joined: d })));
      if (ok) expect(run, d).not.to.throw(); else expect(run, d).to.throw(/date_joined/);
    }
  });

  it('passes markers through and fails (or rejects) invalid records with model, pk, ordinal and field', async () => {
    const skip: FlowItem = { kind: 'skip', ordinal: 1, ...pos, model: 'sentry.team' };
    const bad = scoped(2, user(9, 'a', { is_staff: 'yes' }));
    const out = await collect<FlowItem | StagedRow>(objects([skip, bad]), createModelMapper({ collectRejects: true }));
    expect(out.map((i) => i.kind)).to.deep.equal(['skip', 'reject']);
    const err = await collectError(objects([bad]), createModelMapper());
    expect(err.code).to.equal('USERPORT_RECORD_SCHEMA');
    expect(err.position).to.include({ model: 'sentry.user', pk: 9, ordinal: 2, field: 'is_staff', offset: 10 });
  });
});

describe('isDateTime', () => {
  it('accepts the ISO-8601 shapes PostgreSQL stores and refuses the rest', () => {
    const cases: [string, boolean][] = [
      ['2021-07-17T21:08:52.713Z', true], ['2021-07-17 21:08:52', true], ['2021-07-17T21:08:52.123456789+01:00', true],
      ['2021-07-17T21:08:52-0530', true], ['2024-02-29T00:00:00Z', true], ['2000-02-29T00:00:00Z', true], ['0001-01-01T00:00:00Z', true],
      ['2021-07-17T21:08:52.1234567890Z', false], ['2021-07-17T21:08:52.Z', false], ['2021-07-17T21:08:52Z ', false],
      ['2023-02-29T00:00:00Z', false], ['1900-02-29T00:00:00Z', false], ['2021-04-31T00:00:00Z', false], ['0000-01-01T00:00:00Z', false],
      ['2021-13-01T00:00:00Z', false], ['2021-00-01T00:00:00Z', false], ['2021-01-00T00:00:00Z', false], ['2021-01-01T24:00:00Z', false],
      ['2021-01-01T23:60:00Z', false], ['2021-01-01T23:59:60Z', false], ['2021-01-01T00:00:00+16:00', false], ['2021-01-01T00:00:00+10:60', false],
      ['2021-01-01T00:00:00+1:00', false], ['2021-01-01T00:00:00+01:0', false], ['2021-01-01T00:00:00+01::00', false], ['2021-01-01T00:00:00z', false],
      ['2021-01-01t00:00:00Z', false], ['2021-01-01T00:00', false], ['21-01-01T00:00:00Z', false], ['2021-1-01T00:00:00Z', false],
      ['２０２１-01-01T00:00:00Z', false], ['2021-01-01T00:00:00\n', false], ['', false],
    ];
    for (const [s, valid] of cases) expect(isDateTime(s), s).to.equal(valid);
  });

  it('agrees with the regular expression it replaced on mutated timestamps', () => {
    const RE = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-](\d{2}):?(\d{2}))?$/;
    const reference = (s: string): boolean => {
      const m = RE.exec(s);
      if (!m) return false;
      const y = +m[1]!, mo = +m[2]!, d = +m[3]!, h = +m[4]!, mi = +m[5]!, sec = +m[6]!;
      if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 59) return false;
      if (m[9] !== undefined && (+m[9] > 15 || +m[10]! > 59)) return false;
      const dim = [31, (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1]!;
      return d <= dim;
    };
    const seeds = ['2021-07-17T21:08:52.713Z', '2024-02-29 23:59:59+15:59', '1999-12-31T00:00:00.123456789-0000', '2021-07-17T21:08:52'];
    const alphabet = '0123456789-:.TZ +';
    let seed = 7;
    const rand = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    let accepted = 0;
    for (let k = 0; k < 20000; k++) {
      let s = seeds[rand(seeds.length)]!;
      for (let m = 1 + rand(2); m > 0; m--) {
        const at = rand(s.length + 1);
        const op = rand(3);
        const c = alphabet[rand(alphabet.length)]!;
        s = op === 0 ? s.slice(0, at) + c + s.slice(at + 1) : op === 1 ? s.slice(0, at) + c + s.slice(at) : s.slice(0, at) + s.slice(at + 1);
      }
      const expected = reference(s);
      if (expected) accepted++;
      expect(isDateTime(s), s).to.equal(expected);
    }
    // The mutations must exercise both answers, not only refusals.
    expect(accepted).to.be.above(1000);
  });
});

describe('isTimeZone', () => {
  it('gives the same answer the first time and every time after (valid names are remembered)', () => {
    const cases: [string, boolean][] = [
      ['Europe/Vienna', true], ['UTC', true], ['America/Argentina/Buenos_Aires', true], ['europe/vienna', true],
      ['MiddleEarth/Gondor', false], ['+01:00', false], ['', false], ['Europe/Vienna ', false], ['Europe', false],
    ];
    for (let round = 0; round < 3; round++) {
      for (const [name, valid] of cases) expect(isTimeZone(name), `${name} (round ${round})`).to.equal(valid);
    }
  });
});

describe('COPY encoding (the oracle)', () => {
  it('escapes backslash, tab, newline and carriage return, and writes NULL as \\N', () => {
    expect(copyValue('a\\b\tc\nd\re')).to.equal('a\\\\b\\tc\\nd\\re');
    expect(copyValue('\\.')).to.equal('\\\\.');
    expect(copyValue(null)).to.equal('\\N');
    expect(copyValue(true)).to.equal('t');
    expect(copyValue(12)).to.equal('12');
    const row = asRow(mapRecord({ kind: 'record', ordinal: 1, ...pos, model: 'sentry.user', pk: 1, fields: user(1, 'a').fields, filtered: false }));
    expect(copyLine(5, row).split('\t')).to.have.length(8 + STAGE_COLUMNS.length);
  });
});

describe('CopyText', () => {
  it('gathers exactly the UTF-8 bytes of the oracle\'s copyLine for every row, across Buffers, however long a row is', () => {
    const width = STAGE_COLUMNS.length;
    const values = (...vs: (string | number | boolean | null)[]) => [...vs, ...new Array(width - vs.length).fill(null)];
    const row = (pk: number, vals: (string | number | boolean | null)[]): StagedRow => ({
      kind: 'row', ordinal: 12345, offset: 9007199254740991, line: 1, column: 10, length: 5, model: 'sentry.user', code: 1, pk, values: vals });
    const filtered = (pk: number, username?: string): FilteredMarker => ({
      kind: 'filtered', ordinal: 3, offset: 0, line: 7, column: 1, length: 2, model: 'sentry.user', code: 5, pk, ...(username === undefined ? {} : { username }) });
    const rows: (StagedRow | FilteredMarker)[] = [
      row(1, values('alice', 'Zoë Smith', 'a@b.c', true, false, '2021-07-17T21:08:52.713Z', null, null, 0, null, 1, null, 42)),
      row(-9007199254740991, values('tab\there', 'new\nline', 'cr\rback\\slash', '\\.', '日本語\t😀\\', 'é\n')),
      row(0, values(-0, 1.5, 1e21, -12, 9007199254740991, 2 ** 53 + 2, '{"a":"x\\\\y"}')),
      row(9, values(...[1, 2, 3, 4, 5, 6, 7, 8].flatMap((e) => [10 ** e - 1, 10 ** e]))),
      row(2147483647, values(999999999, 1000000000, 2147483647, 2147483648, -2147483648, -2147483649, 4294967296, 10 ** 15, 10 ** 15 - 1)),
      row(7, values('x'.repeat(300000), 'é'.repeat(100000) + '\t', '\ud800 lone')),
      filtered(8), filtered(9, 'bob\tby'), filtered(10, 'ünï\\'),
      ...Array.from({ length: 3000 }, (_, i) => row(100 + i, values(`user${i}`, `Name ${i}`, `u${i}@example.com`, i % 2 === 0, null, null, null, null, i))),
    ];
    const text = new CopyText();
    for (const r of rows) text.row(5, r);
    const expected = Buffer.from(rows.map((r) => copyLine(5, r)).join(''));
    expect(text.size).to.equal(expected.length);
    const chunks = text.take();
    expect(chunks.length).to.be.above(1);
    expect(Buffer.concat(chunks).equals(expected)).to.equal(true);
    expect(text.size).to.equal(0);
    expect(text.take()).to.deep.equal([]);
  });
});

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

  it('overlap: asks when() after each write until "now", runs the work while the rows that follow go to a spool, finishes it, then COPYs the spool', async () => {
    const log: string[] = [];
    let asked = 0;
    const count = async (c: pg.ClientBase) => (await c.query('SELECT count(*)::int AS n FROM pg_temp.stage')).rows[0].n as number;
    const overlap = {
      when: () => (++asked < 3 ? 'later' as const : 'now' as const),
      start: async (c: pg.ClientBase) => {
        log.push(`start with ${(await count(c)) > 0 ? 'rows' : 'nothing'} staged`);
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
    expect(log).to.deep.equal(['start with rows staged', 'run', 'finish', 'finalize']);
    expect(staged).to.equal(3000);
    const moments = events.map((e) => (e.kind === 'sink' ? e.moment : e.kind));
    expect(moments).to.include.members(['overlap started', 'overlap done', 'rows sent', 'spool copied']);
    expect(moments).to.not.include('copy confirmed');
  });

  it('overlap: "never" stops the asking, and a start that declines lets the COPY go on', async () => {
    for (const answer of ['never', 'decline'] as const) {
      let asked = 0;
      let started = 0;
      const events: TraceEvent[] = [];
      const sink = createPgSink({
        client, run: 1, transaction: 'whole', onTrace: (e) => events.push(e),
        overlap: { when: () => { asked++; return answer === 'never' ? 'never' : 'now'; }, start: async () => { started++; return undefined; } },
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

const rawUsers = () => objects(Array.from({ length: 300 }, (_, i) => raw(i + 1, user(i + 1, `u${i + 1}`))));
streamCompliance('createUserFilter', () => createUserFilter(), rawUsers, () => objects([raw(1, { model: 'sentry.user', pk: 'x', fields: {} })]), 'USERPORT_RECORD_ENVELOPE');
const scopedUsers = (bad: boolean) => objects(Array.from({ length: bad ? 1 : 300 }, (_, i) => {
  const rec = user(i + 1, `u${i + 1}`, bad ? { is_active: 'yes' } : {});
  return { kind: 'record', ordinal: i + 1, ...pos, model: rec.model, pk: rec.pk, fields: rec.fields, filtered: false } satisfies ScopedRecord;
}));
streamCompliance('createModelMapper', () => createModelMapper(), () => scopedUsers(false), () => scopedUsers(true), 'USERPORT_RECORD_SCHEMA');
