/**
 * The bulk path of the merge ("load first, index after", as pgloader does a restore): into empty
 * tables, or tables that hold a few rows (a new Sentry with its first admin, a test instance).
 */
import type pg from 'pg';
import { together, togetherWithSettings, type Q } from './run.js';
import type { WritePlan } from './plan.js';

/**
 * The empty-target path ("load first, index after", as pgloader does a restore). When every
 * target table is empty and this transaction can lock them all at once, the unique constraints,
 * secondary indexes and foreign keys among them (those only where the rows' checks stay on:
 * row-checks.ts) are dropped, the rows are inserted into bare
 * heaps, and the very same definitions (`pg_get_constraintdef`/`pg_get_indexdef`, same names) are
 * created again before the merge ends: one index build and one bulk foreign-key check per
 * constraint instead of a per-row index insertion and a per-row deferred trigger. All inside the
 * import's transaction: a failure or a dry run rolls the definitions back with the rows.
 *
 * Only on tables that hold at most {@link FEW_ROWS} rows each (a new Sentry holds its first admin:
 * rebuilding an index over a few existing rows costs nothing against the import's): the tables
 * are locked (ACCESS EXCLUSIVE, NOWAIT: never waiting for another session) only after they were
 * seen so, and checked again once locked. With rows present the merge's decisions still look them
 * up (`empty` false), by joins the planner hashes without the dropped indexes, and the rebuilt
 * unique constraints check every row, the existing ones included. Primary keys are dropped and
 * rebuilt too where nothing outside the five tables hangs on them: appending ids to a btree still
 * writes one WAL record per row (2.6 s for 1.7M options, against 0.6 s for one sorted build).
 * `auth_user`'s stays (Sentry's other tables' foreign keys point at it), and so does any
 * constraint or index another table's foreign key depends on, or a foreign key that points at a
 * table outside the five (its table would be locked too).
 */
export interface BulkLoad {
  /**
   * Recreates what was dropped on `tables` (every table when omitted), in dependency order:
   * indexes, primary keys and unique constraints, then foreign keys; each object once, however often called.
   * The early users step rebuilds the users' tables as soon as they are complete.
   * `serial`: the builds get no parallel worker ({@link SERIAL_BUILDS}; the early steps', which
   * mostly run while Node still reads the export).
   */
  rebuild(tables?: readonly string[], options?: { serial?: boolean }): Promise<void>;
  /**
   * Marks what `rebuild(tables)` recreated as dropped again, for a caller whose savepoint around
   * that rebuild was rolled back (the early rows', early.ts): the last rebuild builds it again.
   */
  unbuild(tables: readonly string[]): void;
  /** True when every table was empty (no existing row to decide against). */
  readonly empty: boolean;
}

/**
 * Rows a table may hold for the bulk path. A new Sentry holds one admin (a user, its user email,
 * an Email row); a test instance a few hundred users. Above it, the rows already there make the
 * target's own indexes worth keeping, and other sessions are likely to use the tables.
 */
export const FEW_ROWS = 1000;

/**
 * The settings of the early steps' index builds, which mostly run while Node still reads the
 * export: no parallel worker beside the server's process. PostgreSQL gives a build of the users'
 * or the options' tables one or two workers (`max_parallel_maintenance_workers`), which take the
 * core Node parses the export on; measured alone, the builds take about as long with them as without
 * (bench/NOTES.md). The last rebuild, after the input, keeps the server's own setting.
 */
export const SERIAL_BUILDS = { max_parallel_maintenance_workers: '0' } as const;

interface DroppedObject { table: string; name: string; kind: 'index' | 'primary' | 'unique' | 'foreign'; definition: string }

const IDENT_SQL = (s: string) => `"${s.replace(/"/g, '""')}"`;

/**
 * `catalog` runs the catalog queries (not traced or explained: their plans are PostgreSQL's
 * business). `keepForeignKeys`: the foreign keys among the tables stay in place, because the
 * caller turns the rows' checks off where they cannot fail (row-checks.ts).
 */
export async function enterBulkLoad(q: Q, catalog: (sql: string) => Promise<pg.QueryResult>, plan: WritePlan,
  options: { keepForeignKeys: boolean }): Promise<BulkLoad | undefined> {
  // The tables of the plan: a table the target lacks is neither written nor locked.
  const tables = [plan.user.table, plan.email?.table, plan.userEmail?.table, plan.userOption?.table, plan.lostPassword?.table]
    .filter((t): t is string => t !== undefined);
  const list = tables.map((t) => `'${t}'::regclass`).join(', ');
  // Whether any table holds a row, and whether each holds at most FEW_ROWS (counting stops there).
  const rowState = async () => (await q(`SELECT bool_or(n > 0) AS any, bool_and(n <= ${FEW_ROWS}) AS few FROM (VALUES
      ${tables.map((t) => `((SELECT count(*) FROM (SELECT 1 FROM ${t} LIMIT ${FEW_ROWS + 1}) x))`).join(', ')}) v(n)`)).rows[0] as { any: boolean; few: boolean };
  // Only what this role owns can be altered; anything else keeps the incremental path.
  const owned = await catalog(`SELECT bool_and(pg_has_role(relowner, 'USAGE')) AS ok FROM pg_class WHERE oid IN (${list})`);
  if (!owned.rows[0].ok) return undefined;
  // Only what can be rebuilt exactly from pg_get_*def, and only where no kept deferred trigger
  // would leave events pending (PostgreSQL refuses CREATE INDEX on such a table; the foreign keys
  // among the five are dropped, or kept with the triggers off: keepForeignKeys): anything else
  // (a deferred foreign key to a table outside the five, row-level security, a partitioned table,
  // index tablespaces or storage options, replica identity or CLUSTER marks, comments, statistics
  // targets) keeps the incremental path.
  const unusual = await catalog(`
    SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid IN (${list}) AND (relrowsecurity OR relkind <> 'r'))
      OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid IN (${list}) AND t.tgdeferrable AND (t.tgtype & 4) <> 0 -- fires on INSERT
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.oid = t.tgconstraint AND c.contype = 'f'
                                     AND c.conrelid IN (${list}) AND c.confrelid IN (${list})))
      OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid IN (${list}) AND NOT t.tgisinternal)
      OR EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid IN (${list}) AND NOT i.indisprimary
                   AND (ic.reltablespace <> 0 OR ic.reloptions IS NOT NULL OR i.indisreplident OR i.indisclustered
                        OR EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = ic.oid)
                        OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = ic.oid AND a.attstattarget IS NOT NULL AND a.attstattarget >= 0)))
      OR EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_description d ON d.objoid = c.oid WHERE c.conrelid IN (${list}))
      AS unusual`);
  if (unusual.rows[0].unusual) return undefined;
  if (!(await rowState()).few) return undefined;
  await q('SAVEPOINT userport_bulk_lock');
  try {
    await q(`LOCK TABLE ${tables.join(', ')} IN ACCESS EXCLUSIVE MODE NOWAIT`);
  } catch (err) {
    // Another session uses a table right now (Sentry itself, a reader): no waiting, no bulk path.
    if ((err as { code?: string }).code !== '55P03') throw err;
    await q('ROLLBACK TO SAVEPOINT userport_bulk_lock');
    return undefined;
  }
  // Rows committed between the check and the lock: give the locks back (rolling back to the
  // savepoint releases them) and take the incremental path. What is there now, locked, decides.
  const state = await rowState();
  if (!state.few) {
    await q('ROLLBACK TO SAVEPOINT userport_bulk_lock');
    return undefined;
  }
  await q('RELEASE SAVEPOINT userport_bulk_lock');
  // Constraints and indexes that nothing outside the five tables depends on.
  const objects = (await catalog(`
    SELECT c.conrelid::regclass::text AS table, c.conname AS name,
      CASE c.contype WHEN 'u' THEN 'unique' WHEN 'p' THEN 'primary' ELSE 'foreign' END AS kind,
      pg_get_constraintdef(c.oid) AS definition
    FROM pg_constraint c
    WHERE c.conrelid IN (${list}) AND c.contype IN (${options.keepForeignKeys ? "'p', 'u'" : "'p', 'u', 'f'"})
      AND (c.contype <> 'f' OR c.confrelid IN (${list}))
      AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = c.conindid AND c.contype IN ('p', 'u')
                        AND f.conrelid NOT IN (${list}))
    UNION ALL
    SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text, 'index', pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid IN (${list}) AND NOT i.indisprimary AND i.indisvalid
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
      AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = i.indexrelid)
    ORDER BY 1, 2`)).rows as DroppedObject[];
  const order = { foreign: 0, primary: 1, unique: 1, index: 2 } as const;
  const drops = [...objects].sort((a, b) => order[a.kind] - order[b.kind]);
  for (const o of drops) {
    // An index by its regclass text (schema-qualified when needed), never by a bare name.
    await q(o.kind === 'index' ? `DROP INDEX ${o.name}` : `ALTER TABLE ${o.table} DROP CONSTRAINT ${IDENT_SQL(o.name)}`);
  }
  q.trace({ kind: 'bulk-load', dropped: drops.map((o) => `${o.table}.${o.name}`) });
  let pending = [...drops].reverse();
  return {
    empty: !state.any,
    unbuild(tables) {
      // In the order they were dropped in, reversed: as `pending` holds them.
      pending = [...drops].reverse().filter((o) => pending.includes(o) || tables.includes(o.table));
    },
    async rebuild(only, options = {}) {
      const now = pending.filter((o) => !only || only.includes(o.table));
      if (!now.length) return;
      pending = pending.filter((o) => !now.includes(o));
      // Index builds sort in memory up to maintenance_work_mem (64 MB by default). All in one
      // round trip: the early steps build while Node reads the export (6 x 4-14 ms of waits).
      const builds = [
        `SELECT set_config('maintenance_work_mem', '256MB', true) WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < 256 * 1024 * 1024`,
        ...now.map((o) => (o.kind === 'index' ? o.definition : `ALTER TABLE ${o.table} ADD CONSTRAINT ${IDENT_SQL(o.name)} ${o.definition}`)),
      ];
      if (options.serial) await togetherWithSettings(q, SERIAL_BUILDS, builds);
      else await together(q, builds);
    },
  };
}
