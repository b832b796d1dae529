/**
 * What every step of a merge shares: the statement runner (with the SQL trace and plan printer
 * the specs and the benchmark read), the opening of a merge (isolation check, the merge lock),
 * the staging relation, and the staging codes of the models.
 */
import type pg from 'pg';
import { DatabaseError, ErrorCodes } from '../../errors.js';
import { modelInfo, scopeModels } from '../../models.js';

/** Key of the advisory lock that serializes merges. */
export const MERGE_LOCK_KEY = 7472117102;

/** Runs one statement of the merge. */
export type Q = (sql: string, params?: unknown[]) => Promise<pg.QueryResult>;

/** Staging codes of the merged models, from their schemas (`x-userport.code` in schemas/). */
export interface ModelCodes {
  user: number; email: number; userEmail: number; userOption: number;
  permission: number; role: number; roleUser: number; authenticator: number; userIp: number; token: number; authorization: number;
  /** Every model whose rows name their user (`"user": 1`, or a natural key before 23.9.1). */
  withUser: number[];
}

export function modelCodes(): ModelCodes {
  const code = (name: string) => modelInfo(name, 'global')!.mapping.code;
  return {
    user: code('sentry.user'), email: code('sentry.email'), userEmail: code('sentry.useremail'), userOption: code('sentry.useroption'),
    permission: code('sentry.userpermission'), role: code('sentry.userrole'), roleUser: code('sentry.userroleuser'),
    authenticator: code('sentry.authenticator'), userIp: code('sentry.userip'), token: code('sentry.apitoken'),
    authorization: code('sentry.apiauthorization'),
    withUser: scopeModels('global').filter((m) => m.mapping.naturalKeys?.user).map((m) => m.mapping.code),
  };
}

/** The statement runner of one merge: prints each statement's time and plan on request. */
export function runner(client: pg.ClientBase): Q {
  const trace = process.env.USERPORT_TRACE_SQL === '1';
  // Prints every statement's plan: how the specs check that no join can degrade quadratically.
  const explain = process.env.USERPORT_EXPLAIN_SQL === '1';
  return async (sql, params) => {
    if (explain && /^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE TEMP TABLE \w+ ON COMMIT DROP AS)\b/.test(sql) && !/WITH NO DATA\s*$/.test(sql)) {
      const plan = await client.query(`EXPLAIN ${sql}`, params as unknown[]);
      process.stderr.write(`[plan] ${sql.trim().replace(/\s+/g, ' ').slice(0, 90)}\n${plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n')}\n[/plan]\n`);
    }
    const t0 = trace ? performance.now() : 0;
    const r = await client.query(sql, params as unknown[]);
    if (trace) process.stderr.write(`[sql ${(performance.now() - t0).toFixed(0)} ms] ${sql.trim().replace(/\s+/g, ' ').slice(0, 90)}\n`);
    return r;
  };
}

/**
 * The staging relation of this session: the TEMP table of an atomic import (the sink made it in
 * this transaction), else the persistent `userport.stage` of resumable imports.
 */
export async function stagingTable(q: Q): Promise<string> {
  return (await q(`SELECT coalesce(to_regclass('pg_temp.stage')::text, 'userport.stage') AS s`)).rows[0].s as string;
}

/**
 * What every merge starts with; harmless to repeat in one transaction (the early users phase,
 * then the rest). Returns the staging relation.
 */
export async function openMerge(q: Q): Promise<string> {
  // After the lock, each statement must see what earlier merges committed: only READ COMMITTED
  // takes a new snapshot per statement (importUsers sets it; a caller's own client may not).
  const iso = (await q(`SELECT current_setting('transaction_isolation') AS level`)).rows[0].level as string;
  if (iso !== 'read committed') {
    throw new DatabaseError(ErrorCodes.DB_SETTING, `the merge needs a READ COMMITTED transaction, this one is ${iso.toUpperCase()}`);
  }
  await q('SELECT pg_advisory_xact_lock($1)', [MERGE_LOCK_KEY]);
  // The ORDER BY src_pk sorts of big imports spilled to disk at the default 4 MB.
  await q(`SET LOCAL work_mem = '64MB'`);
  const S = await stagingTable(q);
  // Statistics only of the columns later statements join or filter on: a wide table's other
  // columns would cost time to sample and help no plan.
  await q(`ANALYZE ${S} (run, model, src_pk, user_pk, keep, username, email)`);
  return S;
}

/** The sequence behind `table`'s `id` (schema-qualified, quoted as needed), if it has one. */
export async function idSequence(q: Q, table: string): Promise<string | null> {
  return (await q(`SELECT pg_get_serial_sequence($1, 'id') AS seq`, [table])).rows[0].seq as string | null;
}
