/** SQL on the findings table (`userport.findings`). */
import type pg from 'pg';

/** One row of `userport.findings`. */
export interface FindingRow {
  kind: string;
  model: string;
  source_pk: unknown;
  ordinal: number;
  byte_offset: number;
  reason: string;
}

/** Where a page of findings ends: the next page starts after it. */
export interface FindingsCursor { ordinal: number; kind: string }

/**
 * The findings of `run` after `after` (in ordinal, then kind order: one record may have two, a
 * rename and an address note), at most `limit`.
 */
export async function findingsPage(c: pg.ClientBase, run: number, after: FindingsCursor | undefined, limit: number): Promise<FindingRow[]> {
  const page = await c.query(`SELECT kind, model, source_pk, ordinal, byte_offset, reason FROM userport.findings
                              WHERE run = $1 AND (ordinal, kind) > ($2::bigint, $3::text) ORDER BY ordinal, kind LIMIT ${limit}`,
  [run, after?.ordinal ?? -1, after?.kind ?? '']);
  return page.rows;
}
