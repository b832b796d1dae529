/**
 * Reading the staging table's COPY text lines in the client (the side spools of direct-rows.ts
 * and direct-emails.ts): where a column's value is in a line, and its integer. The line's columns
 * are copySql's (lib/copy-text.ts): run, model, ord, off, line, col, src_pk, keep, then
 * `STAGE_COLUMNS`.
 */
import { createReadStream } from 'node:fs';
import { LEAD_COLUMNS } from '../../copy-text.js';
import { STAGE_INDEX, type StageColumn } from '../../models.js';

/** The bytes that end a COPY text field and line. */
export const TAB = 0x09;
export const NEWLINE = 0x0a;

/** The position of a staging column in a line: one of `LEAD_COLUMNS` (`src_pk`, `ord`...), or of `STAGE_COLUMNS`. */
export function lineColumn(name: StageColumn | (typeof LEAD_COLUMNS)[number]): number {
  const lead = (LEAD_COLUMNS as readonly string[]).indexOf(name);
  return lead >= 0 ? lead : LEAD_COLUMNS.length + STAGE_INDEX[name as StageColumn];
}

/** A record's source pk, ordinal and byte offset in the line; ord and off are adjacent. */
export const SRC_PK = lineColumn('src_pk');
export const ORD = lineColumn('ord');
export const OFF = lineColumn('off');
if (OFF !== ORD + 1) throw new Error('staging columns ord, off must be adjacent');

/** The value of column `column` in a staging line: its bounds, as COPY text. */
export function field(line: Buffer, column: number): [number, number] {
  let start = 0;
  for (let i = 0; i < column; i++) start = line.indexOf(TAB, start) + 1;
  const end = line.indexOf(TAB, start);
  return [start, end < 0 ? line.length : end];
}

/**
 * The positions of the tabs that end columns 0 .. `tabs.length - 1` of a staging line, in one scan
 * (column c spans `c ? tabs[c - 1] + 1 : 0` to `tabs[c]`): for reading several columns of a line.
 */
export function scanTabs(line: Buffer, tabs: Int32Array): Int32Array {
  // A loop over the bytes: a call of indexOf per column cost more than the scan (lines are short).
  const n = tabs.length;
  let c = 0;
  for (let i = 0; i < line.length && c < n; i++) if (line[i] === TAB) tabs[c++] = i;
  while (c < n) tabs[c++] = line.length;
  return tabs;
}

/** The start of column `column` in a line whose tabs {@link scanTabs} found. */
export function columnStart(tabs: Int32Array, column: number): number {
  return column ? tabs[column - 1]! + 1 : 0;
}

/** The integer in `line[start, end)` (digits and a sign), or NaN (`\N`, anything else). */
export function intAt(line: Buffer, start: number, end: number): number {
  let i = start;
  const negative = line[i] === 0x2d;
  if (negative) i++;
  if (i >= end) return NaN;
  let n = 0;
  for (; i < end; i++) {
    const d = line[i]! - 0x30;
    if (d < 0 || d > 9) return NaN;
    n = n * 10 + d;
  }
  return negative ? -n : n;
}

/** The integer a COPY text field holds (digits and a sign), or NaN (`\N`, anything else). */
export function intField(line: Buffer, column: number): number {
  const [start, end] = field(line, column);
  return intAt(line, start, end);
}

/**
 * The lines of a file of COPY text, without their newline, a read chunk's at a time (views of
 * chunks that are never reused); with `bytes`, of its first `bytes` bytes only (a file still
 * appended to, read as it was when its writer closed it).
 */
export async function* readLines(file: string, chunkBytes = 1 << 20, bytes?: number): AsyncGenerator<Buffer[]> {
  if (bytes === 0) return;
  let rest: Buffer | undefined;
  const range = bytes === undefined ? {} : { end: bytes - 1 };
  for await (const read of createReadStream(file, { highWaterMark: chunkBytes, ...range }) as AsyncIterable<Buffer>) {
    const lines: Buffer[] = [];
    let start = 0;
    let nl = read.indexOf(10);
    if (rest) {
      // Only the line the last chunk began is joined (joining whole chunks copied every byte
      // read once more: 0.1 s of the tail at 100k users).
      if (nl < 0) {
        rest = Buffer.concat([rest, read]);
        continue;
      }
      lines.push(Buffer.concat([rest, read.subarray(0, nl)]));
      start = nl + 1;
      nl = read.indexOf(10, start);
    }
    for (; nl >= 0; nl = read.indexOf(10, start)) {
      lines.push(read.subarray(start, nl));
      start = nl + 1;
    }
    rest = start < read.length ? read.subarray(start) : undefined;
    if (lines.length) yield lines;
  }
  if (rest) yield [rest];
}
