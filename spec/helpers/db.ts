/** Test databases: each call makes a new, migrated database on the test server. */
import { expect } from 'chai';
import type { Knex } from 'knex';
import pg from 'pg';
import { createKnex, migrate } from '../../lib/db/knex.js';
import { UserportError } from '../../lib/errors.js';

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

/** Creates an empty database (migrated unless `migrated` is false) and a knex on it. */
export async function freshDatabase(migrated = true): Promise<TestDb> {
  const base = new URL(serverUrl());
  const name = `t_${process.pid}_${Date.now().toString(36)}_${++counter}`;
  const admin = new pg.Client({ connectionString: base.toString() });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} TEMPLATE template0`);
  } finally {
    await admin.end();
  }
  const u = new URL(base.toString());
  u.pathname = `/${name}`;
  const url = u.toString();
  const knex = createKnex(url, 8);
  if (migrated) await migrate(knex);
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
