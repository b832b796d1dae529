/**
 * The set-based merge: from the staged rows of one import into Sentry's tables, with Sentry's
 * user-scope rules, in the columns and types the target has (plan.ts). Runs inside the caller's
 * transaction, once every record is staged, so file order does not matter: every "first one
 * wins" is decided by source pk, never by position (new user ids alone follow file order, as
 * Sentry's import gives them).
 *
 * Steps, one file each: checks.ts (repeated pks, natural keys), users.ts (step 2), emails.ts
 * (3), children.ts (4-5: user emails and options), privileges.ts (the config and global
 * scopes), this file (their order; 6: findings and counts), bulk-load.ts (the empty-target
 * path), early.ts (step 2 started while the file is still read), direct-rows.ts and
 * direct-emails.ts (steps 3-5 for the new users' rows and the Email records, decided in the
 * client once step 2 is done).
 *
 * Concurrent imports into one database serialize here on an advisory lock held to the end of the
 * transaction: each merge sees every user and email the previous ones committed, so collisions
 * across imports follow the same rules as collisions inside one import, and nothing deadlocks.
 */
import type pg from 'pg';
import { DatabaseError, ErrorCodes, guardCallback, OptionError, wrapDbError } from '../../errors.js';
import { checkOptions, isBoolean, isFunction, isInteger, isObject, type OptionCheck } from '../../options.js';
import { ImportStats } from '../../stats.js';
import { REJECTED_USER_CODE } from '../../models.js';
import type { StagedFacts } from '../../staged-facts.js';
import type { TraceOptions } from '../../trace.js';
import { enterWritePath } from './row-checks.js';
import { refuseDuplicatePks, resolveNaturalKeys } from './checks.js';
import { EARLY_SAVEPOINT, type EarlyUsers, type UsersStep } from './early.js';
import { mergeChildren } from './children.js';
import { mergeEmails } from './emails.js';
import { planFor, writtenTables, type WritePlan } from './plan.js';
import { modelCodes, openMerge, refuseSequencesBehind, runner, type MergeStep } from './run.js';
import { mergeUsers, USERNAME_NOT_LISTED } from './users.js';
import { mergePrivileges } from './privileges.js';

export { MERGE_LOCK_KEY } from './run.js';
export { earlyUsersOverlap, type EarlyUsers } from './early.js';
export { describePlan, planFor, skippedModels, writePlan, type PrivilegePlan, type WritePlan } from './plan.js';

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

export type { MergeStep } from './run.js';

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

/**
 * Merges staged rows of `run` into the target tables and records findings; adds the outcome
 * counts to `stats`. Throws USERPORT_RECORD_DUPLICATE_PK when a model repeats a source pk. Its
 * options are checked (an OptionError names a wrong one) and what PostgreSQL refuses comes back
 * as USERPORT_DB_* (never pg's own error class). In the caller's transaction it sets `work_mem`
 * (SET LOCAL, for the rest of it) and, in user scope on the general path, turns the per-row
 * foreign-key checks of the new users' rows off while it runs (row-checks.ts), on again before
 * it returns.
 */
export async function mergeStaged(client: pg.ClientBase, options: MergeOptions, stats: ImportStats): Promise<MergeOutcome> {
  checkOptions('mergeStaged', options, MERGE_OPTIONS, ['run', 'mergeUsers', 'filterActive']);
  if (!(stats instanceof ImportStats)) throw new OptionError('mergeStaged: stats must be an ImportStats (the sink\'s)', 'stats', 'mergeStaged');
  // The caller's callbacks, as USERPORT_CALLBACK when they throw (a bug of theirs, not userport's).
  const guarded: MergeOptions = { ...options, onTrace: guardCallback(options.onTrace, 'onTrace'), onStep: guardCallback(options.onStep, 'onStep') };
  try {
    return await mergeAfterEarlyUsers(client, guarded, stats, undefined);
  } catch (err) {
    // PostgreSQL's own errors (a statement timeout, a lock) as USERPORT_DB_*, never pg's class.
    throw wrapDbError(err, 'the merge');
  }
}

const MERGE_OPTIONS: { readonly [K in keyof MergeOptions]-?: OptionCheck } = {
  run: isInteger(1), mergeUsers: isBoolean, filterActive: isBoolean, bulkLoad: isBoolean, staged: isObject, plan: isObject,
  onStep: isFunction, overwriteConfigs: isBoolean, onTrace: isFunction, explain: isBoolean,
};

/**
 * {@link mergeStaged} for importUsers, over options it built itself: `early` is what
 * `beginEarlyUsers` did in this transaction; only when no user row was staged after it
 * (`options.staged.usersAfterOthers` false; else `undoEarlyUsers` it first).
 */
export async function mergeAfterEarlyUsers(client: pg.ClientBase, options: MergeOptions, stats: ImportStats, early?: EarlyUsers): Promise<MergeOutcome> {
  const q = runner(client, options);
  const { run } = options;
  const C = modelCodes();
  // After the early users step, the staging table is analysed again only if rows were staged since.
  // If none were, it holds this run's users alone (the step began at the first row of another
  // model): the steps of the other models have no staged row to decide, and skip their scans of it
  // (10-12 ms each at 100k users, in the import's last second).
  const { S, unchanged } = await openMerge(q, early ? { staged: early.staged } : {});
  const steps = { ...options, othersStaged: !unchanged };
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
  let rowChecks = early?.rowChecks;
  if (early) {
    if (options.staged?.usersAfterOthers !== false) {
      throw new DatabaseError(ErrorCodes.DB_SETTING, 'mergeStaged: a user was staged after the early users step (undo it with undoEarlyUsers first)');
    }
    await q(`RELEASE SAVEPOINT ${EARLY_SAVEPOINT}`);
    users = early.step;
  } else {
    await refuseSequencesBehind(q, writtenTables(plan));
    const path = await enterWritePath(q, client, plan, !!options.bulkLoad);
    const { bulk } = path;
    rowChecks = path.rowChecks;
    users = { bulk, ...(await mergeUsers(q, S, options, plan, { empty: !!bulk?.empty, few: !!bulk && !bulk.empty })) };
  }
  const { bulk, usersInserted } = users;
  stats.adjacent.lostPasswordHashes += users.lostPasswordHashes;
  // Records dropped at the end of the input, their findings written: the new users' scoped
  // options (direct-rows.ts).
  for (const d of early?.dropped ?? []) stats.drop(d.model, d.reason, d.count);
  for (const f of early?.filtered ?? []) stats.model(f.model).filtered += f.count;

  // Rows that went straight in at the end of the input, by table (direct-rows.ts, direct-emails.ts).
  const direct = (table: string | undefined) => (table === undefined ? 0 : early?.direct?.get(table) ?? 0);

  // 3. Emails.
  options.onStep?.('emails');
  await mergeEmails(q, S, steps, plan, bulk ? (bulk.empty ? 'empty' : 'few') : undefined, stats,
    { userEmails: direct(plan.userEmail?.table) > 0, emails: direct(plan.email?.table) > 0 });

  if (options.staged?.naturalKeys !== false) await resolveNaturalKeys(q, S, run, C);
  // Only with --rejects-file can a user be rejected: skip the per-row lookup otherwise.
  const anyRejected = options.staged ? options.staged.rejectedUsers
    : ((await q(`SELECT 1 FROM ${S} WHERE run = $1 AND model = ${REJECTED_USER_CODE} LIMIT 1`, [run])).rowCount ?? 0) > 0;

  // 4. User emails and 5. user options.
  const children = await mergeChildren(q, S, steps, plan, !!bulk, anyRejected, stats);

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
  // Where the users' step decided only the exceptions, up_user's other rows are users inserted as
  // they are and, with a username filter, users it removed: the users' findings read those two,
  // not the view over every staged user (two scans of it, 45 ms at 100k users).
  const userFindings = users.decided === 'up_user' ? 'up_user' : `(
    SELECT outcome, reason, src_pk, ord, off, final_name, target_id FROM up_exc${!options.filterActive ? '' : `
    UNION ALL
    SELECT 'filtered', '${USERNAME_NOT_LISTED}', s.src_pk, s.ord, s.off, NULL, NULL FROM ${S} s
    WHERE s.run = $1 AND s.model = ${C.user} AND NOT s.keep AND NOT EXISTS (SELECT 1 FROM up_exc e WHERE e.src_pk = s.src_pk)`}) up_user`;
  const tables = Object.entries(MODEL_NAMES);
  for (const p of privileges) { tables.push([p.table, p.model]); insertedBy[p.table] = p.inserted; }
  for (const [table, model] of tables) {
    // A role that exists is a finding too (kept or overwritten); a duplicate user email is not.
    const kinds = table === 'up_role' ? `'dropped', 'existing', 'overwritten'` : `'filtered', 'dropped', 'merged', 'renamed'`;
    const counts = await q(`
      WITH src AS MATERIALIZED (
        SELECT outcome, reason, src_pk, ord, off, ${FINDING_REASON[table] ?? CHILD_FINDING} AS finding
        FROM ${table === 'up_user' ? userFindings : table} WHERE outcome NOT IN ('insert', 'inserted')
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
      SELECT $1, 'address', 'sentry.user', src_pk, ord, off, address_note FROM ${users.decided} WHERE address_note IS NOT NULL
      RETURNING reason)
    SELECT count(*) FILTER (WHERE reason LIKE 'email_unique%')::int AS cleared, count(*)::int AS shared FROM n`, [run]);
  const { cleared, shared } = notes.rows[0] as { cleared: number; shared: number };
  stats.adjacent.sharedAddresses = (stats.adjacent.sharedAddresses ?? 0) + shared;
  if (plan.user.emailUnique) stats.adjacent.emailUniqueLeftEmpty = (stats.adjacent.emailUniqueLeftEmpty ?? 0) + cleared;
  // Whatever the caller's transaction does next is checked again.
  await rowChecks?.restore();
  return { bulkLoad: !!bulk };
}
