/** SQL on the findings table (`userport_finding`). */
import type pg from 'pg';

/** One row of `userport_finding`. */
export interface FindingRow {
  kind: string;
  model: string;
  source_pk: unknown;
  ordinal: number;
  byte_offset: number;
  reason: string;
}

/** The findings of `run` with an ordinal above `after`, in ordinal order, at most `limit`. */
export async function findingsPage(c: pg.ClientBase, run: number, after: number, limit: number): Promise<FindingRow[]> {
  const page = await c.query(`SELECT kind, model, source_pk, ordinal, byte_offset, reason FROM userport_finding
                              WHERE run = $1 AND ordinal > $2 ORDER BY ordinal LIMIT ${limit}`, [run, after]);
  return page.rows;
}
