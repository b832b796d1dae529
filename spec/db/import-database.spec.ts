/**
 * An import's database in one call (lib/db/import-database.ts): migrated, connected as this
 * process, the write plan read; on a failure, a coded error and nothing left open.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { openImportDatabase } from '../../lib/db/import-database.js';
import { UserportError } from '../../lib/errors.js';
import { freshDatabase } from '../helpers/db.js';

describe('openImportDatabase', function () {
  this.timeout(60000);

  it('migrates a bare database, connects the import\'s client as this process, and reads the plan of the scope', async () => {
    const db = await freshDatabase(false);
    try {
      const open = await openImportDatabase({ databaseUrl: db.url, scope: 'global' });
      try {
        expect(open.url).to.equal(db.url);
        expect(open.plan.scope).to.equal('global');
        expect(open.plan.user.table).to.equal('auth_user');
        const me = (await open.client.query(`SELECT application_name AS name FROM pg_stat_activity WHERE pid = pg_backend_pid()`)).rows[0];
        expect(me.name).to.match(new RegExp(`${process.pid}`));
        expect((await open.client.query(`SELECT count(*)::int AS n FROM userport.knex_migrations`)).rows[0].n).to.be.greaterThan(0);
        expect(open.clientError).to.equal(undefined);
      } finally {
        await open.close();
      }
      // close() ended the import's connection.
      const left = (await db.knex.raw(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE ?`, [`%${process.pid}%`])).rows[0].n;
      expect(left).to.equal(0);
    } finally {
      await db.close();
    }
  });

  /**
   * Opens the import database at `url` in a new Node process (this one loaded knex long ago): the
   * connections it made to the database, and whether it loaded knex.
   */
  const openElsewhere = async (url: string): Promise<{ connections: number; knexLoaded: boolean }> => {
    const lib = new URL('../../lib/db/import-database.js', import.meta.url).href;
    const script = `
      import { createRequire } from 'node:module';
      import pg from 'pg';
      const { openImportDatabase } = await import(${JSON.stringify(lib)});
      let connections = 0;
      const connect = pg.Client.prototype.connect;
      pg.Client.prototype.connect = function (...a) { connections++; return connect.apply(this, a); };
      const open = await openImportDatabase({ databaseUrl: process.env.URL, scope: 'users' });
      await open.close();
      const cache = createRequire(${JSON.stringify(lib)}).cache;
      console.log(JSON.stringify({ connections, knexLoaded: Object.keys(cache).some((k) => k.includes('/node_modules/knex/')) }));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script],
      { env: { ...process.env, URL: url }, cwd: new URL('../../..', import.meta.url).pathname });
    return JSON.parse(stdout) as { connections: number; knexLoaded: boolean };
  };

  it('loads knex only where a migration is pending: a migrated database takes the import\'s one connection', async () => {
    const db = await freshDatabase(false);
    try {
      // A bare database: knex migrates it (its two connections beside the import's).
      expect(await openElsewhere(db.url)).to.deep.equal({ connections: 3, knexLoaded: true });
      // Migrated by the first open: no knex, no other connection.
      expect(await openElsewhere(db.url)).to.deep.equal({ connections: 1, knexLoaded: false });
      // One migration's name missing (as in a database a newer userport adds one to): knex again, and the name is back.
      const last = (await db.knex.raw(`DELETE FROM userport.knex_migrations WHERE id = (SELECT max(id) FROM userport.knex_migrations) RETURNING name`)).rows[0].name as string;
      expect(await openElsewhere(db.url)).to.deep.equal({ connections: 3, knexLoaded: true });
      expect((await db.knex.raw(`SELECT count(*)::int AS n FROM userport.knex_migrations WHERE name = ?`, [last])).rows[0].n).to.equal(1);
    } finally {
      await db.close();
    }
  });

  it('rejects with a USERPORT_DB_ error when the database does not exist', async () => {
    const db = await freshDatabase(false);
    const url = new URL(db.url);
    url.pathname = '/no_such_database_here';
    try {
      const err = await openImportDatabase({ databaseUrl: url.toString(), scope: 'users' }).then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(UserportError);
      expect((err as UserportError).code).to.match(/^USERPORT_DB_/);
    } finally {
      await db.close();
    }
  });
});
