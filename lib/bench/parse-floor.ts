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
  let carry: Buffer | null = null;
  // Array depth 1 is the top-level array; a record spans depth 2 and up.
  let depth = 0;
  let inString = false;
  for await (const data of fs.createReadStream(file, { highWaterMark: 1 << 20 })) {
    const chunk = data as Buffer;
    bytes += chunk.length;
    const buf: Buffer = carry ? Buffer.concat([carry, chunk]) : chunk;
    let i = carry ? carry.length : 0;
    let start = carry ? 0 : -1;
    carry = null;
    const n = buf.length;
    while (i < n) {
      if (inString) {
        const q = buf.indexOf(QUOTE, i);
        if (q < 0) { i = n; break; }
        let b = q - 1;
        while (b >= 0 && buf[b] === BACKSLASH) b--;
        i = q + 1;
        if ((q - 1 - b) % 2 === 0) inString = false;
        continue;
      }
      const c = buf[i]!;
      if (c === QUOTE) inString = true;
      else if (c === OPEN || c === OPEN_A) {
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
    if (start >= 0) carry = buf.subarray(start);
  }
  if (depth !== 0) throw new Error(`${file}: truncated JSON (depth ${depth} at end)`);
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9, bytes, records, models };
}
