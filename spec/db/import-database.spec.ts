/**
 * An import's database in one call (lib/db/import-database.ts): migrated, connected as this
 * process, the write plan read; on a failure, a coded error and nothing left open.
 */
import { expect } from 'chai';
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
        expect((await open.knex.raw(`SELECT count(*)::int AS n FROM userport.knex_migrations`)).rows[0].n).to.be.greaterThan(0);
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
