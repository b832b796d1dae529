/**
 * SQL of what an import found, for its summary and findings file: the findings table
 * (`userport.findings`), and the usernames of the filter that no staged user has.
 */
import type pg from 'pg';
import { cursorPages, stagingTable } from './merge/run.js';

/** One row of `userport.findings`. */
export interface FindingRow {
  kind: string;
  model: string;
  source_pk: unknown;
  ordinal: number;
  byte_offset: number;
  reason: string;
}

/**
 * The findings of `run` in file order (ordinal, then kind: one record may have two, a rename and
 * an address note), `pageRows` at a time, through a cursor: the run's findings are sorted once.
 * Paging by `(ordinal, kind) > last` re-read and re-sorted the run's findings for every page over
 * the index on `run` (1.2M findings, 245 pages: 55 s against 4 s). `c` must be in a transaction
 * (the import's, which writes the findings file before its COMMIT).
 */
export function findingsInOrder(c: pg.ClientBase, run: number, pageRows: number): AsyncGenerator<FindingRow[]> {
  // The cursor is closed also when the caller stopped early (its file failed); a failed
  // transaction ends it with it, and the caller's error is the one to report (cursorPages).
  return cursorPages<FindingRow>(c, 'userport_findings', `SELECT kind, model, source_pk, ordinal, byte_offset, reason FROM userport.findings
    WHERE run = $1 ORDER BY ordinal, kind`, { params: [run], pageRows, arrays: false });
}

/** The usernames of `names` (deduplicated, sorted) that no kept staged user of `run` has. */
export async function unmatchedUsernames(c: pg.ClientBase, run: number, userCode: number, names: Iterable<string>): Promise<string[]> {
  const S = await stagingTable((sql) => c.query(sql));
  const r = await c.query(`SELECT name FROM unnest($2::text[]) AS name
                           WHERE NOT EXISTS (SELECT 1 FROM ${S} s WHERE s.run = $1 AND s.model = ${userCode} AND s.keep AND s.username = name)
                           ORDER BY name`, [run, [...new Set(names)]]);
  return r.rows.map((x: { name: string }) => x.name);
}
