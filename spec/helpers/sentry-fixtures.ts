/**
 * The real exports of Sentry's repository (../shared/fixtures/sentry-backup) and the records
 * Sentry's import tests build around them, for the specs of spec/sentry/ (a helper module, not a
 * spec: a spec file that others import registers its suites again in each mocha worker that loads
 * it, with --parallel).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { TestDb } from './db.js';
import { writeExport } from './exports.js';

export const BACKUP = path.resolve('../shared/fixtures/sentry-backup');
export const haveFixtures = fs.existsSync(BACKUP);

export interface Rec { model: string; pk: number; fields: Record<string, unknown> }

export function fixture(name: string): Rec[] {
  return JSON.parse(fs.readFileSync(path.join(BACKUP, name), 'utf8')) as Rec[];
}

/** Writes records as a compact export in the test run's folder; returns its path. */
export const tmpExport = (records: unknown[] | string): string => writeExport(records, 0);

/** Skips the suite, saying why, when the shared fixtures are not there (a bare clone). */
export function requireFixtures(ctx: Mocha.Context): void {
  if (!haveFixtures) {
    console.log(`      skipped: ${BACKUP} is absent (Sentry's fixtures are not part of the repository)`);
    ctx.skip();
  }
}

/** Inserts an existing, claimed user the way Sentry's create_user would leave it. */
export async function seedUser(db: TestDb, username: string, email: string): Promise<number> {
  const r = await db.knex.raw(`
    INSERT INTO auth_user (password, username, first_name, email, is_staff, is_active, is_superuser, is_managed,
      is_password_expired, is_unclaimed, flags, date_joined, avatar_type)
    VALUES ('!x', ?, '', ?, false, true, false, false, false, false, 0, now(), 0) RETURNING id`, [username, email]);
  const id = r.rows[0].id as number;
  await db.knex.raw(`INSERT INTO sentry_useremail (user_id, email, validation_hash, date_hash_added, is_verified)
                     VALUES (?, ?, 'h', now(), true)`, [id, email]);
  await db.knex.raw(`INSERT INTO sentry_email (email, date_added) VALUES (?, now()) ON CONFLICT DO NOTHING`, [email]);
  return id;
}

/** A user as `sentry export users` writes it, with its email and user email records. */
export function exhaustiveUser(pk: number, username: string, email = `${username}@example.com`): Rec[] {
  return [
    { model: 'sentry.user', pk, fields: {
      password: 'pbkdf2_sha256$260000$salt$hash', last_login: null, username, name: username, email,
      is_staff: true, is_active: true, is_superuser: true, is_managed: false, is_sentry_app: null,
      is_password_expired: false, is_unclaimed: false, last_password_change: '2023-06-22T22:59:57.023Z',
      flags: '0', session_nonce: null, date_joined: '2023-06-22T22:59:55.488Z', last_active: '2023-06-22T22:59:55.489Z',
      avatar_type: 0, avatar_url: null } },
    { model: 'sentry.email', pk, fields: { email, date_added: '2023-06-22T22:59:55.521Z' } },
    { model: 'sentry.useremail', pk, fields: { user: pk, email, validation_hash: 'mCnWesSVvYQcq7qXQ36AZHwosAd6cghE',
      date_hash_added: '2023-06-22T22:59:55.521Z', is_verified: true } },
  ];
}
