/**
 * Sentry's tests/sentry/backup/test_releases.py `test_at_23_9_1`: the export a 23.9.1 install
 * wrote imports into the current release. Sentry stores it as a YAML snapshot; the spec reads the
 * user-scope records out of it (PyYAML's block style: one `key: scalar` per line) and turns the
 * snapshot into the JSON array `sentry export` would have written. Anything else in a user-scope
 * record fails the spec instead of being guessed.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { importUsers } from '../../lib/import.js';
import { freshDatabase } from '../helpers/db.js';
import { BACKUP, requireFixtures, tmpExport, type Rec } from '../helpers/sentry-fixtures.js';

const USER_SCOPE = new Set(['sentry.user', 'sentry.email', 'sentry.useremail', 'sentry.useroption']);

function scalar(text: string, where: string): unknown {
  if (text === 'null') return null;
  if (text === 'true' || text === 'false') return text === 'true';
  if (/^-?\d+$/.test(text)) return Number(text);
  if (text.startsWith("'")) {
    if (!text.endsWith("'") || text.length < 2) throw new Error(`unsupported YAML scalar at ${where}: ${text}`);
    return text.slice(1, -1).replace(/''/g, "'");
  }
  if (/^["{[|>&*!%@`]/.test(text)) throw new Error(`unsupported YAML scalar at ${where}: ${text}`);
  return text;
}

/** The records of a PyYAML snapshot of an export; fields are read for user-scope models only. */
export function readSnapshot(file: string): Rec[] {
  const text = fs.readFileSync(file, 'utf8');
  const body = text.split(/^---$/m)[2]!;
  const records: Rec[] = [];
  for (const block of body.split(/^- /m).slice(1)) {
    const lines = block.split('\n');
    const model = /^ {2}model: (.+)$/m.exec(block)?.[1] ?? /^model: (.+)$/m.exec(block)?.[1];
    const pk = /^ {2}pk: (\d+)$/m.exec(block)?.[1];
    if (!model || !pk) throw new Error(`record without model or pk: ${lines[0]}`);
    const fields: Record<string, unknown> = {};
    if (USER_SCOPE.has(model)) {
      for (const line of lines) {
        const m = /^ {4}([a-z_]+): (.*)$/.exec(line);
        if (m) fields[m[1]!] = scalar(m[2]!, `${model} pk ${pk}`);
        else if (/^ {4}\S/.test(line)) throw new Error(`unsupported YAML line in ${model} pk ${pk}: ${line}`);
      }
    }
    records.push({ model, pk: Number(pk), fields });
  }
  return records;
}

describe('Sentry test_releases.py (../shared/fixtures/sentry-backup/snapshots)', function () {
  before(function () { requireFixtures(this); });

  it('test_at_23_9_1: the 23.9.1 release export imports, every row on its user', async () => {
    const records = readSnapshot(path.join(BACKUP, 'snapshots/ReleaseTests/test_at_23_9_1.pysnap'));
    expect(records).to.have.length(122);
    const db = await freshDatabase();
    try {
      const s = await importUsers({ source: tmpExport(records), databaseUrl: db.url });
      expect(s.models['sentry.user']).to.include({ read: 6, inserted: 6 });
      expect(await db.count('auth_user', 'is_staff OR is_superuser OR is_managed OR NOT is_unclaimed')).to.equal(0);
      // md5 password hashes and the app user's empty one are all replaced.
      expect(await db.count('auth_user', `password LIKE 'md5$%' OR password = ''`)).to.equal(0);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(6);
      // Every user email on the user of that address (the app user's address is empty).
      expect(await db.count('sentry_useremail e JOIN auth_user u ON u.id = e.user_id', 'e.email <> u.email')).to.equal(0);
      expect(await db.count('sentry_useremail')).to.equal(6);
      // Emails that are not addresses ("owner") are kept as Sentry keeps them.
      expect(await db.count('sentry_email', `email IN ('owner', 'invitee', 'admin@localhost')`)).to.equal(3);
      const opts = (await db.knex.raw(`SELECT u.username, o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY 1`)).rows;
      expect(opts).to.deep.equal([{ username: 'invitee', value: 'Europe/Vienna' }, { username: 'owner', value: 'Europe/Vienna' }]);
    } finally {
      await db.close();
    }
  });
});
