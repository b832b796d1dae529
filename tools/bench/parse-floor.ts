/**
 * The parse floor: the export split into its top-level records and each record `JSON.parse`d,
 * nothing else (no validation, no mapping, no database). It is what any JSON importer written in
 * Node must at least spend, so userport's time is read against it.
 *
 * The splitter (tools/bench/split.ts) tracks only strings and nesting, jumping over string bodies
 * with `indexOf`; a record cut by a chunk boundary is carried over to the next chunk.
 */
import { splitRecords } from './split.js';

export interface ParseFloorResult {
  seconds: number;
  bytes: number;
  records: number;
  /** Records per model name. */
  models: Record<string, number>;
}

/** Reads `file`, splits it into records and parses each one. */
export async function parseFloor(file: string): Promise<ParseFloorResult> {
  const started = process.hrtime.bigint();
  const models: Record<string, number> = {};
  let records = 0;
  const { bytes, complete } = await splitRecords(file, 1 << 20, {
    record(buf, start, end) {
      const rec = JSON.parse(buf.toString('utf8', start, end)) as { model?: unknown };
      const model = String(rec.model);
      models[model] = (models[model] ?? 0) + 1;
      records++;
    },
  });
  if (!complete) throw new Error(`${file}: truncated JSON`);
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9, bytes, records, models };
}
