/**
 * The measurement behind the tokenizer's hand-written record splitter (lib/tokenize.ts): the
 * same export read by stream-json's parser + `streamArray` (tokens assembled into one object per
 * record) and by userport's tokenizer (bytes split into records, `JSON.parse` per record, each
 * tagged with ordinal, offset, line and column). Both read the file in the same chunks and hand
 * every record to a counting sink; nothing else runs. `npm run bench -- --parse-compare FILE|USERS`.
 */
import fs from 'node:fs';
import { Writable, type Duplex, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import streamArray from 'stream-json/streamers/stream-array.js';
import { createTokenizer } from '../../lib/tokenize.js';

/** Read size for both readers: what `openSource` (lib/source.ts) uses for a file. */
const CHUNK_BYTES = 128 * 1024;
const MB = 1e6;

/** One reader's best run. */
export interface ParseRate {
  reader: string;
  records: number;
  bytes: number;
  /** Wall seconds of the fastest run. */
  seconds: number;
  mbPerSecond: number;
}

const READERS: { reader: string; stage: () => Duplex | Transform }[] = [
  { reader: 'stream-json parser + streamArray', stage: () => streamArray.withParserAsStream() },
  { reader: 'userport tokenizer (byte splitter + JSON.parse)', stage: () => createTokenizer() },
];

async function timeOnce(file: string, stage: Duplex | Transform): Promise<{ seconds: number; records: number }> {
  let records = 0;
  const started = process.hrtime.bigint();
  await pipeline(fs.createReadStream(file, { highWaterMark: CHUNK_BYTES }), stage,
    new Writable({ objectMode: true, highWaterMark: 64, write(_r, _e, cb) { records++; cb(); } }));
  return { seconds: Number(process.hrtime.bigint() - started) / 1e9, records };
}

/**
 * Reads `file` with each reader `runs` times, alternating readers so that load from elsewhere on
 * a shared machine falls on both, and keeps each reader's fastest run.
 */
export async function compareParsers(file: string, runs = 3): Promise<ParseRate[]> {
  const bytes = fs.statSync(file).size;
  const best = new Map<string, { seconds: number; records: number }>();
  for (let i = 0; i < runs; i++) {
    for (const { reader, stage } of READERS) {
      const r = await timeOnce(file, stage());
      const prev = best.get(reader);
      if (prev && prev.records !== r.records) throw new Error(`${reader} read ${r.records} records, then ${prev.records}`);
      if (!prev || r.seconds < prev.seconds) best.set(reader, r);
    }
  }
  const rates = READERS.map(({ reader }) => {
    const { seconds, records } = best.get(reader)!;
    return { reader, records, bytes, seconds, mbPerSecond: bytes / MB / seconds };
  });
  if (new Set(rates.map((r) => r.records)).size !== 1) throw new Error(`the readers disagree on the records: ${rates.map((r) => r.records).join(' vs ')}`);
  return rates;
}

/** The comparison as a small table, fastest last, with the ratio to the slowest. */
export function formatParseRates(rates: readonly ParseRate[]): string {
  const slowest = Math.min(...rates.map((r) => r.mbPerSecond));
  const width = Math.max(...rates.map((r) => r.reader.length));
  const lines = [`${'reader'.padEnd(width)}  records    MB      s   MB/s  x`];
  for (const r of [...rates].sort((a, b) => a.mbPerSecond - b.mbPerSecond)) {
    lines.push(`${r.reader.padEnd(width)}  ${String(r.records).padStart(7)}  ${(r.bytes / MB).toFixed(1).padStart(5)}  ${r.seconds.toFixed(2).padStart(5)}  ` +
      `${r.mbPerSecond.toFixed(1).padStart(5)}  ${(r.mbPerSecond / slowest).toFixed(2)}`);
  }
  return lines.join('\n');
}
