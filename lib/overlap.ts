/**
 * The sink's overlap (`PgSinkOptions.overlap`): work that runs on the sink's connection while the
 * input is still read, and the private spool file (0600 in a 0700 folder) that takes the rows
 * meanwhile, until the work is done and the input has ended; then the spool is COPYed. Rows the
 * work asks for (`divert`) go to side spools beside it, which the work writes itself at the end.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { ErrorCodes, UserportError, wrapCallbackError, wrapDbError } from './errors.js';
import type { SkipMarker } from './filter-users.js';
import type { FilteredMarker, StagedRow } from './map-models.js';
import type { SpoolMaker } from './spool.js';
import { endStream, writeChunks } from './stream-writes.js';
import { readLines } from './db/merge/staging-lines.js';

/**
 * Work the sink runs on its connection while it goes on reading, in `whole` mode: the sink ends
 * its COPY, starts the work, writes the rows that arrive meanwhile to a private spool file (0600
 * in a 0700 folder under `tmpDir`) and, once the input has ended and the work is done, calls
 * `finish` and COPYs the spool into the staging table. So PostgreSQL works on what is staged
 * while Node parses the rest.
 */
export interface Overlap {
  /**
   * Asked for each row before it is placed (and before the sink's `staged` facts note it), and for
   * each skipped record (a {@link SkipMarker}: nothing is placed), until it answers `now` or
   * `never`. `now`: that row and every row after it wait for the work's spool (or are diverted);
   * the rows before it are staged first.
   */
  when(row: StagedRow | FilteredMarker | SkipMarker): 'now' | 'later' | 'never';
  /**
   * Called once, after `now`, when every row so far is staged and the COPY has ended. Resolves
   * to the work, or to undefined to decline (the COPY goes on).
   */
  start(client: pg.ClientBase): Promise<OverlapWork | undefined>;
  /**
   * Asked for each row from the one `when` answered `now` at: the name of a side spool (a word)
   * sends it there instead of the spool, for {@link OverlapWork.writeDiverted}. @default no row is diverted
   */
  divert?(row: StagedRow): string | undefined;
}

/** The lines of one side spool, read again from the start at each call, a read chunk's lines at a time. */
export type SideLines = () => AsyncIterable<Buffer[]>;

/** What {@link Overlap.start} starts. */
export interface OverlapWork {
  /** The work; rows are spooled while it runs. */
  run(): Promise<void>;
  /** Called once `run` is done and the input has ended, before the spool is COPYed. */
  finish(): Promise<void>;
  /**
   * Called after `finish` (even when nothing was diverted), before the spool is COPYed, with each side spool by name (the COPY
   * text lines of the staging table that `divert` sent there, in order, without their newline; a
   * line may be kept, its bytes are not reused): writes what it can on the connection itself and
   * hands every other line to `stage`, which adds it to the spool. `scratch(name)` is the path of
   * a file it may create (exclusively, 0600) for its own use, in the spool's private folder, which
   * goes with the spool. Without it, every diverted row is staged.
   */
  writeDiverted?(sides: ReadonlyMap<string, SideLines>, stage: (lines: Buffer[]) => Promise<void>, scratch: (name: string) => string): Promise<void>;
  /**
   * Rows the work writes once `run` is done while the input is still read, so the connection does
   * not wait for the input's end: at each write of the sink after `run`, the side spools that
   * `sealed` now answers true for (their models' rows are over, as far as the work can tell) are
   * written to their files and closed, and `write` is called with their lines (read again at each
   * call), once per such set, one after another on the connection while the sink goes on. A row
   * diverted to one of them later is appended to its file; the work tells that apart itself.
   * `writeDiverted` still gets every side spool at the end. `write`'s failure fails the import, as
   * `run`'s does.
   */
  early?: {
    sealed(name: string): boolean;
    write(sides: ReadonlyMap<string, SideLines>): Promise<void>;
  };
}

const NEWLINE = Buffer.from('\n');

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
  private done: Promise<void> = Promise.resolve();
  private removed = false;
  // The work's run is done (no error); the side spools handed to its early part; the input's end.
  private ran = false;
  private readonly early = new Set<string>();
  private ended = false;
  // The spool file, its stream and its removal: set by `open`.
  private path = '';
  private out!: WriteStream;
  private removeFile: () => Promise<void> = async () => undefined;

  /**
   * The side spools by name, each opened at its first diverted row; undefined once closed for the
   * work's early part (a later row opens it again, to append).
   */
  private readonly sides = new Map<string, WriteStream | undefined>();

  private constructor(private readonly work: OverlapWork) {}

  /**
   * Makes the spool (with `spools`), then runs `work` (`onStart` first, `onDone` once it is done).
   * Resolves to undefined, leaving no file and starting nothing, when the sink was destroyed meanwhile.
   */
  static async begin(work: OverlapWork, spools: SpoolMaker, destroyed: () => boolean, onStart: () => void, onDone: () => void): Promise<OverlapRun | undefined> {
    const run = new OverlapRun(work);
    return (await run.open(spools, destroyed, onStart, onDone)) ? run : undefined;
  }

  /** `begin`'s second half: the spool, then the work. False, leaving nothing, once destroyed. */
  private async open(spools: SpoolMaker, destroyed: () => boolean, onStart: () => void, onDone: () => void): Promise<boolean> {
    const made = await spools('stage.copy').catch((err: unknown) => { throw spoolError(err); });
    // The spool's own handle is not kept: a stream by path (the file is already 0600).
    await made.file.close();
    if (destroyed()) {
      await made.remove();
      return false;
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
    this.path = made.path;
    this.out = out;
    this.removeFile = made.remove;
    this.done = new Promise<void>((resolve) => resolve(this.work.run())).then(() => { this.ran = true; onDone(); })
      .catch((err: unknown) => { this.error = wrapCallbackError(err, 'the merge'); });
    return true;
  }

  /** Writes COPY text to the spool, resolving when the file can take more. */
  write(chunks: Buffer[]): Promise<void> {
    return writeChunks(this.out, chunks, spoolError);
  }

  /** Writes COPY text of diverted rows to side spool `name` (beside the spool, 0600 in its folder). */
  writeSide(name: string, chunks: Buffer[]): Promise<void> {
    let side = this.sides.get(name);
    if (!side) {
      let file: string;
      try { file = this.beside('side', name); } catch (err) { return Promise.reject(err); }
      // Closed for the early part: appended to (its stream had ended before it was read).
      side = createWriteStream(file, { flags: this.sides.has(name) ? 'a' : 'wx', mode: 0o600 });
      side.on('error', () => undefined);
      this.sides.set(name, side);
    }
    return writeChunks(side, chunks, spoolError);
  }

  /**
   * Of the side spools `names` (every one the sink diverted to), those the work's early part
   * ({@link OverlapWork.early}) may write now: sealed, not handed to it yet, once its run is done,
   * before the input's end. Asked at each write of the sink.
   */
  earlyDue(names: Iterable<string>): string[] {
    const early = this.work.early;
    if (!early || !this.ran || this.ended || this.error) return [];
    const due: string[] = [];
    for (const name of names) if (!this.early.has(name) && early.sealed(name)) due.push(name);
    return due;
  }

  /**
   * Hands the side spools `due` ({@link earlyDue}) to the work's early part: `flush` hands each
   * one's pending rows to {@link writeSide}, its file is closed, and the work's `write` then runs
   * on the connection after what runs there (the sink goes on; {@link drain} waits for it).
   */
  async startEarly(due: readonly string[], flush: (name: string) => Promise<void>): Promise<void> {
    const early = this.work.early!;
    const closed: [string, SideLines][] = [];
    for (const name of due) {
      this.early.add(name);
      await flush(name);
      // A side with no file (nothing was ever written to it) has nothing to write early.
      if (!this.sides.has(name)) continue;
      const side = this.sides.get(name);
      if (side) await endStream(side, spoolError);
      this.sides.set(name, undefined);
      // Its lines as they are now: a later row is appended while the work may be reading.
      const file = this.beside('side', name);
      const bytes = (await stat(file).catch((err: unknown) => { throw spoolError(err); })).size;
      closed.push([name, () => readLines(file, undefined, bytes)]);
    }
    if (!closed.length) return;
    const sides = new Map(closed);
    this.done = this.done.then(() => (this.error ? undefined : early.write(sides)))
      .catch((err: unknown) => { this.error = wrapCallbackError(err, 'the merge'); });
  }

  /** The path of the work's side spool or scratch file `name` in the spool's private folder: a word, so no other path can come of it. */
  private beside(kind: 'side' | 'scratch', name: string): string {
    if (!/^\w+$/.test(name)) throw new Error(`${kind === 'side' ? "a side spool's" : "a scratch file's"} name is a word, not ${JSON.stringify(name)}`);
    return path.join(path.dirname(this.path), kind === 'side' ? `side-${name}.copy` : `scratch-${name}`);
  }

  /**
   * At the end of the input: closes the spool, waits for the work and finishes it, then COPYs the
   * spool through the COPY stream `openCopy` opens, and removes it.
   */
  async drain(openCopy: () => Writable): Promise<void> {
    // No early part once the input has ended: the work's writeDiverted writes everything.
    this.ended = true;
    await endStream(this.out, spoolError);
    for (const side of this.sides.values()) if (side) await endStream(side, spoolError);
    await this.done;
    if (this.error) throw this.error;
    try { await this.work.finish(); } catch (err) { throw wrapCallbackError(err, 'the merge'); }
    // The work's writeDiverted runs even with no side spool: it may write rows of its own.
    if (this.sides.size || this.work.writeDiverted) await this.settleSides();
    try {
      await pipeline(createReadStream(this.path), openCopy());
    } catch (err) {
      throw wrapDbError(err, 'COPY into the staging table');
    }
    await this.remove();
  }

  /** The diverted rows: the work writes what it can, the rest is appended to the spool. */
  private async settleSides(): Promise<void> {
    const sides = new Map([...this.sides.keys()].map((name): [string, SideLines] => [name, () => readLines(this.beside('side', name))]));
    const append = createWriteStream(this.path, { flags: 'a' });
    append.on('error', () => undefined);
    const stage = (text: Buffer[]) => (text.length ? writeChunks(append, [Buffer.concat(text.flatMap((l) => [l, NEWLINE]))], spoolError) : Promise.resolve());
    const write = this.work.writeDiverted ?? (async (all: typeof sides, to: typeof stage) => {
      for (const lines of all.values()) for await (const chunk of lines()) await to(chunk);
    });
    try { await write(sides, stage, (name) => this.beside('scratch', name)); } catch (err) { throw err instanceof UserportError ? err : wrapCallbackError(err, 'the merge'); }
    await endStream(append, spoolError);
  }

  /** On destroy: the spool goes at once; resolves once the work has ended (it holds the connection). */
  async abort(): Promise<void> {
    this.out.destroy();
    for (const side of this.sides.values()) side?.destroy();
    await this.remove().catch(() => undefined);
    await this.done;
  }

  private async remove(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    await this.removeFile();
  }
}
