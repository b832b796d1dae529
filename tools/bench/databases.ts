/** Fresh databases on one PostgreSQL server, for benchmark runs. */
import pg from 'pg';
import { createKnex, migrate } from '../../lib/db/knex.js';

/** The URL of database `name` on the server of `serverUrl`. */
export function databaseUrl(serverUrl: string, name: string): string {
  const u = new URL(serverUrl);
  u.pathname = `/${name}`;
  return u.toString();
}

/**
 * Runs `fn` with a client of the database at `url`, ended afterwards. Every bench connection is
 * `userport-bench`, which the scenarios' wait for userport sessions leaves out.
 */
export async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url, application_name: 'userport-bench' });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Runs `fn` between BEGIN and COMMIT on `c`, rolling back when it fails. */
export async function inTransaction<T>(c: pg.Client, fn: () => Promise<T>, begin = 'BEGIN'): Promise<T> {
  await c.query(begin);
  try {
    const r = await fn();
    await c.query('COMMIT');
    return r;
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

function admin<T>(serverUrl: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  return withClient(databaseUrl(serverUrl, 'postgres'), fn);
}

const IDENT = /^[a-z_][a-z0-9_]{0,62}$/;

/** Drops (if it exists) and creates database `name`, migrated unless `migrated` is false. Returns its URL. */
export async function freshDatabase(serverUrl: string, name: string, migrated = true): Promise<string> {
  if (!IDENT.test(name)) throw new Error(`bad database name ${name}`);
  await admin(serverUrl, async (c) => {
    await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await c.query(`CREATE DATABASE ${name} TEMPLATE template0`);
  });
  const url = databaseUrl(serverUrl, name);
  if (migrated) {
    const knex = createKnex(url, 2); // migrate() holds one connection for its lock
    try {
      await migrate(knex);
    } finally {
      await knex.destroy();
    }
  }
  return url;
}

export async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  if (!IDENT.test(name)) throw new Error(`bad database name ${name}`);
  await admin(serverUrl, (c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
}

/** `SELECT version()` of the server. */
export async function serverVersion(serverUrl: string): Promise<string> {
  return admin(serverUrl, async (c) => String((await c.query('SHOW server_version')).rows[0].server_version));
}

/** Row counts of `tables` in the database at `url`. */
export async function countRows(url: string, tables: readonly string[]): Promise<Record<string, number>> {
  return withClient(url, async (c) => {
    const out: Record<string, number> = {};
    // A table this Sentry generation lacks (sentry_email on Sentry 2026) counts nothing.
    for (const t of tables) {
      const present = (await c.query(`SELECT to_regclass($1) IS NOT NULL AS ok`, [t])).rows[0].ok;
      out[t] = present ? Number((await c.query(`SELECT count(*)::bigint AS n FROM ${t}`)).rows[0].n) : 0;
    }
    return out;
  });
}
