/**
 * COPY text built in one buffer, a chunk of rows at a time, for the rows the client writes
 * straight in (direct-rows.ts, direct-emails.ts): numbers written as digits, fields copied from
 * the staging line that holds them, uuids written as hex from a pool of random bytes. A template
 * string and a Buffer per row, then a concat per chunk, cost about twice the server's time of the
 * COPY at 1M users (bench/NOTES.md, "Issue #23, round eight").
 */
import { randomFillSync } from 'node:crypto';

/** Random bytes for the uuids, drawn 4,096 uuids at a time. */
const pool = Buffer.alloc(16 * 4096);
let poolAt = pool.length;

/** The offset in `pool` of 16 fresh random bytes shaped as a uuid4 (version 4, RFC 4122 variant). */
function nextUuid(): number {
  if (poolAt === pool.length) {
    randomFillSync(pool);
    for (let o = 0; o < pool.length; o += 16) {
      pool[o + 6] = (pool[o + 6]! & 0x0f) | 0x40; // version 4
      pool[o + 8] = (pool[o + 8]! & 0x3f) | 0x80; // RFC 4122 variant
    }
    poolAt = 0;
  }
  const at = poolAt;
  poolAt += 16;
  return at;
}

const HEX = Buffer.from('0123456789abcdef');

/** Copies of at most this many bytes are a loop in JavaScript: below it, Buffer.copy's call costs more. */
const SHORT_COPY = 32;

/** COPY text appended piece by piece into one growing buffer; {@link take} hands it out. */
export class CopyOut {
  private buf: Buffer;
  private at = 0;

  constructor(capacity = 1 << 16) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  /** Bytes written since the last {@link take}. */
  get length(): number {
    return this.at;
  }

  /** An integer (a safe one: ids and pks), in decimal. */
  int(n: number): void {
    if (!Number.isSafeInteger(n)) throw new RangeError(`CopyOut.int: ${n} is not a safe integer`);
    this.room(17);
    if (n < 0) {
      this.buf[this.at++] = 0x2d;
      n = -n;
    }
    let digits = 1;
    for (let x = n; x >= 10; x = Math.floor(x / 10)) digits++;
    let i = this.at + digits;
    this.at = i;
    do {
      this.buf[--i] = 0x30 + (n % 10);
      n = Math.floor(n / 10);
    } while (n > 0);
  }

  /** `src[start, end)`, as it is. */
  bytes(src: Buffer, start: number, end: number): void {
    const n = end - start;
    this.room(n);
    if (n <= SHORT_COPY) {
      const buf = this.buf;
      let at = this.at;
      for (let i = start; i < end; i++) buf[at++] = src[i]!;
      this.at = at;
    } else {
      src.copy(this.buf, this.at, start, end);
      this.at += n;
    }
  }

  /** All of `text` (a constant piece: a tab, `\N`, `now`). */
  raw(text: Buffer): void {
    this.bytes(text, 0, text.length);
  }

  /** One byte (a tab, a newline). */
  byte(b: number): void {
    this.room(1);
    this.buf[this.at++] = b;
  }

  /**
   * A random uuid4 as 32 hex digits (Python's `uuid4().hex`, the merge's gen_random_uuid() without
   * its dashes). The shape of older Sentry's tokens; current Sentry draws 32 of a-z, A-Z, 0-9
   * (`get_secure_token`): the README's compatibility table says why userport keeps this one.
   */
  uuid4Hex(): void {
    this.room(32);
    const from = nextUuid();
    const buf = this.buf;
    let at = this.at;
    for (let i = from; i < from + 16; i++) {
      const b = pool[i]!;
      buf[at++] = HEX[b >> 4]!;
      buf[at++] = HEX[b & 15]!;
    }
    this.at = at;
  }

  /** Takes back what was written after `mark`, a {@link length} read since the last {@link take}. */
  rewind(mark: number): void {
    if (!Number.isInteger(mark) || mark < 0 || mark > this.at) throw new RangeError(`CopyOut.rewind: ${mark} is not within the ${this.at} bytes written`);
    this.at = mark;
  }

  /** The text written since the last call; what follows goes into a new buffer (the one handed out is never written again). */
  take(): Buffer {
    const out = this.buf.subarray(0, this.at);
    this.buf = Buffer.allocUnsafe(this.buf.length);
    this.at = 0;
    return out;
  }

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.at + n));
    this.buf.copy(next, 0, 0, this.at);
    this.buf = next;
  }
}
