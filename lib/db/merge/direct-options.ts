/**
 * The new users' options, decided in the client and written once, straight into the target
 * (issue #23, item 1). While the early users step runs (early.ts), the sink diverts every option
 * that names its user by pk and no project or organization to a side spool; once the step is
 * done, the users' pk map says which of those users are new (inserted or renamed by this import),
 * and their options are COPYed into the options table as final rows, in file order (source pk
 * order: the caller checked). Staging every option and deciding it in SQL cost about 1.3 s of
 * server time per 100k users, for rows that are all plain inserts.
 *
 * Exact, or not taken:
 * - a row goes straight in only when its user is new: nobody else can hold a row of that user,
 *   and no rule but "one row per (user, key), the first by source pk" applies to it;
 * - that rule is checked by the database once the rows are in (one aggregate over the new users'
 *   rows): a repeated (user, key), which only a hand-made file holds, rolls the direct rows back
 *   and stages them with the others, where the merge decides them as ever;
 * - every other row (a merged, filtered, rejected or unknown user) is staged as before, so its
 *   reasons and findings are the merge's.
 * State in the process: the new users as ranges of the pk map (one for a file in Sentry's order).
 */
import type pg from 'pg';
import copyStreams from 'pg-copy-streams';
import { wrapDbError } from '../../errors.js';
import type { StagedRow } from '../../map-models.js';
import { STAGE_INDEX } from '../../models.js';
import { endStream, writeChunks } from '../../stream-writes.js';
import { FLUSH_BYTES } from '../../copy-text.js';

/** Ranges of new users beyond which the client does not keep them (their options are staged). */
export const MAX_RANGES = 100_000;

/** Columns of a staging line before the values of `STAGE_COLUMNS` (copySql: run ... keep). */
const LEAD = 8;
const USER_PK = LEAD + STAGE_INDEX.user_pk;
const KEY = LEAD + STAGE_INDEX.opt_key;
const VALUE = LEAD + STAGE_INDEX.opt_value;
const TAB = 9;

/** Lines of staged options handed back to the staging table at once. */
const STAGE_BATCH = 1000;

const SAVEPOINT = 'userport_direct_options';

/** Whether the sink diverts `row` (an option of model `code`): it names its user by pk, and no project or organization. */
export function divertsOption(row: StagedRow, code: number): boolean {
  const v = row.values;
  return row.code === code && v[STAGE_INDEX.user_pk] != null && v[STAGE_INDEX.project_id] == null && v[STAGE_INDEX.organization_id] == null;
}

/** This import's new users (pk map kind 'inserted', renamed ones included): source pk -> new id. */
export class NewUsers {
  /** The lowest and highest new id. */
  readonly low: number;
  readonly high: number;

  private constructor(private readonly starts: Float64Array, private readonly targets: Float64Array, private readonly spans: Float64Array) {
    let low = Infinity;
    let high = -Infinity;
    targets.forEach((t, i) => { low = Math.min(low, t); high = Math.max(high, t + spans[i]! - 1); });
    this.low = low;
    this.high = high;
  }

  /** Reads the ranges of `run`; undefined when there are more than {@link MAX_RANGES}. */
  static async read(client: pg.ClientBase, run: number): Promise<NewUsers | undefined> {
    const where = `run = $1 AND model = 'sentry.user' AND kind = 'inserted'`;
    if (Number((await client.query(`SELECT count(*) AS n FROM userport.pk_ranges WHERE ${where}`, [run])).rows[0].n) > MAX_RANGES) return undefined;
    const rows = (await client.query(`SELECT source_pk::float8 AS s, target_id::float8 AS t, span FROM userport.pk_ranges
      WHERE ${where} ORDER BY source_pk`, [run])).rows as { s: number; t: number; span: number }[];
    return new NewUsers(Float64Array.from(rows, (r) => r.s), Float64Array.from(rows, (r) => r.t), Float64Array.from(rows, (r) => r.span));
  }

  /** The new id of the user with source pk `pk`, or -1 when it is not a new user of this import. */
  id(pk: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const start = this.starts[mid]!;
      if (start > pk) hi = mid - 1;
      else if (pk >= start + this.spans[mid]!) lo = mid + 1;
      else return this.targets[mid]! + (pk - start);
    }
    return -1;
  }
}

/** Where field `n` of a COPY text line starts (after its n-th tab), or -1. */
function fieldStart(line: Buffer, n: number, from = 0, at = 0): number {
  let pos = from;
  for (let i = at; i < n; i++) {
    const tab = line.indexOf(TAB, pos);
    if (tab < 0) return -1;
    pos = tab + 1;
  }
  return pos;
}

/** The integer a COPY text field holds (digits and a sign), or NaN (`\N`, anything else). */
function intAt(line: Buffer, start: number, end: number): number {
  const text = line.toString('latin1', start, end);
  return /^-?\d+$/.test(text) ? Number(text) : NaN;
}

/** A diverted line as the options table's row, or undefined when it must be staged. */
function directRow(line: Buffer, users: NewUsers): Buffer | undefined {
  const userStart = fieldStart(line, USER_PK);
  if (userStart < 0) return undefined;
  const userEnd = line.indexOf(TAB, userStart);
  const id = users.id(intAt(line, userStart, userEnd));
  if (id < 0) return undefined;
  // key <tab> value, as the staging line has them (already COPY text), then the line's end or the next tab.
  const keyStart = fieldStart(line, KEY, userEnd + 1, USER_PK + 1);
  const valueStart = fieldStart(line, VALUE, keyStart, KEY);
  if (keyStart < 0 || valueStart < 0) return undefined;
  const valueEnd = line.indexOf(TAB, valueStart);
  return Buffer.concat([Buffer.from(`${id}\t\\N\t\\N\t`), line.subarray(keyStart, valueEnd < 0 ? line.length : valueEnd), NEWLINE]);
}

const NEWLINE = Buffer.from('\n');

/** What {@link writeDirectOptions} did. */
export interface DirectOptions {
  /** Rows written straight into the options table. */
  written: number;
  /** Lines handed back to be staged. */
  staged: number;
  /** A (user, key) came twice: the direct rows were rolled back and staged too. */
  repeated: boolean;
}

/**
 * Writes the diverted options of `run` that belong straight in (see the module comment) into
 * `table` with one COPY, and hands every other line to `stage` (all of them without a `table`).
 */
export async function writeDirectOptions(client: pg.ClientBase, run: number, table: string | undefined,
  lines: () => AsyncIterable<Buffer>, stage: (lines: Buffer[]) => Promise<void>): Promise<DirectOptions> {
  const users = table === undefined ? undefined : await NewUsers.read(client, run);
  let batch: Buffer[] = [];
  let staged = 0;
  const toStage = async (line: Buffer | undefined) => {
    if (line) { batch.push(line); staged++; }
    if (batch.length && (!line || batch.length >= STAGE_BATCH)) { await stage(batch); batch = []; }
  };
  if (!users) {
    for await (const line of lines()) await toStage(line);
    await toStage(undefined);
    return { written: 0, staged, repeated: false };
  }
  await client.query(`SAVEPOINT ${SAVEPOINT}`);
  const copyError = (err: Error) => wrapDbError(err, `COPY into ${table}`);
  const copy = client.query(copyStreams.from(`COPY ${table} (user_id, project_id, organization_id, key, value) FROM STDIN`));
  // Errors surface through the writes and the end; one listener so none is unhandled.
  copy.on('error', () => undefined);
  let written = 0;
  try {
    let out: Buffer[] = [];
    let outBytes = 0;
    for await (const line of lines()) {
      const row = directRow(line, users);
      if (!row) { await toStage(line); continue; }
      out.push(row);
      outBytes += row.length;
      written++;
      // One CopyData message per flush: a write per row would be a message per row.
      if (outBytes >= FLUSH_BYTES) { await writeChunks(copy, [Buffer.concat(out, outBytes)], copyError); out = []; outBytes = 0; }
    }
    if (out.length) await writeChunks(copy, [Buffer.concat(out, outBytes)], copyError);
    await endStream(copy, copyError);
  } catch (err) {
    copy.destroy(err as Error);
    throw err;
  }
  // One row per (user, key), or none of these goes straight in. The new users' ids are this
  // import's own: no other row of them exists yet.
  const repeated = written > 0 && ((await client.query(`SELECT 1 FROM ${table} WHERE user_id BETWEEN $1 AND $2
    GROUP BY user_id, key HAVING count(*) > 1 LIMIT 1`, [users.low, users.high])).rowCount ?? 0) > 0;
  if (!repeated) {
    await client.query(`RELEASE SAVEPOINT ${SAVEPOINT}`);
    await toStage(undefined);
    return { written, staged, repeated: false };
  }
  await client.query(`ROLLBACK TO SAVEPOINT ${SAVEPOINT}`);
  await client.query(`RELEASE SAVEPOINT ${SAVEPOINT}`);
  for await (const line of lines()) if (directRow(line, users)) await toStage(line);
  await toStage(undefined);
  return { written: 0, staged, repeated: true };
}
