/**
 * The staging table's COPY text format: the statement ({@link copySql}) and the encoder that
 * writes its lines ({@link CopyText}), one line per staged row or filtered user. Pure: no I/O, no
 * database; the sink (pg-sink.ts) decides where the bytes go.
 *
 * The encoder writes bytes straight into Buffers. Gathering a string (`pending += line`) made
 * some 35 strings per row and kept a rope of ~50,000 of them alive across garbage collections
 * until each flush; the COPY stream then converted it to bytes anyway. Its spec checks it byte for
 * byte against a plain string encoder kept as an oracle (spec/helpers/copy-oracle.ts).
 */
import { randomFillSync } from 'node:crypto';
import type { FilteredMarker, StagedRow } from './map-models.js';
import { STAGE_COLUMNS } from './models.js';

/** The columns a staging line starts with, before the values of `STAGE_COLUMNS`. */
export const LEAD_COLUMNS = ['run', 'model', 'ord', 'off', 'line', 'col', 'src_pk', 'keep'] as const;

/**
 * The column a staging line ends with, after the values of `STAGE_COLUMNS`: the password a user
 * gets if the import creates it (Django's unusable form, `!` and 40 characters: 40 hex digits of
 * random bytes), made here rather than by the server for each new user (issue #23: "random
 * hashes made in Node"; a SHA-224 per user was about a fifth of the users' INSERT). NULL on the
 * lines of other models.
 */
export const TAIL_COLUMNS = ['unusable_password'] as const;

/** The COPY into `table` (a staging table) whose column order the lines of {@link CopyText} follow. */
export function copySql(table: string): string {
  return `COPY ${table} (${[...LEAD_COLUMNS, ...STAGE_COLUMNS.map(([c]) => c), ...TAIL_COLUMNS].join(', ')}) FROM STDIN`;
}

/** Hex digits of random bytes after the `!` of a new user's unusable password. */
const PASSWORD_BYTES = 20;
const HEX = Buffer.from('0123456789abcdef');

/** Bytes of COPY text gathered in one Buffer, and before one socket write. */
export const FLUSH_BYTES = 256 * 1024;

/** For each ASCII character COPY escapes, the letter after the backslash. */
const ESCAPE = new Uint8Array(128);
ESCAPE[0x5c] = 0x5c; ESCAPE[0x0a] = 0x6e; ESCAPE[0x0d] = 0x72; ESCAPE[0x09] = 0x74;
/** Room for an integer or the text of any number, with its tab. */
const NUMBER_BYTES = 32;

/** The data columns of a filtered user: its pk (and username, the first column) alone are staged. */
const FILTERED_VALUES = '\t\\N'.repeat(STAGE_COLUMNS.length - 1 + TAIL_COLUMNS.length) + '\n';

/** Text escaped for COPY: backslash first, then the three characters COPY treats as delimiters. */
function escapeText(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\r/g, '\\r').replace(/\t/g, '\\t');
}

/**
 * COPY text gathered as bytes: each row is encoded straight into a Buffer, and full Buffers are
 * handed out as they are. A row may straddle two Buffers: COPY data is a byte stream.
 */
export class CopyText {
  private buf = Buffer.allocUnsafe(FLUSH_BYTES);
  private used = 0;
  private full: Buffer[] = [];
  private fullBytes = 0;
  /** Random bytes for the users' passwords, drawn 4,096 passwords at a time. */
  private readonly pool = Buffer.alloc(PASSWORD_BYTES * 4096);
  private poolAt = this.pool.length;

  /** `random` fills a buffer with random bytes (a spec's may be predictable). */
  constructor(private readonly random: (into: Buffer) => void = randomFillSync) {}

  /** Bytes gathered. */
  get size(): number {
    return this.fullBytes + this.used;
  }

  /**
   * Adds the line of one staged row or filtered user: run, staging code, position, source pk,
   * kept (`t`/`f`), then the values in `STAGE_COLUMNS` order (a filtered user: its username
   * alone), tab-separated, NULL as `\N`, text escaped, numbers as `String(v)` writes them, then
   * `TAIL_COLUMNS`: a user's row gets a new unusable password, any other line NULL.
   */
  row(run: number, row: StagedRow | FilteredMarker): void {
    this.room(8 * NUMBER_BYTES);
    this.number(run); this.ascii('\t');
    this.number(row.code); this.ascii('\t');
    this.number(row.ordinal); this.ascii('\t');
    this.number(row.offset); this.ascii('\t');
    this.number(row.line); this.ascii('\t');
    this.number(row.column); this.ascii('\t');
    this.number(row.pk);
    if (row.kind === 'filtered') {
      this.ascii('\tf\t');
      if (row.username === undefined) this.ascii('\\N');
      else this.text(row.username);
      this.ascii(FILTERED_VALUES);
      return;
    }
    this.ascii('\tt');
    const vals = row.values;
    for (let i = 0; i < vals.length; i++) {
      this.ascii('\t');
      const v = vals[i];
      if (v === null || v === undefined) this.ascii('\\N');
      else if (typeof v === 'string') this.text(v);
      else if (typeof v === 'number') this.number(v);
      else this.ascii(v ? 't' : 'f');
    }
    if (row.model === 'sentry.user') this.password();
    else this.ascii('\t\\N');
    this.ascii('\n');
  }

  /** A tab, then a new user's unusable password: `!` and the hex digits of fresh random bytes. */
  private password(): void {
    if (this.poolAt === this.pool.length) {
      this.random(this.pool);
      this.poolAt = 0;
    }
    this.room(2 + 2 * PASSWORD_BYTES);
    const buf = this.buf;
    const pool = this.pool;
    let p = this.used;
    buf[p++] = 0x09;
    buf[p++] = 0x21; // !
    for (let k = this.poolAt, end = k + PASSWORD_BYTES; k < end; k++) {
      buf[p++] = HEX[pool[k]! >> 4]!;
      buf[p++] = HEX[pool[k]! & 15]!;
    }
    this.poolAt += PASSWORD_BYTES;
    this.used = p;
  }

  /** Everything gathered, as Buffers the caller now owns; empties this. */
  take(): Buffer[] {
    this.seal();
    const out = this.full;
    this.full = [];
    this.fullBytes = 0;
    return out;
  }

  private seal(): void {
    if (this.used === 0) return;
    this.full.push(this.buf.subarray(0, this.used));
    this.fullBytes += this.used;
    this.buf = Buffer.allocUnsafe(FLUSH_BYTES);
    this.used = 0;
  }

  /** Makes room for `bytes` more. */
  private room(bytes: number): void {
    if (this.used + bytes <= this.buf.length) return;
    this.seal();
    if (bytes > this.buf.length) this.buf = Buffer.allocUnsafe(bytes);
  }

  /** A number as `String(v)` writes it. */
  private number(v: number): void {
    this.room(NUMBER_BYTES);
    const buf = this.buf;
    let p = this.used;
    if (v >= 0 && v <= 0x7fffffff && (v | 0) === v) {
      // The common case (positions, pks, codes): 32-bit integer division, one pass per digit.
      let n = v | 0;
      let digits = 1;
      for (let t = n; t >= 10; t = (t / 10) | 0) digits++;
      p += digits;
      let q = p;
      do {
        const t = (n / 10) | 0;
        buf[--q] = 0x30 + n - t * 10;
        n = t;
      } while (n > 0);
    } else if (Number.isSafeInteger(v)) {
      let n = v;
      if (n < 0) { buf[p++] = 0x2d; n = -n; }
      let digits = 1;
      for (let t = n; t >= 10; t = Math.floor(t / 10)) digits++;
      p += digits;
      let q = p;
      do { buf[--q] = 0x30 + (n % 10); n = Math.floor(n / 10); } while (n > 0);
    } else {
      const t = String(v);
      for (let k = 0; k < t.length; k++) buf[p++] = t.charCodeAt(k);
    }
    this.used = p;
  }

  /** A string known to be ASCII without characters COPY escapes. */
  private ascii(s: string): void {
    this.room(s.length);
    const buf = this.buf;
    let p = this.used;
    for (let k = 0; k < s.length; k++) buf[p++] = s.charCodeAt(k);
    this.used = p;
  }

  /** A text value, escaped. */
  private text(s: string): void {
    const n = s.length;
    // An escaped character takes 2 bytes, a UTF-16 code unit at most 3.
    this.room(n * 3);
    const buf = this.buf;
    let p = this.used;
    for (let k = 0; k < n; k++) {
      const c = s.charCodeAt(k);
      if (c >= 0x80) {
        // Beyond ASCII (rare): the rest goes through the string encoder.
        this.used = p + buf.write(escapeText(s.slice(k)), p);
        return;
      }
      const e = ESCAPE[c]!;
      if (e === 0) {
        buf[p++] = c;
      } else {
        buf[p++] = 0x5c;
        buf[p++] = e;
      }
    }
    this.used = p;
  }
}
