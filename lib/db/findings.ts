/**
 * SQL of what an import found, for its summary and findings file: the findings table
 * (`userport.findings`), and the usernames of the filter that no staged user has.
 */
import type pg from 'pg';
import { stagingTable } from './merge/run.js';

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

/** The usernames of `names` (deduplicated, sorted) that no kept staged user of `run` has. */
export async function unmatchedUsernames(c: pg.ClientBase, run: number, userCode: number, names: Iterable<string>): Promise<string[]> {
  const S = await stagingTable((sql) => c.query(sql));
  const r = await c.query(`SELECT name FROM unnest($2::text[]) AS name
                           WHERE NOT EXISTS (SELECT 1 FROM ${S} s WHERE s.run = $1 AND s.model = ${userCode} AND s.keep AND s.username = name)
                           ORDER BY name`, [run, [...new Set(names)]]);
  return r.rows.map((x: { name: string }) => x.name);
}
