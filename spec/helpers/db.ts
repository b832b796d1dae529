/** Test databases: each call makes a new, migrated database on the test server. */
import { expect } from 'chai';
import type { Knex } from 'knex';
import pg from 'pg';
import { createKnex, migrate } from '../../lib/db/knex.js';
import { UserportError } from '../../lib/errors.js';
import { TARGET_TABLES } from './exports.js';

let counter = 0;

export interface TestDb {
  url: string;
  knex: Knex;
  /** Row count of a table. */
  count(table: string, where?: string): Promise<number>;
  /** Closes the knex and drops the database. */
  close(): Promise<void>;
}

export function serverUrl(): string {
  const url = process.env.USERPORT_TEST_DATABASE_URL;
  if (!url) throw new Error('USERPORT_TEST_DATABASE_URL is not set: the mocha root hook did not run');
  return url;
}

/** Runs `sql` on the test server's own database. */
async function onServer(sql: string): Promise<void> {
  const admin = new pg.Client({ connectionString: serverUrl() });
  await admin.connect();
  try {
    await admin.query(sql);
  } finally {
    await admin.end();
  }
}

const databaseUrl = (name: string) => {
  const u = new URL(serverUrl());
  u.pathname = `/${name}`;
  return u.toString();
};

/**
 * A database migrated once for the run, that every migrated test database is copied from: the
 * migrations (knex, and Sentry's DDL) cost 250 ms a database, a copy a fraction of it, and the
 * suite makes hundreds.
 */
let template: Promise<string> | undefined;
function migratedTemplate(): Promise<string> {
  template ??= (async () => {
    const name = `${templatePrefix()}${process.pid}`;
    await onServer(`DROP DATABASE IF EXISTS ${name}`);
    await onServer(`CREATE DATABASE ${name} TEMPLATE template0`);
    const knex = createKnex(databaseUrl(name), 2);
    try { await migrate(knex); } finally { await knex.destroy(); }
    return name;
  })();
  template.catch(() => { template = undefined; });
  return template;
}

/**
 * The names of this run's templates begin with this: one template per process that makes test
 * databases (mocha's, or each of its workers with --parallel), named after the run's owner (the
 * main mocha process, USERPORT_TEST_RUN_OWNER) and the process.
 */
function templatePrefix(): string {
  return `t_${process.env.USERPORT_TEST_RUN_OWNER ?? process.pid}_template_`;
}

/**
 * Drops every migrated template of the run (the run's end, in mocha's main process: its workers'
 * templates too, which they leave for the next file they run).
 */
export async function dropTemplates(): Promise<void> {
  template = undefined;
  const admin = new pg.Client({ connectionString: serverUrl() });
  await admin.connect();
  try {
    const names = (await admin.query(`SELECT datname FROM pg_database WHERE starts_with(datname, $1)`, [templatePrefix()])).rows as { datname: string }[];
    for (const { datname } of names) await admin.query(`DROP DATABASE IF EXISTS ${datname} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

/**
 * Creates an empty database (migrated unless `migrated` is false: a copy of the run's migrated
 * template) and a knex on it. With `icuLocale`, an unmigrated database whose lower() and
 * comparisons are that ICU locale's (the run's databases are C's otherwise).
 */
export async function freshDatabase(migrated = true, { icuLocale }: { icuLocale?: string } = {}): Promise<TestDb> {
  const base = new URL(serverUrl());
  const name = `t_${process.pid}_${Date.now().toString(36)}_${++counter}`;
  await onServer(icuLocale
    ? `CREATE DATABASE ${name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '${icuLocale.replace(/'/g, "''")}' LOCALE 'C'`
    : `CREATE DATABASE ${name} TEMPLATE ${migrated ? await migratedTemplate() : 'template0'}`);
  const url = databaseUrl(name);
  const knex = createKnex(url, 8);
  return {
    url,
    knex,
    async count(table, where) {
      const r = await knex.raw(`SELECT count(*)::int AS n FROM ${table}${where ? ` WHERE ${where}` : ''}`);
      return r.rows[0].n as number;
    },
    async close() {
      await knex.destroy();
      // Drop what we made: a long suite would otherwise leave hundreds of databases behind.
      const admin = new pg.Client({ connectionString: base.toString() });
      await admin.connect();
      try {
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await admin.end();
      }
    },
  };
}

/** Runs `fn` on a fresh database and drops it afterwards, whatever happens. */
export async function withDb(fn: (db: TestDb) => Promise<void>): Promise<void> {
  const db = await freshDatabase();
  try { await fn(db); } finally { await db.close(); }
}

/** The UserportError `p` rejects with; fails the test when `p` resolves or rejects with anything else. */
export async function failure(p: Promise<unknown>): Promise<UserportError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(UserportError);
    return err as UserportError;
  }
  throw new Error('the import succeeded');
}

/** Runs `fn` with a fresh database and a connected pg client of its own; closes both, whatever happens. */
export async function withDbClient(fn: (db: TestDb, client: pg.Client) => Promise<void>): Promise<void> {
  const db = await freshDatabase();
  const client = new pg.Client({ connectionString: db.url });
  try {
    await client.connect();
    await fn(db, client);
  } finally {
    await client.end().catch(() => undefined);
    await db.close();
  }
}

/** Every index and constraint of the target tables (TARGET_TABLES), by name, as PostgreSQL prints it. */
export async function definitions(db: TestDb): Promise<string[]> {
  const list = TARGET_TABLES.map((t) => `'${t}'::regclass`).join(', ');
  const r = await db.knex.raw(`
    SELECT conrelid::regclass || ' constraint ' || conname || ': ' || pg_get_constraintdef(oid) AS d
      FROM pg_constraint WHERE conrelid IN (${list})
    UNION ALL
    SELECT indrelid::regclass || ' index ' || indexrelid::regclass || ': ' || pg_get_indexdef(indexrelid)
      FROM pg_index WHERE indrelid IN (${list})
    ORDER BY 1`);
  return r.rows.map((x: { d: string }) => x.d);
}
