/**
 * One findings format for both directions (issue #24 item 5): an import's findings file and an
 * export's, written on real data through the library, have entries with the same keys in the same
 * order, and a fact both can report (a `--filter-usernames` name that matched nobody) is the same
 * entry in both.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import { exportUsers } from '../lib/export.js';
import { importUsers } from '../lib/import.js';
import { freshDatabase, type TestDb } from './helpers/db.js';
import { user, useremail, useroption, writeExport } from './helpers/exports.js';
import { tmpPath } from './helpers/setup.js';

type Entry = Record<string, unknown>;

function readFindings(file: string): Entry[] {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Entry[];
}

/** The distinct key lists of a file's entries, as `a,b,c` strings. */
function keyLists(entries: Entry[]): string[] {
  return [...new Set(entries.map((e) => Object.keys(e).join(',')))];
}

describe('findings files (lib/findings.ts)', function () {
  this.timeout(120000);
  let db: TestDb;
  let imported: Entry[];
  let exported: Entry[];
  let exportSummary: Awaited<ReturnType<typeof exportUsers>>;

  before(async () => {
    db = await freshDatabase();
    const importFile = tmpPath('import-findings.json');
    // carol is filtered, "nobody" matches no one, the orphan user email and option are dropped.
    await importUsers({
      databaseUrl: db.url, findingsFile: importFile, filterUsernames: ['alice', 'bob', 'nobody'],
      source: writeExport([
        user(1, 'alice'), user(2, 'bob'), user(3, 'carol'),
        useremail(1, 1, 'alice@example.com'), useremail(2, 2, 'bob@example.com'), useremail(3, 3, 'carol@example.com'), useremail(4, 99, 'ghost@example.com'),
        useroption(1, 1, 'timezone', 'UTC'), useroption(2, 2, 'language', 'de'), useroption(3, 98, 'timezone', 'UTC'),
      ]),
    });
    imported = readFindings(importFile);
    // The same database exported for alice and "nobody": bob's rows are left out, and a dropped
    // column is a finding of its own.
    await db.knex.raw('ALTER TABLE auth_user DROP COLUMN avatar_url');
    const exportFile = tmpPath('export-findings.json');
    exportSummary = await exportUsers({ databaseUrl: db.url, destination: tmpPath('export.json'), filterUsernames: ['alice', 'nobody'], findingsFile: exportFile });
    exported = readFindings(exportFile);
  });
  after(async () => db?.close());

  it('gives every entry of both files the same keys, in the same order', () => {
    expect(imported.map((e) => e.finding)).to.include.members(['ImportFinding', 'UnmatchedUsername']);
    expect(exported.map((e) => e.finding)).to.include.members(['ExportFinding', 'UnmatchedUsername']);
    expect(keyLists(imported)).to.have.length(1);
    expect(keyLists(exported)).to.deep.equal(keyLists(imported));
  });

  it('writes a name that matched no user as the same entry in both directions', () => {
    const unmatched = (entries: Entry[]) => entries.filter((e) => e.finding === 'UnmatchedUsername');
    expect(unmatched(imported)).to.have.length(1);
    expect(unmatched(exported)).to.deep.equal(unmatched(imported));
    expect(unmatched(exported)[0]!.reason).to.include('"nobody"');
  });

  it('keeps what each direction found: the import\'s rows by pk and position, the export\'s rows left out by count, its missing columns', () => {
    const dropped = imported.filter((e) => e.kind === 'dropped').map((e) => [e.model, e.pk, e.count]);
    expect(dropped).to.deep.equal([['sentry.useremail', 4, 1], ['sentry.useroption', 3, 1]]);
    for (const e of imported.filter((x) => x.finding === 'ImportFinding')) expect(e.ordinal).to.be.a('number').and.above(0);
    const excluded = exported.filter((e) => e.kind === 'excluded').map((e) => ({ kind: 'excluded', model: e.model, count: e.count, reason: e.reason }));
    expect(excluded).to.deep.equal(exportSummary.excluded);
    // bob (and the user emails and options the import wrote for him) are left out.
    expect(excluded.find((e) => e.model === 'sentry.user')?.count).to.equal(1);
    const missing = exported.filter((e) => e.kind === 'missing-columns');
    expect(missing.map((e) => e.model)).to.deep.equal(Object.keys(exportSummary.missingColumns));
    expect(missing.find((e) => e.model === 'sentry.user')!.reason).to.include('avatar_url');
    for (const e of exported) expect([e.ordinal, e.offset]).to.deep.equal([null, null]);
  });

  it('counts the records an import skipped, one entry per model with its reason, as the summary says (atomic and resumable)', async () => {
    // Out of scope: an organisation's record (not user data) and a config-scope model's, each
    // counted in the summary; the findings file says the same, where it lists no row of theirs.
    const records = [user(1, 'alice'), { model: 'sentry.organization', pk: 1, fields: {} }, { model: 'sentry.userpermission', pk: 1, fields: {} },
      { model: 'sentry.userpermission', pk: 2, fields: {} }, useroption(1, 1, 'timezone', 'UTC')];
    for (const resumable of [false, true]) {
      const target = await freshDatabase();
      try {
        const file = tmpPath(`skipped-findings-${resumable}.json`);
        const s = await importUsers({ databaseUrl: target.url, source: writeExport(records), findingsFile: file, resumable });
        expect(s.skipped).to.deep.equal({ 'sentry.organization': 1, 'sentry.userpermission': 2 });
        expect(readFindings(file)).to.deep.equal([
          { finding: 'ImportFinding', kind: 'skipped', model: 'sentry.organization', pk: null, count: 1, ordinal: null, offset: null, reason: 'not user data' },
          { finding: 'ImportFinding', kind: 'skipped', model: 'sentry.userpermission', pk: null, count: 2, ordinal: null, offset: null, reason: s.skippedReasons!['sentry.userpermission'] },
        ]);
        expect(s.skippedReasons).to.deep.equal({ 'sentry.userpermission': 'imported by import config only' });
      } finally {
        await target.close();
      }
    }
  });

  it('writes findings past a page (5,000 rows a read) complete and in file order, a record\'s two on both sides of a page\'s end', async function () {
    // alice (ordinal 1), 4,999 options of a user not in the export (2-5000), ALICE (5001: its
    // address is alice's, and it is renamed), 5,000 more options (5002-10001): 10,001 findings,
    // three reads, the first ending between ALICE's two. Atomic and resumable (the cursor runs in the
    // transaction that writes the file, in both).
    this.timeout(240000);
    const options = (from: number, n: number) => Array.from({ length: n }, (_, k) => useroption(from + k, 99, `key${from + k}`, 'x'));
    const records = [user(1, 'alice'), ...options(1, 4999), user(2, 'ALICE'), ...options(5000, 5000)];
    const expected = [
      ...Array.from({ length: 4999 }, (_, k) => ['dropped', 'sentry.useroption', 1 + k, 2 + k]),
      ['address', 'sentry.user', 2, 5001], ['renamed', 'sentry.user', 2, 5001],
      ...Array.from({ length: 5000 }, (_, k) => ['dropped', 'sentry.useroption', 5000 + k, 5002 + k]),
    ];
    for (const resumable of [false, true]) {
      const target = await freshDatabase();
      try {
        const file = tmpPath(`paged-findings-${resumable}.json`);
        await importUsers({ databaseUrl: target.url, source: writeExport(records), findingsFile: file, resumable });
        const entries = readFindings(file);
        expect(entries.map((e) => [e.kind, e.model, e.pk, e.ordinal]), resumable ? 'resumable' : 'atomic').to.deep.equal(expected);
      } finally {
        await target.close();
      }
    }
  });

  it('writes the error that stopped either direction with the same keys (ImportError, ExportError)', async () => {
    const empty = await freshDatabase(false);
    try {
      await empty.knex.raw('CREATE TABLE auth_user (id bigserial PRIMARY KEY, username text NOT NULL)');
      const exportFile = tmpPath('export-error.json');
      const exportErr = await exportUsers({ databaseUrl: empty.url, destination: tmpPath('never.json'), findingsFile: exportFile }).then(() => undefined, (e: { code: string }) => e);
      expect(exportErr?.code).to.equal('USERPORT_EXPORT_SCHEMA');
      const importFile = tmpPath('import-error.json');
      const importErr = await importUsers({ databaseUrl: db.url, source: writeExport([user(1, 'x', { is_active: 1 })]), findingsFile: importFile })
        .then(() => undefined, (e: { code: string }) => e);
      expect(importErr?.code).to.equal('USERPORT_RECORD_SCHEMA');
      const [exportError] = readFindings(exportFile);
      const [importError] = readFindings(importFile);
      expect(exportError).to.include({ finding: 'ExportError', kind: 'USERPORT_EXPORT_SCHEMA', model: 'sentry.useroption' });
      expect(importError).to.include({ finding: 'ImportError', kind: 'USERPORT_RECORD_SCHEMA', model: 'sentry.user', pk: 1 });
      // The shared keys first; an error's position adds what it knows (the record's field here).
      expect(Object.keys(exportError!)).to.deep.equal(keyLists(imported)[0]!.split(','));
      expect(Object.keys(importError!).slice(0, Object.keys(exportError!).length)).to.deep.equal(Object.keys(exportError!));
    } finally {
      await empty.close();
    }
  });
});
