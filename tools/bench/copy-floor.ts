/**
 * The COPY floor: the exact rows an import wrote, loaded again with one `COPY ... FROM STDIN` per
 * table into an empty database with the same schema (the migrations create the same indexes,
 * unique constraints and deferred foreign keys). It is what PostgreSQL alone needs to store that
 * data on this machine: no import can write the same rows faster.
 *
 * The rows are first dumped to files (`COPY ... TO STDOUT`, not timed), then loaded inside one
 * transaction, as an atomic import would: the deferred foreign keys are checked at COMMIT, which
 * is inside the measured time.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { inTransaction, withClient } from './databases.js';

/** The tables a user import writes, parents first. */
export const IMPORTED_TABLES = ['auth_user', 'sentry_email', 'sentry_useremail', 'sentry_useroption', 'sentry_lostpasswordhash'] as const;

export interface TableDump {
  table: string;
  file: string;
  rows: number;
  bytes: number;
}

export interface CopyFloorResult {
  /** Seconds from BEGIN to COMMIT. */
  seconds: number;
  /** Rows loaded per table. */
  rows: Record<string, number>;
  /** Seconds per table's COPY (the COMMIT is not in these). */
  tableSeconds: Record<string, number>;
  /** Size of the COPY text per table, in bytes. */
  bytes: Record<string, number>;
}

/** COPYs one dump into its table on `c`; returns the rows loaded. */
export async function copyDump(c: pg.Client, d: TableDump): Promise<number> {
  const q = c.query(copyFrom(`COPY ${d.table} FROM STDIN`));
  await pipeline(fs.createReadStream(d.file, { highWaterMark: 1 << 20 }), q);
  return q.rowCount;
}

/**
 * Writes every table of `tables` in the database at `url` to `<dir>/<table>.copy` (COPY text
 * format). With `afterIds`, only the rows of a table whose `id` is above its entry: the rows
 * written after a snapshot of {@link maxIds}.
 */
export async function dumpTables(url: string, dir: string, tables: readonly string[] = IMPORTED_TABLES,
  afterIds?: Record<string, number>): Promise<TableDump[]> {
  fs.mkdirSync(dir, { recursive: true });
  return withClient(url, async (c) => {
    const out: TableDump[] = [];
    for (const table of tables) {
      const file = path.join(dir, `${table}.copy`);
      const after = afterIds?.[table];
      const q = c.query(copyTo(after === undefined ? `COPY ${table} TO STDOUT`
        : `COPY (SELECT * FROM ${table} WHERE id > ${Number(after)} ORDER BY id) TO STDOUT`));
      await pipeline(q, fs.createWriteStream(file));
      out.push({ table, file, rows: q.rowCount, bytes: fs.statSync(file).size });
    }
    return out;
  });
}

/** The highest `id` of each table (0 when empty). */
export async function maxIds(url: string, tables: readonly string[] = IMPORTED_TABLES): Promise<Record<string, number>> {
  return withClient(url, async (c) => {
    const out: Record<string, number> = {};
    for (const t of tables) out[t] = Number((await c.query(`SELECT coalesce(max(id), 0)::bigint AS n FROM ${t}`)).rows[0].n);
    return out;
  });
}

/** Loads `dumps` into the (empty, migrated) database at `url`, one COPY per table in one transaction, timed. */
export async function loadTables(url: string, dumps: readonly TableDump[]): Promise<CopyFloorResult> {
  return withClient(url, async (c) => {
    const rows: Record<string, number> = {};
    const tableSeconds: Record<string, number> = {};
    const bytes: Record<string, number> = {};
    const started = process.hrtime.bigint();
    await inTransaction(c, async () => {
      for (const d of dumps) {
        const t0 = process.hrtime.bigint();
        rows[d.table] = await copyDump(c, d);
        bytes[d.table] = d.bytes;
        tableSeconds[d.table] = Number(process.hrtime.bigint() - t0) / 1e9;
      }
    });
    return { seconds: Number(process.hrtime.bigint() - started) / 1e9, rows, tableSeconds, bytes };
  });
}
