/**
 * What every step of a merge shares: the statement runner (which tells the merge's `onTrace`
 * subscriber each statement's time, and its plan on request), statements sent together in one
 * round trip, the opening of a merge (isolation check, the merge lock), the staging relation, and
 * the staging codes of the models.
 */
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import { DatabaseError, ErrorCodes, wrapDbError } from '../../errors.js';
import { endStream, firstErrorOf, writeChunks } from '../../stream-writes.js';
import { modelInfo, scopeModels } from '../../models.js';
import { STATEMENTS_APART, type TraceEvent, type TraceOptions } from '../../trace.js';

/** Key of the advisory lock that serializes merges. */
export const MERGE_LOCK_KEY = 7472117102;

/** The steps of the merge, in order, as `MergeOptions.onStep` reports them. */
export type MergeStep = 'users' | 'emails' | 'user emails' | 'options' | 'privileges' | 'indexes' | 'findings';

/** Runs one statement of the merge. */
export interface Q {
  (sql: string, params?: unknown[]): Promise<pg.QueryResult>;
  /** Tells the merge's subscriber (`onTrace`) what a step did besides statements; nothing without one. */
  readonly trace: (e: TraceEvent) => void;
  /** Whether each statement's plan is asked for first (`explain`): {@link together} then sends its statements one by one. */
  readonly explaining: boolean;
}

/** Staging codes of the merged models, from their schemas (`x-userport.code` in schemas/). */
export interface ModelCodes {
  user: number; email: number; userEmail: number; userOption: number;
  permission: number; role: number; roleUser: number; authenticator: number; userIp: number; token: number; authorization: number;
  /** Every model whose rows name their user (`"user": 1`, or a natural key before 23.9.1). */
  withUser: number[];
}

export function modelCodes(): ModelCodes {
  const code = (name: string) => modelInfo(name, 'global')!.mapping.code;
  return {
    user: code('sentry.user'), email: code('sentry.email'), userEmail: code('sentry.useremail'), userOption: code('sentry.useroption'),
    permission: code('sentry.userpermission'), role: code('sentry.userrole'), roleUser: code('sentry.userroleuser'),
    authenticator: code('sentry.authenticator'), userIp: code('sentry.userip'), token: code('sentry.apitoken'),
    authorization: code('sentry.apiauthorization'),
    withUser: scopeModels('global').filter((m) => m.mapping.naturalKeys?.user).map((m) => m.mapping.code),
  };
}

/** Times a step is decided again after another session took one of its unique values. */
const MAX_UNIQUE_ATTEMPTS = 8;

/**
 * Runs `step` (the merge's step `name`) in a savepoint, safe against other writers: a session that
 * writes one of the step's values of `table`'s unique key after the step decided makes the
 * step's INSERT wait for it and then fail on that key. The step is then rolled back to its
 * savepoint and run again, now seeing that row (so the value is treated exactly as one that was
 * there before the import): one sign-up never costs the import. Only the ids the failed attempt
 * drew are lost (gaps, as any rolled-back insert leaves).
 */
export async function retryOnUnique<T>(q: Q, name: 'users' | 'emails', table: string, step: () => Promise<T>): Promise<T> {
  const savepoint = `userport_${name}`;
  for (let attempt = 1; ; attempt++) {
    await q(`SAVEPOINT ${savepoint}`);
    try {
      const done = await step();
      await q(`RELEASE SAVEPOINT ${savepoint}`);
      return done;
    } catch (err) {
      const e = err as { code?: string; table?: string };
      if (e.code !== '23505' || e.table !== table || attempt >= MAX_UNIQUE_ATTEMPTS) throw err;
      await q(`ROLLBACK TO SAVEPOINT ${savepoint}`);
      q.trace({ kind: 'retry', step: name, attempt: attempt + 1 });
    }
  }
}

/** Rows per FETCH where the merge reads a table into the client ({@link cursorPages}). */
const PAGE_ROWS = 10_000;

/**
 * The rows of `sql` (one query with `params`, in the caller's transaction), `pageRows` at a time
 * ({@link PAGE_ROWS} unless said), as arrays (or, with `arrays: false`, as objects), through the
 * cursor `name`: what the client reads of a table (a target's users, its addresses, an import's
 * findings) stays a page in memory, and its ORDER BY sorts once. The cursor is closed when the
 * pages end or the caller stops.
 */
export async function* cursorPages<Row>(client: pg.ClientBase, name: string, sql: string,
  { params = [], pageRows = PAGE_ROWS, arrays = true }: { params?: unknown[]; pageRows?: number; arrays?: boolean } = {}): AsyncGenerator<Row[]> {
  await client.query(`DECLARE ${name} NO SCROLL CURSOR FOR ${sql}`, params);
  try {
    for (;;) {
      const fetch = `FETCH ${pageRows} FROM ${name}`;
      const page = (arrays ? await client.query({ text: fetch, rowMode: 'array' }) : await client.query(fetch)).rows as Row[];
      if (page.length > 0) yield page;
      if (page.length < pageRows) break;
    }
  } finally {
    // Also where a FETCH failed: the failed transaction ends the cursor with it, and that error
    // is the one to report.
    await client.query(`CLOSE ${name}`).catch(() => undefined);
  }
}

/** Statements EXPLAIN can plan (a CREATE TABLE AS ... WITH NO DATA has no plan worth telling). */
const EXPLAINABLE = /^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE TEMP TABLE \w+ ON COMMIT DROP AS)\b/;

/**
 * The statement runner of one merge: tells `onTrace` each statement's time and, with `explain`,
 * its plan first (how the specs check that no join can degrade quadratically).
 */
export function runner(client: pg.ClientBase, { onTrace, explain }: TraceOptions = {}): Q {
  if (!onTrace) return Object.assign((sql: string, params?: unknown[]) => client.query(sql, params), { trace: () => undefined, explaining: false });
  const q = async (sql: string, params?: unknown[]) => {
    if (explain && EXPLAINABLE.test(sql) && !/WITH NO DATA\s*$/.test(sql)) {
      const plan = await client.query(`EXPLAIN ${sql}`, params);
      onTrace({ kind: 'plan', sql, plan: plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']!) });
    }
    const t0 = performance.now();
    const r = await client.query(sql, params);
    onTrace({ kind: 'sql', ms: performance.now() - t0, sql });
    return r;
  };
  return Object.assign(q, { trace: onTrace, explaining: !!explain });
}

/**
 * Runs `statements` in order in one round trip: one simple-protocol message, which PostgreSQL
 * runs statement after statement, stopping at the first that fails (its error rejects, as it
 * would alone; in the merge's transaction the rest never runs). No parameters: values are written
 * into the statements. Resolves to each statement's result, in order. While the import still
 * reads the export, Node answers a reply only between two chunks of it: each small statement of
 * the users step waited 4-14 ms for that (traced at 100k users), the server idle meanwhile.
 * Under `explain`, one by one, so that each is planned (a plan needs the statements before it run).
 */
export async function together(q: Q, statements: readonly string[]): Promise<pg.QueryResult[]> {
  if (q.explaining || statements.length < 2) {
    const results: pg.QueryResult[] = [];
    for (const sql of statements) results.push(await q(sql));
    return results;
  }
  const r = await q(statements.join(STATEMENTS_APART)) as pg.QueryResult | pg.QueryResult[];
  return Array.isArray(r) ? r : [r];
}

/** `text` as an SQL string literal (pg's escapeLiteral: E'...' where it holds a backslash, whatever standard_conforming_strings says). */
export const sqlLiteral = (text: string): string => pg.escapeLiteral(text);

/**
 * The staging relation of this session: the TEMP table of an atomic import (the sink made it in
 * this transaction), else the persistent `userport.stage` of resumable imports.
 */
export async function stagingTable(q: (sql: string) => Promise<pg.QueryResult>): Promise<string> {
  return (await q(`SELECT ${STAGING_RELATION} AS s`)).rows[0].s as string;
}

/** {@link stagingTable}'s answer as an SQL expression (openMerge reads it with its other facts). */
const STAGING_RELATION = `coalesce(to_regclass('pg_temp.stage')::text, 'userport.stage')`;

/**
 * What every merge starts with; harmless to repeat in one transaction (the early users phase,
 * then the rest). Returns the staging relation `S`. `sampled`: the staged rows' statistics from a
 * small sample ({@link analyzeSampled}), for the early users step (its plans need the row counts,
 * and the merge analyses the staging table again once everything is staged). `staged`: what
 * {@link stagedInTransaction} said when the staging table was last analysed; while it still says
 * so, nothing was staged since and those statistics stand (the early users step's, when every
 * other row went straight in: an ANALYZE of 0.1 s at 100k users saved), and `unchanged` says so.
 */
export async function openMerge(q: Q, { sampled = false, staged }: { sampled?: boolean; staged?: number } = {}): Promise<{ S: string; unchanged: boolean }> {
  // After the lock, each statement must see what earlier merges committed: only READ COMMITTED
  // takes a new snapshot per statement (importUsers sets it; a caller's own client may not).
  // One statement (the early users step starts while Node reads the export, and each round trip
  // waits for it): the lock and the setting only in such a transaction; in another, nothing is
  // taken or changed before the refusal. The ORDER BY src_pk sorts of big imports spilled to disk
  // at work_mem's default 4 MB.
  const opened = (await q(`
    SELECT level, CASE WHEN level = 'read committed' THEN (SELECT true FROM pg_advisory_xact_lock($1)) END AS locked,
      CASE WHEN level = 'read committed' THEN set_config('work_mem', '64MB', true) END AS work_mem,
      ${STAGING_RELATION} AS s
    FROM (SELECT current_setting('transaction_isolation') AS level) t`, [MERGE_LOCK_KEY])).rows[0] as { level: string; s: string };
  if (opened.level !== 'read committed') {
    throw new DatabaseError(ErrorCodes.DB_SETTING, `the merge needs a READ COMMITTED transaction, this one is ${opened.level.toUpperCase()}`);
  }
  const S = opened.s;
  // Statistics only of the columns later statements join or filter on: a wide table's other
  // columns would cost time to sample and help no plan.
  const what = `${S} (run, model, src_pk, user_pk, keep, username, email)`;
  if (staged !== undefined && await stagedInTransaction(q, S) === staged) return { S, unchanged: true };
  if (sampled) await analyzeSampled(q, what);
  else await q(`ANALYZE ${what}`);
  return { S, unchanged: false };
}

/** Rows inserted into the staging relation `S` in this transaction so far (PostgreSQL's own count). */
export async function stagedInTransaction(q: Q, S: string): Promise<number> {
  return Number((await q('SELECT pg_stat_get_xact_tuples_inserted($1::regclass) AS n', [S])).rows[0].n);
}

/** Sample size (as default_statistics_target) of {@link analyzeSampled}: 3,000 rows. */
const SMALL_SAMPLE = 10;

/** ANALYZE `what` with a small sample, the session's statistics target restored after. */
export async function analyzeSampled(q: Q, what: string): Promise<void> {
  await togetherWithSettings(q, { default_statistics_target: String(SMALL_SAMPLE) }, [`ANALYZE ${what}`]);
}

/**
 * Runs `work` with `settings` changed for the transaction (set_config's local form), then puts
 * each back as it was, so the caller's own values stand for whatever follows. Not on an error:
 * the transaction is then aborted and takes them back itself.
 */
export async function withSettings<T>(q: Q, settings: Readonly<Record<string, string>>, work: () => Promise<T>): Promise<T> {
  const change = new SettingsChange(settings);
  const [read] = await together(q, change.statements);
  const result = await work();
  await change.putBack(q, read!);
  return result;
}

/**
 * {@link withSettings} around `statements` sent {@link together}: what the settings were, their
 * change and the statements in one round trip, the settings put back in a second. Resolves to
 * the statements' results.
 */
export async function togetherWithSettings(q: Q, settings: Readonly<Record<string, string>>, statements: readonly string[]): Promise<pg.QueryResult[]> {
  const change = new SettingsChange(settings);
  const [read, , ...results] = await together(q, [...change.statements, ...statements]);
  await change.putBack(q, read!);
  return results;
}

/** The statements of {@link withSettings}: what the settings are, then their change; and the put back. */
class SettingsChange {
  private readonly names: string[];
  /** The read (its row: `s0`, `s1`, ... in the settings' order) and the change, to send together, in this order. */
  readonly statements: readonly [string, string];

  constructor(settings: Readonly<Record<string, string>>) {
    // The names are the code's own, written into the statements so that a trace reads them.
    this.names = Object.keys(settings);
    if (!this.names.every((name) => /^[a-z_]+$/.test(name))) throw new RangeError(`withSettings: setting names ${this.names.join(', ')}`);
    this.statements = [`SELECT ${this.names.map((name, i) => `current_setting('${name}') AS s${i}`).join(', ')}`,
      this.setAll(this.names.map((name) => settings[name]!))];
  }

  /** Puts every setting back as `read` (the result of the first statement) says it was. */
  async putBack(q: Q, read: pg.QueryResult): Promise<void> {
    const was = read.rows[0] as Record<string, string>;
    await q(this.setAll(this.names.map((_, i) => was[`s${i}`]!)));
  }

  private setAll(values: readonly string[]): string {
    return `SELECT ${this.names.map((name, i) => `set_config('${name}', ${sqlLiteral(values[i]!)}, true)`).join(', ')}`;
  }
}

/** A statement's runner: a {@link Q}, or a client's own `query`. */
type Query = (sql: string, params?: unknown[]) => Promise<pg.QueryResult>;

/** The sequence behind `table`'s `id` (schema-qualified, quoted as needed), if it has one. */
export async function idSequence(q: Query, table: string): Promise<string | null> {
  return (await q(`SELECT pg_get_serial_sequence($1, 'id') AS seq`, [table])).rows[0].seq as string | null;
}

/** Where an id sequence stands: what {@link putSequenceBack} restores. */
export interface SequenceMark {
  readonly seq: string;
  readonly lastValue: string;
  readonly isCalled: boolean;
}

/** Where sequence `seq` stands now ({@link SequenceMark}; `lastValue` is what `after` of {@link putSequenceBack} compares). */
export async function markSequence(q: Query, seq: string): Promise<SequenceMark> {
  return markOf(seq, (await q(markSql(seq))).rows[0]);
}

/** {@link markSequence} of each of `seqs`, in one round trip ({@link together}). */
export async function markSequences(q: Q, seqs: readonly string[]): Promise<SequenceMark[]> {
  return (await together(q, seqs.map(markSql))).map((r, i) => markOf(seqs[i]!, r.rows[0]));
}

const markSql = (seq: string) => `SELECT last_value::text AS v, is_called AS c FROM ${seq}`;
const markOf = (seq: string, row: { v: string; c: boolean }): SequenceMark => ({ seq, lastValue: row.v, isCalled: row.c });

/**
 * Puts a sequence back where `mark` found it, after a rollback of what drew from it (a sequence's
 * draws are not rolled back), so the rows written again get the ids they get without that write;
 * only where it still stands at `after` (its `last_value` once the write was done): where another
 * session drew meanwhile, the ids stay unused, as a rolled-back insert leaves them.
 */
export async function putSequenceBack(q: Query, mark: SequenceMark, after: string): Promise<void> {
  await q(`SELECT setval($1::regclass, $2::bigint, $3) WHERE (SELECT last_value FROM ${mark.seq}) = $4::bigint`,
    [mark.seq, mark.lastValue, mark.isCalled, after]);
}

/**
 * Fails with USERPORT_TARGET_SCHEMA, before anything is written, when a table's id sequence would
 * give an id its rows already hold (a restore that did not reset the sequences): a new row would
 * take the id of an old one. Said with the statement that fixes it. Otherwise the import failed at
 * the first insert into that table, or, on the bulk path, at the rebuild of its primary key after
 * the whole load ("could not create unique index"), without saying which id or why.
 */
export async function refuseSequencesBehind(q: Q, tables: readonly string[]): Promise<void> {
  for (const table of tables) {
    const seq = await idSequence(q, table);
    if (!seq) continue;
    const r = (await q(`SELECT (SELECT max(id) FROM ${table})::text AS top, last_value::text AS last, is_called,
      (SELECT seqincrement FROM pg_sequence WHERE seqrelid = $1::regclass)::text AS step FROM ${seq}`, [seq])).rows[0] as { top: string | null; last: string; is_called: boolean; step: string };
    if (r.top === null || BigInt(r.step) <= 0n) continue;
    const next = BigInt(r.last) + (r.is_called ? BigInt(r.step) : 0n);
    if (BigInt(r.top) < next) continue;
    throw new DatabaseError(ErrorCodes.TARGET_SCHEMA, `${table} in the target database holds id ${r.top}, but its id sequence `
      + `${seq} would give ${next} next: new rows would take ids already there (a restore that did not reset the sequences?). `
      + `Fix it with: SELECT setval('${seq}', (SELECT max(id) FROM ${table})); nothing was written`);
  }
}

/**
 * One `COPY ... FROM STDIN` (`sql`) on `client`, for the rows the client writes straight in:
 * `body` sends COPY text through `send` (each call one CopyData message, resolving when the socket
 * can take more); the COPY ends once `body` resolves, and is abandoned (CopyFail) when it throws or
 * the server refuses a row. Errors name `table`.
 */
export async function copyInto<T>(client: pg.ClientBase, sql: string, table: string,
  body: (send: (text: Buffer) => Promise<void>) => Promise<T>): Promise<T> {
  const copy = client.query(copyStreams.from(sql));
  // Errors surface through the writes and the end, as the stream's first: the server's refusal,
  // not the TypeError of a write that came after it (a race under load).
  const failed = firstErrorOf(copy);
  const copyError = (err: Error) => wrapDbError(failed() ?? err, `COPY into ${table}`);
  try {
    const result = await body((text) => {
      const first = failed();
      return first ? Promise.reject(copyError(first)) : writeChunks(copy, [text], copyError);
    });
    await endStream(copy, copyError);
    return result;
  } catch (err) {
    copy.destroy(err as Error);
    throw err;
  }
}
