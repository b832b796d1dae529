/**
 * The set-based merge: from the staged rows of one import into Sentry's tables, with Sentry's
 * user-scope rules. Runs inside the caller's transaction, once every record is staged, so file
 * order does not matter: every "first one wins" is decided by source pk, never by position.
 *
 * Concurrent imports into one database serialize here on an advisory lock held to the end of the
 * transaction: each merge sees every user and email the previous ones committed, so collisions
 * across imports follow the same rules as collisions inside one import, and nothing deadlocks.
 */
import type pg from 'pg';
import { ErrorCodes, RecordError } from '../errors.js';
import { ImportStats } from '../stats.js';

/** Key of the advisory lock that serializes merges. */
export const MERGE_LOCK_KEY = 7472117102;

/** Sentry's suffix schedule for renamed users: tail length, attempts. Then 12 until unique. */
const RENAME_SCHEDULE: [number, number][] = [[2, 2], [3, 3], [5, 20], [12, 1]];
const MAX_RENAME_ROUNDS = 200;

export interface MergeOptions {
  run: number;
  mergeUsers: boolean;
  /** True when a username filter is active: only emails of kept users are imported. */
  filterActive: boolean;
}

type Q = (sql: string, params?: unknown[]) => Promise<pg.QueryResult>;

const MODEL_NAMES: Record<string, string> = { up_user: 'sentry.user', up_email: 'sentry.email', up_ue: 'sentry.useremail', up_uo: 'sentry.useroption' };

/**
 * Merges staged rows of `run` into the target tables and records findings; adds the outcome
 * counts to `stats`. Throws USERPORT_RECORD_DUPLICATE_PK when a model repeats a source pk.
 */
export async function mergeStaged(client: pg.ClientBase, options: MergeOptions, stats: ImportStats): Promise<void> {
  const q: Q = (sql, params) => client.query(sql, params as unknown[]);
  const { run } = options;
  await q('SELECT pg_advisory_xact_lock($1)', [MERGE_LOCK_KEY]);
  await q('ANALYZE userport_stage');

  // 1. A source pk may appear once per model.
  const dup = await q(`
    SELECT s.model, s.src_pk, s.ord, s.off, s.line, s.col FROM userport_stage s
    JOIN (SELECT model, src_pk FROM userport_stage WHERE run = $1 GROUP BY model, src_pk HAVING count(*) > 1) d
      USING (model, src_pk)
    WHERE s.run = $1 ORDER BY s.ord OFFSET 1 LIMIT 1`, [run]);
  if (dup.rowCount) {
    const d = dup.rows[0];
    const model = Object.values(MODEL_NAMES)[d.model - 1];
    throw new RecordError(ErrorCodes.RECORD_DUPLICATE_PK, `${model} pk ${d.src_pk} appears more than once in the export`, {
      position: { ordinal: d.ord, offset: d.off, line: d.line, column: d.col, model, pk: d.src_pk },
    });
  }

  // 2. Users: plan who is inserted, renamed or merged. Ties are broken by source pk.
  await q(`
    CREATE TEMP TABLE up_user ON COMMIT DROP AS
    SELECT s.*, lower(s.username) AS lname,
      CASE WHEN s.keep THEN row_number() OVER (PARTITION BY s.keep, lower(s.username) ORDER BY s.src_pk) END AS rn,
      NULL::bigint AS ex_id, NULL::bigint AS new_id, NULL::bigint AS target_id,
      NULL::text AS final_name, NULL::text AS cand, NULL::text AS outcome, NULL::text AS reason
    FROM userport_stage s WHERE s.run = $1 AND s.model = 1`, [run]);
  await q('CREATE INDEX ON up_user (lname)');
  await q('ANALYZE up_user');
  // An existing user with the same name, case-insensitively (exact case preferred, then oldest).
  await q(`
    UPDATE up_user p SET ex_id = e.id FROM (
      SELECT DISTINCT ON (lower(u.username)) lower(u.username) AS lname, u.id
      FROM auth_user u JOIN (SELECT DISTINCT lname FROM up_user WHERE keep) k ON lower(u.username) = k.lname
      ORDER BY lower(u.username), u.id
    ) e WHERE p.keep AND p.lname = e.lname`);
  await q(`UPDATE up_user SET outcome = 'filtered', reason = 'username not in --filter-usernames' WHERE NOT keep`);
  if (options.mergeUsers) {
    await q(`UPDATE up_user SET outcome = 'merged', target_id = ex_id, reason = 'merged into existing user' WHERE keep AND ex_id IS NOT NULL`);
    await q(`UPDATE up_user SET outcome = 'inserted', final_name = username WHERE keep AND ex_id IS NULL AND rn = 1`);
    await q(`UPDATE up_user SET outcome = 'merged', reason = 'merged into an earlier user of the export with the same username' WHERE keep AND ex_id IS NULL AND rn > 1`);
  } else {
    await q(`UPDATE up_user SET outcome = 'inserted', final_name = username WHERE keep AND ex_id IS NULL AND rn = 1`);
    await q(`UPDATE up_user SET outcome = 'renamed', reason = 'username taken' WHERE keep AND (ex_id IS NOT NULL OR rn > 1)`);
  }
  await q(`UPDATE up_user SET new_id = nextval(pg_get_serial_sequence('auth_user', 'id')) WHERE outcome IN ('inserted', 'renamed')`);
  await q(`UPDATE up_user SET target_id = new_id WHERE new_id IS NOT NULL`);
  if (options.mergeUsers) {
    // Later users of a name merge into its first user: an existing one, or the one inserted now.
    await q(`UPDATE up_user p SET target_id = l.target_id FROM up_user l
             WHERE p.outcome = 'merged' AND p.target_id IS NULL AND l.keep AND l.rn = 1 AND l.lname = p.lname`);
  }
  await renameUsers(q);
  await q(`
    INSERT INTO auth_user (id, password, last_login, username, first_name, email, is_staff, is_active, is_superuser,
      is_managed, is_sentry_app, is_password_expired, is_unclaimed, last_password_change, flags, session_nonce,
      date_joined, last_active, avatar_type, avatar_url)
    SELECT new_id, '!' || substr(md5(random()::text) || md5(random()::text), 1, 40), last_login, final_name,
      coalesce(first_name, ''), coalesce(email, ''), false, coalesce(is_active, true), false,
      false, is_sentry_app, false, true, now(), coalesce(flags, 0), session_nonce,
      coalesce(date_joined, now()), last_active, coalesce(avatar_type, 0), avatar_url
    FROM up_user WHERE new_id IS NOT NULL ORDER BY new_id`);
  const lph = await q(`
    INSERT INTO sentry_lostpasswordhash (user_id, hash, date_added)
    SELECT new_id, replace(gen_random_uuid()::text, '-', ''), now() FROM up_user WHERE new_id IS NOT NULL`);
  stats.adjacent.lostPasswordHashes += lph.rowCount ?? 0;
  await q(`
    INSERT INTO userport_pk_map (run, model, source_pk, target_id, kind)
    SELECT $1, 'sentry.user', src_pk, target_id, CASE WHEN outcome = 'merged' THEN 'merged' ELSE 'inserted' END
    FROM up_user WHERE keep AND target_id IS NOT NULL`, [run]);

  // 3. Emails: reuse an existing row with the same address, case-insensitively.
  await q(`
    CREATE TEMP TABLE up_email ON COMMIT DROP AS
    SELECT s.src_pk, s.ord, s.off, s.email, lower(s.email) AS le, s.date_joined AS date_added,
      row_number() OVER (PARTITION BY lower(s.email) ORDER BY s.src_pk) AS rn,
      NULL::bigint AS target_id, NULL::text AS outcome, NULL::text AS reason
    FROM userport_stage s WHERE s.run = $1 AND s.model = 2`, [run]);
  await q('ANALYZE up_email');
  if (options.filterActive) {
    // Only the addresses of kept users: their primary email and their useremail rows.
    await q(`
      UPDATE up_email e SET outcome = 'filtered', reason = 'not an email of a user kept by --filter-usernames'
      WHERE NOT EXISTS (SELECT 1 FROM up_user u WHERE u.keep AND lower(u.email) = e.le)
        AND NOT EXISTS (SELECT 1 FROM userport_stage s JOIN up_user u ON u.src_pk = s.user_pk AND u.keep
                        WHERE s.run = $1 AND s.model = 3 AND lower(s.email) = e.le)`, [run]);
  }
  await q(`
    WITH ins AS (
      INSERT INTO sentry_email (email, date_added)
      SELECT email, coalesce(date_added, now()) FROM up_email WHERE rn = 1 AND outcome IS NULL ORDER BY src_pk
      ON CONFLICT ((lower(email))) DO NOTHING
      RETURNING id, lower(email) AS le
    )
    UPDATE up_email e SET target_id = coalesce(ins.id, se.id),
      outcome = CASE WHEN ins.id IS NOT NULL AND e.rn = 1 THEN 'inserted' ELSE 'existing' END
    FROM up_email x
      LEFT JOIN ins ON ins.le = x.le
      LEFT JOIN sentry_email se ON lower(se.email) = x.le
    WHERE e.src_pk = x.src_pk AND e.outcome IS NULL`);
  await q(`INSERT INTO userport_pk_map (run, model, source_pk, target_id, kind)
           SELECT $1, 'sentry.email', src_pk, target_id, outcome FROM up_email WHERE outcome IN ('inserted', 'existing')`, [run]);

  // 4. User emails and 5. user options: remap the user, then Sentry's rules.
  for (const [table, code] of [['up_ue', 3], ['up_uo', 4]] as const) {
    // Rows of merged-away users never compete with the rows of the user they merged into.
    const partition = table === 'up_ue' ? 'm.target_id, m.kind, s.email'
      : 'm.target_id, m.kind, s.opt_key, (s.project_id IS NULL AND s.organization_id IS NULL)';
    await q(`
      CREATE TEMP TABLE ${table} ON COMMIT DROP AS
      SELECT s.src_pk, s.ord, s.off, s.user_pk, s.email, s.opt_key, s.opt_value, s.project_id, s.organization_id,
        m.target_id, m.kind AS user_kind, u.keep AS user_keep, u.outcome AS user_outcome,
        row_number() OVER (PARTITION BY ${partition} ORDER BY s.src_pk) AS rn,
        NULL::text AS outcome, NULL::text AS reason
      FROM userport_stage s
        LEFT JOIN userport_pk_map m ON m.run = $1 AND m.model = 'sentry.user' AND m.source_pk = s.user_pk
        LEFT JOIN up_user u ON u.src_pk = s.user_pk
      WHERE s.run = $1 AND s.model = ${code}`, [run]);
    await q(`ANALYZE ${table}`);
    await q(`UPDATE ${table} SET outcome = 'filtered', reason = 'user filtered out' WHERE user_keep = false`);
    await q(`UPDATE ${table} SET outcome = 'dropped', reason = 'user not in the export' WHERE user_keep IS NULL`);
    await q(`UPDATE ${table} SET outcome = 'merged', reason = 'user merged into an existing user' WHERE outcome IS NULL AND user_kind = 'merged'`);
  }
  await q(`UPDATE up_ue SET outcome = 'existing', reason = 'duplicate of an earlier (user, email) row' WHERE outcome IS NULL AND rn > 1`);
  await q(`
    WITH ins AS (
      INSERT INTO sentry_useremail (user_id, email, validation_hash, date_hash_added, is_verified)
      SELECT target_id, email, replace(gen_random_uuid()::text, '-', ''), now(), false
      FROM up_ue WHERE outcome IS NULL ORDER BY src_pk
      ON CONFLICT (user_id, email) DO NOTHING
      RETURNING id, user_id, email
    )
    UPDATE up_ue e SET outcome = CASE WHEN ins.id IS NULL THEN 'existing' ELSE 'inserted' END, target_id = ins.id
    FROM up_ue x LEFT JOIN ins ON ins.user_id = x.target_id AND ins.email = x.email
    WHERE e.src_pk = x.src_pk AND e.outcome IS NULL`);
  // Sentry's post-save signal gives every new user a row for its own address.
  const prim = await q(`
    INSERT INTO sentry_useremail (user_id, email, validation_hash, date_hash_added, is_verified)
    SELECT u.new_id, u.email, replace(gen_random_uuid()::text, '-', ''), now(), false
    FROM up_user u WHERE u.new_id IS NOT NULL AND coalesce(u.email, '') <> ''
    ON CONFLICT (user_id, email) DO NOTHING`);
  stats.adjacent.primaryEmails += prim.rowCount ?? 0;

  await q(`UPDATE up_uo SET outcome = 'dropped', reason = 'scoped to an organization or project'
           WHERE outcome IS NULL AND (project_id IS NOT NULL OR organization_id IS NOT NULL)`);
  await q(`UPDATE up_uo SET outcome = 'dropped', reason = 'duplicate (user, key): the first one wins' WHERE outcome IS NULL AND rn > 1`);
  await q(`
    WITH ins AS (
      INSERT INTO sentry_useroption (user_id, project_id, organization_id, key, value)
      SELECT target_id, NULL, NULL, opt_key, opt_value::jsonb FROM up_uo WHERE outcome IS NULL ORDER BY src_pk
      ON CONFLICT (user_id, key) WHERE project_id IS NULL AND organization_id IS NULL DO NOTHING
      RETURNING id, user_id, key
    )
    UPDATE up_uo e SET outcome = CASE WHEN ins.id IS NULL THEN 'existing' ELSE 'inserted' END, target_id = ins.id
    FROM up_uo x LEFT JOIN ins ON ins.user_id = x.target_id AND ins.key = x.opt_key
    WHERE e.src_pk = x.src_pk AND e.outcome IS NULL`);
  for (const [table, model] of [['up_ue', 'sentry.useremail'], ['up_uo', 'sentry.useroption']] as const) {
    await q(`INSERT INTO userport_pk_map (run, model, source_pk, target_id, kind)
             SELECT $1, '${model}', src_pk, target_id, 'inserted' FROM ${table} WHERE outcome = 'inserted'`, [run]);
  }

  // 6. Findings and counts.
  for (const [table, model] of Object.entries(MODEL_NAMES)) {
    await q(`INSERT INTO userport_finding (run, kind, model, source_pk, ordinal, byte_offset, reason)
             SELECT $1, outcome, '${model}', src_pk, ord, off,
               ${table === 'up_user' ? `CASE WHEN outcome = 'renamed' THEN reason || ': imported as ' || final_name ELSE reason END` : 'reason'}
             FROM ${table} WHERE outcome IN ('filtered', 'dropped', 'merged', 'renamed')`, [run]);
    const counts = await q(`SELECT outcome, reason, count(*)::int AS n FROM ${table} GROUP BY outcome, reason`);
    const c = stats.model(model);
    for (const { outcome, reason, n } of counts.rows as { outcome: string; reason: string | null; n: number }[]) {
      if (outcome === 'inserted') c.inserted += n;
      else if (outcome === 'renamed') { c.inserted += n; c.renamed += n; }
      else if (outcome === 'existing') c.existing += n;
      else if (outcome === 'merged') c.merged += n;
      else if (outcome === 'filtered') c.filtered += n;
      else stats.drop(model, reason ?? outcome, n);
    }
  }
}

/** Gives every 'renamed' user a free `<name>-<random tail>`, in set-based rounds. */
async function renameUsers(q: Q): Promise<void> {
  const pending = await q(`SELECT count(*)::int AS n FROM up_user WHERE outcome = 'renamed'`);
  if (!pending.rows[0].n) return;
  await q('CREATE INDEX ON up_user (lower(final_name))');
  const lengths: number[] = [];
  for (const [len, tries] of RENAME_SCHEDULE) for (let i = 0; i < tries; i++) lengths.push(len);
  for (let round = 0; round < MAX_RENAME_ROUNDS; round++) {
    const len = lengths[Math.min(round, lengths.length - 1)]!;
    await q(`UPDATE up_user SET cand = left(username, ${128 - 1 - len}) || '-' || userport_random_string(${len})
             WHERE outcome = 'renamed' AND final_name IS NULL`);
    // A candidate is taken when any user (existing, or kept by this import) has it,
    // case-insensitively, or when two pending users drew the same one this round.
    const done = await q(`
      UPDATE up_user p SET final_name = p.cand
      WHERE p.outcome = 'renamed' AND p.final_name IS NULL
        AND NOT EXISTS (SELECT 1 FROM auth_user u WHERE lower(u.username) = lower(p.cand))
        AND NOT EXISTS (SELECT 1 FROM up_user o WHERE lower(o.final_name) = lower(p.cand))
        AND NOT EXISTS (SELECT 1 FROM up_user o WHERE o.src_pk <> p.src_pk AND o.final_name IS NULL
                        AND o.outcome = 'renamed' AND lower(o.cand) = lower(p.cand))`);
    void done;
    const left = await q(`SELECT count(*)::int AS n FROM up_user WHERE outcome = 'renamed' AND final_name IS NULL`);
    if (!left.rows[0].n) return;
  }
  throw new Error('could not find free usernames for renamed users');
}
