/**
 * What an input's first bytes say, for every input alike (a file, a pipe, a stream, a decrypted
 * tarball's content), so a library caller and the CLI get the same answer: gzip (by its magic
 * bytes 1f 8b, never by the file name) is read through gunzip; an encrypted tarball without a key,
 * plain JSON with one, UTF-16 and text printed before the JSON array are each named instead of
 * failing later as "not a JSON array".
 */
import type { FileHandle } from 'node:fs/promises';
import { PassThrough, Readable } from 'node:stream';
import zlib from 'node:zlib';
import { looksLikePlainJson } from './crypto/tar.js';
import { ErrorCodes, opt, OptionError, ParseError, printable, UserportError, wording, type Wording } from './errors.js';

/** How far the sniffing looks for the start of the array behind leading text. */
export const SNIFF_BYTES = 64 * 1024;
/** Enough to tell gzip, a tarball (its magic at byte 257) and UTF-16 from an export. */
const MIN_SNIFF_BYTES = 512;

/** Whether `head` begins with a UTF-8 byte-order mark, and the offset of its first byte after it that is no JSON whitespace. */
function firstContent(head: Buffer): { bom: boolean; at: number } {
  const bom = head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf;
  let at = bom ? 3 : 0;
  while (at < head.length && (head[at] === 0x20 || head[at] === 0x09 || head[at] === 0x0a || head[at] === 0x0d)) at++;
  return { bom, at };
}

/** The first byte after a UTF-8 byte-order mark and whitespace is the array's `[`. */
function startsWithArray(head: Buffer): boolean {
  return head[firstContent(head).at] === 0x5b;
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
  return name ? new ParseError(ErrorCodes.INPUT_UTF8, wording`${where} is ${name}, not UTF-8 as Sentry writes exports: convert it first (iconv -f ${name} -t UTF-8)`) : undefined;
}

/** A line that opens the export's array: `[` alone, or followed by `{` or `]`. */
const ARRAY_START = /(^|\n)[ \t]*\[[ \t\r]*(?=\n|\{|\]|$)/g;

/**
 * An array whose first element is not an object (a scalar followed by `,` or `]`, or an array):
 * not an export, but an array all the same, which the tokenizer refuses at its first record. A
 * log line that starts with `[` does not read so (`[12:00:01] ...`, `[INFO] ...`, `[2026-12-06 ...`).
 */
const ARRAY_OF_OTHERS = /^\[[ \t\r\n]*(?:\[|(?:"(?:[^"\\\n]|\\.)*"|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)[ \t\r\n]*[,\]])/;

/**
 * Where the array starts behind text printed before it (`Creating container...`, warnings) in
 * the first bytes `head`: the number of bytes to skip and what they were, or undefined when the
 * input starts with the array (or no array start is in sight: the tokenizer then says what is
 * wrong). Without `skip`, such text is an error that names the option.
 */
export function leadingText(head: Buffer, skip: boolean): LeadingText | undefined {
  const { bom, at: i } = firstContent(head);
  if (i >= head.length) return undefined;
  // A byte-order mark read as three spaces: an array right after it starts the first line.
  const text = bom ? `   ${head.toString('latin1', 3)}` : head.toString('latin1');
  if (ARRAY_OF_OTHERS.test(text.slice(i))) return undefined;
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
      { position: { offset: start, line: lines + 1, column: 1 } });
  }
  return undefined;
}

/**
 * The first bytes of `stream` (up to `bytes`, fewer if it ends), and `from(offset)`: a stream of
 * everything from `offset` on (the head after it, then the rest of `stream`).
 */
export async function peek(stream: Readable, bytes: number, enough?: (head: Buffer) => boolean): Promise<{ head: Buffer; from(offset: number): Readable; close(): void }> {
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
      let finished = ended;
      async function* rest(): AsyncGenerator<Buffer> {
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
      const out = Readable.from(rest(), { objectMode: false });
      // Destroyed early (an import that failed or was stopped), the source is destroyed at once:
      // the generator's finally alone would not run before its first read, nor while it waits for
      // a stalled source's next bytes (a FIFO, standard input), and the decrypted export's file
      // (or spool), a FIFO's handle or a caller's socket would stay open.
      const destroy = out._destroy.bind(out);
      out._destroy = (err, callback) => {
        if (!finished) stream.destroy();
        destroy(err, callback);
      };
      return out;
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
export async function sniffed(stream: Readable, size: number | undefined, o: SniffOptions, gzip = false): Promise<OpenedSource> {
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

/** What sniffing needs of the import's options. */
export interface SniffOptions {
  /** Whether a key is given (an encrypted tarball is then expected, not refused). */
  decrypt?: unknown;
  /** Skip text before the array instead of refusing it. */
  skipLeadingText?: boolean;
}

/**
 * The checks of a regular file's first bytes `head` that need no database: a tarball without a
 * key, plain JSON with one, and unless it is encrypted or gzip (sniffed once decrypted or
 * unpacked), UTF-16 and text before the array. `where` names the file.
 */
export function checkHead(head: Buffer, o: SniffOptions, where: Wording): void {
  const mismatch = encryptionMismatch(head, !!o.decrypt, where);
  if (mismatch) throw mismatch;
  if (o.decrypt || isGzip(head)) return;
  const utf16 = utf16Error(head, where);
  if (utf16) throw utf16;
  leadingText(head, !!o.skipLeadingText);
}

/**
 * A plain regular file, open as `file` (`size` bytes, `head` its first bytes, which passed
 * {@link checkHead} with the same options), as the import reads it: through gunzip when gzip;
 * else in `chunk`-byte reads ({@link FileChunks}), from where the array starts. The stream
 * closes `file`; when this throws, the caller closes `file` (a gzip stream that failed has closed
 * it already: a second close does nothing).
 */
export async function openPlainFile(file: FileHandle, size: number, head: Buffer, o: SniffOptions, chunk: number): Promise<OpenedSource> {
  if (isGzip(head)) return sniffed(gunzip(file.createReadStream({ highWaterMark: chunk })), undefined, o, true);
  const text = leadingText(head, !!o.skipLeadingText);
  const start = text?.bytes ?? 0;
  return { stream: new FileChunks(file, start, chunk), size: size - start, ...(text ? { leadingText: text } : {}) };
}

/**
 * A regular file's bytes from `start` to its end, `chunk` bytes a read, each read started before
 * the chunk before it is handed on. A file stream starts its next read only once the chunk it
 * pushed has been consumed, and the import consumes a chunk synchronously (parsed, mapped and
 * staged in the same call): each read then began with the event loop waiting on it, a pool
 * thread's round trip that on two busy cores took 1-4 ms. At 100k users the loop waited 232 ms
 * for 473 reads while the users were staged; with the read ahead, 104-114 ms. One chunk ahead at
 * most (the stream's highWaterMark), so the records alive at once stay a chunk's. Closes the
 * file when it ends or is destroyed (after the read in flight).
 */
class FileChunks extends Readable {
  private position: number;
  private reading = false;

  constructor(private readonly file: FileHandle, start: number, private readonly chunk: number) {
    super({ highWaterMark: 2 * chunk });
    this.position = start;
  }

  override _read(): void {
    if (!this.reading) this.next();
  }

  private next(): void {
    this.reading = true;
    const buffer = Buffer.allocUnsafe(this.chunk);
    this.file.read(buffer, 0, this.chunk, this.position).then(({ bytesRead }) => {
      this.reading = false;
      if (this.destroyed) return;
      if (!bytesRead) {
        this.push(null);
        return;
      }
      this.position += bytesRead;
      const data = bytesRead < this.chunk ? buffer.subarray(0, bytesRead) : buffer;
      // The next read first: pushing this chunk parses it before the call returns.
      if (this.readableLength + data.length < this.readableHighWaterMark) this.next();
      this.push(data);
    }, (err: Error) => this.destroy(err));
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    // FileHandle.close waits for the read in flight.
    this.file.close().then(() => callback(err), (closeErr: Error) => callback(err ?? closeErr));
  }
}

/** `raw` from its start, once its first bytes are not plain JSON (which a key would not open). */
export async function encryptedStart(raw: Readable): Promise<Readable> {
  const { head, from, close } = await peek(raw, 512);
  const problem = encryptionMismatch(head, true);
  if (problem) { close(); throw problem; }
  return from(0);
}

/** The sniffing of one import's input, its options bound: what `lib/source.ts` asks of it. */
export interface Sniffer {
  /** {@link checkHead}: a regular file's first bytes, before the database is touched. */
  check(head: Buffer, where: Wording): void;
  /** {@link openPlainFile}: a plain regular file as the import reads it. */
  file(file: FileHandle, size: number, head: Buffer): Promise<OpenedSource>;
  /** {@link sniffed}: a stream (standard input, a pipe, a caller's stream, a decrypted export). */
  stream(stream: Readable, size: number | undefined): Promise<OpenedSource>;
  /** {@link encryptedStart}: an encrypted stream from its start. */
  encrypted(raw: Readable): Promise<Readable>;
}

/** A {@link Sniffer} for options `o`, reading files in `chunk`-byte reads. */
export function sniffer(o: SniffOptions, chunk: number): Sniffer {
  return {
    check: (head, where) => checkHead(head, o, where),
    file: (file, size, head) => openPlainFile(file, size, head, o, chunk),
    stream: (stream, size) => sniffed(stream, size, o),
    encrypted: (raw) => encryptedStart(raw),
  };
}
