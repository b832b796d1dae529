/**
 * The set-based merge: from the staged rows of one import into Sentry's tables, with Sentry's
 * user-scope rules, in the columns and types the target has (plan.ts). Runs inside the caller's
 * transaction, once every record is staged, so file order does not matter: every "first one
 * wins" is decided by source pk, never by position (new user ids alone follow file order, as
 * Sentry's import gives them).
 *
 * Steps, one file each: checks.ts (repeated pks, natural keys), users.ts (step 2), this file
 * (3: emails; 4-5: user emails and options; 6: findings and counts), bulk-load.ts (the
 * empty-target path), early.ts (step 2 started while the file is still read), direct-rows.ts
 * (steps 4 and 5 for the new users' rows, decided in the client once step 2 is done).
 *
 * Concurrent imports into one database serialize here on an advisory lock held to the end of the
 * transaction: each merge sees every user and email the previous ones committed, so collisions
 * across imports follow the same rules as collisions inside one import, and nothing deadlocks.
 */
import type pg from 'pg';
import { DatabaseError, ErrorCodes, OptionError } from '../../errors.js';
import { ImportStats } from '../../stats.js';
import { REJECTED_USER_CODE, type ImportScope } from '../../models.js';
import type { StagedFacts } from '../../staged-facts.js';
import type { TraceOptions } from '../../trace.js';
import { readTarget, requireUserTable } from '../target.js';
import { enterBulkLoad } from './bulk-load.js';
import { refuseDuplicatePks, resolveNaturalKeys } from './checks.js';
import { NO_EMAIL_TABLE } from './direct-emails.js';
import { EARLY_SAVEPOINT, type EarlyUsers, type UsersStep } from './early.js';
import { writePlan, type WritePlan } from './plan.js';
import { insertPkRanges, modelCodes, openMerge, runner, type Q } from './run.js';
import { mergeUsers } from './users.js';
import { mergePrivileges } from './privileges.js';

export { MERGE_LOCK_KEY } from './run.js';
export { earlyUsersOverlap, type EarlyUsers } from './early.js';
export { describePlan, writePlan, type WritePlan } from './plan.js';

/** Options of {@link mergeStaged}: which import run to merge, and how. */
export interface MergeOptions extends TraceOptions {
  run: number;
  mergeUsers: boolean;
  /** True when a username filter is active: only emails of kept users are imported. */
  filterActive: boolean;
  /**
   * Try the bulk path: when every target table is empty or holds a few rows (`FEW_ROWS`) and all
   * can be locked at once, load the rows first and build the indexes and constraints after (see
   * bulk-load.ts). @default false
   */
  bulkLoad?: boolean;
  /**
   * What the sink saw while staging every row of this run ({@link StagedFacts}): lets the merge
   * skip the duplicate-pk, rejected-user and natural-key scans that cannot find anything. Leave it
   * out when the rows were staged by several processes (a resumed import). @default every check runs
   */
  staged?: Pick<StagedFacts, 'pksIncreasing' | 'rejectedUsers' | 'naturalKeys' | 'usersAfterOthers'>;
  /** What to write into this target (`writePlan(await readTarget(client))`). @default read from the target now */
  plan?: WritePlan;
  /** Called as each step of the merge starts, for progress (`Progress.step`). */
  onStep?: (step: MergeStep) => void;
  /**
   * Config and global scopes: a role whose name the target has takes the imported permissions
   * and dates (Sentry's `--overwrite-configs`); else the existing role is kept. @default false
   */
  overwriteConfigs?: boolean;
}

/** The steps of the merge, in order, as {@link MergeOptions.onStep} reports them. */
export type MergeStep = 'users' | 'emails' | 'user emails' | 'options' | 'privileges' | 'indexes' | 'findings';

/** What {@link mergeStaged} reports about how it wrote. */
export interface MergeOutcome {
  /** True when the rows were loaded into bare tables and the indexes and constraints built after. */
  bulkLoad: boolean;
}

const MODEL_NAMES: Record<string, string> = { up_user: 'sentry.user', up_email: 'sentry.email', up_ue: 'sentry.useremail', up_uo: 'sentry.useroption' };

/** What a finding of a row that names its user says beyond the reason: which user. */
const CHILD_FINDING = `reason || CASE WHEN user_pk IS NOT NULL THEN ' (user pk ' || user_pk || ')'
                         ELSE ' (user ' || to_json(ARRAY[username])::text || ')' END
                 || CASE WHEN outcome = 'merged' THEN ' into user id ' || target_id ELSE '' END`;

/**
 * What a finding says beyond the counted reason: who. Summary counters group by the bare reason
 * (bounded keys); each finding names the user it concerns.
 */
const FINDING_REASON: Record<string, string> = {
  up_user: `CASE WHEN outcome = 'renamed' THEN reason || ': imported as ' || final_name
                 WHEN outcome = 'merged' THEN reason || ' (user id ' || target_id || ')' ELSE reason END`,
  up_email: 'reason',
  up_ue: CHILD_FINDING,
  up_uo: CHILD_FINDING,
  up_role: `reason || ' (' || to_json(name)::text || ')'`,
};

/** The plan of the target `client` is connected to, for an import in `scope`. */
export async function planFor(client: pg.ClientBase, scope: ImportScope = 'users'): Promise<WritePlan> {
  const target = await readTarget(client);
  requireUserTable(target);
  return writePlan(target, scope);
}

/**
 * Merges staged rows of `run` into the target tables and records findings; adds the outcome
 * counts to `stats`. Throws USERPORT_RECORD_DUPLICATE_PK when a model repeats a source pk.
 * `early`: what `beginEarlyUsers` did in this transaction; only when no user row was staged
 * after it (`options.staged.usersAfterOthers` false; else `undoEarlyUsers` it first).
 */
export async function mergeStaged(client: pg.ClientBase, options: MergeOptions, stats: ImportStats, early?: EarlyUsers): Promise<MergeOutcome> {
  const q = runner(client, options);
  const { run } = options;
  const C = modelCodes();
  const S = await openMerge(q);
  const plan = options.plan ?? await planFor(client);
  // The pk map and findings carry the run without a foreign key (a per-row trigger): check once
  // that it is registered, so a caller's unregistered run cannot leave rows that belong to nothing.
  if (!(await q('SELECT 1 FROM userport.imports WHERE run = $1', [run])).rowCount) {
    throw new OptionError(`mergeStaged: run ${run} is not registered in userport.imports (register it with beginImportRun, before the merge, in the same transaction or earlier)`, 'run');
  }

  // 1. A source pk may appear once per model (none can repeat when every model's pks only grew).
  if (!options.staged?.pksIncreasing) await refuseDuplicatePks(q, S, run);

  // 2. Users: one pass decides who is inserted, renamed, merged or filtered (see users.ts).
  if (!early) options.onStep?.('users');
  let users: UsersStep;
  if (early) {
    if (options.staged?.usersAfterOthers !== false) {
      throw new DatabaseError(ErrorCodes.DB_SETTING, 'mergeStaged: a user was staged after the early users step (undo it with undoEarlyUsers first)');
    }
    await q(`RELEASE SAVEPOINT ${EARLY_SAVEPOINT}`);
    users = early.step;
  } else {
    const bulk = options.bulkLoad ? await enterBulkLoad(q, (sql) => client.query(sql), plan) : undefined;
    users = { bulk, ...(await mergeUsers(q, S, options, plan, { empty: !!bulk?.empty })) };
  }
  const { bulk, usersInserted } = users;
  stats.adjacent.lostPasswordHashes += users.lostPasswordHashes;
  // Email records a target without sentry_email dropped at the end of the input, their findings written (direct-emails.ts).
  if (early?.droppedEmails) stats.drop('sentry.email', NO_EMAIL_TABLE, early.droppedEmails);

  // Rows of new users that went straight in at the end of the input, by table (direct-rows.ts).
  const direct = (table: string | undefined) => (table === undefined ? 0 : early?.direct?.get(table) ?? 0);

  // 3. Emails.
  options.onStep?.('emails');
  await mergeEmails(q, S, options, plan, bulk ? (bulk.empty ? 'empty' : 'few') : undefined, stats, direct(plan.userEmail?.table) > 0);

  if (options.staged?.naturalKeys !== false) await resolveNaturalKeys(q, S, run, C);
  // Only with --rejects-file can a user be rejected: skip the per-row lookup otherwise.
  const anyRejected = options.staged ? options.staged.rejectedUsers
    : ((await q(`SELECT 1 FROM ${S} WHERE run = $1 AND model = ${REJECTED_USER_CODE} LIMIT 1`, [run])).rowCount ?? 0) > 0;

  // 4. User emails and 5. user options.
  const children = await mergeChildren(q, S, options, plan, !!bulk, anyRejected, stats);

  // Config and global scopes: permissions, roles, authenticators, user IPs, API tokens.
  if (plan.scope !== 'users') options.onStep?.('privileges');
  const privileges = await mergePrivileges(q, S, { run, overwriteConfigs: options.overwriteConfigs ?? false }, plan, anyRejected, stats);
  if (bulk) { options.onStep?.('indexes'); await bulk.rebuild(); }

  // 6. Findings and counts: one pass over each decision table writes the findings (the
  // exceptions) and counts every outcome but the inserts, which the INSERTs above counted.
  options.onStep?.('findings');
  // Rows of new users may have gone straight in at the end of the input (direct-rows.ts).
  const insertedBy: Record<string, number> = {
    up_user: usersInserted,
    up_ue: children.userEmails + direct(plan.userEmail?.table),
    up_uo: children.userOptions + direct(plan.userOption?.table),
  };
  const tables = Object.entries(MODEL_NAMES);
  for (const p of privileges) { tables.push([p.table, p.model]); insertedBy[p.table] = p.inserted; }
  for (const [table, model] of tables) {
    // A role that exists is a finding too (kept or overwritten); a duplicate user email is not.
    const kinds = table === 'up_role' ? `'dropped', 'existing', 'overwritten'` : `'filtered', 'dropped', 'merged', 'renamed'`;
    const counts = await q(`
      WITH src AS MATERIALIZED (
        SELECT outcome, reason, src_pk, ord, off, ${FINDING_REASON[table] ?? CHILD_FINDING} AS finding
        FROM ${table} WHERE outcome NOT IN ('insert', 'inserted')
      ), findings AS (
        INSERT INTO userport.findings (run, kind, model, source_pk, ordinal, byte_offset, reason)
        SELECT $1, outcome, '${model}', src_pk, ord, off, finding FROM src WHERE outcome IN (${kinds})
      )
      SELECT outcome, reason, count(*)::int AS n FROM src GROUP BY outcome, reason`, [run]);
    const c = stats.model(model);
    // Emails count inserted and existing in step 3.
    if (table !== 'up_email') c.inserted += insertedBy[table]!;
    for (const { outcome, reason, n } of counts.rows as { outcome: string; reason: string | null; n: number }[]) {
      if (outcome === 'renamed') c.renamed += n; // renamed users are inserted users, counted above
      else if (outcome === 'existing') c.existing += n;
      else if (outcome === 'merged') c.merged += n;
      else if (outcome === 'overwritten') c.overwritten = (c.overwritten ?? 0) + n;
      else if (outcome === 'filtered') c.filtered += n;
      else stats.drop(model, reason ?? outcome, n);
    }
  }
  // New users whose address another user already holds (and, on Sentry 2025+, whose
  // email_unique was left empty for it): imported, and said.
  const notes = await q(`
    WITH n AS (
      INSERT INTO userport.findings (run, kind, model, source_pk, ordinal, byte_offset, reason)
      SELECT $1, 'address', 'sentry.user', src_pk, ord, off, address_note FROM up_user WHERE address_note IS NOT NULL
      RETURNING reason)
    SELECT count(*) FILTER (WHERE reason LIKE 'email_unique%')::int AS cleared, count(*)::int AS shared FROM n`, [run]);
  const { cleared, shared } = notes.rows[0] as { cleared: number; shared: number };
  stats.adjacent.sharedAddresses = (stats.adjacent.sharedAddresses ?? 0) + shared;
  if (plan.user.emailUnique) stats.adjacent.emailUniqueLeftEmpty = (stats.adjacent.emailUniqueLeftEmpty ?? 0) + cleared;
  return { bulkLoad: !!bulk };
}

/**
 * Step 3, emails: reuse an existing row with the same address, case-insensitively; with a
 * username filter, only the addresses of kept users (their primary email and their useremail
 * rows). A target without `sentry_email` (Sentry 2026) drops them all, saying why.
 */
async function mergeEmails(q: Q, S: string, options: MergeOptions, plan: WritePlan, bulk: 'empty' | 'few' | undefined, stats: ImportStats,
  directUserEmails: boolean): Promise<void> {
  const { run } = options;
  const C = modelCodes();
  // The kept users' user emails: staged, and those that went straight in (direct-rows.ts).
  const kept = options.filterActive
    ? `lower(s.email) IN (SELECT lower(email) FROM up_user WHERE keep
         UNION SELECT lower(s2.email) FROM ${S} s2 JOIN up_user u2 ON u2.src_pk = s2.user_pk AND u2.keep
               WHERE s2.run = $1 AND s2.model = ${C.userEmail}
         ${directUserEmails ? `UNION SELECT lower(ue.email) FROM ${plan.userEmail!.table} ue JOIN up_user u3 ON u3.new_id = ue.user_id` : ''})`
    : 'true';
  const absent = `'${NO_EMAIL_TABLE}'`;
  const stagedEmails = (await q(`
    CREATE TEMP TABLE up_email ON COMMIT DROP AS
    SELECT s.src_pk, s.ord, s.off, s.email, lower(s.email) AS le, s.date_joined AS date_added,
      row_number() OVER (PARTITION BY lower(s.email) ORDER BY s.src_pk) AS rn,
      CASE WHEN NOT ${!!plan.email} THEN 'dropped' WHEN ${kept} THEN NULL ELSE 'filtered' END AS outcome,
      CASE WHEN NOT ${!!plan.email} THEN ${absent} WHEN ${kept} THEN NULL ELSE 'not an email of a user kept by --filter-usernames' END AS reason
    FROM ${S} s WHERE s.run = $1 AND s.model = ${C.email}`, [run])).rowCount ?? 0;
  if (!plan.email) return;
  const E = plan.email.table;
  if (stagedEmails > 0) await insertEmails(q, run, E, plan.email.arbiter, bulk);
  // On the bulk path they may have been written straight in (direct-emails.ts): statistics for
  // the joins that follow, as after the insert.
  else if (bulk) await q(`ANALYZE ${E} (id)`);
  const emailCounts = await q(`SELECT kind, sum(span)::int AS n FROM userport.pk_ranges WHERE run = $1 AND model = 'sentry.email' GROUP BY kind`, [run]);
  for (const { kind, n } of emailCounts.rows as { kind: 'inserted' | 'existing'; n: number }[]) stats.model('sentry.email')[kind] += n;
}

/** The staged Email records' rows (up_email) and pk map: reuse an address the target holds, else insert it. */
async function insertEmails(q: Q, run: number, E: string, arbiter: string | undefined, bulk: 'empty' | 'few' | undefined): Promise<void> {
  await q('ANALYZE up_email (src_pk, le, rn, outcome)');
  // What this import inserts is what its INSERT returned, not "ids above the old maximum": other
  // sessions may insert addresses meanwhile. Kept in a table of its own (with statistics): joined
  // straight from a RETURNING CTE, the planner looped over it (103 s at 30k users).
  await q(`CREATE TEMP TABLE up_email_new (id bigint, le text) ON COMMIT DROP`);
  // On the bulk path the unique key is dropped: into empty tables nothing can conflict, into a few
  // rows the anti-join (hashed over them) decides.
  const conflict = bulk ? '' : arbiter ? `ON CONFLICT ${arbiter} DO NOTHING` : '';
  const guard = bulk === 'few' || (!bulk && !arbiter) ? `AND NOT EXISTS (SELECT 1 FROM ${E} x WHERE lower(x.email::text) = e.le)` : '';
  await q(`
    WITH ins AS (
      INSERT INTO ${E} (email, date_added)
      SELECT email, coalesce(date_added, now()) FROM up_email e WHERE rn = 1 AND outcome IS NULL ${guard} ORDER BY src_pk
      ${conflict}
      RETURNING id, lower(email::text) AS le)
    INSERT INTO up_email_new SELECT id, le FROM ins`);
  // Its size is what the joins that follow need (they compare lower(email), which has no
  // statistics): the citext column's own statistics cost 0.2 s at 100k addresses, for nothing.
  await q(`ANALYZE ${E} (id)`);
  await q('ANALYZE up_email_new');
  // An address this import inserted maps to its new row (the first by pk is 'inserted', later
  // ones 'existing'); any other to the row that holds it, found by a join over the table only for
  // those (none into an empty target).
  await insertPkRanges(q, run, 'sentry.email', `
    SELECT e.src_pk, n.id AS target_id, CASE WHEN e.rn = 1 THEN 'inserted' ELSE 'existing' END AS kind
    FROM up_email e JOIN up_email_new n ON n.le = e.le WHERE e.outcome IS NULL
    ${bulk === 'empty' ? '' : `UNION ALL
    SELECT e.src_pk, se.id, 'existing' FROM up_email e JOIN ${E} se ON lower(se.email::text) = e.le
    WHERE e.outcome IS NULL AND NOT EXISTS (SELECT 1 FROM up_email_new n WHERE n.le = e.le)`}`);
}

/**
 * Steps 4 and 5, user emails and options: remap the user, then Sentry's rules, decided in one
 * pass that inserts the kept rows straight from the decision (no per-model copy of every row)
 * and keeps only the exceptions (filtered, dropped, merged, duplicate rows) in up_ue / up_uo.
 * Then the rows Sentry's signal receivers add: a primary user email per new user, an Email row
 * per new user email's address.
 */
async function mergeChildren(q: Q, S: string, options: MergeOptions, plan: WritePlan, bulk: boolean, anyRejected: boolean,
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
      ? `WHEN rn > 1 THEN 'duplicate of an earlier (user, email) row'`
      : `WHEN project_id IS NOT NULL OR organization_id IS NOT NULL THEN 'scoped to an organization or project'
         WHEN rn > 1 THEN 'duplicate (user, key): the first one wins'`;
    const missing = targetTable === undefined;
    return `
      SELECT x.*,
        CASE WHEN ${missing} THEN 'dropped' WHEN user_keep = false THEN 'filtered' WHEN user_keep IS NULL THEN 'dropped'
             WHEN user_kind = 'merged' THEN 'merged' ${specific} ELSE 'insert' END AS outcome,
        CASE WHEN ${missing} THEN 'no ${table === 'up_ue' ? 'sentry_useremail' : 'sentry_useroption'} table in the target database'
             WHEN user_keep = false THEN 'user filtered out'
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
  const verification = plan.scope === 'global'
    ? `coalesce(x->>'validation_hash', replace(gen_random_uuid()::text, '-', '')),
       coalesce((x->>'date_hash_added')::timestamptz, now()), coalesce((x->>'is_verified')::boolean, false)`
    : `replace(gen_random_uuid()::text, '-', ''), now(), false`;
  const userEmails = await decideAndInsert('up_ue', C.userEmail, UE, `
    INSERT INTO ${UE} (user_id, email, validation_hash, date_hash_added, is_verified)
    SELECT target_id, email, ${verification}
    FROM d WHERE outcome = 'insert' ORDER BY src_pk`);
  if (plan.userEmail) {
    // Sentry's post-save signal gives every new user a row for its own address. Into the empty
    // target (no unique index to arbitrate) the anti-join decides: the table holds only this
    // import's rows, and its statistics are fresh so the planner hashes.
    if (bulk) await q(`ANALYZE ${UE} (user_id, email)`);
    const anti = bulk || !plan.userEmail.arbiter;
    const prim = await q(`
      INSERT INTO ${UE} (user_id, email, validation_hash, date_hash_added, is_verified)
      SELECT new_id, email, replace(gen_random_uuid()::text, '-', ''), now(), false
      FROM up_user u WHERE new_id IS NOT NULL AND coalesce(email, '') <> ''
        ${anti ? `AND NOT EXISTS (SELECT 1 FROM ${UE} x WHERE x.user_id = u.new_id AND x.email = u.email)` : ''}
      ${!anti ? `ON CONFLICT ${plan.userEmail.arbiter} DO NOTHING` : ''}`);
    stats.adjacent.primaryEmails += prim.rowCount ?? 0;
    if (plan.email) {
      // Sentry's receivers/email.py gives every new UserEmail an Email row for its address, so an
      // export without sentry.email records still ends with one row per address of its new users.
      const E = plan.email.table;
      const signalled = await q(`
        INSERT INTO ${E} (email, date_added)
        SELECT email, now() FROM (
          SELECT DISTINCT ON (lower(ue.email)) ue.email, ue.user_id FROM ${UE} ue
          JOIN up_user u ON u.new_id = ue.user_id
          WHERE ue.email <> '' AND NOT EXISTS (SELECT 1 FROM ${E} e WHERE lower(e.email::text) = lower(ue.email))
          ORDER BY lower(ue.email), ue.user_id, ue.email) x
        ORDER BY user_id, email
        ${!bulk && plan.email.arbiter ? `ON CONFLICT ${plan.email.arbiter} DO NOTHING` : ''}`);
      stats.adjacent.userEmailAddresses = (stats.adjacent.userEmailAddresses ?? 0) + (signalled.rowCount ?? 0);
    }
  }
  const UO = plan.userOption;
  options.onStep?.('options');
  const userOptions = await decideAndInsert('up_uo', C.userOption, UO?.table, `
    INSERT INTO ${UO?.table} (user_id, project_id, organization_id, key, value)
    SELECT target_id, NULL, NULL, opt_key, ${UO?.value} FROM d WHERE outcome = 'insert' ORDER BY src_pk`);
  return { userEmails, userOptions };
}
