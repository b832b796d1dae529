import { expect } from 'chai';
import fs from 'node:fs';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { isMigrated, migrate } from '../../lib/db/knex.js';
import { SENTRY_TABLES } from '../../lib/db/migrations/20261203000100_sentry_user_tables.js';

const tablesIn = async (db: TestDb, schema: string): Promise<string[]> =>
  (await db.knex.raw(`SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1`, [schema]))
    .rows.map((r: { table_name: string }) => r.table_name);

describe('migrations', () => {
  let db: TestDb;
  before(async () => { db = await freshDatabase(false); });
  after(async () => { await db.close(); });

  it('keeps userport\'s bookkeeping, knex\'s included, in schema userport, and is idempotent', async () => {
    expect(await isMigrated(db.knex)).to.equal(false);
    const first = await migrate(db.knex);
    expect(first).to.deep.equal(['20261203000000_userport_bookkeeping', '20261203000100_sentry_user_tables', '20261203000200_credential_staging',
      '20261205000000_pk_ranges_source_pks', '20261206000000_findings_brin', '20261207000000_stage_unusable_password']);
    expect(await migrate(db.knex)).to.deep.equal([]);
    expect(await isMigrated(db.knex)).to.equal(true);
    expect(await tablesIn(db, 'userport')).to.deep.equal(
      ['created_sentry_tables', 'findings', 'imports', 'knex_migrations', 'knex_migrations_lock', 'pk_map', 'pk_ranges', 'stage']);
  });

  it('creates Sentry\'s user tables of one generation in a bare database, and nothing else beside them', async () => {
    expect(await tablesIn(db, 'public')).to.deep.equal([...SENTRY_TABLES].sort());
    const fns = await db.knex.raw(`SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace AND proname LIKE 'userport%'`);
    expect(fns.rows).to.deep.equal([]);
    // Sentry 25.x: sentry_email exists (citext), email_unique exists, is_suspended does not yet.
    const cols = await db.knex.raw(`SELECT table_name, column_name, data_type FROM information_schema.columns
      WHERE table_schema = 'public' AND (table_name, column_name) IN (('sentry_email', 'email'), ('auth_user', 'email_unique'), ('auth_user', 'is_suspended'), ('sentry_useroption', 'value'))
      ORDER BY 1, 2`);
    expect(cols.rows).to.deep.equal([
      { table_name: 'auth_user', column_name: 'email_unique', data_type: 'character varying' },
      { table_name: 'sentry_email', column_name: 'email', data_type: 'USER-DEFINED' },
      { table_name: 'sentry_useroption', column_name: 'value', data_type: 'jsonb' },
    ]);
  });

  it('creates none of Sentry\'s tables in a database that holds any of them, and rolling back drops only what it made', async () => {
    const other = await freshDatabase(false);
    try {
      await other.knex.raw(`CREATE TABLE auth_user (id serial PRIMARY KEY, username varchar(128) NOT NULL UNIQUE, password varchar(128) NOT NULL)`);
      await migrate(other.knex);
      expect(await tablesIn(other, 'public')).to.deep.equal(['auth_user']);
      // The down of the Sentry tables' migration runs on a database whose tables it did not make: they stay.
      const { down } = await import('../../lib/db/migrations/20261203000100_sentry_user_tables.js');
      await down(other.knex);
      expect(await tablesIn(other, 'public')).to.deep.equal(['auth_user']);
    } finally {
      await other.close();
    }
  });

  it('runs safely from several connections at once', async () => {
    const other = await freshDatabase(false);
    try {
      const results = await Promise.all([migrate(other.knex), migrate(other.knex), migrate(other.knex)]);
      expect(results.map((r) => r.length).sort()).to.deep.equal([0, 0, 6]);
    } finally {
      await other.close();
    }
  });

  it('enforces case-insensitive uniqueness of sentry_email (citext, as in Sentry)', async () => {
    await db.knex.raw(`INSERT INTO sentry_email (email, date_added) VALUES ('A@example.com', now())`);
    let code: string | undefined;
    try { await db.knex.raw(`INSERT INTO sentry_email (email, date_added) VALUES ('a@EXAMPLE.com', now())`); } catch (e) { code = (e as { code: string }).code; }
    expect(code).to.equal('23505');
  });

  it('lists each migration once in the knex migration source, one per concern', () => {
    const files = fs.readdirSync('lib/db/migrations').filter((f) => f.endsWith('.ts'));
    expect(files).to.deep.equal(['20261203000000_userport_bookkeeping.ts', '20261203000100_sentry_user_tables.ts', '20261203000200_credential_staging.ts',
      '20261205000000_pk_ranges_source_pks.ts', '20261206000000_findings_brin.ts', '20261207000000_stage_unusable_password.ts']);
  });

  it('stages a new user\'s unusable password in a column of its own, which down drops and up adds again', async () => {
    const column = async () => (await db.knex.raw(`SELECT data_type FROM information_schema.columns
      WHERE table_schema = 'userport' AND table_name = 'stage' AND column_name = 'unusable_password'`)).rows;
    expect(await column()).to.deep.equal([{ data_type: 'text' }]);
    const { down, up } = await import('../../lib/db/migrations/20261207000000_stage_unusable_password.js');
    await down(db.knex);
    expect(await column()).to.deep.equal([]);
    await up(db.knex);
    await up(db.knex);
    expect(await column()).to.deep.equal([{ data_type: 'text' }]);
  });

  it('keeps listed ranges in the pk map: the view spells them out, malformed ones are refused, down turns them into pairs', async () => {
    const insert = (pk: number, id: number, span: number, pks: string | null) => db.knex.raw(
      `INSERT INTO userport.pk_ranges (run, model, source_pk, target_id, kind, span, source_pks) VALUES (9, 'sentry.email', ?, ?, 'inserted', ?, ?::bigint[])`,
      [pk, id, span, pks]);
    const pairs = async () => (await db.knex.raw(`SELECT source_pk, target_id, kind FROM userport.pk_map WHERE run = 9 ORDER BY source_pk`)).rows;
    await insert(1, 100, 3, '{1,3,8}');
    await insert(10, 103, 2, null);
    const expected = [[1, 100], [3, 101], [8, 102], [10, 103], [11, 104]].map(([source_pk, target_id]) => ({ source_pk, target_id, kind: 'inserted' }));
    expect(await pairs()).to.deep.equal(expected);
    // The list's length is the span, its first pk the range's, and it holds no NULL and no second dimension.
    for (const [pk, span, pks] of [[20, 2, '{20,22,24}'], [20, 1, '{21}'], [20, 2, '{20,NULL}'], [20, 2, '{{20,21}}'], [20, 2, '[0:1]={20,21}']] as const) {
      let code: string | undefined;
      try { await insert(pk, 200, span, pks); } catch (e) { code = (e as { code: string }).code; }
      expect(code, pks).to.equal('23514');
    }
    const { down, up } = await import('../../lib/db/migrations/20261205000000_pk_ranges_source_pks.js');
    await down(db.knex);
    expect(await pairs()).to.deep.equal(expected);
    const rows = await db.knex.raw(`SELECT source_pk, span FROM userport.pk_ranges WHERE run = 9 ORDER BY source_pk`);
    expect(rows.rows).to.deep.equal([{ source_pk: 1, span: 1 }, { source_pk: 3, span: 1 }, { source_pk: 8, span: 1 }, { source_pk: 10, span: 2 }]);
    await up(db.knex);
    expect(await pairs()).to.deep.equal(expected);
    await db.knex.raw('DELETE FROM userport.pk_ranges WHERE run = 9');
  });

  it('indexes the findings by run with a BRIN index, and down gives the btree back; both find a run\'s findings among others\'', async () => {
    const indexes = async () => (await db.knex.raw(`SELECT c.relname AS name, am.amname AS method FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
      WHERE i.indrelid = 'userport.findings'::regclass ORDER BY 1`)).rows;
    // Three runs' findings, written one run after another, 400 each (many pages, several ranges).
    await db.knex.raw(`INSERT INTO userport.findings (run, kind, model, source_pk, ordinal, byte_offset, reason)
      SELECT r, 'dropped', 'sentry.useroption', k, k, k * 100, repeat('x', 200) FROM generate_series(41, 43) r, generate_series(1, 400) k`);
    const ofRun42 = async () => {
      await db.knex.raw('ANALYZE userport.findings');
      return (await db.knex.raw(`SELECT count(*)::int AS n, min(ordinal)::int AS lo, max(ordinal)::int AS hi FROM userport.findings WHERE run = 42`)).rows[0];
    };
    expect(await indexes()).to.deep.equal([{ name: 'findings_run_brin', method: 'brin' }]);
    expect(await ofRun42()).to.deep.equal({ n: 400, lo: 1, hi: 400 });
    const { down, up } = await import('../../lib/db/migrations/20261206000000_findings_brin.js');
    await down(db.knex);
    expect(await indexes()).to.deep.equal([{ name: 'findings_run_idx', method: 'btree' }]);
    expect(await ofRun42()).to.deep.equal({ n: 400, lo: 1, hi: 400 });
    await up(db.knex);
    expect(await indexes()).to.deep.equal([{ name: 'findings_run_brin', method: 'brin' }]);
    await db.knex.raw('DELETE FROM userport.findings WHERE run BETWEEN 41 AND 43');
  });
});
