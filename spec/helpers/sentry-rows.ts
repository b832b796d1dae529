/**
 * Rows as Sentry itself writes them, for specs that need existing data in a target: every NOT
 * NULL column of the table gets Sentry's model default, whatever generation the target is (a
 * Sentry table has no database default for most of them).
 */
import type { Knex } from 'knex';

/** Sentry's model defaults of the NOT NULL columns a spec does not set. */
const DEFAULTS: Record<string, Record<string, unknown>> = {
  auth_user: {
    password: '', first_name: '', email: '', is_staff: false, is_active: true, is_superuser: false, is_managed: false,
    is_password_expired: false, is_unclaimed: false, is_suspended: false, flags: 0, date_joined: '2020-01-01T00:00:00Z', avatar_type: 0,
  },
  sentry_email: { date_added: '2020-01-01T00:00:00Z' },
  sentry_useremail: { validation_hash: 'x'.repeat(32), date_hash_added: '2020-01-01T00:00:00Z', is_verified: false },
  sentry_useroption: {},
  sentry_lostpasswordhash: { hash: 'h'.repeat(32), date_added: '2020-01-01T00:00:00Z' },
};

async function columnsOf(k: Knex, table: string): Promise<Map<string, string>> {
  const r = await k.raw(`SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?`, [table]);
  return new Map(r.rows.map((x: { column_name: string; data_type: string }) => [x.column_name, x.data_type]));
}

/** Inserts one row into `table` with `values` and Sentry's defaults for the rest; returns its id. */
export async function insertRow(k: Knex, table: string, values: Record<string, unknown>): Promise<number> {
  const cols = await columnsOf(k, table);
  const row: Record<string, unknown> = {};
  for (const [c, v] of Object.entries({ ...DEFAULTS[table], ...values })) if (cols.has(c)) row[c] = v;
  // A text option column (older Sentry) holds JSON text; jsonb takes it as is.
  if (table === 'sentry_useroption' && 'value' in row && typeof row.value !== 'string') row.value = JSON.stringify(row.value);
  const names = Object.keys(row);
  const r = await k.raw(`INSERT INTO ${table} (${names.map((n) => `"${n}"`).join(', ')}) VALUES (${names.map(() => '?').join(', ')}) RETURNING id`,
    names.map((n) => row[n] as never));
  return Number(r.rows[0].id);
}

/** An existing user, as Sentry would have it. */
export function insertUser(k: Knex, values: { username: string } & Record<string, unknown>): Promise<number> {
  return insertRow(k, 'auth_user', values);
}

/** An existing `sentry_email` row. */
export function insertEmail(k: Knex, email: string): Promise<number> {
  return insertRow(k, 'sentry_email', { email });
}
