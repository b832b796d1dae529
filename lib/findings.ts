/**
 * The findings file of an import: every dropped, filtered, merged or renamed row (or the error
 * that stopped it) as one JSON array, written page by page in constant memory.
 */
import fs from 'node:fs';
import type pg from 'pg';
import { findingsPage, type FindingsCursor } from './db/findings.js';
import type { UserportError } from './errors.js';

/** Findings read per query. */
const PAGE_ROWS = 5000;

/** Writes the findings of `run` as a JSON array, page by page (constant memory). */
export async function writeFindings(c: pg.ClientBase, run: number, file: string, unmatched: string[]): Promise<void> {
  const fd = fs.openSync(file, 'w', 0o600);
  try {
    let first = true;
    const put = (obj: unknown) => { fs.writeSync(fd, (first ? '[\n' : ',\n') + JSON.stringify(obj)); first = false; };
    for (const name of unmatched) put({ finding: 'UnmatchedUsername', kind: 'unmatched', model: 'sentry.user', reason: `--filter-usernames: no user named "${name}"` });
    let after: FindingsCursor | undefined;
    for (;;) {
      const page = await findingsPage(c, run, after, PAGE_ROWS);
      for (const r of page) {
        put({ finding: 'ImportFinding', kind: r.kind, model: r.model, pk: r.source_pk, ordinal: r.ordinal, offset: r.byte_offset, reason: r.reason });
      }
      if (page.length < PAGE_ROWS) break;
      const last = page[page.length - 1]!;
      after = { ordinal: Number(last.ordinal), kind: last.kind };
    }
    fs.writeSync(fd, first ? '[]\n' : '\n]\n');
  } finally {
    fs.closeSync(fd);
  }
}

export function writeErrorFinding(file: string, e: UserportError): void {
  try {
    const p = e.position ?? {};
    fs.writeFileSync(file, JSON.stringify([{ finding: 'ImportError', kind: e.code, reason: e.message, ...p }], null, 2) + '\n', { mode: 0o600 });
  } catch {
    // The findings file is a report; failing to write it must not hide the real error.
  }
}
