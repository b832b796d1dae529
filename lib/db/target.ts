/**
 * The target database, read once from the catalog before anything is written: which of Sentry's
 * user tables exist, their columns (type, width, NOT NULL, database default), their unique
 * constraints and indexes, and the foreign keys of other tables that point at `auth_user`. The
 * merge and the mapper decide from this what to write and how, by feature, never by a Sentry
 * version number: Sentry's schema changed over the years (integer user ids, 75-character
 * addresses, pickled option values, `email_unique`, `is_suspended`, the end of `sentry_email`)
 * and real installs hold any mix of it. userport reads it and never changes it.
 */
import type pg from 'pg';
import { DatabaseError, ErrorCodes } from '../errors.js';

/** One column of a target table, as the catalog describes it. */
export interface TargetColumn {
  name: string;
  /** `format_type`: `character varying(75)`, `citext`, `jsonb`, `integer`... */
  type: string;
  /** The base type's name: `varchar`, `citext`, `jsonb`, `text`, `int4`, `int8`, `bool`, `timestamptz`, `int2`, ... */
  udt: string;
  /** Characters a varchar column holds, else null. */
  maxLength: number | null;
  notNull: boolean;
  /** A database default (or an identity) fills the column when an INSERT leaves it out. */
  hasDefault: boolean;
}

/** A unique constraint or unique index usable as an ON CONFLICT arbiter: its key, no predicate. */
export interface TargetUnique {
  name: string;
  /** Key columns, or index expressions as `pg_get_indexdef` prints them (`lower((email)::text)`). */
  keys: string[];
}

/** One of Sentry's tables in the target. */
export interface TargetTable {
  name: string;
  columns: Map<string, TargetColumn>;
  uniques: TargetUnique[];
}

/** A foreign key of another table that points at `auth_user`. */
export interface UserForeignKey {
  table: string;
  column: string;
  constraint: string;
}

/** How a target stores a user option's value. */
export type OptionValueEncoding =
  /** jsonb (Sentry 2025+): the value itself */
  | 'jsonb'
  /** text holding JSON (Sentry after migration 0455, before 0954) */
  | 'json-text'
  /** text holding base64 of a Python pickle (django-picklefield: Sentry 9 and earlier) */
  | 'pickle';

/** What the catalog says about a target database. */
export interface Target {
  /** The schema that holds Sentry's tables (the connection's current schema). */
  schema: string;
  tables: Map<string, TargetTable>;
  userForeignKeys: UserForeignKey[];
  /** How `sentry_useroption.value` is stored, when that table exists. */
  optionValues: OptionValueEncoding | undefined;
  /** Why {@link optionValues} was decided so (for the report). */
  optionValuesEvidence: string | undefined;
  /** How `auth_authenticator.config` is stored, when that table exists (pickles before Sentry's 0449, JSON text, jsonb since 0929). */
  authenticatorConfig: OptionValueEncoding | undefined;
  /** Why {@link authenticatorConfig} was decided so (for the report). */
  authenticatorConfigEvidence: string | undefined;
}

/** Sentry's tables userport reads and writes in user scope. */
export const USER_SCOPE_TABLES = ['auth_user', 'sentry_email', 'sentry_useremail', 'sentry_useroption', 'sentry_lostpasswordhash'] as const;

/** The tables the config and global scopes add. */
export const PRIVILEGE_TABLES = [
  'sentry_userpermission', 'sentry_userrole', 'sentry_userrole_users', 'auth_authenticator', 'sentry_userip',
  'sentry_apitoken', 'sentry_apiauthorization',
] as const;

/** Every table userport reads and writes, in any scope. */
export const SENTRY_USER_TABLES: readonly string[] = [...USER_SCOPE_TABLES, ...PRIVILEGE_TABLES];

/** The migration of Sentry's that turned pickled option values into JSON text. */
const JSON_OPTION_MIGRATION = '0455_pickle_to_json_sentry_useroption';
/** The migration of Sentry's that turned pickled authenticator configs into JSON text. */
const JSON_AUTHENTICATOR_MIGRATION = '0449_pickle_to_json_authenticator';

/**
 * Reads the target: one catalog query for the tables, columns and keys, and, only for a text
 * option-value column, where the database says how it encodes values. Runs on any connection,
 * inside or outside a transaction; reads only.
 */
export async function readTarget(c: pg.ClientBase, tables: readonly string[] = SENTRY_USER_TABLES): Promise<Target> {
  const { rows } = await c.query(`
    WITH t AS (
      SELECT cl.oid, cl.relname::text AS name FROM pg_class cl
      WHERE cl.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
        AND cl.relkind IN ('r', 'p') AND cl.relname = ANY($1::text[])
    )
    SELECT current_schema()::text AS schema,
      coalesce((SELECT json_agg(json_build_object(
        'name', t.name,
        'columns', (SELECT json_agg(json_build_object(
            'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod), 'udt', ty.typname,
            'maxLength', CASE WHEN ty.typname IN ('varchar', 'bpchar') AND a.atttypmod > 4 THEN a.atttypmod - 4 END,
            'notNull', a.attnotnull, 'hasDefault', a.atthasdef OR a.attidentity <> '')
            ORDER BY a.attnum)
          FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
          WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped),
        -- Key columns by name from the catalog rows themselves: pg_get_indexdef would wait for
        -- the lock of another import's bulk load (which drops and rebuilds these indexes) and
        -- then find its index gone. Only an expression key needs it (indkey 0).
        'uniques', coalesce((SELECT json_agg(json_build_object(
            'name', ic.relname,
            'keys', (SELECT json_agg(CASE WHEN i.indkey[k - 1] <> 0
                                          THEN (SELECT attname FROM pg_attribute WHERE attrelid = i.indrelid AND attnum = i.indkey[k - 1])::text
                                          ELSE pg_get_indexdef(i.indexrelid, k, false) END ORDER BY k)
                     FROM generate_series(1, i.indnkeyatts) k))
            ORDER BY ic.relname)
          FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
          WHERE i.indrelid = t.oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL), '[]'::json)
      )) FROM t), '[]'::json) AS tables,
      coalesce((SELECT json_agg(json_build_object('table', co.conrelid::regclass::text, 'column', a.attname, 'constraint', co.conname)
          ORDER BY co.conrelid::regclass::text, co.conname)
        FROM pg_constraint co JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = co.conkey[1]
        WHERE co.contype = 'f' AND co.confrelid = (SELECT oid FROM t WHERE name = 'auth_user')), '[]'::json) AS fks`, [tables]);
  const row = rows[0] as { schema: string; tables: { name: string; columns: TargetColumn[]; uniques: TargetUnique[] }[]; fks: UserForeignKey[] };
  const target: Target = {
    schema: row.schema,
    tables: new Map(row.tables.map((t) => [t.name, {
      name: t.name, columns: new Map(t.columns.map((col) => [col.name, col])),
      // A key that could not be read (its index dropped meanwhile) is no arbiter.
      uniques: t.uniques.filter((u) => u.keys.every((k) => typeof k === 'string')),
    }])),
    userForeignKeys: row.fks,
    optionValues: undefined,
    optionValuesEvidence: undefined,
    authenticatorConfig: undefined,
    authenticatorConfigEvidence: undefined,
  };
  const value = target.tables.get('sentry_useroption')?.columns.get('value');
  if (value) {
    const e = await valueEncoding(c, value, 'sentry_useroption', JSON_OPTION_MIGRATION);
    target.optionValues = e.encoding;
    target.optionValuesEvidence = e.evidence;
  }
  const config = target.tables.get('auth_authenticator')?.columns.get('config');
  if (config) {
    const e = await valueEncoding(c, config, 'auth_authenticator', JSON_AUTHENTICATOR_MIGRATION);
    target.authenticatorConfig = e.encoding;
    target.authenticatorConfigEvidence = e.evidence;
  }
  return target;
}

/**
 * How a django-picklefield column (`sentry_useroption.value`, `auth_authenticator.config`)
 * encodes values: jsonb by its type; for text, Sentry's migration history (the migration that
 * turned its pickles into JSON text), else a stored value.
 */
async function valueEncoding(c: pg.ClientBase, column: TargetColumn, table: string, jsonMigration: string): Promise<{ encoding: OptionValueEncoding; evidence: string }> {
  if (column.udt === 'jsonb' || column.udt === 'json') return { encoding: 'jsonb', evidence: `the column is ${column.udt}` };
  const history = await c.query(`SELECT
      to_regclass('django_migrations') IS NOT NULL AS django, to_regclass('south_migrationhistory') IS NOT NULL AS south`);
  const { django, south } = history.rows[0] as { django: boolean; south: boolean };
  if (django) {
    const applied = await c.query(`SELECT 1 FROM django_migrations WHERE app = 'sentry' AND name = $1`, [jsonMigration]);
    if (applied.rowCount) return { encoding: 'json-text', evidence: `Sentry migration ${jsonMigration} is applied` };
    return { encoding: 'pickle', evidence: `Sentry migration ${jsonMigration} is not applied` };
  }
  if (south) return { encoding: 'pickle', evidence: 'a South-era Sentry (south_migrationhistory, before Django migrations)' };
  // No migration history at all (a hand-made copy): what a stored value looks like.
  const sample = await c.query(`SELECT ${column.name} AS v FROM ${table} WHERE ${column.name} IS NOT NULL LIMIT 1`);
  const v = sample.rows[0]?.v as string | undefined;
  if (v !== undefined && /^gA[IJKLMN][A-Za-z0-9+/]*={0,2}$/.test(v)) return { encoding: 'pickle', evidence: 'stored values are base64 pickles' };
  return { encoding: 'json-text', evidence: v === undefined ? 'no migration history and no stored value: JSON text assumed' : 'stored values are JSON text' };
}

/** The table, or undefined. */
export function table(target: Target, name: string): TargetTable | undefined {
  return target.tables.get(name);
}

/** Whether `name` has `column`. */
export function hasColumn(target: Target, name: string, column: string): boolean {
  return !!target.tables.get(name)?.columns.has(column);
}

/**
 * The ON CONFLICT target for a unique key on exactly `keys` (column names, or expressions as
 * `pg_get_indexdef` prints them), or undefined when the table has no such arbiter.
 */
export function arbiter(target: Target, name: string, keys: readonly string[]): string | undefined {
  const want = keys.join(',');
  const u = target.tables.get(name)?.uniques.find((x) => x.keys.map((k) => k.replace(/^"(.*)"$/, '$1')).join(',') === want);
  if (!u) return undefined;
  return `(${u.keys.map((k) => (/^[a-z_][a-z0-9_]*$/.test(k) ? k : `(${k})`)).join(', ')})`;
}

/** The largest id an integer or bigint id column of `name` can hold. */
export function idLimit(target: Target, name: string): number | bigint {
  const udt = target.tables.get(name)?.columns.get('id')?.udt;
  if (udt === 'int4') return 2147483647;
  if (udt === 'int2') return 32767;
  return 9223372036854775807n;
}

/** Fails with USERPORT_TARGET_SCHEMA unless the target has `auth_user` with the columns userport cannot do without. */
export function requireUserTable(target: Target): void {
  const user = target.tables.get('auth_user');
  const need = ['id', 'username', 'password'];
  if (!user) {
    throw new DatabaseError(ErrorCodes.TARGET_SCHEMA,
      `the target database has no auth_user table in schema ${target.schema}: it is not a Sentry database (run userport migrate to create Sentry's tables in an empty database)`);
  }
  const missing = need.filter((c) => !user.columns.has(c));
  if (missing.length) throw new DatabaseError(ErrorCodes.TARGET_SCHEMA, `auth_user in the target database lacks column ${missing.join(', ')}`);
}
