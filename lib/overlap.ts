/**
 * The sink's overlap (`PgSinkOptions.overlap`): work that runs on the sink's connection while the
 * input is still read, and the private spool file (0600 in a 0700 folder) that takes the rows
 * meanwhile, until the work is done and the input has ended; then the spool is COPYed. Rows the
 * work asks for (`divert`) go to a side spool beside it, which the work writes itself at the end.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { ErrorCodes, UserportError, wrapCallbackError, wrapDbError } from './errors.js';
import type { StagedRow } from './map-models.js';
import { makeSpool } from './spool.js';
import { endStream, writeChunks } from './stream-writes.js';

/**
 * Work the sink runs on its connection while it goes on reading, in `whole` mode: the sink ends
 * its COPY, starts the work, writes the rows that arrive meanwhile to a private spool file (0600
 * in a 0700 folder under `tmpDir`) and, once the input has ended and the work is done, calls
 * `finish` and COPYs the spool into the staging table. So PostgreSQL works on what is staged
 * while Node parses the rest.
 */
export interface Overlap {
  /**
   * Asked after each write, once its rows are gathered, until it answers `now` or `never`:
   * `later` asks again after the next write.
   */
  when(): 'now' | 'later' | 'never';
  /**
   * Called once, after `now`, when every row so far is staged and the COPY has ended. Resolves
   * to the work, or to undefined to decline (the COPY goes on).
   */
  start(client: pg.ClientBase): Promise<OverlapWork | undefined>;
  /**
   * Asked for each staged row while the work runs: true sends it to the side spool instead of
   * the spool, for {@link OverlapWork.writeDiverted}. @default no row is diverted
   */
  divert?(row: StagedRow): boolean;
}

/** What {@link Overlap.start} starts. */
export interface OverlapWork {
  /** The work; rows are spooled while it runs. */
  run(): Promise<void>;
  /** Called once `run` is done and the input has ended, before the spool is COPYed. */
  finish(): Promise<void>;
  /**
   * Called after `finish`, before the spool is COPYed, with the side spool's lines (the COPY text
   * lines of the staging table that `divert` took, in order, without their newline; `lines()`
   * reads them again from the start at each call; a line may be kept, its bytes are not reused):
   * writes what it can on the connection itself and hands every other line to `stage`, which adds
   * it to the spool. Without it, every diverted row is staged.
   */
  writeDiverted?(lines: () => AsyncIterable<Buffer>, stage: (lines: Buffer[]) => Promise<void>): Promise<void>;
}

const NEWLINE = Buffer.from('\n');

/** The lines of a file of COPY text, without their newline (each a view of a chunk that is never reused). */
async function* readLines(file: string): AsyncGenerator<Buffer> {
  let rest: Buffer | undefined;
  for await (const read of createReadStream(file, { highWaterMark: 1 << 20 })) {
    const chunk: Buffer = rest ? Buffer.concat([rest, read as Buffer]) : read as Buffer;
    let start = 0;
    for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
      yield chunk.subarray(start, nl);
      start = nl + 1;
    }
    rest = start < chunk.length ? chunk.subarray(start) : undefined;
  }
  if (rest) yield rest;
}

/** A failure to write the overlap's spool file (a full disk, a missing temp dir). */
function spoolError(err: unknown): UserportError {
  const e = err as Error & { cause?: unknown };
  return new UserportError(ErrorCodes.IO, `cannot write the staging spool file: ${(e.cause as Error | undefined)?.message ?? e.message}`, { cause: err });
}

/**
 * The overlapped work while it runs, and the private spool file that takes the rows meanwhile.
 * The sink holds one from the overlap's start to the end of the input (or to its destroy).
 */
export class OverlapRun {
  /** The work's failure: kept here (`done` never rejects), the sink fails at its next write. */
  error?: Error;
  private readonly done: Promise<void>;
  private removed = false;

  /** The side spool, opened at the first diverted row. */
  private side: WriteStream | undefined;

  private constructor(private readonly work: OverlapWork, private readonly path: string, private readonly out: WriteStream,
    private readonly removeFile: () => Promise<void>, onDone: () => void) {
    this.done = new Promise<void>((resolve) => resolve(work.run())).then(onDone)
      .catch((err: unknown) => { this.error = wrapCallbackError(err, 'the merge'); });
  }

  /**
   * Makes the spool under `tmpDir`, then runs `work` (`onStart` first, `onDone` once it is done).
   * Resolves to undefined, leaving no file and starting nothing, when the sink was destroyed meanwhile.
   */
  static async begin(work: OverlapWork, tmpDir: string, destroyed: () => boolean, onStart: () => void, onDone: () => void): Promise<OverlapRun | undefined> {
    const made = await makeSpool(tmpDir, 'stage.copy').catch((err: unknown) => { throw spoolError(err); });
    // The spool's own handle is not kept: a stream by path (the file is already 0600).
    await made.file.close();
    if (destroyed()) {
      await made.remove();
      return undefined;
    }
    const out = createWriteStream(made.path, { flags: 'w' });
    out.on('error', () => undefined);
    try {
      onStart();
    } catch (err) {
      out.destroy();
      await made.remove();
      throw err;
    }
    return new OverlapRun(work, made.path, out, made.remove, onDone);
  }

  /** Writes COPY text to the spool, resolving when the file can take more. */
  write(chunks: Buffer[]): Promise<void> {
    return writeChunks(this.out, chunks, spoolError);
  }

  /** Writes COPY text of diverted rows to the side spool (beside the spool, 0600 in its folder). */
  writeSide(chunks: Buffer[]): Promise<void> {
    if (!this.side) {
      this.side = createWriteStream(this.sidePath, { flags: 'wx', mode: 0o600 });
      this.side.on('error', () => undefined);
    }
    return writeChunks(this.side, chunks, spoolError);
  }

  private get sidePath(): string {
    return path.join(path.dirname(this.path), 'side.copy');
  }

  /**
   * At the end of the input: closes the spool, waits for the work and finishes it, then COPYs the
   * spool through the COPY stream `openCopy` opens, and removes it.
   */
  async drain(openCopy: () => Writable): Promise<void> {
    await endStream(this.out, spoolError);
    if (this.side) await endStream(this.side, spoolError);
    await this.done;
    if (this.error) throw this.error;
    try { await this.work.finish(); } catch (err) { throw wrapCallbackError(err, 'the merge'); }
    if (this.side) await this.settleSide();
    try {
      await pipeline(createReadStream(this.path), openCopy());
    } catch (err) {
      throw wrapDbError(err, 'COPY into the staging table');
    }
    await this.remove();
  }

  /** The diverted rows: the work writes what it can, the rest is appended to the spool. */
  private async settleSide(): Promise<void> {
    const sidePath = this.sidePath;
    const lines = () => readLines(sidePath);
    const append = createWriteStream(this.path, { flags: 'a' });
    append.on('error', () => undefined);
    const stage = (text: Buffer[]) => (text.length ? writeChunks(append, [Buffer.concat(text.flatMap((l) => [l, NEWLINE]))], spoolError) : Promise.resolve());
    const write = this.work.writeDiverted ?? (async (all: typeof lines, to: typeof stage) => {
      let batch: Buffer[] = [];
      for await (const line of all()) {
        batch.push(line);
        if (batch.length >= 1000) { await to(batch); batch = []; }
      }
      await to(batch);
    });
    try { await write(lines, stage); } catch (err) { throw err instanceof UserportError ? err : wrapCallbackError(err, 'the merge'); }
    await endStream(append, spoolError);
  }

  /** On destroy: the spool goes at once; resolves once the work has ended (it holds the connection). */
  async abort(): Promise<void> {
    this.out.destroy();
    this.side?.destroy();
    await this.remove().catch(() => undefined);
    await this.done;
  }

  private async remove(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    await this.removeFile();
  }
}
