/**
 * The database of one import, opened in one call: the database URL given, or the embedded
 * server's (started if it is not running; its code and package are loaded only then), the import's
 * own connection (named after this process, with userport's session settings), userport's
 * migrations applied (knex is loaded only where one is pending), and the write plan read from the
 * target before any record.
 * `importUsers` (lib/import.ts) opens it; on failure nothing is left open.
 */
import type { Knex } from 'knex';
import pg from 'pg';
import { UserportError, wrapDbError } from '../errors.js';
import type { ImportScope } from '../models.js';
import { markImportFailed, ownerName } from './imports.js';
import { applySessionSettings, connectWithRetry, FIRST_MIGRATION, holdImportRunning, knexOn, migrate, migrationsPending, PG_TYPES, releaseImportRunning, undoFreshSchema } from './knex.js';
import { planFor, type WritePlan } from './merge/plan.js';

/** An import's open database. */
export interface ImportDatabase {
  /** The connection string (given, or the embedded server's). */
  url: string;
  /**
   * Marks the import's run failed, on a connection of its own (the import's may be in a failed
   * transaction, or gone); never throws.
   */
  markFailed(run: number, message: string): Promise<void>;
  /** The import's own connection: its lock, its transactions, the merge. */
  client: pg.Client;
  /** What the import writes, in the columns and types the target has. */
  plan: WritePlan;
  /** What pg emitted on `client` (a dead server), if anything. */
  readonly clientError: Error | undefined;
  /**
   * For an import that wrote nothing: takes away userport's schema (and Sentry's tables, in a
   * bare database) when this import's migration made them, unless another import uses them
   * ({@link undoFreshSchema}). Call before {@link close}; never throws.
   */
  undoFreshSchema(): Promise<void>;
  /** Closes the connection (and the migration's pool, if one was made); never throws. */
  close(): Promise<void>;
}

/**
 * The database of an import: `databaseUrl`, or else the embedded server in `embeddedDir`,
 * connected, migrated and read. Rejects with a {@link UserportError}.
 */
export async function openImportDatabase(o: { databaseUrl?: string; embeddedDir?: string; scope: ImportScope }): Promise<ImportDatabase> {
  const url = o.databaseUrl ?? (await (await import('./embedded.js')).startEmbedded(o.embeddedDir === undefined ? {} : { dir: o.embeddedDir })).url;
  const make = () => {
    const c = new pg.Client({ connectionString: url, application_name: ownerName(), types: PG_TYPES });
    // A dead server makes pg emit 'error' on the client: without a listener the process would crash.
    c.on('error', (err) => { if (c === client) clientError = err; });
    return c;
  };
  let client: pg.Client | undefined;
  let clientError: Error | undefined;
  let knex: Knex | undefined;
  const close = async () => {
    await client?.end().catch(() => undefined);
    await knex?.destroy().catch(() => undefined);
  };
  try {
    client = await connectWithRetry(make);
    // Held from before the migration to the end: an import that wrote nothing into a database it
    // migrated first takes the new schema away again only while no other import holds this.
    await holdImportRunning(client);
    // Two connections for a migration: migrate holds one for its lock while knex's migrator uses another.
    if (await migrationsPending(client)) knex = knexOn(url, 2);
    const fresh = knex ? (await migrate(knex)).includes(FIRST_MIGRATION) : false;
    const undo = async () => {
      if (!fresh || !knex) return;
      await releaseImportRunning(client!).catch(() => undefined);
      await undoFreshSchema(knex);
    };
    await applySessionSettings(client);
    // Temp tables live in session-local buffers (8 MB by default): a larger pool keeps the staging
    // and merge tables of a big import in memory. Settable only before the session's first temp
    // table, so here, on the import's own connection (never on a caller's client given to the sink).
    await client.query(`SET temp_buffers = '256MB'`);
    const plan = await planFor(client, o.scope).catch((err: unknown) => { throw err instanceof UserportError ? err : wrapDbError(err, 'reading the target database'); });
    const markFailed = async (run: number, message: string) => {
      const side = make();
      try {
        await side.connect();
        await markImportFailed(side, run, message);
      } catch {
        // Never throws: the import's own error is what the caller reports.
      } finally {
        await side.end().catch(() => undefined);
      }
    };
    return { url, client, plan, get clientError() { return clientError; }, markFailed, undoFreshSchema: undo, close };
  } catch (err) {
    await close();
    throw err;
  }
}
