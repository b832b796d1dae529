/**
 * knex setup and migrations. Migrations are listed in code (not discovered on disk) so the
 * compiled `dist/` tree, source maps and declaration files can never confuse the migrator.
 */
import { createRequire } from 'node:module';
import type { Knex } from 'knex';
import pg from 'pg';
import { connectError, DatabaseError, ErrorCodes, type ConnectionFacts } from '../errors.js';
import { checkDatabaseUrl } from '../options.js';
import * as m1 from './migrations/20261203000000_userport_bookkeeping.js';
import * as m2 from './migrations/20261203000100_sentry_user_tables.js';
import { SENTRY_TABLES } from './migrations/20261203000100_sentry_user_tables.js';
import * as m3 from './migrations/20261203000200_credential_staging.js';
import * as m4 from './migrations/20261205000000_pk_ranges_source_pks.js';
import * as m5 from './migrations/20261206000000_findings_brin.js';
import * as m6 from './migrations/20261207000000_stage_unusable_password.js';

interface Migration { up(k: Knex): Promise<void>; down(k: Knex): Promise<void> }

const requireCjs = createRequire(import.meta.url);

/**
 * knex, loaded at its first use (it is CommonJS: loaded synchronously, once): a process that
 * imports the library for its streams, or an import into a database whose migrations are all
 * applied, never loads it (about 0.1 s and a dozen queries of each import's start).
 */
function knexFactory(config: Knex.Config): Knex {
  return (requireCjs('knex') as { knex: (config: Knex.Config) => Knex }).knex(config);
}

/** The migration that makes userport's schema: applied by a migrate() call, the schema is new. */
export const FIRST_MIGRATION = '20261203000000_userport_bookkeeping';

/**
 * One migration per concern: userport's bookkeeping (schema `userport`), Sentry's tables where
 * there are none, the staging column of the config and global scopes, the pk map's listed ranges,
 * the findings' BRIN index, the staged unusable passwords.
 */
const MIGRATIONS: Record<string, Migration> = {
  [FIRST_MIGRATION]: m1,
  '20261203000100_sentry_user_tables': m2,
  '20261203000200_credential_staging': m3,
  '20261205000000_pk_ranges_source_pks': m4,
  '20261206000000_findings_brin': m5,
  '20261207000000_stage_unusable_password': m6,
};

/**
 * The schema of userport's own tables, knex's migration bookkeeping included: nothing userport
 * keeps for itself lands in the schema of Sentry's tables.
 */
export const USERPORT_SCHEMA = 'userport';

class ListedMigrations implements Knex.MigrationSource<string> {
  async getMigrations(): Promise<string[]> {
    return Object.keys(MIGRATIONS).sort();
  }
  getMigrationName(name: string): string {
    return name;
  }
  async getMigration(name: string): Promise<Knex.Migration> {
    return MIGRATIONS[name]!;
  }
}

/**
 * Type parsers of userport's own connections: int8 as a number (ids and counts here fit in a
 * double). Given per client, never set on pg's global registry: that would change how every
 * other pg user in the host process reads bigints.
 */
export const PG_TYPES: pg.CustomTypesConfig & { getTypeParser(oid: number, format?: string): (value: string) => unknown } = {
  getTypeParser(oid: number, format?: string) {
    if (oid === 20 && format !== 'binary') return Number;
    return pg.types.getTypeParser(oid, format === 'binary' ? 'binary' : 'text') as (value: string) => unknown;
  },
};

/**
 * Session settings every userport connection runs with, whatever the database or role defaults
 * say. READ COMMITTED: the merge takes its lock and then must see what the previous merge
 * committed; under REPEATABLE READ or SERIALIZABLE its snapshot predates the lock and two imports
 * create case-insensitive duplicates. `client_connection_check_interval` (PostgreSQL 14+): the
 * session of a killed process notices within seconds, even mid-statement, and drops its locks.
 */
export async function applySessionSettings(c: { query(sql: string): Promise<{ rows: { cci: string | null }[] }> }): Promise<void> {
  const r = await c.query(`SELECT set_config('default_transaction_isolation', 'read committed', false),
    current_setting('client_connection_check_interval', true) AS cci`);
  if (r.rows[0]?.cci != null) await c.query(`SET client_connection_check_interval = '1s'`);
}

/** A knex instance on `url`. @param poolMax connections in the pool @default 4 */
export function createKnex(url: string, poolMax = 4): Knex {
  checkDatabaseUrl(url);
  return knexOn(url, poolMax);
}

/** {@link createKnex} on a URL already checked (an import's, checked with its options, or the embedded server's). */
export function knexOn(url: string, poolMax: number): Knex {
  return knexFactory({
    client: 'pg',
    connection: { connectionString: url, application_name: 'userport', types: PG_TYPES },
    pool: {
      min: 0, max: poolMax,
      afterCreate(conn: pg.Client, done: (err: Error | null, conn: pg.Client) => void) {
        applySessionSettings(conn).then(() => done(null, conn), (err: Error) => done(err, conn));
      },
    },
    acquireConnectionTimeout: 30000,
    // knex prints pool and connection errors with console.log by default; ours are reported once,
    // as a UserportError, by the caller.
    log: { warn() {}, error() {}, deprecate() {}, debug() {} },
  });
}

/** Key of the migration's session advisory lock. */
const MIGRATION_LOCK_KEY = 7472117101;
/**
 * Key of the advisory lock every import holds shared from before it migrates to its end, so that
 * an import that wrote nothing takes away the schema it made only while no other import uses it.
 */
const IMPORTS_RUNNING_KEY = 7472117103;

/** Holds the running-imports lock, shared, on `client`'s session (released when it closes). */
export async function holdImportRunning(client: pg.ClientBase): Promise<void> {
  await client.query(`SELECT pg_advisory_lock_shared(${IMPORTS_RUNNING_KEY})`);
}

/** Lets go of {@link holdImportRunning} on `client`'s session. */
export async function releaseImportRunning(client: pg.ClientBase): Promise<void> {
  await client.query(`SELECT pg_advisory_unlock_shared(${IMPORTS_RUNNING_KEY})`);
}

/**
 * Takes away what one {@link migrate} call made in a database that had no `userport` schema, for
 * an import that wrote nothing (a dry run, a failed atomic import): userport's schema, Sentry's
 * tables where that call created them (a bare database), and citext where it installed it. So a
 * dry run pointed at the wrong database leaves it as it was. Only while no other import runs (the
 * running-imports lock, taken NOWAIT) and nothing was committed into them; else it leaves them,
 * and the next import uses them. Resolves to whether it took them away; never throws.
 */
export async function undoFreshSchema(knex: Knex): Promise<boolean> {
  try {
    return await knex.transaction(async (trx) => {
      const free = await trx.raw(`SELECT pg_try_advisory_xact_lock(${IMPORTS_RUNNING_KEY}) AS free`);
      if (!free.rows[0].free) return false;
      // Never wait on a table's lock (a session that still holds one, whatever it is): give up.
      await trx.raw(`SET LOCAL lock_timeout = '2s'`);
      await trx.raw(`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})`);
      const made = await trx.raw(`SELECT to_regclass('${USERPORT_SCHEMA}.created_sentry_tables') IS NOT NULL AS sentry`);
      const sentry = made.rows[0].sentry
        ? (await trx.raw(`SELECT citext_installed FROM ${USERPORT_SCHEMA}.created_sentry_tables`)).rows[0] as { citext_installed: boolean } | undefined
        : undefined;
      const tables = sentry ? [...SENTRY_TABLES] : [];
      for (const t of tables) {
        if ((await trx.raw(`SELECT EXISTS (SELECT 1 FROM "${t}") AS any`)).rows[0].any) return false;
      }
      if ((await trx.raw(`SELECT EXISTS (SELECT 1 FROM ${USERPORT_SCHEMA}.imports) AS any`)).rows[0].any) return false;
      for (const t of [...tables].reverse()) await trx.raw(`DROP TABLE "${t}"`);
      await trx.raw(`DROP SCHEMA ${USERPORT_SCHEMA} CASCADE`);
      if (sentry?.citext_installed) {
        // Only if nothing else uses it now (RESTRICT): else it stays.
        await trx.raw('SAVEPOINT citext');
        await trx.raw('DROP EXTENSION citext').catch(() => trx.raw('ROLLBACK TO SAVEPOINT citext'));
      }
      return true;
    });
  } catch {
    return false;
  }
}

/**
 * Whether `migrate` has run in this database: read-only commands (`imports`, `export`, `target`)
 * use it to create nothing in a database userport never wrote to.
 */
export async function isMigrated(knex: Knex): Promise<boolean> {
  const r = await knex.raw(`SELECT to_regclass('${USERPORT_SCHEMA}.imports') IS NOT NULL AS ok`);
  return !!r.rows[0].ok;
}

/** Runs pending migrations; returns the names it applied. Safe to call from concurrent imports. */
export async function migrate(knex: Knex): Promise<string[]> {
  // knex's own migration lock is a row in a table that must exist first, and concurrent first runs
  // race on creating it: serialize on a session advisory lock held by one pooled connection.
  let conn: pg.Client;
  try {
    conn = await knex.client.acquireConnection() as pg.Client;
  } catch (err) {
    throw connectError(err, connectionTarget(knex));
  }
  try {
    await conn.query(`SELECT pg_advisory_lock(${MIGRATION_LOCK_KEY})`);
    // knex keeps its migration tables in this schema, which must exist before it looks for them.
    await conn.query(`CREATE SCHEMA IF NOT EXISTS ${USERPORT_SCHEMA}`);
    const [, applied] = (await knex.migrate.latest({ migrationSource: new ListedMigrations(), schemaName: USERPORT_SCHEMA })) as [number, string[]];
    return applied;
  } catch (err) {
    throw new DatabaseError(ErrorCodes.DB_QUERY, `migrating the database failed: ${(err as Error).message}`, { cause: err });
  } finally {
    await conn.query(`SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY})`).catch(() => undefined);
    await knex.client.releaseConnection(conn);
  }
}

/** Where `knex` connects to: its URL (a string connection or `connectionString`), or its connection object's fields. */
function connectionTarget(knex: Knex): string | ConnectionFacts {
  const c = (knex.client as { config?: { connection?: unknown } }).config?.connection;
  if (typeof c === 'string') return c;
  if (typeof c !== 'object' || c === null) return '';
  const { connectionString, host, port, database } = c as { connectionString?: unknown; host?: unknown; port?: unknown; database?: unknown };
  if (typeof connectionString === 'string') return connectionString;
  const text = (v: unknown) => (typeof v === 'string' || typeof v === 'number' ? String(v) : undefined);
  return { host: text(host), port: text(port), database: text(database) };
}

/**
 * Connects with retries: a server that is still starting (or briefly unreachable) is retried with
 * exponential backoff for up to `timeoutMs`; a wrong password or unknown database fails at once.
 */
export async function waitForDatabase(knex: Knex, timeoutMs = 15000): Promise<void> {
  await retryConnect(async () => { await knex.raw('SELECT 1'); }, () => connectionTarget(knex), timeoutMs);
}

/**
 * A connected client from `make` (a new one per attempt: a pg client connects once), with
 * {@link waitForDatabase}'s retries. Rejects with the connection error of the last attempt.
 */
export async function connectWithRetry(make: () => pg.Client, timeoutMs = 15000): Promise<pg.Client> {
  let client!: pg.Client;
  await retryConnect(async () => {
    client = make();
    try {
      await client.connect();
    } catch (err) {
      await client.end().catch(() => undefined);
      throw err;
    }
  }, () => client, timeoutMs);
  return client;
}

async function retryConnect(attempt: () => Promise<void>, target: () => string | ConnectionFacts, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let delay = 100;
  for (;;) {
    try {
      await attempt();
      return;
    } catch (err) {
      const code = (err as { code?: string }).code;
      const permanent = code === '28P01' || code === '28000' || code === '3D000' || code === 'ENOTFOUND';
      if (permanent || Date.now() + delay > deadline) {
        throw connectError(err, target());
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 2000);
    }
  }
}

/**
 * Whether a migration of this version is not applied in the database of `client` (or userport's
 * schema is not there): knex's table lists each applied one, committed with what it made.
 */
export async function migrationsPending(client: pg.ClientBase): Promise<boolean> {
  const listed = await client.query(`SELECT to_regclass('${USERPORT_SCHEMA}.knex_migrations') IS NOT NULL AS t`);
  if (!listed.rows[0].t) return true;
  const applied = new Set((await client.query(`SELECT name FROM ${USERPORT_SCHEMA}.knex_migrations`)).rows.map((r: { name: string }) => r.name));
  return Object.keys(MIGRATIONS).some((name) => !applied.has(name));
}
