/**
 * The import's input: a file (its size known, for progress), a FIFO, standard input or a
 * stream, decrypted first when a key unwrapper is given (`decrypt.ts`), then sniffed
 * (`sniff.ts`: gzip, UTF-16, text before the array, a tarball without a key); and the
 * fingerprint that ties a resumable import to its file. Also the check of every file an import
 * reads or writes before a database is touched (`checkImportFiles`), for the CLI and
 * `importUsers` alike.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { unlockExport, type DecryptedSource, type HeldExportFile, type KeyUnwrapper, type UnlockedExport } from './decrypt.js';
import { spoolsIn } from './spool.js';
import { destroyAndWait } from './stream-writes.js';
import { ErrorCodes, opt, OptionError, UserportError, wording, type Wording } from './errors.js';
import { checkHead, sniffer, SNIFF_BYTES, type OpenedSource } from './sniff.js';

export type { LeadingText, OpenedSource } from './sniff.js';

/**
 * Bytes per read from a plain file. Each chunk becomes a burst of records pushed at once (a
 * stream's highWaterMark cannot split a chunk), so big reads mean many records alive at once:
 * 1 MiB reads held ~3,000 parsed records in the tokenizer's buffer and raised peak RSS by ~20 MB
 * for no speed gain.
 */
const READ_CHUNK = 128 * 1024;

/** What opening the source needs of the import's options. */
export interface SourceOptions {
  /** A file path, `-` for standard input, or a byte stream. */
  source: string | Readable;
  /** When set, `source` is an encrypted export tarball and this unwraps its key. */
  decrypt?: KeyUnwrapper;
  /** Folder of the decryption spool. @default os.tmpdir() */
  tmpDir?: string;
  /**
   * Skip lines of text before the JSON array (log lines some setups print into the export) and
   * report them (`leadingText`); without it such an input fails, naming this option. @default false
   */
  skipLeadingText?: boolean;
}

/** Whether `p` is a regular file (true when it cannot be stat'ed: the open reports that). */
export function isRegularFile(p: string): boolean {
  try { return fs.statSync(p).isFile(); } catch { return true; /* let the open report it */ }
}

/** The first `bytes` bytes of file `path` (fewer if it is shorter). */
export function readHead(path: string, bytes = SNIFF_BYTES): Buffer {
  const head = Buffer.alloc(bytes);
  let got = 0;
  const fd = fs.openSync(path, 'r');
  try { got = fs.readSync(fd, head, 0, head.length, 0); } finally { fs.closeSync(fd); }
  return head.subarray(0, got);
}

/**
 * What {@link checkSource} and {@link checkImportFiles} need of the import's options. `decrypt` is
 * only asked whether it is given (the CLI checks its files before it opens the key).
 */
export interface SourceCheckOptions {
  source: string | Readable;
  decrypt?: KeyUnwrapper | boolean;
  skipLeadingText?: boolean;
  resumable?: boolean;
  rejectsFile?: string;
  findingsFile?: string;
  /** The folder of the private spool files (the decryption's, the early users step's). */
  tmpDir?: string;
}

/**
 * Every file an import reads or writes, checked before any database is touched: the source
 * ({@link checkSource}), the folders of the rejects and findings files (there, writable, the
 * file neither a directory, the source, nor the other output) and the spools' `tmpDir`.
 */
export function checkImportFiles(o: SourceCheckOptions): SourceKind {
  checkOutputs(o);
  return checkSource(o);
}

/** The output files and the spools' folder of {@link checkImportFiles}. */
function checkOutputs(o: SourceCheckOptions): void {
  for (const name of ['findingsFile', 'rejectsFile'] as const) checkOutputFile(name, o[name], o.source);
  if (o.tmpDir !== undefined) checkFolder(wording`${opt('tmpDir')} ${o.tmpDir}`, o.tmpDir);
  if (o.findingsFile !== undefined && o.rejectsFile !== undefined && sameFile(o.findingsFile, o.rejectsFile)) {
    throw new OptionError(wording`${opt('findingsFile')} and ${opt('rejectsFile')} are the same file`, 'rejectsFile');
  }
}

/**
 * Whether paths `a` and `b` name one file: the same path, or, where both exist, the same file
 * through a symbolic or hard link (device and inode), which writing one would overwrite the other.
 */
function sameFile(a: string, b: string): boolean {
  if (path.resolve(a) === path.resolve(b)) return true;
  try {
    const x = fs.statSync(a);
    const y = fs.statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** An output file the import will write (option `name`): refused now if it cannot be. */
function checkOutputFile(name: string, file: string | undefined, source: string | Readable): void {
  if (file === undefined) return;
  const it = wording`${opt(name)} ${file}`;
  if (typeof source === 'string' && source !== '-' && sameFile(file, source)) {
    throw new OptionError(wording`${it} is ${opt('source')} itself`, name);
  }
  checkFolder(wording`${it}: the folder ${path.dirname(file)}`, path.dirname(path.resolve(file)));
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) throw new UserportError(ErrorCodes.IO, wording`${it} is a directory`);
}

/** A folder the import will write in (`what` names it): refused now unless it exists and is writable. */
function checkFolder(what: Wording, dir: string): void {
  let st: fs.Stats | undefined;
  try { st = fs.statSync(dir); } catch { st = undefined; }
  if (!st?.isDirectory()) throw new UserportError(ErrorCodes.IO, wording`${what} does not exist`);
  try { fs.accessSync(dir, fs.constants.W_OK); } catch {
    throw new UserportError(ErrorCodes.IO, wording`${what} is not writable`);
  }
}

/** What an import's source is, told by {@link checkSource}. */
export type SourceKind = 'stdin' | 'stream' | 'file' | 'pipe';

/**
 * The source's problems that need no database, said before one is touched: a missing file, a
 * directory, a resumable import of something that cannot be read again, and a file's first bytes
 * sniffed as the import will ({@link checkHead}: an encrypted tarball without a key, plain JSON
 * with one, UTF-16, text before the array). A pipe or stream is sniffed when it is opened: reading
 * it now would consume it.
 */
export function checkSource(o: SourceCheckOptions): SourceKind {
  const kind = sourceKind(o);
  if (kind !== 'file') return kind;
  const src = o.source as string;
  let head: Buffer;
  try {
    head = readHead(src);
  } catch (err) {
    throw new UserportError(ErrorCodes.IO, wording`cannot read ${opt('source')} ${src}: ${(err as Error).message}`, { cause: err });
  }
  checkHead(head, o, wording`${opt('source')} ${src}`);
  return 'file';
}

/** What the source is, and the problems its kind has: it is missing, a directory, or not to be read again for a resume. */
function sourceKind(o: SourceCheckOptions): SourceKind {
  const again = '(it is read again to resume)';
  if (o.source instanceof Readable || o.source === '-') {
    if (o.resumable) {
      throw new OptionError(wording`${opt('resumable')} needs ${opt('source')} to be a file ${again}, not ${o.source === '-' ? 'standard input' : 'a stream'}`, 'source');
    }
    return o.source === '-' ? 'stdin' : 'stream';
  }
  const src = o.source;
  const where = wording`${opt('source')} ${src}`;
  let st: fs.Stats;
  try {
    st = fs.statSync(src);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UserportError(ErrorCodes.IO, code === 'ENOENT' ? wording`${where} does not exist` : wording`cannot read ${where}: ${(err as Error).message}`, { cause: err });
  }
  if (st.isDirectory()) throw new UserportError(ErrorCodes.IO, wording`${where} is a directory, not an export file`);
  if (!st.isFile()) {
    if (o.resumable) throw new OptionError(wording`${opt('resumable')} needs ${opt('source')} to be a regular file ${again}; ${src} is a pipe or device`, 'source');
    return 'pipe';
  }
  return 'file';
}

/** An import's input, checked before any database is touched; opened when the records are read. */
export interface ImportSource {
  /** What the source is (a file, a pipe, standard input, a stream). */
  kind: SourceKind;
  /** The source as the import's row records it: its path, or `(stream)`. */
  name: string;
  /** A regular file's size and fingerprint (what ties a resumed or repeated import to its file). */
  fingerprint: { size: number; hash: string } | undefined;
  /**
   * Starts, without waiting, the part of {@link open} that needs no database: an encrypted file's
   * authentication pass (a read of its whole token), run while the caller opens its database.
   * Nothing of the input is released before {@link open}, which still checks the file first (one
   * written into meanwhile is refused, whatever the pass found); {@link release} stops the pass.
   * Does nothing for other sources.
   */
  begin(): void;
  /** Opens the input: decrypted when asked, gunzipped when gzip, sniffed. Called at most once. */
  open(): Promise<OpenedSource>;
  /**
   * A stop: destroys what an {@link open} in progress reads (standard input, a pipe's stream; an
   * encrypted file's authentication pass ends at its next read), so that it settles. A caller's
   * own stream is the caller's to destroy (importUsers does).
   */
  abort(): void;
  /** Closes what was prepared when the input is not opened after all (a file already imported, a failure). */
  release(): Promise<void>;
}

/**
 * The source of `importUsers`, in one call: every file checked as {@link checkImportFiles} does,
 * and how to open it later (after the database said what to do). A regular file is opened now:
 * its fingerprint and first bytes are read from the handle that the records are read from later,
 * and with a key its members are found and the key unwrapped now ({@link unlockExport}: a key
 * that does not open it is said before the database is touched). So the import reads the bytes
 * it fingerprinted, even when another file is renamed over the path meanwhile (a new export
 * moved into place while the database is reached); a file written into meanwhile is refused when
 * it is opened (its size, modification time or first MiB changed). `spools` makes the
 * decryption's spool file, for a stream.
 */
export async function prepareImportSource(o: SourceCheckOptions & SourceOptions, spools = spoolsIn(o.tmpDir ?? os.tmpdir())): Promise<ImportSource> {
  checkOutputs(o);
  const kind = sourceKind(o);
  const held = kind === 'file' ? await holdFile(o.source as string) : undefined;
  // The input goes through the decryption when a key is given, then through the sniffing.
  const unwrapper = o.decrypt;
  const unlock = unwrapper && ((input: HeldExportFile | { stream: Readable }) => unlockExport(input, unwrapper, READ_CHUNK, spools));
  const sniff = sniffer(o, READ_CHUNK);
  // The import reads a token in the tokenizer's own chunk size: at the decryptor's default
  // 512 KiB, records at the size limit made of tiny objects peaked at 166 MB RSS (149 MB at 128 KiB).
  // What a tarball held is sniffed like any input: UTF-16 or leading text inside say so too.
  const decrypted = async (plaintext: Promise<DecryptedSource>) => {
    const { stream, size } = await plaintext;
    return sniff.stream(stream, size);
  };
  if (!held) {
    // The stream open() made (standard input, a pipe's), for abort().
    let made: Readable | undefined;
    let aborted = false;
    const open = async (): Promise<OpenedSource> => {
      if (aborted) throw new Error('the import was stopped before its source was opened');
      const raw = o.source === '-' ? (made = process.stdin) : o.source instanceof Readable ? o.source
        // A FIFO or process substitution (`<(cat f)`) is streamed like standard input.
        : (made = fs.createReadStream(o.source, { highWaterMark: READ_CHUNK }));
      return unlock ? decrypted((await unlock({ stream: await sniff.encrypted(raw) })).plaintext(READ_CHUNK)) : sniff.stream(raw, undefined);
    };
    const abort = () => {
      aborted = true;
      // An 'error' nobody listens to would be the process's uncaught exception.
      made?.once('error', () => undefined);
      made?.destroy();
    };
    return { kind, name: typeof o.source === 'string' ? o.source : '(stream)', fingerprint: undefined, begin: () => undefined, open, abort, release: async () => undefined };
  }
  // Until open() hands the file to a stream (which closes it), closing it is release()'s.
  let handed = false;
  let unlocked: UnlockedExport | undefined;
  // The authentication pass begin() started: open() takes its stream, release() stops it.
  let authenticating: Promise<DecryptedSource> | undefined;
  const stopAuthenticating = new AbortController();
  const close = async () => {
    if (authenticating) {
      // Once the pass is done its stream has the file (destroying it closes it); failed or stopped, the file is still ours.
      stopAuthenticating.abort(new Error('the import did not read its source'));
      const done = await authenticating.catch(() => undefined);
      if (done) return destroyAndWait(done.stream);
    }
    await (unlocked ? unlocked.release() : held.file.close()).catch(() => undefined);
  };
  const release = async () => {
    if (handed) return;
    handed = true;
    await close();
  };
  try {
    sniff.check(held.head, wording`${opt('source')} ${held.name}`);
  } catch (err) {
    await release();
    throw err;
  }
  // unlock() closes the file when it fails.
  if (unlock) unlocked = await unlock(held);
  const begin = () => {
    if (!unlocked || handed || authenticating) return;
    authenticating = unlocked.plaintext(READ_CHUNK, { stop: stopAuthenticating.signal });
    // Its failure is open()'s to report, or nobody's (released unread).
    authenticating.catch(() => undefined);
  };
  const open = async (): Promise<OpenedSource> => {
    if (handed) throw new Error(`the source ${held.name} was opened or released already`);
    handed = true;
    // Written into while the import waited for its database (an export rewritten in place): its
    // fingerprint and checks were of other bytes.
    const change = await held.changed().catch((err: Error) => `it cannot be read: ${err.message}`);
    if (change) {
      await close();
      throw new UserportError(ErrorCodes.IO,
        wording`${opt('source')} ${held.name} changed after it was checked and fingerprinted (${change}): nothing of it was imported; run the import again`);
    }
    if (authenticating) return decrypted(authenticating).catch(async (err: unknown) => { await close(); throw err; });
    if (unlocked) return decrypted(unlocked.plaintext(READ_CHUNK));
    return sniff.file(held.file, held.size, held.head).catch(async (err: unknown) => {
      await close();
      throw err;
    });
  };
  const abort = () => stopAuthenticating.abort(new Error('the import was stopped'));
  return { kind, name: held.name, fingerprint: held.fingerprint, begin, open, abort, release };
}


/**
 * A regular file opened for an import: its size, fingerprint (size and SHA-256 of the first MiB)
 * and first bytes, and `changed()`: what changed in it since (its size, the time of its last
 * write, its first MiB), or undefined.
 */
async function holdFile(path: string): Promise<HeldExportFile & { fingerprint: { size: number; hash: string }; head: Buffer; changed(): Promise<string | undefined> }> {
  let file: fsp.FileHandle;
  try {
    file = await fsp.open(path, 'r');
  } catch (err) {
    throw new UserportError(ErrorCodes.IO, wording`cannot read ${opt('source')} ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const { size, mtimeMs } = await file.stat();
    const first = await firstMiB(file, size);
    const hash = createHash('sha256').update(first).digest('hex');
    const changed = async () => {
      const now = await file.stat();
      if (now.size !== size) return `its size went from ${size} to ${now.size} bytes`;
      if (now.mtimeMs !== mtimeMs) return 'it was written to';
      return createHash('sha256').update(await firstMiB(file, size)).digest('hex') === hash ? undefined : 'its first MiB differs';
    };
    return { file, size, name: path, fingerprint: { size, hash }, head: Buffer.from(first.subarray(0, SNIFF_BYTES)), changed };
  } catch (err) {
    await file.close().catch(() => undefined);
    throw new UserportError(ErrorCodes.IO, wording`cannot read ${opt('source')} ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** The first MiB of `file` (`size` bytes long), or all of it. */
async function firstMiB(file: fsp.FileHandle, size: number): Promise<Buffer> {
  const first = Buffer.alloc(Math.min(size, 1 << 20));
  for (let got = 0, n = 1; got < first.length && n > 0; got += n) ({ bytesRead: n } = await file.read(first, got, first.length - got, got));
  return first;
}
