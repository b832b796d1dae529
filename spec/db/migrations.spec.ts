import { expect } from 'chai';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { migrate } from '../../lib/db/knex.js';

describe('migrations', () => {
  let db: TestDb;
  before(async () => { db = await freshDatabase(false); });
  after(async () => { await db.close(); });

  it('creates Sentry\'s user tables and the bookkeeping tables, and is idempotent', async () => {
    const first = await migrate(db.knex);
    expect(first).to.have.length(4);
    const second = await migrate(db.knex);
    expect(second).to.deep.equal([]);
    const { rows } = await db.knex.raw(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1`);
    const names = rows.map((r: { table_name: string }) => r.table_name);
    for (const t of ['auth_user', 'sentry_email', 'sentry_useremail', 'sentry_useroption', 'sentry_lostpasswordhash',
      'userport_import', 'userport_pk_map', 'userport_stage', 'userport_finding']) {
      expect(names).to.include(t);
    }
  });

  it('leaves the bookkeeping tables without per-row foreign-key triggers (the pk map is written for every user and email)', async () => {
    // The second migration made two such keys; the third drops them.
    const { rows } = await db.knex.raw(`SELECT conrelid::regclass::text AS t, conname FROM pg_constraint
      WHERE contype = 'f' AND confrelid = 'userport_import'::regclass ORDER BY 1, 2`);
    expect(rows).to.deep.equal([]);
    const pk = await db.knex.raw(`SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint WHERE conrelid = 'userport_pk_map'::regclass AND contype = 'p'`);
    expect(pk.rows).to.deep.equal([{ d: 'PRIMARY KEY (run, model, source_pk)' }]);
  });

  it('drops a bookkeeping foreign key to userport_import whatever its name (a table made before the migrations)', async () => {
    const other = await freshDatabase(false);
    try {
      // A database whose bookkeeping tables existed before userport's migrations, with a key the
      // third migration's default names miss.
      await other.knex.raw(`CREATE TABLE userport_import (run bigserial PRIMARY KEY)`);
      await other.knex.raw(`CREATE TABLE userport_pk_map (run bigint NOT NULL CONSTRAINT pk_map_import_fk REFERENCES userport_import (run),
        model text NOT NULL, source_pk bigint NOT NULL, target_id bigint NOT NULL, kind text NOT NULL, PRIMARY KEY (run, model, source_pk))`);
      const keys = () => other.knex.raw(`SELECT conname FROM pg_constraint WHERE contype = 'f' AND confrelid = 'userport_import'::regclass`)
        .then((r: { rows: { conname: string }[] }) => r.rows.map((x) => x.conname));
      expect(await keys()).to.deep.equal(['pk_map_import_fk']);
      await migrate(other.knex);
      expect(await keys()).to.deep.equal([]);
    } finally {
      await other.close();
    }
  });

  it('runs safely from several connections at once', async () => {
    const other = await freshDatabase(false);
    try {
      const results = await Promise.all([migrate(other.knex), migrate(other.knex), migrate(other.knex)]);
      expect(results.map((r) => r.length).sort()).to.deep.equal([0, 0, 4]);
    } finally {
      await other.close();
    }
  });

  it('enforces case-insensitive uniqueness of sentry_email', async () => {
    await db.knex.raw(`INSERT INTO sentry_email (email) VALUES ('A@example.com')`);
    let code: string | undefined;
    try { await db.knex.raw(`INSERT INTO sentry_email (email) VALUES ('a@EXAMPLE.com')`); } catch (e) { code = (e as { code: string }).code; }
    expect(code).to.equal('23505');
  });
});
