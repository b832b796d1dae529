/**
 * The parse floor: the export split into its top-level records and each record `JSON.parse`d,
 * nothing else (no validation, no mapping, no database). It is what any JSON importer written in
 * Node must at least spend, so userport's time is read against it.
 *
 * The splitter tracks only strings and nesting, jumping over string bodies with `indexOf`; a
 * record cut by a chunk boundary is carried over to the next chunk.
 */
import fs from 'node:fs';

export interface ParseFloorResult {
  seconds: number;
  bytes: number;
  records: number;
  /** Records per model name. */
  models: Record<string, number>;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN = 0x7b;
const CLOSE = 0x7d;
const OPEN_A = 0x5b;
const CLOSE_A = 0x5d;

/** Reads `file`, splits it into records and parses each one. */
export async function parseFloor(file: string): Promise<ParseFloorResult> {
  const started = process.hrtime.bigint();
  const models: Record<string, number> = {};
  let records = 0;
  let bytes = 0;
  // A record cut by the end of a chunk is carried over whole and scanned again from its start,
  // so no scanner state crosses chunks: depth is 1 between records.
  let carry: Buffer | null = null;
  let depth = 0;
  for await (const data of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
    const chunk = data as Buffer;
    bytes += chunk.length;
    const buf: Buffer = carry ? Buffer.concat([carry, chunk]) : chunk;
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
        if (depth === 1) start = i;
        depth++;
      } else if (c === CLOSE || c === CLOSE_A) {
        depth--;
        if (depth === 1) {
          const rec = JSON.parse(buf.toString('utf8', start, i + 1)) as { model?: unknown };
          const model = String(rec.model);
          models[model] = (models[model] ?? 0) + 1;
          records++;
          start = -1;
        }
      }
      i++;
    }
    if (start >= 0) {
      carry = buf.subarray(start);
      depth = 1;
    }
  }
  if (depth !== 0 || carry) throw new Error(`${file}: truncated JSON`);
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9, bytes, records, models };
}
