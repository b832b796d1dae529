/**
 * Target databases of every generation the specs cover: userport's default (the Sentry 25.x
 * tables its migration creates in a bare database), and the real Sentry schemas of
 * `../shared/fixtures/sentry-schemas` (a Sentry 9 pg_dump, the 2026 schema) loaded with their
 * `load.sh`. Each can be brought into a fresh-install state: one superuser, as `sentry
 * createuser --superuser` leaves it, and the "Super Admin" role where its table exists.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import { freshDatabase, type TestDb } from './db.js';
import { insertRow, insertUser } from './sentry-rows.js';

export type TargetKind = 'userport' | 'sentry-9' | 'sentry-2026';

export const TARGET_KINDS: readonly TargetKind[] = ['userport', 'sentry-9', 'sentry-2026'];

/** The schema fixtures' folder, or undefined when `../shared` is absent (a bare clone). */
export function schemaFixtures(): string | undefined {
  const dir = path.resolve('../shared/fixtures/sentry-schemas');
  return fs.existsSync(path.join(dir, 'load.sh')) ? dir : undefined;
}

/** Why `kind` cannot be tested here, or undefined when it can. */
export function unavailable(kind: TargetKind): string | undefined {
  if (kind === 'userport') return undefined;
  if (!schemaFixtures()) return `../shared/fixtures/sentry-schemas is absent (it is not part of the repository)`;
  if (spawnSync('psql', ['--version']).status !== 0) return 'psql (which load.sh runs) is not installed';
  return undefined;
}

export interface TargetDb extends TestDb {
  kind: TargetKind;
  /** The id of the fresh install's superuser, when made. */
  adminId?: number;
}

/** The fresh install's first admin: what `sentry createuser --superuser` writes. */
export const ADMIN = { username: 'admin@example.com', email: 'admin@example.com' };

/**
 * A new database of generation `kind`; with `freshInstall`, holding its first admin (and the
 * "Super Admin" role where `sentry_userrole` exists), as a new Sentry does.
 */
export async function targetDatabase(kind: TargetKind, options: { freshInstall?: boolean } = {}): Promise<TargetDb> {
  const db = await freshDatabase(kind === 'userport');
  try {
    if (kind !== 'userport') {
      const file = path.join(schemaFixtures()!, kind === 'sentry-9' ? 'sentry-9.sql' : 'sentry-2026.sql');
      const r = spawnSync('bash', [path.join(schemaFixtures()!, 'load.sh'), db.url, file], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`load.sh ${file} failed (${r.status}): ${r.stderr.slice(-500)}`);
    }
    const out: TargetDb = Object.assign(db, { kind });
    if (options.freshInstall) out.adminId = await freshInstall(db.knex);
    return out;
  } catch (err) {
    await db.close();
    throw err;
  }
}

/** Makes the target look like a new Sentry: one superuser with its user email, the Super Admin role. */
async function freshInstall(k: Knex): Promise<number> {
  const id = await insertUser(k, {
    ...ADMIN, password: 'pbkdf2_sha256$720000$freshinstall$J0mFQ3gvYz1v5eV+0e2x0dL4oYfYb7Yq3tq8YH0a0jA=', is_staff: true,
    is_superuser: true, is_active: true, email_unique: ADMIN.email, date_joined: '2026-06-30T10:00:00Z',
  });
  await insertRow(k, 'sentry_useremail', { user_id: id, email: ADMIN.email, is_verified: true });
  // Sentry's receiver gives the admin's address an Email row where that table exists.
  if ((await k.raw(`SELECT to_regclass('sentry_email') IS NOT NULL AS ok`)).rows[0].ok) await insertRow(k, 'sentry_email', { email: ADMIN.email });
  const hasRoles = (await k.raw(`SELECT to_regclass('sentry_userrole') IS NOT NULL AS ok`)).rows[0].ok;
  if (hasRoles) {
    await k.raw(`INSERT INTO sentry_userrole (date_updated, date_added, name, permissions) VALUES (now(), now(), 'Super Admin', ARRAY['broadcasts.admin', 'users.admin', 'options.admin'])`);
  }
  return id;
}

/**
 * Sentry's schema as a catalog listing (tables, columns, defaults, constraints, indexes,
 * sequences, triggers, functions, comments) of the schema that holds its tables: what
 * `pg_dump --schema-only` would print, compared as data. (The test server is PostgreSQL 18 and
 * pg_dump refuses a server newer than itself, so the catalog is read directly.)
 */
export async function sentrySchema(k: Knex): Promise<unknown> {
  const q = async (sql: string) => (await k.raw(sql)).rows;
  return {
    columns: await q(`SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS def, a.attidentity
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, a.attnum`),
    constraints: await q(`SELECT conrelid::regclass::text AS t, conname, pg_get_constraintdef(oid) AS def, condeferrable, condeferred
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2`),
    indexes: await q(`SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1`),
    sequences: await q(`SELECT sequencename, data_type, increment_by, max_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1`),
    triggers: await q(`SELECT tgrelid::regclass::text AS t, tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
      WHERE c.relnamespace = 'public'::regnamespace AND NOT tgisinternal ORDER BY 1, 2`),
    functions: await q(`SELECT proname, pg_get_function_identity_arguments(oid) AS args FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2`),
    comments: await q(`SELECT classoid::regclass::text AS k, objoid::regclass::text AS o, description FROM pg_description d
      JOIN pg_class c ON c.oid = d.objoid WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1, 2, 3`),
    tables: await q(`SELECT relname, relkind, relpersistence FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1`),
  };
}
