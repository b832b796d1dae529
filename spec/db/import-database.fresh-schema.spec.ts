/**
 * An import that wrote nothing (a dry run, a failed atomic import) into a database it had to
 * migrate first leaves that database as it found it: no userport schema, and, in a bare database,
 * none of Sentry's tables and no citext it installed. So a dry run pointed at the wrong database
 * changes nothing. Another import running at the time keeps them.
 */
import { expect } from 'chai';
import pg from 'pg';
import { importUsers } from '../../lib/import.js';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { user, writeExport } from '../helpers/exports.js';
import { sentrySchema, targetDatabase, unavailable } from '../helpers/targets.js';

/** Every table by schema, and the extensions: what an import must leave as it was. */
async function catalog(db: TestDb): Promise<{ tables: string[]; extensions: string[] }> {
  const t = await db.knex.raw(`SELECT n.nspname || '.' || c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`);
  const e = await db.knex.raw(`SELECT extname FROM pg_extension ORDER BY 1`);
  return { tables: t.rows.map((r: { t: string }) => r.t), extensions: e.rows.map((r: { extname: string }) => r.extname) };
}

const bad = () => writeExport([user(1, 'alice'), { model: 'sentry.user', pk: 2, fields: { username: 5 } }]);

describe('an import that wrote nothing leaves the schema it made', function () {
  this.timeout(120000);
  let db: TestDb;
  beforeEach(async () => {
    db = await freshDatabase(false);
    await db.knex.raw('CREATE TABLE customers (id int PRIMARY KEY)');
  });
  afterEach(async () => { await db.close(); });

  it('a dry run and a failed import into another application\'s database: its tables and extensions only, as before', async () => {
    const before = await catalog(db);
    const s = await importUsers({ source: writeExport([user(1, 'alice')]), databaseUrl: db.url, dryRun: true });
    expect(s.models['sentry.user']!.inserted).to.equal(1);
    expect(await catalog(db)).to.deep.equal(before);
    let failed: { code?: string } | undefined;
    try { await importUsers({ source: bad(), databaseUrl: db.url }); } catch (err) { failed = err as { code?: string }; }
    expect(failed?.code).to.equal('USERPORT_RECORD_SCHEMA');
    expect(await catalog(db)).to.deep.equal(before);
    // An import that writes keeps them; a dry run after it changes nothing of them.
    await importUsers({ source: writeExport([user(1, 'alice')]), databaseUrl: db.url });
    const migrated = await catalog(db);
    expect(migrated.tables).to.include.members(['public.auth_user', 'userport.imports']);
    await importUsers({ source: writeExport([user(2, 'bob')]), databaseUrl: db.url, dryRun: true });
    expect(await catalog(db)).to.deep.equal(migrated);
    expect(await db.count('auth_user')).to.equal(1);
  });

  it('keeps them while another import runs (it holds the running-imports lock), for the next import to use', async () => {
    const before = await catalog(db);
    const other = new pg.Client({ connectionString: db.url });
    await other.connect();
    try {
      await other.query('SELECT pg_advisory_lock_shared(7472117103)');
      await importUsers({ source: writeExport([user(1, 'alice')]), databaseUrl: db.url, dryRun: true });
      expect((await catalog(db)).tables).to.include.members(['public.auth_user', 'userport.imports']);
    } finally {
      await other.end();
    }
    await importUsers({ source: writeExport([user(1, 'alice')]), databaseUrl: db.url, dryRun: true });
    expect((await catalog(db)).tables).to.include.members(['public.auth_user', 'userport.imports']);
    expect(before.tables).to.deep.equal(['public.customers']);
  });

  it('a resumable import that failed keeps what it committed, to be resumed, and its run marked failed with the error', async () => {
    let told = '';
    try { await importUsers({ source: bad(), databaseUrl: db.url, resumable: true }); } catch (err) { told = (err as Error).message; }
    expect((await catalog(db)).tables).to.include.members(['public.auth_user', 'userport.imports']);
    // Marked on a connection of its own (the import's was in a failed transaction).
    const runs = (await db.knex.raw(`SELECT state, error FROM userport.imports`)).rows as { state: string; error: string }[];
    expect(told).to.contain('username');
    expect(runs).to.deep.equal([{ state: 'failed', error: told }]);
  });
});

describe('a dry run into a Sentry database userport never wrote to', function () {
  this.timeout(120000);
  const why = unavailable('sentry-2026');
  if (why) {
    it(`skipped: ${why}`, function () { process.stdout.write(`      skipped: ${why}\n`); this.skip(); });
    return;
  }
  it('leaves Sentry\'s schema unchanged and no userport schema', async () => {
    const db = await targetDatabase('sentry-2026', { freshInstall: true });
    try {
      const schema = await sentrySchema(db.knex);
      const before = await catalog(db);
      await importUsers({ source: writeExport([user(1, 'alice')]), databaseUrl: db.url, dryRun: true });
      expect(await catalog(db)).to.deep.equal(before);
      expect(await sentrySchema(db.knex)).to.deep.equal(schema);
      expect(await db.count('auth_user')).to.equal(1);
    } finally {
      await db.close();
    }
  });
});
