/**
 * The bare floor (issue #11 target 2): the same rows as the COPY floor, loaded into the tables
 * without their indexes, unique constraints and foreign keys, which are then built again with
 * the same definitions, all in one transaction, as a restore into empty tables may do (pgloader,
 * pg_restore). It is the reference for an import into an empty target that builds its indexes
 * after loading; the COPY floor stays the denominator of the ratios.
 *
 * The definitions are read from the fresh migrated database itself (`pg_get_indexdef`,
 * `pg_get_constraintdef`) and the objects dropped before the timing starts, so what is rebuilt
 * is exactly what the migrations create, whatever they become. NOT NULL and CHECK constraints
 * stay: they cost nothing to keep and cannot be deferred anyway.
 */
import pg from 'pg';
import { copyDump, type TableDump } from './copy-floor.js';
import { inTransaction, withClient } from './databases.js';

export interface BareFloorResult {
  /** Seconds from BEGIN to COMMIT: the COPYs, the index and constraint builds, the commit. */
  seconds: number;
  /** Seconds of the COPYs alone. */
  copySeconds: number;
  /** Seconds of building the indexes and constraints. */
  buildSeconds: number;
  rows: Record<string, number>;
  /** The indexes and constraints rebuilt (unique constraints and primary keys counted once, not with their index). */
  objects: { indexes: number; constraints: number; foreignKeys: number };
}

interface Definition { table: string; name: string; sql: string }

/** What the tables of `tables` have: plain and unique indexes, primary key and unique constraints, foreign keys (theirs and those pointing at them). */
export async function tableDefinitions(c: pg.Client, tables: readonly string[]): Promise<{ indexes: Definition[]; constraints: Definition[]; foreignKeys: Definition[] }> {
  const q = async (sql: string) => (await c.query(sql, [tables])).rows as { table: string; name: string; sql: string }[];
  // Indexes that no constraint owns (a constraint is re-added with its own index).
  const indexes = await q(`SELECT i.indrelid::regclass::text AS table, i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS sql
    FROM pg_index i WHERE i.indrelid::regclass::text = ANY($1)
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x') AND k.conrelid = i.indrelid)
    ORDER BY 1, 2`);
  const constraints = await q(`SELECT conrelid::regclass::text AS table, conname AS name, pg_get_constraintdef(oid) AS sql
    FROM pg_constraint WHERE conrelid::regclass::text = ANY($1) AND contype IN ('p', 'u', 'x')
    ORDER BY contype, 1, 2`);
  const foreignKeys = await q(`SELECT conrelid::regclass::text AS table, conname AS name, pg_get_constraintdef(oid) AS sql
    FROM pg_constraint WHERE contype = 'f' AND (conrelid::regclass::text = ANY($1) OR confrelid::regclass::text = ANY($1))
    ORDER BY 1, 2`);
  return { indexes, constraints, foreignKeys };
}

const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;

/**
 * In the fresh migrated database at `url`: drops the indexes and constraints of the dumped
 * tables (untimed), then, timed, in one transaction: COPYs the dumps and builds them all again.
 */
export async function loadTablesBare(url: string, dumps: readonly TableDump[]): Promise<BareFloorResult> {
  return withClient(url, async (c) => {
    const tables = dumps.map((d) => d.table);
    const defs = await tableDefinitions(c, tables);
    for (const f of defs.foreignKeys) await c.query(`ALTER TABLE ${f.table} DROP CONSTRAINT ${ident(f.name)}`);
    for (const k of defs.constraints) await c.query(`ALTER TABLE ${k.table} DROP CONSTRAINT ${ident(k.name)}`);
    for (const i of defs.indexes) await c.query(`DROP INDEX ${i.name}`);
    const rows: Record<string, number> = {};
    const started = process.hrtime.bigint();
    const { copied, built } = await inTransaction(c, async () => {
      for (const d of dumps) rows[d.table] = await copyDump(c, d);
      const copiedAt = process.hrtime.bigint();
      // Primary keys and unique constraints first: the foreign keys need the referenced key.
      for (const k of defs.constraints) await c.query(`ALTER TABLE ${k.table} ADD CONSTRAINT ${ident(k.name)} ${k.sql}`);
      for (const i of defs.indexes) await c.query(i.sql);
      for (const f of defs.foreignKeys) await c.query(`ALTER TABLE ${f.table} ADD CONSTRAINT ${ident(f.name)} ${f.sql}`);
      return { copied: copiedAt, built: process.hrtime.bigint() };
    });
    return {
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
      copySeconds: Number(copied - started) / 1e9,
      buildSeconds: Number(built - copied) / 1e9,
      rows,
      objects: { indexes: defs.indexes.length, constraints: defs.constraints.length, foreignKeys: defs.foreignKeys.length },
    };
  });
}
