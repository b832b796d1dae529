/**
 * `userport import users` run by the CLI with its trace on (USERPORT_TRACE_SQL=1), for the specs
 * that compare two paths of one import by what each wrote and what the trace says it did.
 */
import { expect } from 'chai';
import type { Knex } from 'knex';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freshDatabase, type TestDb } from './db.js';
import { insertUser } from './sentry-rows.js';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'userport.js');

/** Imports `file` into `url` (extra CLI `args`); expects success; the trace (stderr) and the summary's counts. */
export function tracedImport(file: string, url: string, ...args: string[]): { stderr: string; models: unknown; adjacent: unknown; skipped: unknown; skippedReasons: unknown } {
  const r = spawnSync(process.execPath, [BIN, 'import', 'users', file, '--database-url', url, '--no-progress', '--json', ...args],
    { encoding: 'utf8', env: { ...process.env, USERPORT_TRACE_SQL: '1' } });
  expect(r.status, r.stderr.slice(-2000)).to.equal(0);
  const summary = JSON.parse(r.stdout) as { models: unknown; adjacent: unknown; skipped: unknown; skippedReasons: unknown };
  return { stderr: r.stderr, models: summary.models, adjacent: summary.adjacent, skipped: summary.skipped, skippedReasons: summary.skippedReasons };
}

/**
 * Call inside a `describe`: `target()` makes a new database holding a new Sentry's first user
 * (`admin`, and whatever `seed` adds), each closed after its test.
 */
export function adminTargets(seed?: (knex: Knex) => Promise<unknown>): { target: () => Promise<TestDb> } {
  const dbs: TestDb[] = [];
  afterEach(async () => { for (const d of dbs.splice(0)) await d.close(); });
  return {
    target: async () => {
      const d = await freshDatabase();
      dbs.push(d);
      await insertUser(d.knex, { username: 'admin', email: 'admin@example.com' });
      if (seed) await seed(d.knex);
      return d;
    },
  };
}
