/**
 * The write plan: what the merge writes into *this* target, derived from the catalog
 * ({@link Target}) and the model registry (`schemas/`), never from a Sentry version number.
 *
 * - Only columns the target has are written; every NOT NULL column without a database default
 *   gets the value Sentry's model gives a relocated user. A NOT NULL column userport does not
 *   know (a future Sentry's) stops the import before anything is written.
 * - Tables the target lacks are not written, and the plan says why (no `sentry_email` after 2026).
 * - Keys follow the target: an ON CONFLICT arbiter only where the target has that unique key;
 *   addresses compared case-insensitively whatever the column type (citext or varchar).
 */
import { DatabaseError, ErrorCodes } from '../../errors.js';
import { modelInfo, type ImportScope } from '../../models.js';
import type pg from 'pg';
import { arbiter, idLimit, readTarget, requireUserTable, type OptionValueEncoding, type Target, type TargetTable } from '../target.js';

/**
 * Why `sentry.email` records are skipped by a target without sentry_email (Sentry 2026), and why a
 * merge of staged ones drops them.
 */
export const NO_EMAIL_TABLE = 'no sentry_email table in the target database (Sentry removed the Email model in 2026)';

/**
 * The models whose records an import into this target skips before validating them, each with
 * why (the mapper's `MapTarget.skipModels`): `sentry.email` where the target has no sentry_email. Sentry
 * removed the model in 2026 (first excluded from relocation, then deleted), and its importer skips
 * the models it does not know, so an older export's Email records are counted and skipped there,
 * never staged. Every other table the target lacks is not Sentry's own doing: its records are still
 * validated and dropped by the merge, a finding each.
 */
export function skippedModels(plan: WritePlan): Record<string, string> {
  return plan.email ? {} : { 'sentry.email': NO_EMAIL_TABLE };
}

/** Sentry's table of lost-password hashes (not a model of the export: no schema names it). */
export const LOST_PASSWORD_TABLE = 'sentry_lostpasswordhash';

/**
 * What a relocated user gets in each `auth_user` column, as SQL over a row `u` of the users'
 * decision table (`up_user`), in user scope (Sentry's `User.normalize_before_relocation_import`
 * and `write_relocation_import`): privileges cleared, unclaimed, a password nobody knows (Django's
 * unusable form, `!` and 40 characters), the profile as exported.
 */
const USER_VALUES: Record<string, string> = {
  id: 'u.new_id',
  // The one the client made as it staged the user (lib/copy-text.ts): 40 hex digits of random
  // bytes. A row staged without one (by an older version, resumed) gets 40 hex digits of one
  // SHA-224 of a random double, as it did then (70-100 ms of the INSERT per 100k users). A
  // password nobody can use, whatever its digits.
  password: `coalesce(u.unusable_password, '!' || left(encode(sha224(float8send(random())), 'hex'), 40))`,
  last_login: 'u.last_login',
  username: 'u.final_name',
  first_name: `coalesce(u.first_name, '')`,
  email: `coalesce(u.email, '')`,
  email_unique: 'u.email_unique_final',
  is_staff: 'false',
  is_active: 'coalesce(u.is_active, true)',
  is_unclaimed: 'true',
  is_superuser: 'false',
  is_managed: 'false',
  is_sentry_app: 'u.is_sentry_app',
  is_password_expired: 'false',
  is_suspended: 'coalesce(u.is_suspended, false)',
  last_password_change: 'now()',
  flags: 'coalesce(u.flags, 0)',
  session_nonce: 'u.session_nonce',
  date_joined: 'coalesce(u.date_joined, now())',
  last_active: 'u.last_active',
  avatar_type: 'coalesce(u.avatar_type, 0)',
  avatar_url: 'u.avatar_url',
};

/**
 * What config and global scopes change in {@link USER_VALUES} (Sentry's `User.normalize_before_relocation_import`):
 * both keep staff, superuser and managed; global also keeps the password hash and its dates,
 * unless the exported row is unclaimed (`u.keep_pw`, decided by the users' step). `u.x` is the
 * staged `extra` object.
 */
const PRIVILEGED_USER_VALUES: Record<string, string> = {
  is_staff: `coalesce((u.x->>'is_staff')::boolean, false)`,
  is_superuser: `coalesce((u.x->>'is_superuser')::boolean, false)`,
  is_managed: `coalesce((u.x->>'is_managed')::boolean, false)`,
};
const GLOBAL_USER_VALUES: Record<string, string> = {
  password: `CASE WHEN u.keep_pw THEN u.x->>'password' ELSE ${USER_VALUES.password} END`,
  is_unclaimed: 'NOT u.keep_pw',
  is_password_expired: `u.keep_pw AND coalesce((u.x->>'is_password_expired')::boolean, false)`,
  last_password_change: `CASE WHEN u.keep_pw THEN (u.x->>'last_password_change')::timestamptz ELSE now() END`,
};

/** Sentry's `auth_user` values for a relocated user in `scope`. */
function userValues(scope: ImportScope): Record<string, string> {
  if (scope === 'users') return USER_VALUES;
  return { ...USER_VALUES, ...PRIVILEGED_USER_VALUES, ...(scope === 'global' ? GLOBAL_USER_VALUES : {}) };
}

/** When Sentry added the `auth_user` columns an older target may lack (for the report). */
const USER_COLUMN_HISTORY: Record<string, string> = {
  email_unique: 'added in 2025 (migration 0915)',
  is_unclaimed: 'added in 2023 for relocation',
  is_suspended: 'added in 2026 (migration 1075)',
  avatar_type: 'added in 2023',
  avatar_url: 'added in 2023',
};

/** One thing the plan does not write, and why. */
export interface NotWritten {
  what: string;
  why: string;
}

/** The tables and columns of one target the merge writes. */
export interface WritePlan {
  target: Target;
  user: {
    table: string;
    /** Columns of the INSERT, in the target's order. */
    columns: string[];
    /** The SQL value of each column, over `up_user u`. */
    values: string[];
    /** The largest id `auth_user.id` holds. */
    idLimit: number | bigint;
    /** The target has `email_unique` (UNIQUE): the merge decides each new user's value. */
    emailUnique: boolean;
    /** Width of `username`, for renamed users' tails. */
    usernameMax: number;
  };
  /** `sentry_email`, when the target has it. */
  email: { table: string; arbiter: string | undefined } | undefined;
  userEmail: { table: string; arbiter: string | undefined } | undefined;
  userOption: { table: string; value: string } | undefined;
  lostPassword: { table: string } | undefined;
  /** The import's scope: what the plan writes beyond user scope. */
  scope: ImportScope;
  /** The tables of the config and global scopes the target has (none in user scope). */
  privileges: PrivilegePlan;
  notWritten: NotWritten[];
}

/** The config- and global-scope tables of one target, each present or undefined. */
export interface PrivilegePlan {
  permission?: { table: string };
  /** `permissions` as text[] (Sentry 2025+) or as JSON text (older). */
  role?: { table: string; permissionsArray: boolean };
  roleUser?: { table: string };
  /** `config` as the target stores it; ids 32-bit in every generation. */
  authenticator?: { table: string; config: OptionValueEncoding; idLimit: number | bigint };
  userIp?: { table: string };
  /** The token columns this generation has (hashed tokens and names since 2023), and the token width. */
  token?: { table: string; columns: Set<string>; tokenWidth: number };
  authorization?: { table: string; columns: Set<string> };
}

/** Each privilege model's table and the scope that brings it, for the plan and the report. */
const PRIVILEGE_MODELS: [keyof PrivilegePlan, string][] = [
  ['permission', 'sentry.userpermission'], ['role', 'sentry.userrole'], ['roleUser', 'sentry.userroleuser'],
  ['authenticator', 'sentry.authenticator'], ['userIp', 'sentry.userip'], ['token', 'sentry.apitoken'],
  ['authorization', 'sentry.apiauthorization'],
];

function privilegePlan(target: Target, scope: ImportScope, notWritten: NotWritten[]): PrivilegePlan {
  const out: PrivilegePlan = {};
  for (const [key, model] of PRIVILEGE_MODELS) {
    const info = modelInfo(model, scope);
    if (!info) continue;
    const t = target.tables.get(info.mapping.table);
    if (!t) {
      notWritten.push({ what: info.mapping.table, why: `no such table in this database: ${model} records are dropped` });
      continue;
    }
    const columns = new Set(t.columns.keys());
    switch (key) {
      case 'role': out.role = { table: t.name, permissionsArray: t.columns.get('permissions')?.udt === '_text' }; break;
      case 'authenticator': out.authenticator = { table: t.name, config: target.authenticatorConfig ?? 'jsonb', idLimit: idLimit(target, t.name) }; break;
      case 'token': out.token = { table: t.name, columns, tokenWidth: t.columns.get('token')?.maxLength ?? 64 }; break;
      case 'authorization': out.authorization = { table: t.name, columns }; break;
      default: out[key] = { table: t.name };
    }
  }
  return out;
}

function tableOf(model: string): string {
  return modelInfo(model)!.mapping.table;
}

/** The plan for `target` (which must have `auth_user`, see `requireUserTable`), for an import in `scope`. */
export function writePlan(target: Target, scope: ImportScope = 'users'): WritePlan {
  const notWritten: NotWritten[] = [];
  const USER_VALUES = userValues(scope);
  const userTable = tableOf('sentry.user');
  const user = target.tables.get(userTable)!;
  const columns: string[] = [];
  for (const c of user.columns.values()) {
    if (USER_VALUES[c.name] !== undefined) { columns.push(c.name); continue; }
    if (c.notNull && !c.hasDefault) {
      throw new DatabaseError(ErrorCodes.TARGET_SCHEMA,
        `${userTable}.${c.name} in the target database is NOT NULL without a default, and userport does not know what Sentry writes there: nothing was written`);
    }
    notWritten.push({ what: `${userTable}.${c.name}`, why: 'a column Sentry\'s user scope does not fill: left to its default' });
  }
  for (const name of Object.keys(USER_VALUES)) {
    if (!user.columns.has(name)) notWritten.push({ what: `${userTable}.${name}`, why: `no such column in this database (${USER_COLUMN_HISTORY[name] ?? 'not in this Sentry generation'})` });
  }
  const present = (model: string): TargetTable | undefined => target.tables.get(tableOf(model));
  const emailTable = present('sentry.email');
  if (!emailTable) {
    notWritten.push({
      what: tableOf('sentry.email'),
      why: 'no sentry_email in this database: Sentry removed it in 2026, so no Email rows are written and sentry.email records are skipped (counted, as Sentry\'s importer skips them)',
    });
  }
  const ue = present('sentry.useremail');
  if (!ue) notWritten.push({ what: tableOf('sentry.useremail'), why: 'no such table in this database: user emails and primary addresses are dropped' });
  const uo = present('sentry.useroption');
  if (!uo) notWritten.push({ what: tableOf('sentry.useroption'), why: 'no such table in this database: user options are dropped' });
  const lph = target.tables.get(LOST_PASSWORD_TABLE);
  if (!lph) notWritten.push({ what: LOST_PASSWORD_TABLE, why: 'no such table in this database: imported users get no lost-password hash' });
  const privileges = privilegePlan(target, scope, notWritten);
  const optionValue = () => {
    switch (target.optionValues) {
      // The mapper already wrote the value in the target's encoding (JSON text or a base64 pickle).
      case 'json-text': case 'pickle': return 'opt_value';
      default: return 'opt_value::jsonb';
    }
  };
  return {
    target,
    user: {
      table: userTable, columns, values: columns.map((c) => USER_VALUES[c]!), idLimit: idLimit(target, userTable),
      emailUnique: user.columns.has('email_unique'), usernameMax: user.columns.get('username')?.maxLength ?? 128,
    },
    email: emailTable && {
      table: emailTable.name,
      // citext's UNIQUE (email) or a UNIQUE index on lower(email): either is case-insensitive.
      arbiter: arbiter(target, emailTable.name, ['email']) ?? arbiter(target, emailTable.name, ['lower((email)::text)']),
    },
    userEmail: ue && { table: ue.name, arbiter: arbiter(target, ue.name, ['user_id', 'email']) },
    userOption: uo && { table: uo.name, value: optionValue() },
    lostPassword: lph && { table: lph.name },
    scope,
    privileges,
    notWritten,
  };
}

/** The plan of the target `client` is connected to, for an import in `scope`. */
export async function planFor(client: pg.ClientBase, scope: ImportScope = 'users'): Promise<WritePlan> {
  const target = await readTarget(client);
  requireUserTable(target);
  return writePlan(target, scope);
}

/** Every table the plan writes rows into, each drawing ids from its own sequence: Sentry's user tables, then the privileges'. */
export function writtenTables(plan: WritePlan): string[] {
  const privileges = Object.values(plan.privileges) as ({ table: string } | undefined)[];
  return [plan.user, plan.email, plan.userEmail, plan.userOption, plan.lostPassword, ...privileges]
    .filter((t): t is { table: string } => t !== undefined).map((t) => t.table);
}

/** The plan as lines a person reads (`userport target`, `--dry-run`). */
export function describePlan(plan: WritePlan): string[] {
  const t = plan.target;
  const lines: string[] = [];
  const userId = t.tables.get(plan.user.table)!.columns.get('id')!;
  lines.push(`Sentry tables in schema ${t.schema}: ${[...t.tables.keys()].join(', ')}`);
  lines.push(`User ids: ${userId.type}${plan.user.idLimit === 2147483647 ? ' (32-bit: at most 2,147,483,647)' : ''}; ` +
    `${t.userForeignKeys.length} foreign keys of other tables point at ${plan.user.table}`);
  lines.push(`Writes ${plan.user.table}: ${plan.user.columns.join(', ')}`);
  if (plan.email) lines.push(`Writes ${plan.email.table}: email, date_added (addresses compared case-insensitively)`);
  if (plan.userEmail) lines.push(`Writes ${plan.userEmail.table}: user_id, email, validation_hash, date_hash_added, is_verified`);
  if (plan.userOption) {
    const enc = { jsonb: 'jsonb', 'json-text': 'JSON text', pickle: 'base64 Python pickles (django-picklefield)' }[t.optionValues ?? 'jsonb'];
    lines.push(`Writes ${plan.userOption.table}: user_id, project_id, organization_id, key, value (as ${enc}: ${t.optionValuesEvidence ?? 'jsonb'})`);
  }
  if (plan.lostPassword) {
    lines.push(`Writes ${plan.lostPassword.table}: user_id, hash, date_added${plan.scope === 'global' ? ' (only for users whose password is not kept)' : ''}`);
  }
  const p = plan.privileges;
  if (plan.scope !== 'users') {
    lines.push(`Scope ${plan.scope}: keeps is_staff, is_superuser, is_managed${plan.scope === 'global' ? '; password hashes (unless the user was unclaimed) and email verification' : ''}`);
  }
  if (p.permission) lines.push(`Writes ${p.permission.table}: user_id, permission`);
  if (p.role) lines.push(`Writes ${p.role.table}: name, permissions (as ${p.role.permissionsArray ? 'text[]' : 'JSON text'}), date_added, date_updated`);
  if (p.roleUser) lines.push(`Writes ${p.roleUser.table}: user_id, role_id, date_added, date_updated`);
  if (p.authenticator) {
    const enc = { jsonb: 'jsonb', 'json-text': 'JSON text', pickle: 'base64 Python pickles (django-picklefield)' }[p.authenticator.config];
    lines.push(`Writes ${p.authenticator.table}: user_id, type, config (as ${enc}: ${t.authenticatorConfigEvidence ?? 'jsonb'}), created_at, last_used_at`);
  }
  if (p.userIp) lines.push(`Writes ${p.userIp.table}: user_id, ip_address, country_code, region_code, first_seen, last_seen`);
  if (p.token) lines.push(`Writes ${p.token.table}: ${[...p.token.columns].filter((c) => c !== 'id').join(', ')}`);
  if (p.authorization) lines.push(`Writes ${p.authorization.table}: ${[...p.authorization.columns].filter((c) => c !== 'id').join(', ')}`);
  for (const n of plan.notWritten) lines.push(`Not written: ${n.what}: ${n.why}`);
  return lines;
}
