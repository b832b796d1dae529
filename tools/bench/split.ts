/**
 * The benchmark tools' byte splitter of a JSON array file: strings and nesting only, string
 * bodies jumped over with `indexOf`, no `JSON.parse`. A record cut by the end of a chunk is
 * carried over whole and scanned again from its start, so no scanner state crosses chunks: depth
 * is 1 between records. Shared by the parse floor (which parses each record) and the reverser
 * (which keeps each record's offsets).
 */
import fs from 'node:fs';

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN = 0x7b;
const CLOSE = 0x7d;
const OPEN_A = 0x5b;
const CLOSE_A = 0x5d;

/** What {@link splitRecords} reports. */
export interface SplitHandlers {
  /** A top-level element: `buf[start..end)` holds it, `buf[0]` is at byte `at` of the file. */
  record(buf: Buffer, start: number, end: number, at: number): void;
  /** A bracket or brace at depth 0 (`byte` its value, `offset` its file offset): opening or closing the array. */
  top?(byte: number, offset: number, opening: boolean): void;
}

/**
 * Reads `file` in chunks of `chunkBytes` and reports each top-level element in order. Resolves to
 * the bytes read and whether every bracket was closed (false: the file ends inside a record).
 */
export async function splitRecords(file: string, chunkBytes: number, on: SplitHandlers): Promise<{ bytes: number; complete: boolean }> {
  let bytes = 0;
  let carry: Buffer | null = null;
  let carryAt = 0;
  let depth = 0;
  for await (const data of fs.createReadStream(file, { highWaterMark: chunkBytes })) {
    const chunk = data as Buffer;
    const buf: Buffer = carry ? Buffer.concat([carry, chunk]) : chunk;
    const at = carry ? carryAt : bytes; // file offset of buf[0]
    bytes += chunk.length;
    carry = null;
    const n = buf.length;
    let start = -1;
    let i = 0;
    scan: while (i < n) {
      const c = buf[i]!;
      if (c === QUOTE) {
        // Jump over the string body: find a quote preceded by an even number of backslashes.
        let q = i;
        for (;;) {
          q = buf.indexOf(QUOTE, q + 1);
          if (q < 0) break scan;
          let b = q - 1;
          while (buf[b] === BACKSLASH) b--;
          if ((q - 1 - b) % 2 === 0) break;
        }
        i = q + 1;
        continue;
      }
      if (c === OPEN || c === OPEN_A) {
        if (depth === 0) on.top?.(c, at + i, true);
        else if (depth === 1) start = i;
        depth++;
      } else if (c === CLOSE || c === CLOSE_A) {
        depth--;
        if (depth === 1) {
          on.record(buf, start, i + 1, at);
          start = -1;
        } else if (depth === 0) on.top?.(c, at + i, false);
      }
      i++;
    }
    if (start >= 0) {
      carry = buf.subarray(start);
      carryAt = at + start;
      depth = 1;
    }
  }
  return { bytes, complete: depth === 0 && !carry };
}
