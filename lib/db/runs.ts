/**
 * Import runs for callers who wire the stages themselves: every staged row, pk-map entry and
 * finding belongs to a run registered in `userport.imports`, as `importUsers` does for its own.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { wrapDbError } from '../errors.js';
import { checkOptions, isInteger, isNonEmptyString } from '../options.js';
import { ImportStats } from '../stats.js';
import { jsonText } from './json-text.js';

/** Options of {@link beginImportRun}. */
export interface ImportRunOptions {
  /**
   * A run number reserved with {@link reserveImportRun}: register it from the sink's `finalize`,
   * inside the import's transaction, so that a failed import leaves no row (listed as interrupted).
   * @default a new number
   */
  run?: number;
  /** The import's id, unique in the database. @default a new UUID */
  id?: string;
  /** What is imported, for `userport imports`. @default '(library)' */
  source?: string;
}

/**
 * Registers a new atomic import run and resolves to its number: the `run` of `createPgSink` and
 * `mergeStaged`. Call it on the sink's client inside the sink's transaction (from `finalize`,
 * before `mergeStaged`) so a failed import leaves no row behind, or before the pipeline.
 */
export async function beginImportRun(client: pg.ClientBase, options: ImportRunOptions = {}): Promise<number> {
  checkOptions('beginImportRun', options, { id: isNonEmptyString, source: isNonEmptyString, run: isInteger(1) });
  try {
    const r = await client.query(`INSERT INTO userport.imports (run, id, mode, state, source)
                                  VALUES (coalesce($3::bigint, nextval('userport.imports_run_seq')), $1, 'atomic', 'running', $2) RETURNING run`,
      [options.id ?? randomUUID(), options.source ?? '(library)', options.run ?? null]);
    return Number(r.rows[0].run);
  } catch (err) {
    throw wrapDbError(err, 'registering the import run');
  }
}

/**
 * A run number for {@link createPgSink} and {@link mergeStaged}, registered later (from the
 * sink's `finalize`) with `beginImportRun(client, { run })`: nothing is written now.
 */
export async function reserveImportRun(client: pg.ClientBase): Promise<number> {
  try {
    return Number((await client.query(`SELECT nextval('userport.imports_run_seq') AS run`)).rows[0].run);
  } catch (err) {
    throw wrapDbError(err, 'reserving an import run');
  }
}

/**
 * Marks a run registered by {@link beginImportRun} done. Call it in the same transaction as the
 * merge. With `stats` (the sink's), `userport imports` lists its record count.
 */
export async function finishImportRun(client: pg.ClientBase, run: number, options: { stats?: ImportStats } = {}): Promise<void> {
  checkOptions('finishImportRun', options, { stats: (v) => (v instanceof ImportStats ? undefined : 'an ImportStats') });
  try {
    await client.query(`UPDATE userport.imports SET state = 'done', finished_at = clock_timestamp(), updated_at = clock_timestamp(),
                        counters = coalesce($2::jsonb, counters) WHERE run = $1`,
      [run, options.stats ? jsonText(options.stats.snapshot()) : null]);
  } catch (err) {
    throw wrapDbError(err, 'finishing the import run');
  }
}
