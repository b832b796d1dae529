/**
 * The fuzzer shared by the CI fuzz test and the long run (`npm run fuzz`): mutate valid exports,
 * push each through the in-memory stages (tokenizer -> filter -> mapper, real streams, random
 * chunk sizes) and check the outcome is a success or a clean coded error.
 *
 * "Clean" means: a UserportError whose code is USERPORT_*, whose position (when it has one) is
 * inside the input with line and column matching the byte offset; and on success, exactly one
 * item per array element, every staged value in the form its staging column expects.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UserportError } from '../../lib/errors.js';
import { createUserFilter } from '../../lib/filter-users.js';
import { createModelMapper, type MappedItem } from '../../lib/map-models.js';
import { isDateTime, STAGE_COLUMNS } from '../../lib/models.js';
import { createTokenizer } from '../../lib/tokenize.js';
import { chunked, collect } from '../helpers/streams.js';
import { sharedFixtures, sharedJsonFiles } from '../helpers/shared.js';
import { lineColumn, mutateBytes, mutateRecords, Rng, serializeExport, validExportRecords } from './gen.js';

export const CODE = /^USERPORT_[A-Z0-9_]+$/;

/** A valid export to mutate, and the parsed records it holds. */
export interface Seed {
  buf: Buffer;
  records: unknown[];
}

/** Seeds: generated exports, and the real Sentry fixtures when the shared folder is there. */
export function makeSeeds(rng: Rng, count: number): Seed[] {
  const seeds: Seed[] = [];
  for (let i = 0; i < count; i++) {
    const records = validExportRecords(rng);
    seeds.push({ buf: Buffer.from(serializeExport(records, rng)), records });
  }
  const shared = sharedFixtures('sentry');
  if (shared) {
    for (const f of sharedJsonFiles(shared)) {
      const buf = fs.readFileSync(path.join(shared, f));
      seeds.push({ buf, records: JSON.parse(buf.toString('utf8')) as unknown[] });
    }
  }
  return seeds;
}

/** One fuzz input: 1-4 stacked mutations (structural, byte-level, or both) of a seed. */
export function mutate(seed: Seed, rng: Rng, donors: readonly Buffer[]): Buffer {
  let buf = seed.buf;
  if (rng.chance(0.4)) {
    let recs = seed.records;
    const n = rng.range(1, 3);
    for (let i = 0; i < n; i++) recs = mutateRecords(recs, rng);
    buf = Buffer.from(serializeExport(recs, rng));
    if (rng.chance(0.7)) return buf;
  }
  const n = rng.range(1, 4);
  for (let i = 0; i < n; i++) buf = mutateBytes(buf, rng, donors);
  if (rng.chance(0.05)) buf = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), buf]);
  return buf;
}

/** What JSON.parse makes of the bytes (after an optional BOM), or undefined when it refuses them. */
export function reference(buf: Buffer): { value: unknown } | undefined {
  const body = buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf ? buf.subarray(3) : buf;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(body);
  } catch {
    return undefined;
  }
  try {
    return { value: JSON.parse(text) as unknown };
  } catch {
    return undefined;
  }
}

/** Why a staged value is not in its column's form, or undefined. */
function badStagedValue(item: MappedItem): string | undefined {
  if (item.kind !== 'row') return undefined;
  for (let i = 0; i < STAGE_COLUMNS.length; i++) {
    const [col, type] = STAGE_COLUMNS[i]!;
    const v = item.values[i];
    if (v === null || v === undefined) continue;
    const ok = type === 'text' ? typeof v === 'string' && !v.includes('\u0000') && v.isWellFormed()
      : type === 'bool' ? typeof v === 'boolean'
        : type === 'int' ? (typeof v === 'number' && Number.isSafeInteger(v)) || (typeof v === 'string' && /^[0-9]{1,18}$/.test(v))
          : type === 'timestamptz' ? typeof v === 'string' && isDateTime(v)
            : typeof v === 'string' && (() => { try { JSON.parse(v); return !v.includes('\\u0000'); } catch { return false; } })();
    if (!ok) return `column ${col} (${type}) got ${JSON.stringify(v)}`;
  }
  if (!Number.isSafeInteger(item.pk)) return `pk ${String(item.pk)} is not a safe integer`;
  return undefined;
}

/** Checks that an error is a clean coded error; returns what is wrong with it, or undefined. */
export function badError(err: unknown, buf: Buffer): string | undefined {
  if (!(err instanceof UserportError)) return `not a UserportError: ${(err as Error)?.stack ?? String(err)}`;
  if (!CODE.test(err.code)) return `code ${String(err.code)} is not USERPORT_*`;
  // What the CLI prints must stay one line with no terminal control sequences from the export.
  const line = err.describe();
  if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(line)) return `unprintable characters in the error line: ${JSON.stringify(line)}`;
  const p = err.position;
  if (!p) return undefined;
  if (p.ordinal !== undefined && !(Number.isInteger(p.ordinal) && p.ordinal >= 1)) return `ordinal ${p.ordinal}`;
  if (p.offset !== undefined) {
    if (!(Number.isInteger(p.offset) && p.offset >= 0 && p.offset <= buf.length)) return `offset ${p.offset} outside 0..${buf.length}`;
    if (p.line !== undefined || p.column !== undefined) {
      const lc = lineColumn(buf, p.offset);
      if (p.line !== lc.line || p.column !== lc.column) {
        return `line/column ${p.line}/${p.column} do not match byte ${p.offset} (${lc.line}/${lc.column})`;
      }
    }
  }
  return undefined;
}

export interface StageOutcome {
  /** Items that left the mapper (success), or undefined. */
  items?: MappedItem[];
  error?: unknown;
  /** What broke the contract, or undefined when the outcome is fine. */
  problem?: string;
}

/** Runs `buf` through tokenizer -> filter -> mapper in `chunk`-byte chunks and judges the outcome. */
export async function runStages(buf: Buffer, chunk: number, collectRejects: boolean): Promise<StageOutcome> {
  let items: MappedItem[];
  try {
    // As importUsers does: a non-object element is an item the filter reports (or rejects).
    items = await collect<MappedItem>(chunked(buf, chunk), createTokenizer({ nonObjects: 'emit' }),
      createUserFilter({ collectRejects }), createModelMapper({ collectRejects }));
  } catch (error) {
    return { error, problem: badError(error, buf) };
  }
  const ref = reference(buf);
  if (!ref || !Array.isArray(ref.value)) return { items, problem: 'accepted an input JSON.parse refuses (or not an array)' };
  if (items.length !== ref.value.length) return { items, problem: `${items.length} items for ${ref.value.length} records` };
  for (const item of items) {
    const bad = badStagedValue(item);
    if (bad) return { items, problem: `record ${item.ordinal}: ${bad}` };
    if (item.kind === 'reject') {
      const why = badError(item.error, buf);
      if (why) return { items, problem: `reject of record ${item.ordinal}: ${why}` };
    }
  }
  return { items };
}

export interface FuzzReport {
  runs: number;
  successes: number;
  /** Error codes seen, with counts. */
  codes: Record<string, number>;
  failures: { iteration: number; problem: string; file: string }[];
}

/**
 * Runs `iterations` stage-level fuzz cases from `seed`. Each failing input is saved to a file in
 * the temp folder so it can be replayed.
 */
export async function fuzzStages(seed: number, iterations: number, onProgress?: (i: number) => void): Promise<FuzzReport> {
  const rng = new Rng(seed);
  const seeds = makeSeeds(rng, 12);
  const donors = seeds.map((s) => s.buf);
  const report: FuzzReport = { runs: 0, successes: 0, codes: {}, failures: [] };
  for (let i = 0; i < iterations; i++) {
    const input = mutate(rng.pick(seeds), rng, donors);
    const chunk = rng.pick([1, 2, 3, 7, 64, 1000, 1 << 20]);
    const out = await runStages(input, chunk, rng.chance(0.5));
    report.runs++;
    if (out.error === undefined) report.successes++;
    else {
      const code = (out.error as { code?: string }).code ?? '(none)';
      report.codes[code] = (report.codes[code] ?? 0) + 1;
    }
    if (out.problem) {
      const file = path.join(os.tmpdir(), `userport-fuzz-${seed}-${i}.json`);
      fs.writeFileSync(file, input);
      report.failures.push({ iteration: i, problem: `${out.problem} (chunk ${chunk})`, file });
      if (report.failures.length >= 20) break;
    }
    if (onProgress && i % 1000 === 999) onProgress(i + 1);
  }
  return report;
}

/** Tables an import writes to: all must be empty after a failed atomic import. */
export const TARGET_TABLES = ['auth_user', 'sentry_email', 'sentry_useremail', 'sentry_useroption', 'sentry_lostpasswordhash'] as const;
/** userport's own tables that a failed atomic import must not touch either. */
export const BOOKKEEPING_TABLES = ['userport.stage', 'userport.findings', 'userport.pk_ranges', 'userport.imports'] as const;

export interface ImportFuzzReport {
  runs: number;
  successes: number;
  codes: Record<string, number>;
  failures: { iteration: number; problem: string; file: string }[];
}

/**
 * Runs `iterations` mutated exports through the whole `importUsers` into the database at `url`
 * (migrated, its tables empty). After a failure every table must still be empty; after a success
 * the tables are emptied for the next case. The stage-level outcome is the oracle: when the
 * stages refuse the input the import fails with the same code; when they accept it, the only
 * error the database may add is a duplicated pk.
 */
export async function fuzzImports(seed: number, iterations: number, url: string): Promise<ImportFuzzReport> {
  const { importUsers } = await import('../../lib/import.js');
  const { createKnex } = await import('../../lib/db/knex.js');
  const { Readable } = await import('node:stream');
  const knex = createKnex(url, 2);
  const rng = new Rng(seed);
  const seeds = makeSeeds(rng, 6);
  const donors = seeds.map((s) => s.buf);
  const report: ImportFuzzReport = { runs: 0, successes: 0, codes: {}, failures: [] };
  const counts = async () => {
    const out: Record<string, number> = {};
    for (const t of [...TARGET_TABLES, ...BOOKKEEPING_TABLES]) out[t] = Number((await knex.raw(`SELECT count(*)::int AS n FROM ${t}`)).rows[0].n);
    return out;
  };
  try {
    for (let i = 0; i < iterations; i++) {
      // Mostly structural mutations, so that many inputs parse and reach the schemas and the merge.
      const base = rng.pick(seeds);
      let input: Buffer;
      if (rng.chance(0.7)) {
        let recs = base.records;
        for (let k = rng.range(1, 2); k > 0; k--) recs = mutateRecords(recs, rng);
        input = Buffer.from(serializeExport(recs, rng));
      } else {
        input = mutate(base, rng, donors);
      }
      // Every other case collects rejects instead of failing on the first bad record.
      const rejectsFile = i % 2 ? path.join(os.tmpdir(), `userport-fuzz-rejects-${process.pid}.jsonl`) : undefined;
      const stage = await runStages(input, 65536, !!rejectsFile);
      const stageCode = (stage.error as { code?: string } | undefined)?.code;
      let problem: string | undefined;
      let error: unknown;
      let summary: { models: Record<string, { rejected: number }> } | undefined;
      try {
        summary = await importUsers({ source: Readable.from([input]), databaseUrl: url, rejectsFile });
      } catch (err) {
        error = err;
      }
      report.runs++;
      if (error === undefined) {
        report.successes++;
        if (stageCode) problem = `the import succeeded but the stages failed with ${stageCode}`;
        if (!problem && rejectsFile) problem = checkRejects(rejectsFile, summary!, input);
        await knex.raw(`TRUNCATE ${[...TARGET_TABLES, ...BOOKKEEPING_TABLES].join(', ')} RESTART IDENTITY CASCADE`);
      } else {
        const code = (error as { code?: string }).code ?? '(none)';
        report.codes[code] = (report.codes[code] ?? 0) + 1;
        problem = badError(error, input);
        // The import reports the first bad record of the file; composed stages report whichever
        // stage fails first, which may be a later record (a syntax error the tokenizer meets
        // before the mapper sees an earlier record). A different code is fine only from earlier.
        const at = (e: unknown) => (e as { position?: { offset?: number } }).position?.offset ?? Infinity;
        if (!problem && stageCode && code !== stageCode && !(at(error) < at(stage.error))) {
          problem = `the import failed with ${code}, the stages with ${stageCode}`;
        }
        if (!problem && !stageCode && code !== 'USERPORT_RECORD_DUPLICATE_PK') {
          problem = `the stages accepted the input, the import failed with ${code}: ${(error as Error).message}`;
        }
        if (!problem) {
          const left = Object.entries(await counts()).filter(([, n]) => n > 0);
          if (left.length) problem = `a failed import left rows behind: ${left.map(([t, n]) => `${t} ${n}`).join(', ')}`;
        }
      }
      if (rejectsFile) fs.rmSync(rejectsFile, { force: true });
      if (problem) {
        const file = path.join(os.tmpdir(), `userport-fuzz-import-${seed}-${i}.json`);
        fs.writeFileSync(file, input);
        report.failures.push({ iteration: i, problem, file });
        await knex.raw(`TRUNCATE ${[...TARGET_TABLES, ...BOOKKEEPING_TABLES].join(', ')} RESTART IDENTITY CASCADE`);
      }
    }
  } finally {
    await knex.destroy();
  }
  return report;
}

/** A rejects file must hold one JSON line per rejected record, coded, positioned, secrets redacted. */
function checkRejects(file: string, summary: { models: Record<string, { rejected: number }> }, input: Buffer): string | undefined {
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const lines = text ? text.replace(/\n$/, '').split('\n') : [];
  const rejected = Object.values(summary.models).reduce((n, m) => n + m.rejected, 0);
  if (lines.length !== rejected) return `${lines.length} lines in the rejects file, ${rejected} rejected in the summary`;
  for (const line of lines) {
    let r: { code?: unknown; offset?: unknown; record?: { fields?: Record<string, unknown> } };
    try {
      r = JSON.parse(line) as typeof r;
    } catch {
      return `a rejects line is not JSON: ${line.slice(0, 200)}`;
    }
    if (typeof r.code !== 'string' || !CODE.test(r.code)) return `a rejects line has no USERPORT_* code: ${line.slice(0, 200)}`;
    if (typeof r.offset !== 'number' || r.offset < 0 || r.offset >= input.length) return `a rejects line has a bad offset: ${line.slice(0, 200)}`;
    const fields = r.record?.fields;
    if (fields && typeof fields === 'object' && !Array.isArray(fields)) {
      for (const k of ['password', 'validation_hash', 'session_nonce']) {
        const v = Object.getOwnPropertyDescriptor(fields, k)?.value;
        if (v !== undefined && v !== null && v !== '[redacted]') return `${k} not redacted in the rejects file: ${line.slice(0, 200)}`;
      }
    }
  }
  return undefined;
}
