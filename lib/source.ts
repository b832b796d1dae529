/**
 * The import's input: a file (its size known, for progress), a FIFO, standard input or a
 * stream, decrypted first when a key unwrapper is given, gunzipped when it is gzip; and the
 * fingerprint that ties a resumable import to its file. Also the check of every file an import
 * reads or writes before a database is touched (`checkImportFiles`), for the CLI and
 * `importUsers` alike.
 *
 * Every input is sniffed here, so a library caller and the CLI, a file and a pipe, get the same
 * answer: gzip (by its magic bytes 1f 8b, never by the file name) is read through gunzip; an
 * encrypted tarball without a key, plain JSON with one, UTF-16 and text printed before the JSON
 * array are each named instead of failing later as "not a JSON array".
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import zlib from 'node:zlib';
import { decryptedSource, type KeyUnwrapper } from './decrypt.js';
import { looksLikePlainJson } from './crypto/tar.js';
import { ErrorCodes, opt, OptionError, ParseError, printable, UserportError, wording, type Wording } from './errors.js';

/**
 * Bytes per read from a plain file. Each chunk becomes a burst of records pushed at once (a
 * stream's highWaterMark cannot split a chunk), so big reads mean many records alive at once:
 * 1 MiB reads held ~3,000 parsed records in the tokenizer's buffer and raised peak RSS by ~20 MB
 * for no speed gain.
 */
const READ_CHUNK = 128 * 1024;
/** How far the sniffing looks for the start of the array behind leading text. */
const SNIFF_BYTES = 64 * 1024;
/** Enough to tell gzip, a tarball (its magic at byte 257) and UTF-16 from an export. */
const MIN_SNIFF_BYTES = 512;

/** The first byte after a UTF-8 byte-order mark and whitespace is the array's `[`. */
function startsWithArray(head: Buffer): boolean {
  let i = head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf ? 3 : 0;
  while (i < head.length && (head[i] === 0x20 || head[i] === 0x09 || head[i] === 0x0a || head[i] === 0x0d)) i++;
  return head[i] === 0x5b;
}

/** What {@link openSource} needs of the import's options. */
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

/** Text skipped before the array. */
export interface LeadingText { lines: number; bytes: number; firstLine: string }

/** The opened input. */
export interface OpenedSource {
  stream: Readable;
  /** Bytes the stream will give, when known (a plain file). */
  size: number | undefined;
  /** Text skipped before the array (`skipLeadingText`). */
  leadingText?: LeadingText;
  /** True when the input was gzip and is read through gunzip. */
  gzip?: boolean;
}

/** Whether `p` is a regular file (true when it cannot be stat'ed: the open reports that). */
export function isRegularFile(p: string): boolean {
  try { return fs.statSync(p).isFile(); } catch { return true; /* let the open report it */ }
}

/** Size and SHA-256 of the first MiB: enough to refuse resuming with another file. */
export function fingerprint(path: string): { size: number; hash: string } {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (err) {
    throw new UserportError(ErrorCodes.IO, `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(Math.min(size, 1 << 20));
    fs.readSync(fd, buf, 0, buf.length, 0);
    return { size, hash: createHash('sha256').update(buf).digest('hex') };
  } finally {
    fs.closeSync(fd);
  }
}

/** The first `bytes` bytes of file `path` (fewer if it is shorter). */
export function readHead(path: string, bytes = SNIFF_BYTES): Buffer {
  const head = Buffer.alloc(bytes);
  let got = 0;
  const fd = fs.openSync(path, 'r');
  try { got = fs.readSync(fd, head, 0, head.length, 0); } finally { fs.closeSync(fd); }
  return head.subarray(0, got);
}

export const isGzip = (head: Buffer): boolean => head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b;
const isTar = (head: Buffer): boolean => head.length >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar';

/** UTF-16 by its byte-order mark, or by the NUL beside each ASCII byte of `[`/whitespace. */
export function utf16Name(head: Buffer): string | undefined {
  if (head[0] === 0xff && head[1] === 0xfe) return 'UTF-16LE';
  if (head[0] === 0xfe && head[1] === 0xff) return 'UTF-16BE';
  if (head.length >= 2 && head[1] === 0 && head[0] !== 0) return 'UTF-16LE';
  if (head.length >= 2 && head[0] === 0 && head[1] !== 0) return 'UTF-16BE';
  return undefined;
}

/**
 * The problem with an input's first bytes that deserves its own message, if any: an encrypted
 * tarball given without a key, plain JSON given with one. `encrypted`: whether a key was given.
 * `where` names the input (`source users.json`, `the input`).
 */
export function encryptionMismatch(head: Buffer, encrypted: boolean, where: Wording = ['the input']): OptionError | undefined {
  if (!encrypted && isTar(head)) {
    return new OptionError(wording`${where} looks encrypted (a tar archive, as sentry export --encrypt-with writes): pass ${opt('decrypt')}`, 'decrypt');
  }
  if (encrypted && looksLikePlainJson(head)) {
    return new OptionError(wording`${where} is plain JSON, not an encrypted export: leave out ${opt('decrypt')}`, 'decrypt');
  }
  return undefined;
}

/** The UTF-16 error for `head`, if it is UTF-16. */
export function utf16Error(head: Buffer, where: Wording = ['the input']): ParseError | undefined {
  const name = utf16Name(head);
  return name ? new ParseError(ErrorCodes.INPUT_UTF8, wording`${where} is ${name}, not UTF-8 as Sentry writes exports: convert it first (iconv -f UTF-16 -t UTF-8)`) : undefined;
}

/** A line that opens the export's array: `[` alone, or followed by `{` or `]`. */
const ARRAY_START = /(^|\n)[ \t]*\[[ \t\r]*(?=\n|\{|\]|$)/g;

/**
 * Where the array starts behind text printed before it (`Creating container...`, warnings) in
 * the first bytes `head`: the number of bytes to skip and what they were, or undefined when the
 * input starts with the array (or no array start is in sight: the tokenizer then says what is
 * wrong). Without `skip`, such text is an error that names the option.
 */
export function leadingText(head: Buffer, skip: boolean): LeadingText | undefined {
  let i = head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf ? 3 : 0;
  while (i < head.length && (head[i] === 0x20 || head[i] === 0x09 || head[i] === 0x0a || head[i] === 0x0d)) i++;
  if (i >= head.length) return undefined;
  const text = head.toString('latin1');
  ARRAY_START.lastIndex = 0;
  for (let m = ARRAY_START.exec(text); m; m = ARRAY_START.exec(text)) {
    const start = m.index + m[1]!.length;
    if (start <= i) return undefined; // the input starts with the array
    const lines = text.slice(0, start).split('\n').length - 1;
    const first = printable(Buffer.from(text.slice(i).split('\n')[0]!.trimEnd(), 'latin1').toString('utf8'));
    const found = { lines, bytes: start, firstLine: first.length > 80 ? `${first.slice(0, 77)}...` : first };
    if (skip) return found;
    throw new ParseError(ErrorCodes.INPUT_NOT_ARRAY,
      wording`the input has ${lines} ${lines === 1 ? 'line' : 'lines'} of text before the JSON array (line 1: "${found.firstLine}"), such as log lines printed into the export: skip them with ${opt('skipLeadingText')}`,
      { position: { offset: start, line: lines + 1 } });
  }
  return undefined;
}

/**
 * The first bytes of `stream` (up to `bytes`, fewer if it ends), and `from(offset)`: a stream of
 * everything from `offset` on (the head after it, then the rest of `stream`).
 */
async function peek(stream: Readable, bytes: number, enough?: (head: Buffer) => boolean): Promise<{ head: Buffer; from(offset: number): Readable; close(): void }> {
  const it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer | string>;
  const chunks: Buffer[] = [];
  let length = 0;
  let ended = false;
  while (length < bytes && !(enough && chunks.length && enough(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)))) {
    const r = await it.next();
    if (r.done) { ended = true; break; }
    const b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    chunks.push(b);
    length += b.length;
  }
  const head = Buffer.concat(chunks);
  return {
    head,
    /** Refused input: stop reading it (a FIFO's writer gets EPIPE instead of blocking). */
    close() { if (!ended) void it.return?.(); },
    from(offset) {
      async function* rest(): AsyncGenerator<Buffer> {
        let finished = ended;
        try {
          if (offset < head.length) yield head.subarray(offset);
          while (!finished) {
            const r = await it.next();
            if (r.done) { finished = true; break; }
            yield typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
          }
        } finally {
          // Destroyed early (a failed import): stop reading the source too.
          if (!finished) await it.return?.();
        }
      }
      return Readable.from(rest(), { objectMode: false });
    },
  };
}

/** `stream` through gunzip; a corrupt or truncated gzip is a UserportError that says so. */
function gunzip(stream: Readable): Readable {
  const gz = zlib.createGunzip();
  const out = new PassThrough();
  const fail = (err: Error) => out.destroy(err instanceof UserportError ? err
    : new ParseError(ErrorCodes.INPUT_TRUNCATED, `the input is gzip, but it cannot be decompressed: ${err.message}`, { cause: err }));
  stream.on('error', fail);
  gz.on('error', fail);
  out.on('close', () => { stream.destroy(); gz.destroy(); });
  stream.pipe(gz).pipe(out);
  return out;
}

/**
 * Sniffs a stream's first bytes: gunzips gzip (once), refuses a tarball without a key and
 * UTF-16, and finds text before the array (an error, or skipped with `skipLeadingText`).
 */
async function sniffed(stream: Readable, size: number | undefined, o: SourceOptions, gzip = false): Promise<OpenedSource> {
  // Up to 64 KiB to find the array after leading text; but an input that starts as an export
  // does (or as gzip) is decided by its first bytes, so a slow pipe never holds up the import.
  const { head, from, close } = await peek(stream, SNIFF_BYTES, (h) => h.length >= MIN_SNIFF_BYTES && (isGzip(h) || startsWithArray(h)));
  if (!gzip && isGzip(head)) return sniffed(gunzip(from(0)), undefined, o, true);
  const problem = utf16Error(head) ?? (o.decrypt ? undefined : encryptionMismatch(head, false));
  if (problem) { close(); throw problem; }
  let text: LeadingText | undefined;
  try { text = leadingText(head, !!o.skipLeadingText); } catch (err) { close(); throw err; }
  return {
    stream: from(text?.bytes ?? 0), size: size === undefined || !text ? size : size - text.bytes,
    ...(text ? { leadingText: text } : {}), ...(gzip ? { gzip } : {}),
  };
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
  for (const name of ['findingsFile', 'rejectsFile'] as const) checkOutputFile(name, o[name], o.source);
  if (o.tmpDir !== undefined) checkFolder(wording`${opt('tmpDir')} ${o.tmpDir}`, o.tmpDir);
  if (o.findingsFile !== undefined && o.rejectsFile !== undefined && sameFile(o.findingsFile, o.rejectsFile)) {
    throw new OptionError(wording`${opt('findingsFile')} and ${opt('rejectsFile')} are the same file`, 'rejectsFile');
  }
  return checkSource(o);
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
 * sniffed as {@link openSource} will (an encrypted tarball without a key, plain JSON with one,
 * UTF-16, text before the array). A pipe or stream is sniffed when it is opened: reading it now
 * would consume it.
 */
export function checkSource(o: SourceCheckOptions): SourceKind {
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
  let head: Buffer;
  try {
    head = readHead(src);
  } catch (err) {
    throw new UserportError(ErrorCodes.IO, wording`cannot read ${where}: ${(err as Error).message}`, { cause: err });
  }
  const mismatch = encryptionMismatch(head, !!o.decrypt, where);
  if (mismatch) throw mismatch;
  if (!o.decrypt && !isGzip(head)) {
    const utf16 = utf16Error(head, where);
    if (utf16) throw utf16;
    leadingText(head, !!o.skipLeadingText);
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
  /** Opens the input: decrypted when asked, gunzipped when gzip, sniffed. */
  open(): Promise<OpenedSource>;
}

/**
 * The source of `importUsers`, in one call: every file checked ({@link checkImportFiles}), a
 * regular file fingerprinted, and how to open it later (after the database said what to do).
 */
export function prepareImportSource(o: SourceCheckOptions & SourceOptions): ImportSource {
  const kind = checkImportFiles(o);
  return {
    kind,
    name: typeof o.source === 'string' ? o.source : '(stream)',
    fingerprint: kind === 'file' ? fingerprint(o.source as string) : undefined,
    open: () => openSource(o),
  };
}

export async function openSource(o: SourceOptions): Promise<OpenedSource> {
  if (o.decrypt) {
    let input: { path: string } | { stream: Readable };
    if (typeof o.source === 'string' && o.source !== '-' && isRegularFile(o.source)) {
      let head: Buffer;
      try { head = readHead(o.source, 512); } catch (err) {
        throw new UserportError(ErrorCodes.IO, `cannot read ${o.source}: ${(err as Error).message}`, { cause: err });
      }
      const problem = encryptionMismatch(head, true);
      if (problem) throw problem;
      input = { path: o.source };
    } else {
      const raw = typeof o.source === 'string' && o.source !== '-' ? fs.createReadStream(o.source) as Readable
        : o.source === '-' ? process.stdin : o.source as Readable;
      const { head, from, close } = await peek(raw, 512);
      const problem = encryptionMismatch(head, true);
      if (problem) { close(); throw problem; }
      input = { stream: from(0) };
    }
    // The import reads the token in the tokenizer's own chunk size: at the decryptor's default
    // 512 KiB, records at the size limit made of tiny objects peaked at 166 MB RSS (149 MB at 128 KiB).
    const { stream, size } = await decryptedSource(input, o.decrypt, READ_CHUNK, o.tmpDir);
    // What the tarball held is sniffed like any input: UTF-16 or leading text inside say so too.
    return sniffed(stream, size, o);
  }
  if (o.source instanceof Readable) return sniffed(o.source, undefined, o);
  if (o.source === '-') return sniffed(process.stdin, undefined, o);
  let size: number;
  try {
    const st = fs.statSync(o.source);
    if (st.isDirectory()) throw new UserportError(ErrorCodes.IO, `${o.source} is a directory, not an export file`);
    // A FIFO or process substitution (`<(cat f)`) is streamed like standard input.
    if (!st.isFile()) return sniffed(fs.createReadStream(o.source, { highWaterMark: READ_CHUNK }), undefined, o);
    size = st.size;
  } catch (err) {
    if (err instanceof UserportError) throw err;
    throw new UserportError(ErrorCodes.IO, `cannot read ${o.source}: ${(err as Error).message}`, { cause: err });
  }
  // A regular file is sniffed by reading its head, then streamed from where the array starts:
  // the common case (plain JSON) keeps its plain file stream.
  let head: Buffer;
  try { head = readHead(o.source); } catch (err) {
    throw new UserportError(ErrorCodes.IO, `cannot read ${o.source}: ${(err as Error).message}`, { cause: err });
  }
  if (isGzip(head)) return sniffed(gunzip(fs.createReadStream(o.source, { highWaterMark: READ_CHUNK })), undefined, o, true);
  const problem = utf16Error(head) ?? encryptionMismatch(head, false);
  if (problem) throw problem;
  const text = leadingText(head, !!o.skipLeadingText);
  const start = text?.bytes ?? 0;
  return {
    stream: fs.createReadStream(o.source, { highWaterMark: READ_CHUNK, start }), size: size - start,
    ...(text ? { leadingText: text } : {}),
  };
}
