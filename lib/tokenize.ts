/**
 * Stage 1, bytes -> records: splits the export's top-level JSON array into records and parses
 * each one, tagging it with its position.
 *
 * Why not stream-json's token stream for the hot path: its parser + `streamArray` runs at 14-17
 * MB/s here, while splitting on bytes (one pass that only tracks strings and nesting, with
 * `indexOf` jumping over string bodies) and `JSON.parse` per record runs about 7x faster
 * (`npm run bench -- --parse-compare 20000`, recorded in bench/NOTES.md). stream-json still
 * serves where it is best: when a record fails to parse, its verifier pinpoints the offending
 * character, so every syntax error says byte, line and column. The splitter itself checks
 * everything outside records (the array, commas, trailing bytes), enforces the size and depth
 * limits *while* reading (a 200 MB string is refused at the limit, not after buffering it), and
 * rejects invalid UTF-8.
 */
import { isUtf8 } from 'node:buffer';
import { getHeapStatistics } from 'node:v8';
import { Transform, type TransformCallback } from 'node:stream';
import { jsonVerifier } from 'stream-json/utils/verifier.js';
import { none } from 'stream-chain/defs.js';
import { badOption, checkOptions, isInteger, isOneOf, type OptionCheck } from './options.js';
import { ErrorCodes, opt, OptionError, ParseError, wording, type ErrorCode, type Position, type Wording } from './errors.js';

/** Where a record is in the export. Every stage passes it on so errors can say where. */
export interface RecordPosition {
  /** 1-based index of the record in the top-level array. */
  ordinal: number;
  /** 0-based byte offset of the record's `{`. */
  offset: number;
  /** 1-based line of the record's `{`. */
  line: number;
  /** 1-based byte column of the record's `{`. */
  column: number;
  /** Size of the record's JSON text in bytes. */
  length: number;
}

/** What the tokenizer emits: a parsed array element and where it was. */
export interface RawRecord extends RecordPosition {
  /** The parsed element (an object; anything else is an error before it is emitted). */
  value: Record<string, unknown>;
  /** The element's JSON text, for values `JSON.parse` cannot hold exactly (big numbers). */
  source?: string;
  /**
   * Set (with `value` empty) when the element is not an object and `nonObjects` is `'emit'`:
   * the user filter turns it into a USERPORT_RECORD_NOT_OBJECT error or reject, in file order.
   */
  nonObject?: { value: unknown };
}

/**
 * Largest record accepted, in bytes. Real Sentry records are under 2 KB; the limit also bounds
 * memory, since stage buffers count records, not bytes (a few dozen near-limit records in flight
 * must stay far below the 150 MB ceiling).
 */
export const DEFAULT_MAX_RECORD_BYTES = 1024 * 1024;
/** Deepest nesting accepted inside a record (`{"fields": {...}}` is depth 2). */
export const DEFAULT_MAX_DEPTH = 64;
/**
 * Bytes of a caller's chunk parsed at a time by the byte stages (the import's own reads are this
 * size): the parsed records of a whole 4 MB chunk, alive at once, outgrow V8's young generation;
 * reading 172 MB in 4 MB chunks took 4.3 s with 1.1 s of garbage collection, 2.6 s in pieces.
 */
export const PARSE_PIECE = 128 * 1024;

/** The piece of `chunk` from `at` that the byte stages parse next ({@link PARSE_PIECE}): a small chunk whole. */
export function parsePiece(chunk: Buffer, at: number): Buffer {
  return chunk.length <= PARSE_PIECE ? chunk : chunk.subarray(at, at + PARSE_PIECE);
}

/** Options of {@link createTokenizer}. */
export interface TokenizerOptions {
  /** Refuse a record larger than this many bytes. @default 1 MiB ({@link DEFAULT_MAX_RECORD_BYTES}) */
  maxRecordBytes?: number;
  /** Refuse nesting deeper than this. @default 64 ({@link DEFAULT_MAX_DEPTH}) */
  maxDepth?: number;
  /**
   * Records with an ordinal at or below this are counted but not parsed nor emitted
   * (resuming an import). @default 0
   */
  skipThrough?: number;
  /**
   * An array element that is not an object: `'error'` fails here (USERPORT_RECORD_NOT_OBJECT);
   * `'emit'` passes it on marked {@link RawRecord.nonObject}, so that it is reported (or
   * rejected) after the records before it. @default 'error' (`createRecordProcessor`: 'emit')
   */
  nonObjects?: 'error' | 'emit';
}

const enum Phase { Start, BeforeFirst, BeforeNext, InRecord, AfterElement, Done }

const BOM = [0xef, 0xbb, 0xbf];
/**
 * Bytes the splitter must look at inside a record: quote, braces, brackets, and the newline,
 * which it counts there. Outside strings only: a raw newline inside a JSON string is invalid (the
 * record's parse then fails the import, at a position counted in its own text), and where a
 * position after one matters, the record's lines are counted again (`recountLines`).
 */
const STRUCTURAL = new Uint8Array(256);
STRUCTURAL[0x22] = STRUCTURAL[0x7b] = STRUCTURAL[0x7d] = STRUCTURAL[0x5b] = STRUCTURAL[0x5d] = STRUCTURAL[0x0a] = 1;
const WS = new Uint8Array(256);
WS[0x20] = WS[0x09] = WS[0x0a] = WS[0x0d] = 1;
/** Bytes of a number or literal (`true`, `-1.5e3`); anything else ends it. */
const LITERAL = new Uint8Array(256);
for (const c of '+-.0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ') LITERAL[c.charCodeAt(0)] = 1;

/** Smallest accepted values: a record needs a few bytes, and `[{` is already two levels. */
const MIN_RECORD_BYTES = 16;
const MIN_DEPTH = 2;

/**
 * Heap one parsed record may take, per byte of its text, at worst: a record packed with tiny
 * objects (`[{},{},...]`) takes about 20 times its text once parsed, and the text itself is held
 * while it is (bench/NOTES.md, "Worst-case records").
 */
const HEAP_PER_RECORD_BYTE = 22;
/** Heap left for everything else an import keeps (its live heap is about 15 MB). */
const HEAP_RESERVE = 32 * 2 ** 20;

/**
 * A record-size limit: an integer of at least MIN_RECORD_BYTES whose worst-case record this
 * process's heap can hold. Beyond it V8 would abort the process (out of memory) on the first such
 * record instead of reading it. The CLI's launcher caps the heap at 96 MB: records of about 3 MiB.
 */
const isRecordLimit: OptionCheck = (v) => {
  const wrong = isInteger(MIN_RECORD_BYTES)(v);
  if (wrong !== undefined) return wrong;
  const heap = getHeapStatistics().heap_size_limit;
  const max = Math.floor((heap - HEAP_RESERVE) / HEAP_PER_RECORD_BYTE);
  if ((v as number) <= max) return undefined;
  const mb = (n: number) => Math.ceil(n / 2 ** 20);
  return `at most ${max} in this process: a record can take ${HEAP_PER_RECORD_BYTE} times its size in heap once parsed, and the heap holds ${mb(heap)} MB `
    + `(node --max-old-space-size=${mb((v as number) * HEAP_PER_RECORD_BYTE + HEAP_RESERVE)} makes room for this one; the launcher gives 96 MB)`;
};

/** The checks of {@link TokenizerOptions}, shared with the fused record processor. */
export const TOKENIZER_OPTIONS: { readonly [K in keyof TokenizerOptions]-?: OptionCheck } = {
  maxRecordBytes: isRecordLimit,
  maxDepth: isInteger(MIN_DEPTH),
  skipThrough: isInteger(0),
  nonObjects: isOneOf('error', 'emit'),
};

/** Checks the tokenizer's options alone (the fused processor passes more). */
function checkTokenizerValues(scope: string, options: TokenizerOptions): void {
  for (const k of Object.keys(TOKENIZER_OPTIONS) as (keyof TokenizerOptions)[]) {
    const v = options[k];
    if (v === undefined) continue;
    const expected = TOKENIZER_OPTIONS[k](v);
    if (expected !== undefined) badOption(scope, k, expected, v);
  }
}

/**
 * The record splitter as a plain class, for use without streams: `write(chunk)` returns the
 * records completed by that chunk, `end()` checks the input was complete.
 */
export class RecordSplitter {
  private readonly maxRecordBytes: number;
  private readonly maxDepth: number;
  private readonly skipThrough: number;
  private phase = Phase.Start;
  /** Absolute offset of the first byte of the current chunk. */
  private base = 0;
  private line = 1;
  /** Absolute offset of the first byte of the current line. */
  private lineStart = 0;
  private ordinal = 0;
  // Record in progress.
  private depth = 0;
  private inString = false;
  private pieces: Buffer[] = [];
  private pieceBytes = 0;
  private recStart = 0;
  private recLine = 0;
  private recColumn = 0;
  /** How many bytes of a leading UTF-8 byte-order mark were skipped (it may straddle chunks). */
  private bom = 0;
  private readonly emitNonObjects: boolean;
  /** The element in progress is a string (1) or a number or literal (2), not an object or array. */
  private scalar: 0 | 1 | 2 = 0;

  constructor(options: TokenizerOptions = {}) {
    if (options === null || typeof options !== 'object') badOption('RecordSplitter', 'options', 'an object', options);
    checkTokenizerValues('RecordSplitter', options);
    this.maxRecordBytes = options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
    this.maxDepth = options.maxDepth ?? DEFAULT_MAX_DEPTH;
    this.skipThrough = options.skipThrough ?? 0;
    if (options.nonObjects !== undefined && options.nonObjects !== 'error' && options.nonObjects !== 'emit') {
      throw new OptionError(`RecordSplitter: option nonObjects must be 'error' or 'emit', got ${String(options.nonObjects)}`, 'nonObjects');
    }
    this.emitNonObjects = options.nonObjects === 'emit';
  }

  /** Bytes consumed so far. */
  get bytesRead(): number {
    return this.base;
  }

  /** Records seen so far (including skipped ones). */
  get recordsSeen(): number {
    return this.ordinal;
  }

  private error(code: ErrorCode, message: string | Wording, absOffset: number, extra: Position = {}): ParseError {
    // Line and column of an offset inside the current chunk are known exactly: lines are
    // counted up to `lineStart`, which never passes the offset being reported.
    const column = absOffset - this.lineStart + 1;
    return new ParseError(code, message, { position: { offset: absOffset, line: this.line, column, ...extra } });
  }

  /**
   * Feeds one chunk; returns the records it completed (appended to `out` when given, so that a
   * caller still holds the records before a {@link ParseError} thrown on bad input).
   */
  write(chunk: Buffer, out: RawRecord[] = []): RawRecord[] {
    let buf = chunk;
    let i = 0;
    const n = buf.length;
    while (i < n) {
      switch (this.phase) {
        case Phase.Start: {
          // A UTF-8 byte-order mark may start the file (Windows editors add one): skip it.
          while (i < n && this.bom < 3 && this.base + i === this.bom && buf[i] === BOM[this.bom]) { this.bom++; i++; }
          // Part of a mark is not a mark: EF BB followed by anything else is invalid UTF-8.
          if (i < n && this.bom > 0 && this.bom < 3) {
            throw this.error(ErrorCodes.INPUT_UTF8, 'invalid UTF-8 at the start of the input', 0);
          }
          while (i < n && WS[buf[i]!]) {
            if (buf[i] === 10) { this.line++; this.lineStart = this.base + i + 1; }
            i++;
          }
          if (i === n) break;
          // A UTF-16 byte-order mark (never valid UTF-8): say UTF-16, not "not an array".
          if (this.base + i === 0 && i + 1 < n && ((buf[i] === 0xff && buf[i + 1] === 0xfe) || (buf[i] === 0xfe && buf[i + 1] === 0xff))) {
            const name = buf[i] === 0xff ? 'UTF-16LE' : 'UTF-16BE';
            throw this.error(ErrorCodes.INPUT_UTF8, `the input is ${name}, not UTF-8 as Sentry writes exports: convert it first (iconv -f ${name} -t UTF-8)`, this.base + i);
          }
          if (buf[i] !== 0x5b /* [ */) {
            throw this.error(ErrorCodes.INPUT_NOT_ARRAY, 'the export must be a JSON array of records', this.base + i);
          }
          i++;
          this.phase = Phase.BeforeFirst;
          break;
        }
        case Phase.BeforeFirst:
        case Phase.BeforeNext:
        case Phase.AfterElement:
        case Phase.Done: {
          while (i < n && WS[buf[i]!]) {
            if (buf[i] === 10) { this.line++; this.lineStart = this.base + i + 1; }
            i++;
          }
          if (i === n) break;
          const c = buf[i]!;
          const at = this.base + i;
          if (this.phase === Phase.Done) {
            throw this.error(ErrorCodes.INPUT_TRAILING, 'unexpected data after the end of the array', at);
          }
          if (this.phase === Phase.AfterElement) {
            if (c === 0x2c /* , */) { this.phase = Phase.BeforeNext; i++; break; }
            if (c === 0x5d /* ] */) { this.phase = Phase.Done; i++; break; }
            throw this.error(ErrorCodes.PARSE_JSON, `expected ',' or ']' after record ${this.ordinal}`, at);
          }
          if (c === 0x5d && this.phase === Phase.BeforeFirst) { this.phase = Phase.Done; i++; break; }
          const emitAs: 0 | 1 | 2 | -1 = !this.emitNonObjects || c === 0x7b ? (c === 0x7b ? 0 : -1)
            : c === 0x5b ? 0 : c === 0x22 ? 1 : c === 0x2d || (c >= 0x30 && c <= 0x39) || c === 0x74 || c === 0x66 || c === 0x6e ? 2 : -1;
          if (emitAs !== -1) {
            this.ordinal++;
            this.phase = Phase.InRecord;
            this.depth = 0;
            this.inString = false;
            this.recStart = at;
            this.recLine = this.line;
            this.recColumn = at - this.lineStart + 1;
            if (this.pieces.length !== 0) this.pieces = [];
            this.pieceBytes = 0;
            this.scalar = emitAs;
            // fall into the record scan at the same byte
            i = emitAs ? this.scanScalar(buf, i, out) : this.scanRecord(buf, i, out);
            break;
          }
          if (c === 0x5d) throw this.error(ErrorCodes.PARSE_JSON, 'trailing comma before \']\'', at);
          if (c === 0x22 || c === 0x5b || c === 0x2d || (c >= 0x30 && c <= 0x39) || c === 0x74 || c === 0x66 || c === 0x6e) {
            throw this.error(ErrorCodes.RECORD_NOT_OBJECT, `record ${this.ordinal + 1} is not an object`, at, { ordinal: this.ordinal + 1 });
          }
          throw this.error(ErrorCodes.PARSE_JSON, `unexpected character ${describeByte(c)}`, at);
        }
        case Phase.InRecord: {
          i = this.scalar ? this.scanScalar(buf, i, out) : this.scanRecord(buf, i, out);
          break;
        }
      }
    }
    this.base += n;
    return out;
  }

  /**
   * Scans record bytes from `i`; returns where it stopped (end of chunk, or just after the
   * record's closing brace, with the record emitted into `out`).
   */
  private scanRecord(buf: Buffer, i: number, out: RawRecord[]): number {
    const n = buf.length;
    const segStart = i;
    let depth = this.depth;
    let inString = this.inString;
    const maxDepth = this.maxDepth;
    while (i < n) {
      if (inString) {
        // Jump to the next quote; it closes the string unless an odd number of backslashes
        // precedes it. A backslash run may straddle chunks, hence the look back into pieces.
        const q = buf.indexOf(0x22, i);
        if (q === -1) { i = n; break; }
        i = q + 1;
        if (this.closes(buf, q, segStart)) inString = false;
        continue;
      }
      // Most bytes outside strings (indentation, digits, literals, ':' and ',') mean nothing to
      // the splitter: skip them with one table lookup each.
      let c = buf[i]!;
      while (STRUCTURAL[c] === 0) {
        if (++i === n) break;
        c = buf[i]!;
      }
      if (i === n) break;
      if (c === 0x0a) {
        // Counted as the scan passes (an indexOf per line after the record's end was a tenth of
        // the splitter's time on Sentry's indented exports).
        this.line++;
        this.lineStart = this.base + i + 1;
        i++;
        continue;
      }
      if (c === 0x22) { inString = true; i++; continue; }
      if (c === 0x7b || c === 0x5b) {
        if (++depth > maxDepth) {
          this.recountLines(Buffer.concat([...this.pieces, buf.subarray(segStart, i)]));
          throw this.error(ErrorCodes.LIMIT_DEPTH, wording`record ${this.ordinal} nests deeper than ${opt('maxDepth')} ${maxDepth}`, this.base + i,
            { ordinal: this.ordinal });
        }
      } else if (c === 0x7d || c === 0x5d) {
        if (--depth === 0) {
          i++;
          this.depth = 0;
          this.inString = false;
          this.finishRecord(buf, segStart, i, out);
          this.phase = Phase.AfterElement;
          return i;
        }
      }
      i++;
    }
    this.depth = depth;
    this.inString = inString;
    return this.keepPiece(buf, segStart, n);
  }

  /** Scans a string, number or literal element from `i`, like {@link scanRecord}. */
  private scanScalar(buf: Buffer, i: number, out: RawRecord[]): number {
    const n = buf.length;
    const segStart = i;
    if (this.scalar === 1) {
      let inString = this.inString;
      while (i < n) {
        // The element's first byte is its opening quote.
        if (!inString) { inString = true; i++; continue; }
        const q = buf.indexOf(0x22, i);
        if (q === -1) { i = n; break; }
        i = q + 1;
        if (this.closes(buf, q, segStart)) return this.endScalar(buf, segStart, i, out);
      }
      this.inString = inString;
    } else {
      while (i < n && LITERAL[buf[i]!]) i++;
      if (i < n) return this.endScalar(buf, segStart, i, out);
    }
    return this.keepPiece(buf, segStart, n);
  }

  /**
   * Whether the quote at `q` closes a string: an even number of backslashes precedes it. A
   * backslash run may straddle chunks, hence the look back into the kept pieces.
   */
  private closes(buf: Buffer, q: number, segStart: number): boolean {
    let bs = 0;
    let k = q - 1;
    while (k >= segStart && buf[k] === 0x5c) { bs++; k--; }
    if (k < segStart) bs += this.trailingBackslashes(bs === q - segStart);
    return (bs & 1) === 0;
  }

  /** Keeps the unfinished element's bytes `buf[segStart, n)` for the next chunk; returns `n`. */
  private keepPiece(buf: Buffer, segStart: number, n: number): number {
    this.pieceBytes += n - segStart;
    if (this.pieceBytes > this.maxRecordBytes) throw this.tooLarge(this.ordinal);
    // Copy: the caller may reuse its chunk buffer.
    this.pieces.push(Buffer.from(buf.subarray(segStart, n)));
    return n;
  }

  private tooLarge(ordinal: number): ParseError {
    // The limit is named in parts, so the CLI says --max-record-bytes where a library caller reads maxRecordBytes.
    return new ParseError(ErrorCodes.LIMIT_RECORD_SIZE,
      wording`record ${ordinal} is larger than ${opt('maxRecordBytes')} (${this.maxRecordBytes} bytes): if such records are expected, raise ${opt('maxRecordBytes')}`,
      { position: { ordinal, offset: this.recStart, line: this.recLine, column: this.recColumn } });
  }

  private endScalar(buf: Buffer, segStart: number, end: number, out: RawRecord[]): number {
    this.scalar = 0;
    this.inString = false;
    this.finishRecord(buf, segStart, end, out);
    this.phase = Phase.AfterElement;
    return end;
  }

  /** Backslashes at the end of the buffered pieces (for a quote at the start of a chunk). */
  private trailingBackslashes(applies: boolean): number {
    if (!applies) return 0;
    let count = 0;
    for (let p = this.pieces.length - 1; p >= 0; p--) {
      const piece = this.pieces[p]!;
      let k = piece.length - 1;
      while (k >= 0 && piece[k] === 0x5c) { count++; k--; }
      if (k >= 0) break;
    }
    return count;
  }

  private finishRecord(buf: Buffer, segStart: number, end: number, out: RawRecord[]): void {
    const ordinal = this.ordinal;
    // The record's bytes are bytes[from, to): most records lie within one chunk and are decoded
    // straight from it, without a Buffer view of their own.
    let bytes = buf;
    let from = segStart;
    let to = end;
    if (this.pieces.length !== 0) {
      this.pieces.push(buf.subarray(segStart, end));
      bytes = Buffer.concat(this.pieces, this.pieceBytes + end - segStart);
      this.pieces = [];
      from = 0;
      to = bytes.length;
    }
    this.pieceBytes = 0;
    const length = to - from;
    if (length > this.maxRecordBytes) throw this.tooLarge(ordinal);
    // A record skipped (a resume) is not parsed: its lines are counted exactly.
    if (ordinal <= this.skipThrough) {
      this.recountLines(bytes.subarray(from, to));
      return;
    }
    const text = bytes.toString('utf8', from, to);
    // Decoding replaces every invalid sequence with U+FFFD, so a record without one is valid
    // UTF-8; one with it (it may also be a real U+FFFD) gets the exact check.
    if (text.indexOf('\uFFFD') !== -1 && !isUtf8(bytes.subarray(from, to))) {
      throw invalidUtf8(bytes.subarray(from, to), this.recordPosition(length));
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw locateSyntaxError(text, this.recordPosition(length));
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      out.push({ ordinal, offset: this.recStart, line: this.recLine, column: this.recColumn, length, value: {}, nonObject: { value } });
      return;
    }
    out.push({ ordinal, offset: this.recStart, line: this.recLine, column: this.recColumn, length, value: value as Record<string, unknown>, source: text });
  }

  /**
   * Sets the line counter by every newline of the record in progress, `bytes` from its first byte.
   * The scan counts the newlines outside strings; one inside a string (a raw newline, invalid
   * JSON) is counted here, where a position after it is reported (an error inside the record, the
   * input's end) or the record is not parsed (skipped by a resume).
   */
  private recountLines(bytes: Buffer): void {
    this.line = this.recLine;
    this.lineStart = this.recStart - this.recColumn + 1;
    for (let i = bytes.indexOf(10); i !== -1; i = bytes.indexOf(10, i + 1)) {
      this.line++;
      this.lineStart = this.recStart + i + 1;
    }
  }

  /** The position of the record being finished (for its errors only). */
  private recordPosition(length: number): RecordPosition {
    return { ordinal: this.ordinal, offset: this.recStart, line: this.recLine, column: this.recColumn, length };
  }

  /** Checks the input ended after a complete array. */
  end(): void {
    if (this.phase === Phase.Done) return;
    const at = this.base;
    if (this.phase === Phase.Start) {
      if (this.bom > 0 && this.bom < 3) throw this.error(ErrorCodes.INPUT_UTF8, 'invalid UTF-8 at the start of the input', 0);
      throw this.error(ErrorCodes.INPUT_EMPTY, 'the input is empty: expected a JSON array of records', at);
    }
    if (this.phase === Phase.InRecord) this.recountLines(Buffer.concat(this.pieces));
    const what = this.phase === Phase.InRecord ? `inside record ${this.ordinal}` : 'before the end of the array';
    throw this.error(ErrorCodes.INPUT_TRUNCATED, `the input ends ${what}: the export is truncated`, at,
      this.phase === Phase.InRecord ? { ordinal: this.ordinal } : {});
  }
}

function describeByte(c: number): string {
  return c >= 0x21 && c < 0x7f ? `'${String.fromCharCode(c)}'` : `byte 0x${c.toString(16).padStart(2, '0')}`;
}

/** Position (byte offset, line, column) of `index` bytes into a record. */
function positionIn(bytes: Buffer, index: number, pos: RecordPosition): Position {
  let line = pos.line;
  let lineStartRel = -pos.column + 1; // record-relative offset of the record's line start
  let i = bytes.indexOf(10);
  while (i !== -1 && i < index) {
    line++;
    lineStartRel = i + 1;
    i = bytes.indexOf(10, i + 1);
  }
  return { ordinal: pos.ordinal, offset: pos.offset + index, line, column: index - lineStartRel + 1 };
}

function invalidUtf8(bytes: Buffer, pos: RecordPosition): ParseError {
  // Binary search the longest valid prefix: the first invalid byte is just after it. A fresh
  // decoder per probe: in streaming mode a decoder keeps the pending bytes of the previous call
  // and prepends them to the next one, which would shift the answer.
  let lo = 0;
  let hi = bytes.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    let ok = true;
    try { new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, mid), { stream: true }); } catch { ok = false; }
    if (ok) lo = mid; else hi = mid - 1;
  }
  // The valid prefix may end inside a multi-byte sequence that the next byte breaks: report
  // the sequence's lead byte.
  for (let k = lo - 1; k >= 0 && k >= lo - 3; k--) {
    const b = bytes[k]!;
    if (b >= 0xc0) {
      const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2;
      if (k + need > lo) lo = k;
      break;
    }
    if (b < 0x80) break;
  }
  return new ParseError(ErrorCodes.INPUT_UTF8, `invalid UTF-8 in record ${pos.ordinal}`, { position: positionIn(bytes, lo, pos) });
}

/** Pinpoints a JSON syntax error inside one record with stream-json's verifier. */
export function locateSyntaxError(text: string, pos: RecordPosition): ParseError {
  const verify = jsonVerifier();
  let charOffset = text.length;
  let reason = 'invalid JSON';
  try {
    verify(text);
    (verify as (v: unknown) => unknown)(none);
  } catch (err) {
    const e = err as { offset?: number; message?: string };
    if (typeof e.offset === 'number') charOffset = e.offset;
    const m = /cannot parse input: (.*)$/.exec(e.message ?? '');
    if (m) reason = m[1]!;
  }
  const byteIndex = Buffer.byteLength(text.slice(0, charOffset), 'utf8');
  const bytes = Buffer.from(text, 'utf8');
  return new ParseError(ErrorCodes.PARSE_JSON, `invalid JSON in record ${pos.ordinal}: ${reason}`, { position: positionIn(bytes, byteIndex, pos) });
}

/**
 * Creates the tokenizer stage: a Transform from export bytes to {@link RawRecord} objects.
 * Bad input fails the stream with a {@link ParseError} carrying byte offset, line and column.
 */
export function createTokenizer(options: TokenizerOptions = {}): Transform & { splitter: RecordSplitter } {
  const splitter = new RecordSplitter(checkOptions('createTokenizer', options, TOKENIZER_OPTIONS));
  const stream = new Transform({
    readableObjectMode: true,
    readableHighWaterMark: 64,
    transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback) {
      // A large chunk a piece at a time, each piece's records pushed before the next is parsed (as
      // lib/process-records.ts does, and why).
      for (let at = 0; at < chunk.length; at += PARSE_PIECE) {
        let records: RawRecord[];
        try {
          records = splitter.write(parsePiece(chunk, at));
        } catch (err) {
          callback(err as Error);
          return;
        }
        for (const r of records) this.push(r);
        if (this.destroyed) return callback();
      }
      callback();
    },
    flush(callback: TransformCallback) {
      endSplitter(splitter, callback);
    },
  });
  return Object.assign(stream, { splitter });
}

/** A byte stage's flush: checks the input was complete, then calls back (with the error if not). */
export function endSplitter(splitter: RecordSplitter, callback: TransformCallback): void {
  try {
    splitter.end();
    callback();
  } catch (err) {
    callback(err as Error);
  }
}
