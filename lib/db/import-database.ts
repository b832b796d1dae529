/**
 * The database of one import, opened in one call: the database URL given, or the embedded
 * server's (started if it is not running; its code and package are loaded only then), knex with
 * userport's migrations applied, the import's own connection (named after this process, with
 * userport's session settings), and the write plan read from the target before any record.
 * `importUsers` (lib/import.ts) opens it; on failure nothing is left open.
 */
import type { Knex } from 'knex';
import pg from 'pg';
import { connectError, UserportError, wrapDbError } from '../errors.js';
import type { ImportScope } from '../models.js';
import { ownerName } from './imports.js';
import { applySessionSettings, FIRST_MIGRATION, holdImportRunning, knexOn, migrate, PG_TYPES, releaseImportRunning, undoFreshSchema, waitForDatabase } from './knex.js';
import { planFor, type WritePlan } from './merge/plan.js';

/** An import's open database. */
export interface ImportDatabase {
  /** The connection string (given, or the embedded server's). */
  url: string;
  /** A small pool, for what runs beside the import's connection (marking it failed). */
  knex: Knex;
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
  /** Closes the connection and the pool; never throws. */
  close(): Promise<void>;
}

/**
 * The database of an import: `databaseUrl`, or else the embedded server in `embeddedDir`,
 * connected, migrated and read. Rejects with a {@link UserportError}.
 */
export async function openImportDatabase(o: { databaseUrl?: string; embeddedDir?: string; scope: ImportScope }): Promise<ImportDatabase> {
  const url = o.databaseUrl ?? (await (await import('./embedded.js')).startEmbedded(o.embeddedDir === undefined ? {} : { dir: o.embeddedDir })).url;
  const knex = knexOn(url, 2);
  const client = new pg.Client({ connectionString: url, application_name: ownerName(), types: PG_TYPES });
  let clientError: Error | undefined;
  // A dead server makes pg emit 'error' on the client: without a listener the process would crash.
  client.on('error', (err) => { clientError = err; });
  const close = async () => {
    await client.end().catch(() => undefined);
    await knex.destroy().catch(() => undefined);
  };
  try {
    await waitForDatabase(knex);
    try { await client.connect(); } catch (err) { throw connectError(err, client); }
    // Held from before the migration to the end: an import that wrote nothing into a database it
    // migrated first takes the new schema away again only while no other import holds this.
    await holdImportRunning(client);
    const fresh = (await migrate(knex)).includes(FIRST_MIGRATION);
    const undo = async () => {
      if (!fresh) return;
      await releaseImportRunning(client).catch(() => undefined);
      await undoFreshSchema(knex);
    };
    await applySessionSettings(client);
    // Temp tables live in session-local buffers (8 MB by default): a larger pool keeps the staging
    // and merge tables of a big import in memory. Settable only before the session's first temp
    // table, so here, on the import's own connection (never on a caller's client given to the sink).
    await client.query(`SET temp_buffers = '256MB'`);
    const plan = await planFor(client, o.scope).catch((err: unknown) => { throw err instanceof UserportError ? err : wrapDbError(err, 'reading the target database'); });
    return { url, knex, client, plan, get clientError() { return clientError; }, undoFreshSchema: undo, close };
  } catch (err) {
    await close();
    throw err;
  }
}
