/**
 * The real exports written by Sentry (../shared/fixtures/sentry), imported in user scope, with the
 * results section 7 of the reference lists: every user unclaimed with a lost-password hash and
 * no privileges, no user email verified, emails shared by address, every other model skipped.
 */
import { expect } from 'chai';
import path from 'node:path';
import { importUsers } from '../../lib/import.js';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { requireSharedFixtures } from '../helpers/shared.js';

let FIXTURES = '';
const fixture = (name: string) => path.join(FIXTURES, `${name}.json`);

interface Expected {
  users: string[];
  emails: string[];
  useremails: [string, string][];
  options: [string, string, unknown][];
  skipped: Record<string, number>;
}

const EXPECTED: Record<string, Expected> = {
  'user-with-minimum-privileges': {
    users: ['min_user'], emails: ['testing@example.com'], useremails: [['min_user', 'testing@example.com']],
    options: [['min_user', 'timezone', 'Europe/Vienna']],
    skipped: { 'sentry.authenticator': 1, 'sentry.userip': 1 },
  },
  'user-with-maximum-privileges': {
    users: ['testing@example.com'], emails: ['testing@example.com'], useremails: [['testing@example.com', 'testing@example.com']],
    options: [['testing@example.com', 'timezone', 'Europe/Vienna']],
    skipped: { 'sentry.authenticator': 1, 'sentry.userip': 1, 'sentry.userpermission': 1, 'sentry.userrole': 1, 'sentry.userroleuser': 1 },
  },
  'user-pk-mapping': {
    users: ['testing@example.com'], emails: ['testing@example.com'], useremails: [['testing@example.com', 'testing@example.com']],
    options: [], skipped: { 'sentry.userrole': 1, 'sentry.userroleuser': 1 },
  },
  'duplicate-username-and-organization-slug': {
    users: ['testing@example.com', 'testing@example.com-~'], emails: ['testing@example.com'],
    useremails: [['testing@example.com', 'testing@example.com'], ['testing@example.com-~', 'testing@example.com']],
    options: [], skipped: { 'sentry.option': 4, 'sentry.organization': 2, 'sentry.organizationmember': 2 },
  },
  'fresh-install': {
    users: ['admin@example.com', 'member@example.com'], emails: ['admin@example.com', 'member@example.com'],
    useremails: [['admin@example.com', 'admin@example.com'], ['member@example.com', 'member@example.com']], options: [],
    skipped: {
      'sentry.option': 4, 'sentry.organization': 1, 'sentry.relayusage': 1, 'sentry.relay': 1, 'sentry.authenticator': 2, 'sentry.userrole': 1,
      'sentry.userroleuser': 1, 'sentry.team': 1, 'sentry.organizationmember': 2, 'sentry.project': 1, 'sentry.projectkey': 1, 'sentry.rule': 1,
      'sentry.projectteam': 1, 'sentry.organizationmemberteam': 2, 'sentry.projectoption': 4, 'sentry.apiapplication': 1,
    },
  },
};

const tail = (s: string) => s.replace(/-[a-z0-9]{2}$/, '-~');

async function check(db: TestDb, exp: Expected) {
  const users = (await db.knex.raw('SELECT * FROM auth_user ORDER BY id')).rows;
  expect(users.map((u: { username: string }) => tail(u.username))).to.deep.equal(exp.users);
  for (const u of users) {
    expect(u).to.include({ is_staff: false, is_superuser: false, is_managed: false, is_unclaimed: true, is_password_expired: false });
    expect(u.password).to.match(/^!/).and.not.include('pbkdf2');
  }
  expect(await db.count('sentry_lostpasswordhash')).to.equal(users.length);
  expect((await db.knex.raw('SELECT email FROM sentry_email ORDER BY id')).rows.map((r: { email: string }) => r.email)).to.deep.equal(exp.emails);
  const ues = (await db.knex.raw(`SELECT u.username, e.email, e.is_verified, e.validation_hash FROM sentry_useremail e
                                  JOIN auth_user u ON u.id = e.user_id ORDER BY e.id`)).rows;
  expect(ues.map((r: { username: string; email: string }) => [tail(r.username), r.email])).to.deep.equal(exp.useremails);
  for (const r of ues) {
    expect(r.is_verified).to.equal(false);
    expect(r.validation_hash).not.to.equal('mCnWesSVvYQcq7qXQ36AZHwosAd6cghE');
  }
  const opts = (await db.knex.raw(`SELECT u.username, o.key, o.value FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY o.id`)).rows;
  expect(opts.map((r: { username: string; key: string; value: unknown }) => [r.username, r.key, r.value])).to.deep.equal(exp.options);
}

describe('real Sentry exports (../shared/fixtures/sentry)', () => {
  const dir = requireSharedFixtures('sentry');
  if (!dir) return;
  FIXTURES = dir;
  for (const [name, exp] of Object.entries(EXPECTED)) {
    it(`imports ${name} in user scope`, async () => {
      const db = await freshDatabase();
      try {
        const s = await importUsers({ source: fixture(name), databaseUrl: db.url });
        expect(s.skipped).to.deep.equal(exp.skipped);
        await check(db, exp);
        const map = (await db.knex.raw(`SELECT model, count(*)::int AS n FROM userport.pk_map GROUP BY model ORDER BY model`)).rows;
        expect(map.find((r: { model: string }) => r.model === 'sentry.user')?.n).to.equal(exp.users.length);
      } finally {
        await db.close();
      }
    });
  }

  it('remaps non-sequential pks (user-pk-mapping: email 34 before user 12, useremail 56)', async () => {
    const db = await freshDatabase();
    try {
      await importUsers({ source: fixture('user-pk-mapping'), databaseUrl: db.url });
      const map = (await db.knex.raw(`SELECT model, source_pk, target_id FROM userport.pk_map ORDER BY model`)).rows;
      expect(map).to.deep.equal([{ model: 'sentry.email', source_pk: 34, target_id: 1 }, { model: 'sentry.user', source_pk: 12, target_id: 1 }]);
    } finally {
      await db.close();
    }
  });

  it('merges the in-file duplicate username with --merge-users', async () => {
    const db = await freshDatabase();
    try {
      const s = await importUsers({ source: fixture('duplicate-username-and-organization-slug'), databaseUrl: db.url, mergeUsers: true });
      expect(s.models['sentry.user']).to.include({ inserted: 1, merged: 1 });
      expect(s.models['sentry.useremail']).to.include({ inserted: 1, merged: 1 });
      expect((await db.knex.raw('SELECT first_name FROM auth_user')).rows).to.deep.equal([{ first_name: 'User' }]);
    } finally {
      await db.close();
    }
  });

  it('imports them all into one database: later users collide with earlier ones and are renamed, emails are shared', async () => {
    const db = await freshDatabase();
    try {
      for (const name of Object.keys(EXPECTED)) await importUsers({ source: fixture(name), databaseUrl: db.url });
      const users = (await db.knex.raw('SELECT username FROM auth_user ORDER BY id')).rows.map((r: { username: string }) => tail(r.username));
      expect(users).to.deep.equal(['min_user', 'testing@example.com', 'testing@example.com-~', 'testing@example.com-~', 'testing@example.com-~',
        'admin@example.com', 'member@example.com']);
      expect(await db.count('sentry_email')).to.equal(3);
      expect(await db.count('sentry_useremail')).to.equal(7);
      expect(await db.count('sentry_lostpasswordhash')).to.equal(7);
      expect(await db.count('auth_user', 'is_staff OR is_superuser OR is_managed OR NOT is_unclaimed')).to.equal(0);
      expect(await db.count('sentry_useremail', 'is_verified')).to.equal(0);
    } finally {
      await db.close();
    }
  });
});
