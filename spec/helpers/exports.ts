/** Building small exports for tests, and reading back what an import wrote. */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Knex } from 'knex';
import { createExportGenerator } from '../../tools/generate.js';
import { runDir, tmpPath } from './setup.js';

/**
 * What the README's Guarantees say ties an import to its file, computed here on its own: the
 * file's size and the SHA-256 of its first MiB.
 */
export function fileFingerprint(file: string): { size: number; hash: string } {
  const bytes = fs.readFileSync(file);
  return { size: bytes.length, hash: createHash('sha256').update(bytes.subarray(0, 1 << 20)).digest('hex') };
}

export interface Rec { model: string; pk: number; fields: Record<string, unknown> }

let n = 0;
/** Writes records as a pretty-printed export to a temp file; returns its path. */
export function writeExport(records: unknown[] | string, indent = 2): string {
  const file = tmpPath(`userport-spec-${++n}.json`);
  fs.writeFileSync(file, typeof records === 'string' ? records : JSON.stringify(records, null, indent));
  return file;
}

/**
 * A generated export (tools/generate.ts), written once per run for each set of parameters and
 * shared by every spec that asks for the same one (a 20000-user export is about 35 MB).
 */
export async function generatedExport(options: { users: number; seed: number; collisionRate: number }): Promise<string> {
  const file = path.join(runDir(), `generated-${options.users}-${options.seed}-${options.collisionRate}.json`);
  if (!fs.existsSync(file)) {
    // Written aside and renamed: a test that fails midway must not leave a truncated cache entry.
    const part = tmpPath('generated.part');
    await pipeline(createExportGenerator(options), fs.createWriteStream(part));
    fs.renameSync(part, file);
  }
  return file;
}

export function user(pk: number, username: string, extra: Record<string, unknown> = {}): Rec {
  return {
    model: 'sentry.user', pk,
    fields: {
      password: 'pbkdf2_sha256$150000$salt$hash=', last_login: null, username, name: `Name ${pk}`, email: `${username.toLowerCase()}@example.com`,
      is_staff: true, is_active: true, is_superuser: true, is_managed: true, is_sentry_app: null, is_password_expired: true,
      is_unclaimed: false, last_password_change: '2023-06-22T22:59:57.023Z', flags: '0', session_nonce: null,
      date_joined: '2023-06-22T22:59:55.488Z', last_active: '2023-06-22T22:59:55.489Z', avatar_type: 0, avatar_url: null, ...extra,
    },
  };
}
export function email(pk: number, address: string): Rec {
  return { model: 'sentry.email', pk, fields: { email: address, date_added: '2023-06-22T22:59:55.531Z' } };
}
export function useremail(pk: number, userPk: number, address: string): Rec {
  return { model: 'sentry.useremail', pk, fields: { user: userPk, email: address, validation_hash: 'mCnWesSVvYQcq7qXQ36AZHwosAd6cghE', date_hash_added: '2023-06-22T22:59:55.521Z', is_verified: true } };
}
export function useroption(pk: number, userPk: number, key: string, value: unknown, scope: { project_id?: number | null; organization_id?: number | null } = {}): Rec {
  return { model: 'sentry.useroption', pk, fields: { user: userPk, project_id: scope.project_id ?? null, organization_id: scope.organization_id ?? null, key, value } };
}

/** The user-scope tables as comparable plain data (ids replaced by usernames, random values left out). */
export async function tableSnapshot(knex: Knex): Promise<Record<string, unknown[]>> {
  const users = (await knex.raw(`SELECT username, first_name, email, is_staff, is_active, is_superuser, is_managed, is_unclaimed,
    is_password_expired, flags, date_joined, last_active, last_login, avatar_type, avatar_url FROM auth_user ORDER BY username`)).rows;
  const emails = (await knex.raw(`SELECT email, date_added FROM sentry_email ORDER BY lower(email)`)).rows;
  const ues = (await knex.raw(`SELECT u.username, e.email, e.is_verified FROM sentry_useremail e JOIN auth_user u ON u.id = e.user_id ORDER BY 1, 2`)).rows;
  const uos = (await knex.raw(`SELECT u.username, o.key, o.value, o.project_id, o.organization_id FROM sentry_useroption o JOIN auth_user u ON u.id = o.user_id ORDER BY 1, 2`)).rows;
  const lph = (await knex.raw(`SELECT u.username FROM sentry_lostpasswordhash h JOIN auth_user u ON u.id = h.user_id ORDER BY 1`)).rows;
  return { users, emails, ues, uos, lph };
}

export const TARGET_TABLES = ['auth_user', 'sentry_email', 'sentry_useremail', 'sentry_useroption', 'sentry_lostpasswordhash'];
