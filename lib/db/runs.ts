/**
 * Import runs for callers who wire the stages themselves: every staged row, pk-map entry and
 * finding belongs to a run registered in `userport.imports`, as `importUsers` does for its own.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { wrapDbError } from '../errors.js';
import { checkOptions, isNonEmptyString } from '../options.js';

/** Options of {@link beginImportRun}. */
export interface ImportRunOptions {
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
  checkOptions('beginImportRun', options, { id: isNonEmptyString, source: isNonEmptyString });
  try {
    const r = await client.query(`INSERT INTO userport.imports (id, mode, state, source) VALUES ($1, 'atomic', 'running', $2) RETURNING run`,
      [options.id ?? randomUUID(), options.source ?? '(library)']);
    return Number(r.rows[0].run);
  } catch (err) {
    throw wrapDbError(err, 'registering the import run');
  }
}

/** Marks a run registered by {@link beginImportRun} done. Call it in the same transaction as the merge. */
export async function finishImportRun(client: pg.ClientBase, run: number): Promise<void> {
  try {
    await client.query(`UPDATE userport.imports SET state = 'done', finished_at = now(), updated_at = now() WHERE run = $1`, [run]);
  } catch (err) {
    throw wrapDbError(err, 'finishing the import run');
  }
}
