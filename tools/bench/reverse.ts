/**
 * Writes an export with its records in reverse order: the same record texts, byte for byte, and
 * the same layout between them (what separates `[` from the first record is put before every
 * record, what separates the last record from `]` stays at the end), so a pretty-printed export
 * stays pretty-printed and a compact one compact.
 *
 * Memory stays flat whatever the size: a first pass finds where each record starts and ends
 * (tools/bench/split.ts, the parse floor's splitter: strings and nesting only, no `JSON.parse`) and keeps only
 * those offsets (16 bytes a record); a second pass reads the records back to front, one window
 * of up to 1 MiB of consecutive records at a time, and writes them.
 */
import fs from 'node:fs';
import { splitRecords } from './split.js';

const OPEN_A = 0x5b;

const WINDOW = 1 << 20;

/** Start (inclusive) and end (exclusive) byte offsets of every top-level element of a JSON array file. */
export interface RecordSpans {
  count: number;
  starts: Float64Array;
  ends: Float64Array;
  /** Offset of the opening `[` and of the closing `]`. */
  open: number;
  close: number;
}

function grow(a: Float64Array): Float64Array<ArrayBuffer> {
  const b = new Float64Array(a.length * 2);
  b.set(a);
  return b;
}

/** Finds the records of `file`, a JSON array of objects (or arrays). Throws on a truncated or non-array file. */
export async function recordSpans(file: string): Promise<RecordSpans> {
  let starts: Float64Array<ArrayBuffer> = new Float64Array(1024);
  let ends: Float64Array<ArrayBuffer> = new Float64Array(1024);
  let count = 0;
  let open = -1;
  let close = -1;
  const { complete } = await splitRecords(file, WINDOW, {
    top(byte, offset, opening) {
      if (!opening) { close = offset; return; }
      if (byte !== OPEN_A || open >= 0) throw new Error(`${file}: not a JSON array (byte ${offset})`);
      open = offset;
    },
    record(_buf, start, end, at) {
      if (count === starts.length) { starts = grow(starts); ends = grow(ends); }
      starts[count] = at + start;
      ends[count] = at + end;
      count++;
    },
  });
  if (!complete || open < 0 || close < 0) throw new Error(`${file}: truncated JSON or not an array`);
  return { count, starts, ends, open, close };
}

/** Writes the records of `src` in reverse order to `dest`. Returns the record count and bytes written. */
export async function reverseExport(src: string, dest: string): Promise<{ records: number; bytes: number }> {
  const s = await recordSpans(src);
  const fd = fs.openSync(src, 'r');
  const out = fs.openSync(dest, 'w');
  let bytes = 0;
  const write = (b: Buffer) => { fs.writeSync(out, b); bytes += b.length; };
  const slice = (from: number, to: number) => {
    const b = Buffer.allocUnsafe(to - from);
    let got = 0;
    while (got < b.length) {
      const r = fs.readSync(fd, b, got, b.length - got, from + got);
      if (r === 0) throw new Error(`${src}: shorter than when it was scanned`);
      got += r;
    }
    return b;
  };
  try {
    if (s.count === 0) {
      write(slice(s.open, s.close + 1));
      return { records: 0, bytes };
    }
    const lead = slice(s.open + 1, s.starts[0]!); // e.g. "\n  "
    const trail = slice(s.ends[s.count - 1]!, s.close + 1); // e.g. "\n]"
    write(slice(s.open, s.open + 1));
    let k = s.count - 1; // the next record to write
    while (k >= 0) {
      // A window of consecutive records ending with record k, up to 1 MiB (at least one record).
      let j = k;
      while (j > 0 && s.ends[k]! - s.starts[j - 1]! <= WINDOW) j--;
      const from = s.starts[j]!;
      const win = slice(from, s.ends[k]!);
      const parts: Buffer[] = [];
      for (let r = k; r >= j; r--) {
        if (r !== s.count - 1) parts.push(Buffer.from(','));
        parts.push(lead, win.subarray(s.starts[r]! - from, s.ends[r]! - from));
      }
      write(Buffer.concat(parts));
      k = j - 1;
    }
    write(trail);
    return { records: s.count, bytes };
  } finally {
    fs.closeSync(fd);
    fs.closeSync(out);
  }
}
