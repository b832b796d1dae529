/**
 * The config and global scopes' models (Sentry's `import config` / `import global`, reference
 * sections 2.3-2.8): permissions, roles and their users, authenticators, user IPs, API tokens
 * and authorizations. Runs after the users' step (their pk map is `up_user`) and decides each
 * model in one statement into a decision table (`up_perm`, `up_role`, ...), then inserts what it
 * keeps; the findings step reads those tables like the user-scope ones.
 *
 * Where Sentry is inconsistent (reference section 7), the safe rule, stated in the README:
 * - every child row of a merged user is skipped, whatever its model (Sentry skips only some), so
 *   an existing user never receives the imported user's tokens, roles or 2FA;
 * - a duplicate (user, permission), (user, role), (user, type) or (user, ip) pair is imported
 *   once, the others dropped with a finding (Sentry fails on the first two);
 * - a token that collides with an existing token gets new token values, as Sentry's does, and the
 *   summary and a finding say so (never quoting a token).
 */
import { DatabaseError, ErrorCodes } from '../../errors.js';
import { REJECTED_USER_CODE } from '../../models.js';
import type { ImportStats } from '../../stats.js';
import { idSequence, markSequence, modelCodes, type Q } from './run.js';
import type { WritePlan } from './plan.js';

/** Options of {@link mergePrivileges}. */
export interface PrivilegesStepOptions {
  run: number;
  /** `--overwrite-configs`: a role of an existing name takes the imported permissions and dates. */
  overwriteConfigs: boolean;
}

/** A decision table of this step, its model, and how many rows its INSERT wrote. */
export interface PrivilegeTable {
  table: string;
  model: string;
  inserted: number;
}

/** A rule of one model: rows matching `when` get `outcome` with `reason`. */
interface Rule { when: string; outcome: 'dropped' | 'existing'; reason: string }

/** 64 random hex characters, the shape of Sentry's `generate_token` (`secrets.token_hex(32)`; two uuid4 hex strings in older releases). */
const HEX64 = `replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')`;

/** A JSON list of strings in `x` as text[] (or `'{}'` when absent). */
const textArray = (e: string) => `coalesce(ARRAY(SELECT jsonb_array_elements_text(${e})), '{}')`;

/**
 * Decides every staged row of one model that names a user: the user's fate first (filtered,
 * not in the export, rejected, merged), then the model's own rules, then duplicates of `dedupe`
 * (the lowest source pk wins). Creates `table` with `outcome` ('insert', 'filtered', 'dropped',
 * 'merged') and `reason`.
 */
async function decideRows(q: Q, S: string, o: { run: number; anyRejected: boolean }, table: string, code: number, target: string | undefined,
  what: string, rules: Rule[], dedupe?: { key: string; reason: string }, join = '', columns = ''): Promise<void> {
  const missing = target === undefined;
  const cases = (pick: (r: Rule) => string) => rules.map((r) => `WHEN ${r.when} THEN ${pick(r)}`).join(' ');
  await q(`
    CREATE TEMP TABLE ${table} ON COMMIT DROP AS
    SELECT b.*,
      CASE WHEN ${missing} THEN 'dropped' WHEN user_keep = false THEN 'filtered' WHEN user_keep IS NULL THEN 'dropped'
           WHEN user_kind = 'merged' THEN 'merged' ${cases((r) => `'${r.outcome}'`)}
           ${dedupe ? `WHEN rn > 1 THEN 'dropped'` : ''} ELSE 'insert' END AS outcome,
      CASE WHEN ${missing} THEN 'no ${target ?? what} table in the target database'
           WHEN user_keep = false THEN 'user filtered out'
           WHEN user_keep IS NULL AND user_rejected THEN 'user rejected (see the rejects file)'
           WHEN user_keep IS NULL THEN 'user not in the export'
           WHEN user_kind = 'merged' THEN 'user merged into an existing user: the existing user keeps their own ${what} rows'
           ${cases((r) => `'${r.reason.replace(/'/g, "''")}'`)}
           ${dedupe ? `WHEN rn > 1 THEN '${dedupe.reason}'` : ''} END AS reason
    FROM (
      SELECT s.src_pk, s.ord, s.off, s.user_pk, s.username, s.organization_id, s.x,
        m.target_id, m.kind AS user_kind, m.keep AS user_keep,
        ${o.anyRejected ? `EXISTS (SELECT 1 FROM ${S} r WHERE r.run = $1 AND r.model = ${REJECTED_USER_CODE} AND r.src_pk = s.user_pk)` : 'false'} AS user_rejected,
        ${dedupe ? `row_number() OVER (PARTITION BY m.target_id, m.kind, ${dedupe.key} ORDER BY s.src_pk)` : '1'} AS rn
        ${columns}
      -- OFFSET 0: x is cast once per row, not again at each use in the decision (users.ts).
      FROM (SELECT *, extra::jsonb AS x FROM ${S} WHERE run = $1 AND model = ${code} OFFSET 0) s
        LEFT JOIN (SELECT src_pk, keep, CASE WHEN keep THEN target_id END AS target_id,
                     CASE WHEN NOT keep THEN NULL WHEN outcome = 'merged' THEN 'merged' ELSE 'inserted' END AS kind
                   FROM up_user) m ON m.src_pk = s.user_pk
        ${join}
    ) b`, [o.run]);
}

/** Fails before writing when `count` new ids would not fit `table`'s id column (auth_authenticator's are 32-bit). */
async function checkIdRoom(q: Q, table: string, count: number, limit: number | bigint): Promise<void> {
  if (count === 0) return;
  const seq = await idSequence(q, table);
  if (!seq) throw new DatabaseError(ErrorCodes.TARGET_SCHEMA, `${table}.id in the target database has no sequence to draw new ids from`);
  const s = await markSequence(q, seq);
  const highest = BigInt(s.lastValue) + BigInt(count) - (s.isCalled ? 0n : 1n);
  if (highest > BigInt(limit)) {
    throw new DatabaseError(ErrorCodes.TARGET_LIMIT,
      `importing ${count} rows into ${table} would need ids up to ${highest}, more than its id column holds (${limit}): nothing was written`);
  }
}

/**
 * Inserts from `from` the columns of `value` (column -> SQL) that this generation's table has
 * (API tokens gained their hashed columns and names in 2023), in source pk order.
 */
async function insertColumns(q: Q, target: { table: string; columns: Set<string> }, value: Record<string, string>, from: string): Promise<number> {
  const cols = Object.keys(value).filter((c) => target.columns.has(c));
  return (await q(`INSERT INTO ${target.table} (${cols.join(', ')}) SELECT ${cols.map((c) => value[c]).join(', ')} FROM ${from} ORDER BY src_pk`)).rowCount ?? 0;
}

const APP_BOUND = 'bound to an API application: sentry.apiapplication is organisation data, which userport does not import';

/** The rules of API tokens and authorizations: only personal ones (no application, no organization) are imported. */
const PERSONAL_ONLY: Rule[] = [
  { when: `(x->>'application') IS NOT NULL`, outcome: 'dropped', reason: APP_BOUND },
  { when: 'organization_id IS NOT NULL', outcome: 'dropped', reason: 'scoped to an organization, which userport does not import' },
];

/**
 * Steps of the config and global scopes, after the users' step. Returns the decision tables for
 * the findings step, with what each inserted. Adds the roles' `existing`/`overwritten` counts and
 * the regenerated tokens to `stats`.
 */
export async function mergePrivileges(q: Q, S: string, options: PrivilegesStepOptions, plan: WritePlan, anyRejected: boolean,
  stats: ImportStats): Promise<PrivilegeTable[]> {
  if (plan.scope === 'users') return [];
  const C = modelCodes();
  const P = plan.privileges;
  const o = { run: options.run, anyRejected };
  const out: PrivilegeTable[] = [];

  // Permissions: one per (user, permission).
  await decideRows(q, S, o, 'up_perm', C.permission, P.permission?.table, 'sentry_userpermission', [],
    { key: `s.x->>'permission'`, reason: 'duplicate (user, permission): imported once' });
  out.push({ table: 'up_perm', model: 'sentry.userpermission', inserted: !P.permission ? 0 : (await q(`
    INSERT INTO ${P.permission.table} (user_id, permission)
    SELECT target_id, x->>'permission' FROM up_perm WHERE outcome = 'insert' ORDER BY src_pk`)).rowCount ?? 0 });

  // Roles, by name (Sentry's OverwritableConfigMixin on {name}): an existing role is kept, or
  // overwritten with --overwrite-configs; a later role of the export with the same name is the
  // first one.
  const R = P.role?.table;
  await q(`
    CREATE TEMP TABLE up_role ON COMMIT DROP AS
    SELECT b.*,
      CASE WHEN ${!R} THEN 'dropped' WHEN rn > 1 THEN 'existing'
           WHEN existing_id IS NOT NULL AND $2 THEN 'overwritten' WHEN existing_id IS NOT NULL THEN 'existing' ELSE 'insert' END AS outcome,
      CASE WHEN ${!R} THEN 'no sentry_userrole table in the target database'
           WHEN rn > 1 THEN 'same name as an earlier role of the export: that role is used'
           WHEN existing_id IS NOT NULL AND $2 THEN 'a role of this name existed: overwritten (--overwrite-configs)'
           WHEN existing_id IS NOT NULL THEN 'a role of this name exists: kept as it is (--overwrite-configs overwrites it)' END AS reason,
      existing_id AS target_id
    FROM (
      SELECT s.src_pk, s.ord, s.off, NULL::bigint AS user_pk, NULL::text AS username, s.x, s.x->>'name' AS name,
        row_number() OVER (PARTITION BY s.x->>'name' ORDER BY s.src_pk) AS rn,
        ${R ? 'r.id' : 'NULL::bigint'} AS existing_id
      FROM (SELECT *, extra::jsonb AS x FROM ${S} WHERE run = $1 AND model = ${C.role}) s
      ${R ? `LEFT JOIN ${R} r ON r.name = s.x->>'name'` : ''}
    ) b`, [options.run, options.overwriteConfigs]);
  let rolesInserted = 0;
  if (R) {
    const perms = P.role!.permissionsArray ? textArray(`x->'permissions'`) : `coalesce((x->'permissions')::text, '[]')`;
    rolesInserted = (await q(`
      INSERT INTO ${R} (name, permissions, date_added, date_updated)
      SELECT name, ${perms}, (x->>'date_added')::timestamptz, coalesce((x->>'date_updated')::timestamptz, now())
      FROM up_role WHERE outcome = 'insert' ORDER BY src_pk`)).rowCount ?? 0;
    await q(`
      UPDATE ${R} r SET permissions = ${perms.replace(/x->/g, 'u.x->')}, date_added = (u.x->>'date_added')::timestamptz,
        date_updated = coalesce((u.x->>'date_updated')::timestamptz, now())
      FROM up_role u WHERE u.outcome = 'overwritten' AND r.id = u.existing_id`);
    await q(`UPDATE up_role u SET target_id = r.id FROM ${R} r WHERE r.name = u.name AND u.target_id IS NULL`);
  }
  out.push({ table: 'up_role', model: 'sentry.userrole', inserted: rolesInserted });

  // Role users: the user and the role remapped; one link per (user, role), as the table has no key.
  await decideRows(q, S, o, 'up_roleuser', C.roleUser, P.roleUser?.table, 'sentry_userrole_users',
    [{ when: 'role_id IS NULL', outcome: 'dropped', reason: 'role not in the export (or not imported)' }],
    { key: 'ro.target_id', reason: 'duplicate (user, role): imported once' },
    `LEFT JOIN up_role ro ON ro.src_pk = (s.x->>'role')::bigint`, ', ro.target_id AS role_id');
  out.push({ table: 'up_roleuser', model: 'sentry.userroleuser', inserted: !P.roleUser ? 0 : (await q(`
    INSERT INTO ${P.roleUser.table} (user_id, role_id, date_added, date_updated)
    SELECT target_id, role_id, (x->>'date_added')::timestamptz, coalesce((x->>'date_updated')::timestamptz, now())
    FROM up_roleuser WHERE outcome = 'insert' ORDER BY src_pk`)).rowCount ?? 0 });

  if (plan.scope === 'global') {
    // Authenticators, verbatim (Sentry writes them as they are): one per (user, type), the key
    // the table has. The config is already in the target's encoding (the mapper made it).
    const A = P.authenticator;
    await decideRows(q, S, o, 'up_auth', C.authenticator, A?.table, 'auth_authenticator', [],
      { key: `s.x->>'type'`, reason: 'duplicate (user, type): the first one is imported' });
    let authInserted = 0;
    if (A) {
      const n = Number((await q(`SELECT count(*) AS n FROM up_auth WHERE outcome = 'insert'`)).rows[0].n);
      await checkIdRoom(q, A.table, n, A.idLimit);
      authInserted = (await q(`
        INSERT INTO ${A.table} (user_id, type, config, created_at, last_used_at)
        SELECT target_id, (x->>'type')::int, ${A.config === 'jsonb' ? `x->'config'` : `x->>'config'`},
          coalesce((x->>'created_at')::timestamptz, now()), (x->>'last_used_at')::timestamptz
        FROM up_auth WHERE outcome = 'insert' ORDER BY src_pk`)).rowCount ?? 0;
    }
    out.push({ table: 'up_auth', model: 'sentry.authenticator', inserted: authInserted });

    // User IPs with their times (global keeps them): one per (user, address), as Sentry's
    // get_or_create. The country and region codes are the exported ones (Sentry looks them up
    // again in its GeoIP database, which userport does not have).
    const I = P.userIp;
    await decideRows(q, S, o, 'up_ip', C.userIp, I?.table, 'sentry_userip', [],
      { key: `(s.x->>'ip_address')::inet`, reason: 'duplicate (user, ip_address): the first one is imported' });
    out.push({ table: 'up_ip', model: 'sentry.userip', inserted: !I ? 0 : (await q(`
      INSERT INTO ${I.table} (user_id, ip_address, country_code, region_code, first_seen, last_seen)
      SELECT target_id, (x->>'ip_address')::inet, x->>'country_code', x->>'region_code',
        coalesce((x->>'first_seen')::timestamptz, now()), coalesce((x->>'last_seen')::timestamptz, now())
      FROM up_ip WHERE outcome = 'insert' ORDER BY src_pk`)).rowCount ?? 0 });
  }

  // Personal API tokens (no application; Sentry's config scope). A token or refresh token that
  // an existing row (or an earlier row of the export) has gets new values, as Sentry's
  // ApiToken.write_relocation_import does; hashes and last characters follow the token.
  const T = P.token;
  await decideRows(q, S, o, 'up_token', C.token, T?.table, 'sentry_apitoken', PERSONAL_ONLY);
  let tokensInserted = 0;
  if (T) {
    const prefix = T.tokenWidth >= 71 ? `CASE WHEN x->>'token' LIKE 'sntryu\\_%' THEN 'sntryu_' ELSE '' END || ` : '';
    await q(`
      CREATE TEMP TABLE up_token_new ON COMMIT DROP AS
      SELECT z.*,
        CASE WHEN regen THEN ${prefix}${HEX64} ELSE x->>'token' END AS token,
        CASE WHEN x->>'refresh_token' IS NULL THEN NULL WHEN regen THEN ${HEX64} ELSE x->>'refresh_token' END AS refresh,
        CASE WHEN x->>'expires_at' IS NULL THEN NULL WHEN regen THEN now() + interval '30 days' ELSE (x->>'expires_at')::timestamptz END AS expires
      FROM (
        SELECT t.*, (EXISTS (SELECT 1 FROM ${T.table} a WHERE a.token = t.x->>'token')
                     OR EXISTS (SELECT 1 FROM ${T.table} a WHERE a.refresh_token = t.x->>'refresh_token')
                     OR rn_token > 1 OR rn_refresh > 1) AS regen
        FROM (SELECT u.*, row_number() OVER (PARTITION BY x->>'token' ORDER BY src_pk) AS rn_token,
                CASE WHEN x->>'refresh_token' IS NOT NULL THEN row_number() OVER (PARTITION BY x->>'refresh_token' ORDER BY src_pk) END AS rn_refresh
              FROM up_token u WHERE outcome = 'insert') t
      ) z`);
    const value: Record<string, string> = {
      scopes: `coalesce((x->>'scopes')::bigint, 0)`, scope_list: textArray(`x->'scope_list'`), scoping_organization_id: 'NULL',
      name: `x->>'name'`, token: 'token', hashed_token: `encode(sha256(convert_to(token, 'UTF8')), 'hex')`, token_type: `x->>'token_type'`,
      token_last_characters: 'right(token, 4)', refresh_token: 'refresh',
      hashed_refresh_token: `CASE WHEN refresh IS NOT NULL THEN encode(sha256(convert_to(refresh, 'UTF8')), 'hex') END`,
      expires_at: 'expires', date_added: `coalesce((x->>'date_added')::timestamptz, now())`, application_id: 'NULL', user_id: 'target_id',
    };
    tokensInserted = await insertColumns(q, T, value, 'up_token_new');
    const regen = await q(`
      INSERT INTO userport.findings (run, kind, model, source_pk, ordinal, byte_offset, reason)
      SELECT $1, 'changed', 'sentry.apitoken', src_pk, ord, off,
        'token collided with an existing token: imported with new token values (user pk ' || user_pk || ')'
      FROM up_token_new WHERE regen`, [options.run]);
    if (regen.rowCount) stats.adjacent.tokensRegenerated = (stats.adjacent.tokensRegenerated ?? 0) + regen.rowCount;
  }
  out.push({ table: 'up_token', model: 'sentry.apitoken', inserted: tokensInserted });

  // User-level authorizations (no application).
  const Z = P.authorization;
  await decideRows(q, S, o, 'up_authz', C.authorization, Z?.table, 'sentry_apiauthorization', PERSONAL_ONLY);
  let authzInserted = 0;
  if (Z) {
    const value: Record<string, string> = {
      scopes: `coalesce((x->>'scopes')::bigint, 0)`, scope_list: textArray(`x->'scope_list'`),
      date_added: `coalesce((x->>'date_added')::timestamptz, now())`, organization_id: 'NULL', application_id: 'NULL', user_id: 'target_id',
    };
    authzInserted = await insertColumns(q, Z, value, `up_authz WHERE outcome = 'insert'`);
  }
  out.push({ table: 'up_authz', model: 'sentry.apiauthorization', inserted: authzInserted });
  return out;
}
