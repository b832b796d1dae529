/**
 * `userport target` says what an import would write, and changes nothing: in a database without
 * Sentry's tables, what an import writes after creating them (their DDL run in a transaction that
 * is rolled back), where it used to refuse the database an import takes.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { freshDatabase, type TestDb } from '../helpers/db.js';

const BIN = path.resolve('bin/userport.js');

function target(url: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, 'target', '--database-url', url], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Tables by schema and the extensions. */
async function catalog(db: TestDb): Promise<string[]> {
  const r = await db.knex.raw(`SELECT n.nspname || '.' || c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL SELECT 'extension ' || extname FROM pg_extension ORDER BY 1`);
  return r.rows.map((x: { t: string }) => x.t);
}

describe('userport target', function () {
  this.timeout(60000);

  it('in a database without Sentry\'s tables: what an import writes after creating them, and nothing is created', async () => {
    const db = await freshDatabase(false);
    try {
      await db.knex.raw('CREATE TABLE customers (id int PRIMARY KEY)');
      const before = await catalog(db);
      const r = target(db.url);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.match(/^This database holds none of Sentry's tables: an import \(or userport migrate\)\n\s+first creates them, with the DDL of Sentry 25\.x/);
      expect(r.stdout).to.contain('Writes auth_user: password, last_login, id, username');
      expect(r.stdout).to.contain('Writes sentry_email: email, date_added');
      expect(await catalog(db)).to.deep.equal(before);
    } finally {
      await db.close();
    }
  });

  it('in a database that holds them: their plan, without that line', async () => {
    const db = await freshDatabase();
    try {
      const r = target(db.url);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout).to.not.contain('none of Sentry\'s tables');
      expect(r.stdout).to.contain('Writes auth_user:');
    } finally {
      await db.close();
    }
  });
});
