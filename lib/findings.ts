/**
 * The findings file, one format for both directions: a JSON array, one entry per line, every
 * entry with the same keys ({@link Finding}). An import lists the records it skipped per model and
 * reason, and every dropped, filtered, merged or renamed row and address note (read page by page
 * from `userport.findings`, in constant memory);
 * an export lists the rows it left out per model and reason, the models and columns the
 * database lacks; both list the `--filter-usernames` names that matched no user, or the error
 * that stopped the run.
 */
import fs from 'node:fs';
import type pg from 'pg';
import { findingsInOrder, type FindingRow } from './db/findings.js';
import type { Position, UserportError } from './errors.js';

/**
 * One entry of a findings file, import's or export's: every entry has these keys, in this order
 * (`null` where one does not apply); an error's entry adds its position's `line`, `column` and
 * `field` when known.
 */
export interface Finding {
  /**
   * What the entry is: a row the import decided about (`ImportFinding`), rows or a model the
   * export left out (`ExportFinding`), a `--filter-usernames` name that matched no user
   * (`UnmatchedUsername`), or the error that stopped the run (`ImportError`, `ExportError`).
   */
  finding: 'ImportFinding' | 'ExportFinding' | 'UnmatchedUsername' | 'ImportError' | 'ExportError';
  /**
   * What happened: the import's `skipped` (records of a model, counted), `dropped`, `filtered`,
   * `merged`, `renamed`, `address`...; the
   * export's `excluded` (rows left out), `absent` (no table for the model), `missing-columns`;
   * `unmatched`; an error's code.
   */
  kind: string;
  /** Sentry's model name (`sentry.user`). */
  model: string | null;
  /** The source pk of the row (import), or of the record the error names. */
  pk: unknown;
  /** Rows the entry stands for: 1 for a row, the total for the import's skipped records and the export's rows left out. */
  count: number | null;
  /** The row's record in the import's file: 1-based index in the array, byte offset of its `{`. */
  ordinal: number | null;
  offset: number | null;
  /** Why, in words. */
  reason: string;
}

/** Findings read per query. */
const PAGE_ROWS = 5000;

/** A findings file being written: entries go to disk as they come (created 0600). */
class FindingsFile {
  private fd: number | undefined;
  private first = true;

  constructor(file: string) {
    this.fd = fs.openSync(file, 'w', 0o600);
  }

  put(f: Finding): void {
    fs.writeSync(this.fd!, (this.first ? '[\n' : ',\n') + JSON.stringify(f));
    this.first = false;
  }

  /** Ends the array (an entry per line, or `[]`). */
  finish(): void {
    fs.writeSync(this.fd!, this.first ? '[]\n' : '\n]\n');
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Writes `findings` to `file`, closing it whatever happens. */
async function writeFindingsFile(file: string, findings: Iterable<Finding> | AsyncIterable<Finding>): Promise<void> {
  const out = new FindingsFile(file);
  try {
    for await (const f of findings) out.put(f);
    out.finish();
  } finally {
    out.close();
  }
}

/** An entry with the keys that apply; the rest `null`. */
function finding(f: Pick<Finding, 'finding' | 'kind' | 'reason'> & Partial<Finding>): Finding {
  return { finding: f.finding, kind: f.kind, model: f.model ?? null, pk: f.pk ?? null, count: f.count ?? null,
    ordinal: f.ordinal ?? null, offset: f.offset ?? null, reason: f.reason };
}

function unmatchedUsername(name: string): Finding {
  return finding({ finding: 'UnmatchedUsername', kind: 'unmatched', model: 'sentry.user', reason: `--filter-usernames: no user named "${name}"` });
}

/** Records an import skipped, of one model: how many, and why (the summary's `skipped`, `skippedReasons`). */
export interface SkippedRecords {
  model: string;
  count: number;
  reason: string;
}

function skippedFinding(s: SkippedRecords): Finding {
  return finding({ finding: 'ImportFinding', kind: 'skipped', model: s.model, count: s.count, reason: s.reason });
}

function importFinding(r: FindingRow): Finding {
  return finding({ finding: 'ImportFinding', kind: r.kind, model: r.model, pk: r.source_pk, count: 1,
    ordinal: Number(r.ordinal), offset: Number(r.byte_offset), reason: r.reason });
}

/** The findings of import `run`: names unmatched, models skipped (a count each), then its rows' in file order, a page at a time. */
async function* importFindings(c: pg.ClientBase, run: number, unmatched: readonly string[], skipped: readonly SkippedRecords[]): AsyncGenerator<Finding> {
  for (const name of unmatched) yield unmatchedUsername(name);
  for (const s of skipped) yield skippedFinding(s);
  for await (const page of findingsInOrder(c, run, PAGE_ROWS)) for (const r of page) yield importFinding(r);
}

/**
 * Writes the findings of import `run` as a JSON array, page by page (constant memory): the
 * `--filter-usernames` names that matched no user, the records skipped per model (out of scope,
 * or of a model the target skips: one entry with their count each), then every row the merge
 * decided about.
 */
export async function writeFindings(c: pg.ClientBase, run: number, file: string, unmatched: string[], skipped: readonly SkippedRecords[] = []): Promise<void> {
  await writeFindingsFile(file, importFindings(c, run, unmatched, skipped));
}

/**
 * What an export left out, as its summary (`ExportSummary`) says it: stated here so this module
 * needs nothing of the export's.
 */
export interface ExportLeftOut {
  unmatchedUsernames: readonly string[];
  excluded: readonly { model: string; count: number; reason: string }[];
  absentModels: Readonly<Record<string, string>>;
  missingColumns: Readonly<Record<string, readonly string[]>>;
}

/** What an export's summary tells, as findings: rows left out, models and columns absent, names unmatched. */
function* exportFindings(s: ExportLeftOut): Generator<Finding> {
  for (const name of s.unmatchedUsernames) yield unmatchedUsername(name);
  for (const e of s.excluded) yield finding({ finding: 'ExportFinding', kind: 'excluded', model: e.model, count: e.count, reason: e.reason });
  for (const [model, why] of Object.entries(s.absentModels)) {
    yield finding({ finding: 'ExportFinding', kind: 'absent', model, reason: why });
  }
  for (const [model, fields] of Object.entries(s.missingColumns)) {
    yield finding({ finding: 'ExportFinding', kind: 'missing-columns', model,
      reason: `the database has no column for ${fields.join(', ')} (left out of every record)` });
  }
}

/** Writes an export's findings (from its summary) as a JSON array. */
export async function writeExportFindings(file: string, summary: ExportLeftOut): Promise<void> {
  await writeFindingsFile(file, exportFindings(summary));
}

/** Writes the error that stopped an import (or, with `direction`, an export) as the findings file's one entry. */
export function writeErrorFinding(file: string, e: UserportError, direction: 'import' | 'export' = 'import'): void {
  try {
    const { model, pk, ordinal, offset, ...where }: Position = e.position ?? {};
    const entry = finding({ finding: direction === 'import' ? 'ImportError' : 'ExportError', kind: e.code, model, pk, ordinal, offset, reason: e.message });
    const out = new FindingsFile(file);
    try {
      out.put({ ...entry, ...where });
      out.finish();
    } finally {
      out.close();
    }
  } catch {
    // The findings file is a report; failing to write it must not hide the real error.
  }
}
