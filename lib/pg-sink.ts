/**
 * Stage 4, staging rows -> PostgreSQL: a Writable that COPYs rows into the staging table and, at
 * the end, runs the caller's `finalize` (the set-based merge) and commits.
 *
 * Two transaction shapes:
 * - `whole` (atomic and dry-run imports): one transaction from the first row to the commit. Rows
 *   go to a TEMP staging table through one COPY stream held open for the whole import, so Node
 *   parses while PostgreSQL ingests (the two cores work at once) and write() === false
 *   (socket backpressure) reaches the parser. `_destroy` sends CopyFail and rolls back: a failed
 *   pipeline() leaves nothing behind, once the sink emits 'close' (pipeline() settles at the first
 *   error, before that: a caller reusing the client waits for 'close'). `dryRun` rolls back even
 *   on success. The sink changes no setting of the client's session.
 * - `batches` (resumable imports): every `batchRows` rows are COPYed into the persistent staging
 *   table and committed together with the caller's checkpoint; the write callback fires only
 *   after that commit. The merge runs in a last transaction of its own.
 *
 * In `whole` mode one hook, `overlap`, lets work run on the connection while the input is still
 * read: the sink pauses its COPY, runs the work, spools the rows that arrive meanwhile (those the
 * work diverts to side spools it writes itself), then COPYs the spool (overlap.ts; importUsers
 * starts the merge's users step this way, and writes the new users' options straight into the
 * target: db/merge/early.ts).
 *
 * Lifecycle as in pg-copy-streams: `_final` calls back only once the server has confirmed the
 * commit; exactly one 'finish' on success, exactly one 'error' on failure.
 */
import type pg from 'pg';
import os from 'node:os';
import { Writable } from 'node:stream';
import copyStreams from 'pg-copy-streams';
import { DatabaseError, ErrorCodes, OptionError, UserportError, wrapCallbackError, wrapDbError } from './errors.js';
import { checkOptions, isBoolean, isFunction, isInteger, isNonEmptyString, isOneOf, type OptionCheck } from './options.js';
import { copySql, CopyText, FLUSH_BYTES } from './copy-text.js';
import type { SkipMarker } from './filter-users.js';
import { rejectedUserRow, type FilteredMarker, type MappedItem, type StagedRow } from './map-models.js';
import { OverlapRun, type Overlap, type OverlapWork } from './overlap.js';
import { spoolsIn, type SpoolMaker } from './spool.js';
import type { RejectSink } from './rejects.js';
import { StagedFacts } from './staged-facts.js';
import { ImportStats } from './stats.js';
import { endStream, firstErrorOf, writeChunks } from './stream-writes.js';
import type { TraceEvent } from './trace.js';

/** Rows per committed batch in resumable mode. */
export const DEFAULT_BATCH_ROWS = 20000;

/** Options of {@link createPgSink}. */
export interface PgSinkOptions {
  /** A dedicated connection; the sink owns its transactions until it finishes. */
  client: pg.ClientBase;
  /** Import run number stamped on every staged row. */
  run: number;
  /** `whole`: one transaction (atomic, dry run). `batches`: commit every `batchRows` (resumable). */
  transaction: 'whole' | 'batches';
  /** Roll back at the end instead of committing (dry run). @default false */
  dryRun?: boolean;
  /** Rows per commit in `batches` mode. @default 20000 */
  batchRows?: number;
  /**
   * Called inside each batch transaction after its rows are staged, with the last item of the
   * batch: record the checkpoint here so rows and checkpoint commit together.
   */
  checkpoint?: (client: pg.ClientBase, last: MappedItem) => Promise<void>;
  /** Counters: every item is accounted here, in order. @default a new ImportStats */
  stats?: ImportStats;
  /** Where reject markers are written. Without it a reject marker fails the stream. */
  rejects?: RejectSink;
  /** Called inside the final transaction once every row is staged: the merge. */
  finalize: (client: pg.ClientBase) => Promise<void>;
  /** Filled with what the staged rows were like (see {@link StagedFacts}), for the merge. */
  staged?: StagedFacts;
  /**
   * `whole` mode: work to run on the sink's connection while the input is still read (the
   * importer's early users step). See {@link Overlap} (lib/overlap.ts).
   */
  overlap?: Overlap;
  /** Folder of the spool file of `overlap`. @default os.tmpdir() */
  tmpDir?: string;
  /** Told the sink's moments (`sink` events: {@link TraceEvent}), for a timeline of the import. */
  onTrace?: (e: TraceEvent) => void;
}

const PG_SINK_OPTIONS: { readonly [K in keyof PgSinkOptions]-?: OptionCheck } = {
  client: (v) => (v !== null && typeof v === 'object' && typeof (v as pg.ClientBase).query === 'function' ? undefined : 'a connected pg client'),
  run: isInteger(1),
  transaction: isOneOf('whole', 'batches'),
  dryRun: isBoolean,
  batchRows: isInteger(1),
  checkpoint: isFunction,
  stats: (v) => (v instanceof ImportStats ? undefined : 'an ImportStats'),
  rejects: (v) => (v !== null && typeof v === 'object' && typeof (v as RejectSink).reject === 'function' ? undefined : 'a RejectSink (createRejectsFile)'),
  finalize: isFunction,
  staged: (v) => (v instanceof StagedFacts ? undefined : 'a StagedFacts'),
  overlap: (v) => (v !== null && typeof v === 'object' && typeof (v as Overlap).when === 'function' && typeof (v as Overlap).start === 'function'
    ? undefined : 'an Overlap (when() and start())'),
  tmpDir: isNonEmptyString,
  onTrace: isFunction,
};

type CopyStream = ReturnType<typeof copyStreams.from>;

/** Creates the PostgreSQL sink. See the module comment for its transaction shapes. */
export function createPgSink(options: PgSinkOptions): Writable {
  checkOptions('createPgSink', options, PG_SINK_OPTIONS);
  for (const required of ['client', 'run', 'transaction', 'finalize'] as const) {
    if (options[required] === undefined) throw new OptionError(`createPgSink: option ${required} is required`, required);
  }
  return pgSink({ ...options, spools: spoolsIn(options.tmpDir ?? os.tmpdir()) });
}

/**
 * {@link createPgSink} over options already checked (`importUsers` checks its options once and
 * builds these from the resolved values), with the maker of the overlap's spool (the import's).
 */
export function pgSink(options: PgSinkOptions & { spools: SpoolMaker }): Writable {
  const { client, run, finalize, checkpoint } = options;
  const batchRows = options.batchRows ?? DEFAULT_BATCH_ROWS;
  const whole = options.transaction === 'whole';
  const stats = options.stats ?? new ImportStats();
  const rejects = options.rejects;
  const staged = options.staged;

  const createdAt = performance.now();
  let copy: CopyStream | undefined;
  let inTransaction = false;
  const pending = new CopyText();
  // Rows the overlapped work diverts while it runs, by side spool.
  const diverted = new Map<string, CopyText>();
  const sideText = (name: string) => {
    let text = diverted.get(name);
    if (!text) diverted.set(name, text = new CopyText());
    return text;
  };
  let batchCount = 0;
  let batchLast: MappedItem | undefined;
  const onTrace = options.onTrace;
  const moment = (m: Extract<TraceEvent, { kind: 'sink' }>['moment']) => {
    if (!onTrace) return;
    try { onTrace({ kind: 'sink', moment: m, ms: performance.now() - createdAt }); } catch (err) { throw wrapCallbackError(err, 'onTrace'); }
  };
  // The overlapped work: once it runs (and until the end), rows go to its spool.
  const overlap = whole ? options.overlap : undefined;
  let overlapping: OverlapRun | undefined;
  let asked = !overlap;
  // From the row at which the overlap said `now` until the work declines: rows are diverted, and
  // those not diverted wait in `spooled` for the spool (the rows before it are staged first).
  let spooling = false;
  const spooled = new CopyText();
  // Set by destroy: a start of the overlapped work still in flight must not start it, nor keep a spool.
  let destroyed = false;
  let starting: Promise<void> | undefined;
  // The sink's own statements in flight (a batch's commit, the end of the COPY, the merge and the
  // COMMIT): destroy's ROLLBACK waits for them. Sent between two of them, it would end the
  // transaction and leave the ones after it to run, and commit, each on its own.
  let busy: Promise<unknown> | undefined;
  const track = <T>(work: Promise<T>): Promise<T> => { busy = work; return work; };

  const query = async (sql: string) => {
    try {
      return await client.query(sql);
    } catch (err) {
      throw wrapDbError(err, sql.split(/\s+/).slice(0, 3).join(' '));
    }
  };

  /** The open COPY stream's first error (firstErrorOf): the one a failing write or end reports. */
  let copyFailed: () => Error | undefined = () => undefined;
  const openCopy = (): CopyStream => {
    const s = client.query(copyStreams.from(copySql(whole ? 'pg_temp.stage' : 'userport.stage')));
    // Errors surface through write callbacks / finish, as the stream's first.
    copyFailed = firstErrorOf(s);
    return s;
  };

  // The connection's end, as the client reports it: a COPY write failing after it (pg-copy-streams
  // then throws a TypeError of its own) is a lost connection, USERPORT_DB_CONNECT.
  let connectionEnded = false;
  const onEnd = () => { connectionEnded = true; };
  client.once('end', onEnd);
  const copyError = (thrown: Error) => {
    const err = copyFailed() ?? thrown;
    return connectionEnded && !(err instanceof UserportError)
      ? new DatabaseError(ErrorCodes.DB_CONNECT, `COPY into the staging table: lost the connection to PostgreSQL (${err.message})`, { cause: err })
      : wrapDbError(err, 'COPY into the staging table');
  };
  /** Writes COPY text to the open COPY stream, resolving when the socket can take more. */
  const send = (chunks: Buffer[]) => writeChunks(copy!, chunks, copyError);
  /** Ends the COPY stream and waits for the server's confirmation. */
  const endCopy = () => endStream(copy!, copyError).then(() => { copy = undefined; });

  /**
   * The overlap said `now` at a row of this write: stage the rows before it, end the COPY, start
   * the work; if it starts, that row and the rows after it go to its spool (or side spools), else
   * they are staged after all.
   */
  const startOverlap = async () => {
    if (pending.size) await send(pending.take());
    await endCopy();
    let work: OverlapWork | undefined;
    try { work = await overlap!.start(client); } catch (err) { throw wrapCallbackError(err, 'the merge'); }
    if (destroyed) return;
    if (work) overlapping = await OverlapRun.begin(work, options.spools, () => destroyed, () => moment('overlap started'), () => moment('overlap done'));
    if (destroyed) return;
    if (overlapping) {
      if (spooled.size) await overlapping.write(spooled.take());
      return;
    }
    // Declined: what waited for the spool, diverted or not, is staged after all.
    spooling = false;
    copy = openCopy();
    if (spooled.size) await send(spooled.take());
    for (const text of diverted.values()) if (text.size) await send(text.take());
  };

  /**
   * At the end of the input: the rows still pending go to the spool, then the overlap drains it
   * into the staging table (kept until the sink ends: a destroy after a failure removes the spool).
   */
  const drainOverlap = async () => {
    if (spooled.size) await overlapping!.write(spooled.take());
    for (const [name, text] of diverted) if (text.size) await overlapping!.writeSide(name, text.take());
    await overlapping!.drain(() => (copy = openCopy()));
    copy = undefined;
  };

  const commitBatch = async () => {
    if (!batchCount) return;
    await query('BEGIN');
    inTransaction = true;
    if (pending.size) {
      copy = openCopy();
      await send(pending.take());
      await endCopy();
    }
    if (checkpoint && batchLast) {
      try { await checkpoint(client, batchLast); } catch (err) { throw wrapCallbackError(err, 'recording the checkpoint'); }
    }
    await query('COMMIT');
    inTransaction = false;
    batchCount = 0;
    batchLast = undefined;
  };

  return new Writable({
    objectMode: true,
    // Items, or arrays of items: a few arrays already hold thousands of records.
    highWaterMark: 16,
    construct(callback) {
      if (!whole) return callback();
      (async () => {
        // The session's settings are its owner's: importUsers sizes temp_buffers on its own
        // connection (lib/db/import-database.ts); a caller's client is left as it was given.
        await query('BEGIN');
        inTransaction = true;
        // The staging of an atomic import is never WAL-logged and vanishes with its transaction;
        // the merge finds it as pg_temp.stage (lib/db/merge/run.ts: openMerge, stagingTable).
        await query('CREATE TEMP TABLE stage (LIKE userport.stage INCLUDING DEFAULTS) ON COMMIT DROP');
        copy = openCopy();
      })().then(() => callback(), (err: Error) => callback(err));
    },
    writev(chunks, callback) {
      let count = 0;
      let last: MappedItem | undefined;
      /** Asks the overlap, before each row while it says `later`: from the row it says `now` at, rows wait for its spool. */
      const ask = (row: StagedRow | FilteredMarker | SkipMarker) => {
        const when = overlap!.when(row);
        if (when === 'later') return;
        asked = true;
        spooling = when === 'now';
      };
      const take = (item: MappedItem) => {
        stats.account(item);
        if (item.kind === 'row' || item.kind === 'filtered') {
          if (!asked && whole) ask(item);
          staged?.note(item);
          const side = spooling && item.kind === 'row' ? overlap!.divert?.(item) : undefined;
          (side !== undefined ? sideText(side) : spooling ? spooled : pending).row(run, item);
        } else if (item.kind === 'skip') {
          // Nothing is staged, but the record ends a run of users as a row of another model would.
          if (!asked && whole) ask(item);
          staged?.skipped();
        } else if (item.kind === 'reject') {
          if (!rejects) throw item.error;
          rejects.reject(item.error, item, item.record);
          const pkOnly = rejectedUserRow(item);
          if (pkOnly) {
            if (!asked && whole) ask(pkOnly);
            staged?.note(pkOnly);
            (spooling ? spooled : pending).row(run, pkOnly);
          }
        }
        count++;
        last = item;
      };
      try {
        for (const { chunk } of chunks) {
          // Single items, or arrays of them (the fused record processor emits one per chunk).
          if (Array.isArray(chunk)) for (const item of chunk as MappedItem[]) take(item);
          else take(chunk as MappedItem);
        }
      } catch (err) {
        return callback(err as Error);
      }
      if (whole) {
        if (overlapping?.error) return callback(overlapping.error);
        if (spooling && !starting) {
          starting = startOverlap();
          starting.then(() => callback(), (err: Error) => callback(err));
          return;
        }
        // The overlapped work is done while the input is still read: its early part starts.
        const due = overlapping?.earlyDue(diverted.keys());
        if (due?.length) {
          const run = overlapping!;
          run.startEarly(due, async (name) => {
            const text = diverted.get(name)!;
            if (text.size) await run.writeSide(name, text.take());
          }).then(() => callback(), (err: Error) => callback(err));
          return;
        }
        for (const [name, text] of diverted) {
          if (text.size < FLUSH_BYTES) continue;
          overlapping!.writeSide(name, text.take()).then(() => callback(), (err: Error) => callback(err));
          return;
        }
        const text = overlapping ? spooled : pending;
        if (text.size < FLUSH_BYTES) return callback();
        (overlapping ? overlapping.write(text.take()) : send(text.take())).then(() => callback(), (err: Error) => callback(err));
        return;
      }
      batchCount += count;
      if (last) batchLast = last;
      if (batchCount < batchRows) return callback();
      track(commitBatch()).then(() => callback(), (err: Error) => callback(err));
    },
    final(callback) {
      track((async () => {
        moment('rows sent');
        if (whole && overlapping) {
          await drainOverlap();
          moment('spool copied');
        } else if (whole) {
          if (pending.size) await send(pending.take());
          await endCopy();
          moment('copy confirmed');
        } else {
          await commitBatch();
          await query('BEGIN');
          inTransaction = true;
        }
        try { await finalize(client); } catch (err) { throw wrapCallbackError(err, 'the merge'); }
        // Destroyed while the merge ran: no COMMIT; destroy's ROLLBACK follows.
        if (destroyed) throw new Error('the sink was destroyed before its COMMIT');
        await query(options.dryRun ? 'ROLLBACK' : 'COMMIT');
        inTransaction = false;
      })()).then(() => callback(), (err: Error) => callback(wrapDbError(err, 'the merge')));
    },
    destroy(err, callback) {
      destroyed = true;
      (async () => {
        // A start of the overlapped work in flight ends first (it sees `destroyed`: no work, no spool).
        if (starting) await starting.catch(() => undefined);
        // The spool goes; the connection is busy until the overlapped work ends (the ROLLBACK
        // below would queue behind it).
        if (overlapping) await overlapping.abort();
        if (copy) {
          // pg-copy-streams answers destroy() with CopyFail: the server discards the COPY.
          const s = copy;
          copy = undefined;
          await new Promise<void>((resolve) => {
            s.once('close', () => resolve());
            s.once('error', () => resolve());
            s.destroy(err ?? new Error('aborted'));
            setTimeout(resolve, 2000).unref();
          });
        }
        if (busy) await busy.catch(() => undefined);
        if (inTransaction) {
          inTransaction = false;
          await client.query('ROLLBACK').catch(() => undefined);
        }
        client.off('end', onEnd);
      })().then(() => callback(err), () => callback(err));
    },
  });
}
