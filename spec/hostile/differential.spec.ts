/**
 * Issue #5: the fast splitter is equivalent to JSON.parse. Over generated and fuzzed inputs, cut
 * into chunks every which way (whole, 1 byte, random sizes):
 * - when JSON.parse accepts the input as an array of objects, the tokenizer yields exactly those
 *   objects, in order, with byte offsets whose slice parses back to the record, and line and
 *   column matching the offset;
 * - otherwise the tokenizer fails with a coded error (USERPORT_*), never a wrong record;
 * - the outcome (records, error code and position) does not depend on how the input is chunked.
 * The one intended difference: a leading UTF-8 byte-order mark is accepted (JSON.parse refuses
 * it), so the oracle strips it.
 */
import { expect } from 'chai';
import { UserportError } from '../../lib/errors.js';
import { createTokenizer, RecordSplitter, type RawRecord, type TokenizerOptions } from '../../lib/tokenize.js';
import { chunked, collect } from '../helpers/streams.js';
import { CODE, reference } from './fuzz-core.js';
import { firstInvalidUtf8, lineColumn, mutateBytes, randomValue, Rng, serialize, ws } from './gen.js';

const SEED = 0x5eed_0005;
const GENERATED = 1500;
const FUZZED = 2500;

interface Outcome {
  records: Omit<RawRecord, never>[];
  error?: { code: string; position: unknown };
  raw?: unknown;
}

/** Runs the splitter over `buf` cut at the given sizes (cycled). */
function split(buf: Buffer, sizes: number[], options: TokenizerOptions = {}): Outcome {
  const splitter = new RecordSplitter(options);
  const records: RawRecord[] = [];
  try {
    let k = 0;
    for (let i = 0; i < buf.length;) {
      const size = sizes[k++ % sizes.length]!;
      // A fresh copy per chunk: the splitter must not keep views into a chunk it was given.
      const chunk = Buffer.from(buf.subarray(i, i + size));
      records.push(...splitter.write(chunk));
      chunk.fill(0x20);
      i += size;
    }
    splitter.end();
    return { records };
  } catch (err) {
    const e = err as UserportError;
    return { records, error: { code: e.code, position: e.position }, raw: err };
  }
}

/** A random record-like object: usually a Sentry-shaped envelope, sometimes anything. */
function randomRecord(rng: Rng): Record<string, unknown> {
  if (rng.chance(0.3)) {
    const v = randomValue(rng, 4);
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  }
  const fields: Record<string, unknown> = {};
  const n = rng.int(6);
  for (let i = 0; i < n; i++) {
    Object.defineProperty(fields, `${rng.pick(['username', 'email', 'value', '__proto__', 'k', 'a"b', 'c\\d', '😀'])}${rng.chance(0.5) ? i : ''}`,
      { value: randomValue(rng, 4), enumerable: true, writable: true, configurable: true });
  }
  return { model: rng.pick(['sentry.user', 'sentry.email', 'x.y']), pk: rng.int(1000), fields };
}

/** An export of random records, with the byte span of each record as written. */
function generate(rng: Rng): { buf: Buffer; spans: [number, number][]; records: unknown[] } {
  const records: unknown[] = [];
  const n = rng.int(6);
  for (let i = 0; i < n; i++) records.push(randomRecord(rng));
  const parts: Buffer[] = [];
  const spans: [number, number][] = [];
  let size = 0;
  const put = (s: string) => { const b = Buffer.from(s); parts.push(b); size += b.length; };
  if (rng.chance(0.05)) put('\uFEFF');
  put(ws(rng) + '[');
  records.forEach((r, i) => {
    put(ws(rng));
    const start = size;
    put(serialize(r, rng));
    spans.push([start, size]);
    put(ws(rng) + (i < records.length - 1 ? ',' : ''));
  });
  put(ws(rng) + ']' + ws(rng));
  return { buf: Buffer.concat(parts), spans, records };
}

/** Valid JSON that is not an array of objects. */
function notAnArrayOfObjects(rng: Rng): Buffer {
  const recs: unknown[] = [randomRecord(rng), randomRecord(rng)];
  switch (rng.int(3)) {
    case 0: return Buffer.from(serialize(randomValue(rng, 2), rng)); // whatever top level (arrays of objects are rare)
    case 1: recs.splice(rng.int(3), 0, rng.pick([null, 1, 'x', [], [{}], true])); return Buffer.from(serialize(recs, rng));
    default: return Buffer.from(serialize({ records: recs }, rng));
  }
}

function randomSizes(rng: Rng): number[] {
  const sizes: number[] = [];
  for (let i = 0; i < 16; i++) sizes.push(rng.chance(0.3) ? 1 : rng.range(1, 64));
  return sizes;
}

function depthOf(v: unknown): number {
  if (!v || typeof v !== 'object') return 0;
  let max = 0;
  for (const x of Object.values(v)) max = Math.max(max, depthOf(x));
  return 1 + max;
}

/** Checks `out` against JSON.parse; returns a description of the first disagreement. */
function judge(buf: Buffer, out: Outcome, spans?: [number, number][]): string | undefined {
  const ref = reference(buf);
  const accepted = ref && Array.isArray(ref.value) && ref.value.every((x) => x !== null && typeof x === 'object' && !Array.isArray(x));
  if (out.error) {
    if (!(out.raw instanceof UserportError) || !CODE.test(out.error.code)) return `uncoded error: ${String((out.raw as Error)?.stack ?? out.raw)}`;
    if (accepted) return `refused an input JSON.parse accepts: ${out.error.code} ${JSON.stringify(out.error.position)}`;
  } else if (!accepted) {
    return `yielded ${out.records.length} records for an input JSON.parse refuses`;
  }
  const expected = accepted ? (ref.value as unknown[]) : undefined;
  if (expected) {
    try {
      expect(out.records.map((r) => r.value)).to.deep.equal(expected);
    } catch {
      return 'records differ from JSON.parse';
    }
  }
  let last = -1;
  for (const [i, r] of out.records.entries()) {
    if (r.ordinal !== i + 1) return `ordinal ${r.ordinal} at index ${i}`;
    if (r.offset <= last) return `offsets not increasing at record ${r.ordinal}`;
    last = r.offset + r.length - 1;
    let back: unknown;
    try {
      back = JSON.parse(buf.subarray(r.offset, r.offset + r.length).toString('utf8'));
    } catch {
      return `record ${r.ordinal}: bytes ${r.offset}+${r.length} do not parse`;
    }
    try {
      expect(back).to.deep.equal(r.value);
    } catch {
      return `record ${r.ordinal}: bytes ${r.offset}+${r.length} parse to another value`;
    }
    const lc = lineColumn(buf, r.offset);
    if (r.line !== lc.line || r.column !== lc.column) return `record ${r.ordinal}: line/column ${r.line}/${r.column}, expected ${lc.line}/${lc.column}`;
    if (spans && (r.offset !== spans[i]![0] || r.length !== spans[i]![1] - spans[i]![0])) {
      return `record ${r.ordinal}: span ${r.offset}+${r.length}, written at ${spans[i]![0]}+${spans[i]![1] - spans[i]![0]}`;
    }
  }
  const p = out.error?.position as { offset?: number; line?: number; column?: number } | undefined;
  if (out.error?.code === 'USERPORT_INPUT_UTF8' && p?.offset !== firstInvalidUtf8(buf)) {
    return `invalid UTF-8 reported at byte ${p?.offset}, the first ill-formed sequence is at ${firstInvalidUtf8(buf)}`;
  }
  if (p?.offset !== undefined) {
    if (p.offset < 0 || p.offset > buf.length) return `error offset ${p.offset} outside the input`;
    if (p.offset <= last && out.error!.code !== 'USERPORT_LIMIT_RECORD_SIZE') return `error offset ${p.offset} inside an emitted record`;
    const lc = lineColumn(buf, p.offset);
    if (p.line !== undefined && (p.line !== lc.line || p.column !== lc.column)) return `error line/column ${p.line}/${p.column}, expected ${lc.line}/${lc.column}`;
  }
  return undefined;
}

/**
 * Runs all chunkings of one input and checks them against JSON.parse and each other. On failure
 * only the error must match across chunkings: records completed earlier in the chunk that fails
 * are not returned (write() throws), so a failing input yields a prefix that depends on chunking.
 */
function check(buf: Buffer, rng: Rng, spans?: [number, number][]): void {
  const whole = split(buf, [Math.max(1, buf.length)]);
  for (const sizes of [[Math.max(1, buf.length)], [1], randomSizes(rng)]) {
    const out = sizes.length === 1 && sizes[0] === Math.max(1, buf.length) ? whole : split(buf, sizes);
    const problem = judge(buf, out, spans);
    if (problem) throw new Error(`${problem} (chunks [${sizes.join(',')}])\ninput (base64): ${buf.toString('base64')}`);
    try {
      if (whole.error) expect(out.error).to.deep.equal(whole.error);
      else expect(out.records).to.deep.equal(whole.records);
    } catch {
      throw new Error(`chunks [${sizes.join(',')}] give another outcome than one chunk: ${JSON.stringify(out.error)} vs ${JSON.stringify(whole.error)}` +
        `\ninput (base64): ${buf.toString('base64')}`);
    }
  }
}

describe('tokenizer differential test against JSON.parse (issue #5)', () => {
  it(`agrees with JSON.parse on ${GENERATED} generated exports, records and positions, in any chunking`, () => {
    const rng = new Rng(SEED);
    let records = 0;
    for (let i = 0; i < GENERATED; i++) {
      const g = generate(rng);
      records += g.records.length;
      check(g.buf, rng, g.spans);
    }
    expect(records).to.be.above(GENERATED); // the generator does produce records
  });

  it('fails with a coded error on valid JSON that is not an array of objects', () => {
    const rng = new Rng(SEED + 1);
    for (let i = 0; i < 400; i++) {
      const buf = notAnArrayOfObjects(rng);
      check(buf, rng);
    }
  });

  it(`agrees with JSON.parse on ${FUZZED} fuzzed exports (byte flips, truncations, splices), in any chunking`, () => {
    const rng = new Rng(SEED + 2);
    const donors: Buffer[] = [];
    const seen: Record<string, number> = {};
    for (let i = 0; i < FUZZED; i++) {
      const g = generate(rng);
      donors.push(g.buf);
      if (donors.length > 8) donors.shift();
      let buf = g.buf;
      const n = rng.range(1, 3);
      for (let k = 0; k < n; k++) buf = mutateBytes(buf, rng, donors);
      // Now and then a whole, partial or misplaced byte-order mark in front.
      if (rng.chance(0.05)) buf = Buffer.concat([Buffer.from(rng.pick(['ef', 'efbb', 'efbbbf', 'bbbf', 'efbbbfefbbbf']), 'hex'), buf]);
      check(buf, rng);
      const code = split(buf, [Math.max(1, buf.length)]).error?.code ?? 'accepted';
      seen[code] = (seen[code] ?? 0) + 1;
    }
    // The mutations reach both sides: many inputs are refused, some still parse.
    expect(seen.accepted ?? 0).to.be.above(50);
    expect(Object.keys(seen).length).to.be.above(5);
  });

  it('enforces maxDepth and maxRecordBytes exactly at the first record over a limit', () => {
    const rng = new Rng(SEED + 3);
    let limited = 0;
    for (let i = 0; i < 1000; i++) {
      const g = generate(rng);
      const options = { maxDepth: rng.range(2, 6), maxRecordBytes: rng.range(16, 400) };
      const over = g.records.findIndex((r, k) => depthOf(r) > options.maxDepth || g.spans[k]![1] - g.spans[k]![0] > options.maxRecordBytes);
      for (const sizes of [[Math.max(1, g.buf.length)], [1], randomSizes(rng)]) {
        const out = split(g.buf, sizes, options);
        if (over === -1) {
          expect(out.error, `input ${g.buf.toString('base64')}`).to.equal(undefined);
          expect(out.records.map((r) => r.value)).to.deep.equal(g.records);
          continue;
        }
        limited++;
        const rec = g.records[over];
        const deep = depthOf(rec) > options.maxDepth;
        const big = g.spans[over]![1] - g.spans[over]![0] > options.maxRecordBytes;
        // When both limits are broken, which one trips first depends on where the chunk ends.
        const codes = [...(deep ? ['USERPORT_LIMIT_DEPTH'] : []), ...(big ? ['USERPORT_LIMIT_RECORD_SIZE'] : [])];
        expect(codes, `input ${g.buf.toString('base64')} ${JSON.stringify(options)}`).to.include(out.error?.code);
        expect((out.error!.position as { ordinal: number }).ordinal).to.equal(over + 1);
        expect(out.records.length).to.be.at.most(over);
        expect(out.records.map((r) => r.value)).to.deep.equal(g.records.slice(0, out.records.length));
      }
    }
    expect(limited).to.be.above(100);
  });

  it('gives the same records through the stream stage as through the splitter', async () => {
    const rng = new Rng(SEED + 4);
    for (let i = 0; i < 150; i++) {
      const g = generate(rng);
      const size = rng.pick([1, 3, 17, 4096]);
      const viaStream = await collect<RawRecord>(chunked(g.buf, size), createTokenizer());
      expect(viaStream).to.deep.equal(split(g.buf, [size]).records);
    }
  });
});
