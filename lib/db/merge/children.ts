/**
 * Steps 4 and 5 of the merge, the user emails and options that were staged (direct-rows.ts writes
 * the new users' rows straight in where it can), and the rows Sentry's signal receivers add.
 */
import { REJECTED_USER_CODE } from '../../models.js';
import { SCOPED_OPTION, USER_FILTERED } from './direct-rows.js';
import { type ImportStats } from '../../stats.js';
import type { WritePlan } from './plan.js';
import { modelCodes, withSettings, type MergeStep, type Q } from './run.js';

/** What the children's steps need of the merge's options. */
export interface ChildrenStepOptions {
  run: number;
  /** Told as each step starts. */
  onStep?: (step: MergeStep) => void;
  /** False: the staging table holds this run's users alone (no user email or option to decide). */
  othersStaged?: boolean;
}

/**
 * Steps 4 and 5, user emails and options: remap the user, then Sentry's rules, decided in one
 * pass that inserts the kept rows straight from the decision (no per-model copy of every row)
 * and keeps only the exceptions (filtered, dropped, merged, duplicate rows) in up_ue / up_uo.
 * Then the rows Sentry's signal receivers add: a primary user email per new user, an Email row
 * per new user email's address.
 */
export async function mergeChildren(q: Q, S: string, options: ChildrenStepOptions, plan: WritePlan, bulk: boolean, anyRejected: boolean,
  stats: ImportStats): Promise<{ userEmails: number; userOptions: number }> {
  const { run } = options;
  const C = modelCodes();
  const decide = (table: 'up_ue' | 'up_uo', code: number, targetTable: string | undefined) => {
    // Rows of merged-away users never compete with the rows of the user they merged into.
    const partition = table === 'up_ue' ? 'm.target_id, m.kind, s.email'
      : 'm.target_id, m.kind, s.opt_key, (s.project_id IS NULL AND s.organization_id IS NULL)';
    const specific = table === 'up_ue'
      ? `WHEN rn > 1 THEN 'existing'`
      : `WHEN project_id IS NOT NULL OR organization_id IS NOT NULL THEN 'dropped' WHEN rn > 1 THEN 'dropped'`;
    const specificReason = table === 'up_ue'
      ? `WHEN rn > 1 THEN '${plan.scope === 'global' ? 'duplicate of an earlier (user, email) row: its values replace those of that row' : 'duplicate of an earlier (user, email) row'}'`
      : `WHEN project_id IS NOT NULL OR organization_id IS NOT NULL THEN '${SCOPED_OPTION}'
         WHEN rn > 1 THEN 'duplicate (user, key): the first one wins'`;
    const missing = targetTable === undefined;
    return `
      SELECT x.*,
        CASE WHEN ${missing} THEN 'dropped' WHEN user_keep = false THEN 'filtered' WHEN user_keep IS NULL THEN 'dropped'
             WHEN user_kind = 'merged' THEN 'merged' ${specific} ELSE 'insert' END AS outcome,
        CASE WHEN ${missing} THEN 'no ${table === 'up_ue' ? 'sentry_useremail' : 'sentry_useroption'} table in the target database'
             WHEN user_keep = false THEN '${USER_FILTERED}'
             WHEN user_keep IS NULL AND user_rejected THEN 'user rejected (see the rejects file)'
             WHEN user_keep IS NULL THEN 'user not in the export'
             WHEN user_kind = 'merged' THEN 'user merged into an existing user' ${specificReason} END AS reason
      FROM (
        SELECT s.src_pk, s.ord, s.off, s.user_pk, s.username, s.email, s.opt_key, s.opt_value, s.project_id, s.organization_id, s.extra::jsonb AS x,
          m.target_id, m.kind AS user_kind, m.keep AS user_keep,
          -- REJECTED_USER_CODE: the pk of a rejected user, staged so its rows say so.
          ${anyRejected ? `EXISTS (SELECT 1 FROM ${S} r WHERE r.run = $1 AND r.model = ${REJECTED_USER_CODE} AND r.src_pk = s.user_pk)` : 'false'} AS user_rejected,
          row_number() OVER (PARTITION BY ${partition} ORDER BY s.src_pk) AS rn
        FROM ${S} s
          -- What the users' pk map holds, read from the decision table (one join, not two).
          LEFT JOIN (SELECT src_pk, keep, CASE WHEN keep THEN target_id END AS target_id,
                       CASE WHEN NOT keep THEN NULL WHEN outcome = 'merged' THEN 'merged' ELSE 'inserted' END AS kind
                     FROM up_user) m ON m.src_pk = s.user_pk
        WHERE s.run = $1 AND s.model = ${code}
      ) x`;
  };
  /** Creates the exceptions table, then inserts the kept rows with `insert` (reading `d`), writing the exceptions in the same statement. */
  const decideAndInsert = async (table: 'up_ue' | 'up_uo', code: number, targetTable: string | undefined, insert: string): Promise<number> => {
    const decision = decide(table, code, targetTable);
    await q(`CREATE TEMP TABLE ${table} ON COMMIT DROP AS ${decision} WITH NO DATA`, [run]);
    if (options.othersStaged === false) return 0;
    if (targetTable === undefined) {
      await q(`INSERT INTO ${table} ${decision}`, [run]);
      return 0;
    }
    // The decision is materialized once (a tuplestore, not a table) and read twice.
    return (await q(`
      WITH d AS MATERIALIZED (${decision}),
      exceptions AS (INSERT INTO ${table} SELECT * FROM d WHERE outcome <> 'insert')
      ${insert}`, [run])).rowCount ?? 0;
  };
  // Every user these rows go to was inserted by this transaction (rows of merged users are
  // skipped) and duplicates are already ranked out, so nothing can conflict: plain inserts,
  // cheaper than ON CONFLICT's speculative insertion.
  const UE = plan.userEmail?.table;
  options.onStep?.('user emails');
  // Global scope keeps the verification state (Sentry's UserEmail normalize: `scope != Global`
  // resets it); the others reset it: a new 32-character hash, now, unverified.
  const verification = (x: string) => plan.scope === 'global'
    ? `coalesce(${x}->>'validation_hash', replace(gen_random_uuid()::text, '-', '')),
       coalesce((${x}->>'date_hash_added')::timestamptz, now()), coalesce((${x}->>'is_verified')::boolean, false)`
    : `replace(gen_random_uuid()::text, '-', ''), now(), false`;
  const userEmails = await decideAndInsert('up_ue', C.userEmail, UE, `
    INSERT INTO ${UE} (user_id, email, validation_hash, date_hash_added, is_verified)
    SELECT target_id, email, ${verification('x')}
    FROM d WHERE outcome = 'insert' ORDER BY src_pk`);
  if (UE && plan.scope === 'global'
      && (await q(`SELECT EXISTS (SELECT 1 FROM up_ue WHERE outcome = 'existing') AS any`)).rows[0].any === true) {
    // Sentry's import saves a repeated (user, address) over the row it found: in the global
    // scope, which keeps the verification state, the last one's values stand (elsewhere they are
    // reset). The repeats are few and kept in up_ue: the row each repeats (a new user's, written
    // just above) takes the last one's values. A window's last_value over every row, in the
    // decision, cast and buffered each row's values again: 0.45 s of 1.45 s at 120k user emails.
    await q(`
      UPDATE ${UE} t SET (validation_hash, date_hash_added, is_verified) = (SELECT ${verification('l.x')})
      FROM (SELECT DISTINCT ON (target_id, email) target_id, email, x FROM up_ue
            WHERE outcome = 'existing' ORDER BY target_id, email, src_pk DESC) l
      WHERE t.user_id = l.target_id AND t.email = l.email`);
  }
  // The new users' lowest id, once: every row of a new user has an id from it on. None: nothing
  // to add. From the pk map's ranges of this run's new users (inserted or renamed: one range for
  // a file in Sentry's order), read by their key, not from a scan of the decisions (0.02 s at
  // 100k users, 0.24 s at 1M, in the import's last seconds).
  const firstNew = plan.userEmail ? (await q(`SELECT min(target_id)::text AS m FROM userport.pk_ranges
    WHERE run = $1 AND model = 'sentry.user' AND kind = 'inserted'`, [run])).rows[0].m as string | null : null;
  if (plan.userEmail && firstNew !== null) {
    // Sentry's post-save signal gives every new user a row for its own address, unless the user
    // has one. The anti-join decides, over the new users' rows only (their ids are this import's):
    // hashed, where the unique key alone probed it once per new user (0.6 s at 100k users into a
    // database holding 100k). Into the empty target there is no key; elsewhere it still
    // arbitrates against other sessions. The rows are found before any is inserted (a temporary
    // table, insertFound): an INSERT ... SELECT that read the table it wrote, where the table held
    // few rows of the new users (an export without user emails), had the planner loop over a scan
    // of it, which each insert made longer (102 s at 100k users).
    // On the bulk path no other session writes the user tables: the new users are the rows from
    // the lowest new id on, read from the users' table (up_user is a temporary view, which the
    // server's parallel workers cannot read), and every user email from that id on is a new user's.
    // No ANALYZE of the user emails first (31 ms at 100k): what the plans need is the tables'
    // sizes, which the planner reads from their pages.
    const userEmail = plan.userEmail;
    const newUsers = bulk ? `(SELECT id AS new_id, email FROM ${plan.user.table} WHERE id >= $1::bigint)` : 'up_user';
    stats.adjacent.primaryEmails += await insertFound(q, 'up_primary', `
      SELECT new_id, email FROM ${newUsers} u WHERE new_id IS NOT NULL AND coalesce(email, '') <> ''
        AND NOT EXISTS (SELECT 1 FROM ${UE} x WHERE x.user_id = u.new_id AND x.email = u.email
                        AND x.user_id >= $1::bigint)`, [firstNew], (rows) => `
      INSERT INTO ${UE} (user_id, email, validation_hash, date_hash_added, is_verified)
      SELECT new_id, email, replace(gen_random_uuid()::text, '-', ''), now(), false
      FROM ${rows} ORDER BY new_id
      ${!bulk && userEmail.arbiter ? `ON CONFLICT ${userEmail.arbiter} DO NOTHING` : ''}`);
    const E = plan.email;
    if (E) {
      // Sentry's receivers/email.py gives every new UserEmail an Email row for its address, so an
      // export without sentry.email records still ends with one row per address of its new users.
      stats.adjacent.userEmailAddresses = (stats.adjacent.userEmailAddresses ?? 0) + await insertFound(q, 'up_signalled', `
        SELECT DISTINCT ON (lower(ue.email)) ue.email, ue.user_id FROM ${UE} ue
        ${bulk ? '' : 'JOIN up_user u ON u.new_id = ue.user_id'}
        WHERE ue.email <> '' AND ue.user_id >= $1::bigint
          AND NOT EXISTS (SELECT 1 FROM ${E.table} e WHERE lower(e.email::text) = lower(ue.email))
        ORDER BY lower(ue.email), ue.user_id, ue.email`, [firstNew], (rows) => `
        INSERT INTO ${E.table} (email, date_added)
        SELECT email, now() FROM ${rows} ORDER BY user_id, email
        ${!bulk && E.arbiter ? `ON CONFLICT ${E.arbiter} DO NOTHING` : ''}`);
    }
  }
  const UO = plan.userOption;
  options.onStep?.('options');
  const userOptions = await decideAndInsert('up_uo', C.userOption, UO?.table, `
    INSERT INTO ${UO?.table} (user_id, project_id, organization_id, key, value)
    SELECT target_id, NULL, NULL, opt_key, ${UO?.value} FROM d WHERE outcome = 'insert' ORDER BY src_pk`);
  return { userEmails, userOptions };
}

/**
 * A receiver's rows: `select` finds them into a temporary table (`name`), which `insert` reads,
 * unless there are none (the usual case: an export holds its users' addresses). CREATE TABLE AS
 * may give the anti-join a parallel worker, where INSERT ... SELECT runs in one process; in the
 * merge's tail Node is idle, so the worker has the second core (100k users into an empty target,
 * traces: the primary user emails 86 ms, after an ANALYZE of 31 ms, -> 44-52 ms; the Email rows
 * 124 -> 65-75 ms). For that statement the planner is told a worker costs nothing to start and a
 * row nothing to pass up (`parallel_setup_cost` and `parallel_tuple_cost` 0, put back after):
 * without statistics of lower(email) it takes an anti-join to keep half its rows, and their
 * transfer kept the plan serial; a table too small for a worker (`min_parallel_table_scan_size`)
 * is still scanned by one process.
 */
async function insertFound(q: Q, name: string, select: string, params: unknown[], insert: (rows: string) => string): Promise<number> {
  const found = (await withSettings(q, { parallel_tuple_cost: '0', parallel_setup_cost: '0' },
    () => q(`CREATE TEMP TABLE ${name} ON COMMIT DROP AS ${select}`, params))).rowCount ?? 0;
  return found === 0 ? 0 : (await q(insert(name))).rowCount ?? 0;
}
