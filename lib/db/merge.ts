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
import { DatabaseError, ErrorCodes, OptionError, RecordError } from '../errors.js';
import { modelByCode, modelInfo } from '../models.js';
import { REJECTED_USER_CODE } from '../map-models.js';
import { ImportStats } from '../stats.js';
import type { StagedFacts } from '../pg-sink.js';

/** Key of the advisory lock that serializes merges. */
export const MERGE_LOCK_KEY = 7472117102;

/** Sentry's suffix schedule for renamed users: tail length, attempts. Then 12 until unique. */
const RENAME_SCHEDULE: [number, number][] = [[2, 2], [3, 3], [5, 20], [12, 1]];
const MAX_RENAME_ROUNDS = 200;

/** Options of {@link mergeStaged}: which import run to merge, and how. */
export interface MergeOptions {
  run: number;
  mergeUsers: boolean;
  /** True when a username filter is active: only emails of kept users are imported. */
  filterActive: boolean;
  /**
   * Try the empty-target path: when every target table is empty and can be locked at once, load
   * the rows first and build the indexes and constraints after ({@link BulkLoad}). @default false
   */
  bulkLoad?: boolean;
  /**
   * What the sink saw while staging every row of this run ({@link StagedFacts}): lets the merge
   * skip the duplicate-pk, rejected-user and natural-key scans that cannot find anything. Leave it
   * out when the rows were staged by several processes (a resumed import). @default every check runs
   */
  staged?: Pick<StagedFacts, 'pksIncreasing' | 'rejectedUsers' | 'naturalKeys' | 'usersAfterOthers'>;
  /** Called as each step of the merge starts, for progress (`Progress.step`). */
  onStep?: (step: MergeStep) => void;
}

/** The steps of the merge, in order, as {@link MergeOptions.onStep} reports them. */
export type MergeStep = 'users' | 'emails' | 'user emails' | 'options' | 'indexes' | 'findings';

/** What {@link mergeStaged} reports about how it wrote. */
export interface MergeOutcome {
  /** True when the rows were loaded into bare tables and the indexes and constraints built after. */
  bulkLoad: boolean;
}

/** Sentry's table of lost-password hashes (not a model of the export: no schema names it). */
const LOST_PASSWORD_TABLE = 'sentry_lostpasswordhash';

type Q = (sql: string, params?: unknown[]) => Promise<pg.QueryResult>;

/** Staging codes of the merged models, from their schemas (`x-userport.code` in schemas/). */
interface ModelCodes { user: number; email: number; userEmail: number; userOption: number }

function modelCodes(): ModelCodes {
  const code = (name: string) => modelInfo(name)!.mapping.code;
  return { user: code('sentry.user'), email: code('sentry.email'), userEmail: code('sentry.useremail'), userOption: code('sentry.useroption') };
}

const MODEL_NAMES: Record<string, string> = { up_user: 'sentry.user', up_email: 'sentry.email', up_ue: 'sentry.useremail', up_uo: 'sentry.useroption' };

type TargetTables = ReturnType<typeof targetTables>;

/** Sentry's target tables, as `schemas/` names them (`x-userport.table`). */
function targetTables() {
  const table = (model: string) => modelInfo(model)!.mapping.table;
  return { user: table('sentry.user'), email: table('sentry.email'), userEmail: table('sentry.useremail'), userOption: table('sentry.useroption') };
}

/** The statement runner of one merge: prints each statement's time and plan on request. */
function runner(client: pg.ClientBase): Q {
  const trace = process.env.USERPORT_TRACE_SQL === '1';
  // Prints every statement's plan: how the specs check that no join can degrade quadratically.
  const explain = process.env.USERPORT_EXPLAIN_SQL === '1';
  return async (sql, params) => {
    if (explain && /^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE TEMP TABLE \w+ ON COMMIT DROP AS)\b/.test(sql) && !/WITH NO DATA\s*$/.test(sql)) {
      const plan = await client.query(`EXPLAIN ${sql}`, params as unknown[]);
      process.stderr.write(`[plan] ${sql.trim().replace(/\s+/g, ' ').slice(0, 90)}\n${plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n')}\n[/plan]\n`);
    }
    const t0 = trace ? performance.now() : 0;
    const r = await client.query(sql, params as unknown[]);
    if (trace) process.stderr.write(`[sql ${(performance.now() - t0).toFixed(0)} ms] ${sql.trim().replace(/\s+/g, ' ').slice(0, 90)}\n`);
    return r;
  };
}

/** What every merge starts with; harmless to repeat in one transaction (the early users phase, then the rest). */
async function openMerge(q: Q): Promise<void> {
  // After the lock, each statement must see what earlier merges committed: only READ COMMITTED
  // takes a new snapshot per statement (importUsers sets it; a caller's own client may not).
  const iso = (await q(`SELECT current_setting('transaction_isolation') AS level`)).rows[0].level as string;
  if (iso !== 'read committed') {
    throw new DatabaseError(ErrorCodes.DB_SETTING, `the merge needs a READ COMMITTED transaction, this one is ${iso.toUpperCase()}`);
  }
  await q('SELECT pg_advisory_xact_lock($1)', [MERGE_LOCK_KEY]);
  // The ORDER BY src_pk sorts of big imports spilled to disk at the default 4 MB.
  await q(`SET LOCAL work_mem = '64MB'`);
  // Statistics only of the columns later statements join or filter on: a wide table's other
  // columns would cost time to sample and help no plan.
  await q('ANALYZE userport_stage (run, model, src_pk, user_pk, keep, username, email)');
}

/** The sequence behind `table`'s serial `id` (schema-qualified, quoted as needed), if it has one. */
async function idSequence(q: Q, table: string): Promise<string | null> {
  return (await q(`SELECT pg_get_serial_sequence($1, 'id') AS seq`, [table])).rows[0].seq as string | null;
}

/** What the users' step wrote (step 2 of the merge). */
interface UsersStep {
  bulk: BulkLoad | undefined;
  usersInserted: number;
  lostPasswordHashes: number;
}

/**
 * The users' step of a merge started while the rest of the file is still being read: the sink
 * calls it when the first row of another model follows a first run of users, so PostgreSQL
 * decides and writes the users while Node parses the other models. Only on the empty-target path
 * (the five tables empty and locked, see {@link BulkLoad}), inside a savepoint, with the state of
 * the two id sequences it draws from noted: if a user row comes later after all (a file not in
 * Sentry's model order), {@link undoEarlyUsers} puts the sequences back while the tables are
 * still locked and rolls back to the savepoint, and {@link mergeStaged} then merges everything as
 * if this never ran, so the result, ids included, does not depend on file order. See {@link beginEarlyUsers}.
 */
export interface EarlyUsers {
  readonly step: UsersStep;
  readonly sequences: readonly { seq: string; lastValue: string; isCalled: boolean; after: string }[];
}

const EARLY_SAVEPOINT = 'userport_early_users';

/**
 * Starts {@link EarlyUsers}: takes the empty-target path (locks, drops) inside a savepoint and
 * notes the id sequences. Quick; resolves undefined, leaving nothing behind, when that path cannot
 * be taken. Then `run()` does the users' step (seconds at 100k users). Runs in the import's
 * transaction, on the connection that staged the users.
 */
export async function beginEarlyUsers(client: pg.ClientBase, options: MergeOptions): Promise<{ run(): Promise<EarlyUsers> } | undefined> {
  if (!options.bulkLoad) return undefined;
  const q = runner(client);
  const T = targetTables();
  await openMerge(q);
  await q(`SAVEPOINT ${EARLY_SAVEPOINT}`);
  const bulk = await enterBulkLoad(q, (sql) => client.query(sql), T);
  if (!bulk) {
    await q(`ROLLBACK TO SAVEPOINT ${EARLY_SAVEPOINT}`);
    await q(`RELEASE SAVEPOINT ${EARLY_SAVEPOINT}`);
    return undefined;
  }
  const seqs: string[] = [];
  for (const table of [T.user, LOST_PASSWORD_TABLE]) {
    const seq = await idSequence(q, table);
    if (seq) seqs.push(seq);
  }
  const state = async (seq: string) => (await q(`SELECT last_value::text AS v, is_called AS c FROM ${seq}`)).rows[0] as { v: string; c: boolean };
  const before: { v: string; c: boolean }[] = [];
  for (const seq of seqs) before.push(await state(seq));
  return {
    async run() {
      const written = await mergeUsers(q, options, T);
      const after: string[] = [];
      for (const seq of seqs) after.push((await state(seq)).v);
      return {
        step: { bulk, ...written },
        sequences: seqs.map((seq, i) => ({ seq, lastValue: before[i]!.v, isCalled: before[i]!.c, after: after[i]! })),
      };
    },
  };
}

/**
 * Undoes {@link beginEarlyUsers}: the id sequences first, while the tables are still locked (and
 * only where nobody else drew from them meanwhile), then everything else by the savepoint. Call it
 * before staging anything more: the rollback also drops what was staged after the savepoint.
 */
export async function undoEarlyUsers(client: pg.ClientBase, early: EarlyUsers): Promise<void> {
  const q = runner(client);
  if (process.env.USERPORT_TRACE_SQL === '1') process.stderr.write('[early] a user came after other models: the early users step is undone\n');
  for (const s of early.sequences) {
    await q(`SELECT setval($1::regclass, $2::bigint, $3) WHERE (SELECT last_value FROM ${s.seq}) = $4::bigint`, [s.seq, s.lastValue, s.isCalled, s.after]);
  }
  await q(`ROLLBACK TO SAVEPOINT ${EARLY_SAVEPOINT}`);
  await q(`RELEASE SAVEPOINT ${EARLY_SAVEPOINT}`);
}

/**
 * Merges staged rows of `run` into the target tables and records findings; adds the outcome
 * counts to `stats`. Throws USERPORT_RECORD_DUPLICATE_PK when a model repeats a source pk.
 * `early`: what {@link beginEarlyUsers} did in this transaction; only when no user row was staged
 * after it (`options.staged.usersAfterOthers` false; else {@link undoEarlyUsers} it first).
 */
export async function mergeStaged(client: pg.ClientBase, options: MergeOptions, stats: ImportStats, early?: EarlyUsers): Promise<MergeOutcome> {
  const T = targetTables();
  const q = runner(client);
  const { run } = options;
  const C = modelCodes();
  await openMerge(q);
  // The pk map and findings carry the run without a foreign key (a per-row trigger): check once
  // that it is registered, so a caller's unregistered run cannot leave rows that belong to nothing.
  if (!(await q('SELECT 1 FROM userport_import WHERE run = $1', [run])).rowCount) {
    throw new OptionError(`mergeStaged: run ${run} is not registered in userport_import (register it with beginImportRun, before the merge, in the same transaction or earlier)`, 'run');
  }

  // 1. A source pk may appear once per model (none can repeat when every model's pks only grew).
  if (!options.staged?.pksIncreasing) await refuseDuplicatePks(q, run);

  // 2. Users: one pass decides who is inserted, renamed, merged or filtered (see mergeUsers).
  if (!early) options.onStep?.('users');
  let users: UsersStep;
  if (early) {
    if (options.staged?.usersAfterOthers !== false) {
      throw new DatabaseError(ErrorCodes.DB_SETTING, 'mergeStaged: a user was staged after the early users step (undo it with undoEarlyUsers first)');
    }
    await q(`RELEASE SAVEPOINT ${EARLY_SAVEPOINT}`);
    users = early.step;
  } else {
    const bulk = options.bulkLoad ? await enterBulkLoad(q, (sql) => client.query(sql), T) : undefined;
    users = { bulk, ...(await mergeUsers(q, options, T)) };
  }
  const { bulk, usersInserted } = users;
  stats.adjacent.lostPasswordHashes += users.lostPasswordHashes;
  // Without the unique indexes there is no ON CONFLICT arbiter; the tables were empty and are
  // locked, so the anti-joins below decide alone what the arbiter would have.
  const onConflict = (target: string) => (bulk ? '' : `ON CONFLICT ${target} DO NOTHING`);

  options.onStep?.('emails');
  // 3. Emails: reuse an existing row with the same address, case-insensitively. With a username
  // filter, only the addresses of kept users (their primary email and their useremail rows).
  const kept = options.filterActive
    ? `lower(s.email) IN (SELECT lower(email) FROM up_user WHERE keep
         UNION SELECT lower(s2.email) FROM userport_stage s2 JOIN up_user u2 ON u2.src_pk = s2.user_pk AND u2.keep
               WHERE s2.run = $1 AND s2.model = ${C.userEmail})`
    : 'true';
  await q(`
    CREATE TEMP TABLE up_email ON COMMIT DROP AS
    SELECT s.src_pk, s.ord, s.off, s.email, lower(s.email) AS le, s.date_joined AS date_added,
      row_number() OVER (PARTITION BY lower(s.email) ORDER BY s.src_pk) AS rn,
      CASE WHEN ${kept} THEN NULL ELSE 'filtered' END AS outcome,
      CASE WHEN ${kept} THEN NULL ELSE 'not an email of a user kept by --filter-usernames' END AS reason
    FROM userport_stage s WHERE s.run = $1 AND s.model = ${C.email}`, [run]);
  await q('ANALYZE up_email (src_pk, le, rn, outcome)');
  // Number(): the caller's client may read int8 as text (pg's default).
  const before = Number((await q(`SELECT coalesce(max(id), 0) AS id FROM ${T.email}`)).rows[0].id);
  await q(`
    INSERT INTO ${T.email} (email, date_added)
    SELECT email, coalesce(date_added, now()) FROM up_email WHERE rn = 1 AND outcome IS NULL ORDER BY src_pk
    ${onConflict('((lower(email)))')}`);
  await q(`ANALYZE ${T.email}`);
  // Rows with an id above the old maximum are new: merges hold the lock, so no other import
  // inserted meanwhile. (Mapping through INSERT ... RETURNING in a CTE instead looked cheaper but
  // the CTE has no statistics: the planner joined it by nested loop, 103 s at 30k users.)
  await q(`
    INSERT INTO userport_pk_map (run, model, source_pk, target_id, kind)
    SELECT $1, 'sentry.email', e.src_pk, se.id, CASE WHEN se.id > $2 AND e.rn = 1 THEN 'inserted' ELSE 'existing' END
    FROM up_email e JOIN ${T.email} se ON lower(se.email) = e.le WHERE e.outcome IS NULL`, [run, before]);
  const emailCounts = await q(`SELECT kind, count(*)::int AS n FROM userport_pk_map WHERE run = $1 AND model = 'sentry.email' GROUP BY kind`, [run]);
  for (const { kind, n } of emailCounts.rows as { kind: 'inserted' | 'existing'; n: number }[]) stats.model('sentry.email')[kind] += n;

  if (options.staged?.naturalKeys !== false) await resolveNaturalKeys(q, run, C);
  // Only with --rejects-file can a user be rejected: skip the per-row lookup otherwise.
  const anyRejected = options.staged ? options.staged.rejectedUsers
    : ((await q(`SELECT 1 FROM userport_stage WHERE run = $1 AND model = ${REJECTED_USER_CODE} LIMIT 1`, [run])).rowCount ?? 0) > 0;

  // 4. User emails and 5. user options: remap the user, then Sentry's rules, decided in one pass
  // that inserts the kept rows straight from the decision (no per-model copy of every row) and
  // keeps only the exceptions (filtered, dropped, merged, duplicate rows) in up_ue / up_uo.
  const decide = (table: 'up_ue' | 'up_uo', code: number) => {
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
    return `
      SELECT x.*,
        CASE WHEN user_keep = false THEN 'filtered' WHEN user_keep IS NULL THEN 'dropped'
             WHEN user_kind = 'merged' THEN 'merged' ${specific} ELSE 'insert' END AS outcome,
        CASE WHEN user_keep = false THEN 'user filtered out'
             WHEN user_keep IS NULL AND user_rejected THEN 'user rejected (see the rejects file)'
             WHEN user_keep IS NULL THEN 'user not in the export'
             WHEN user_kind = 'merged' THEN 'user merged into an existing user' ${specificReason} END AS reason
      FROM (
        SELECT s.src_pk, s.ord, s.off, s.user_pk, s.username, s.email, s.opt_key, s.opt_value, s.project_id, s.organization_id,
          m.target_id, m.kind AS user_kind, m.keep AS user_keep,
          -- REJECTED_USER_CODE: the pk of a rejected user, staged so its rows say so.
          ${anyRejected ? `EXISTS (SELECT 1 FROM userport_stage r WHERE r.run = $1 AND r.model = ${REJECTED_USER_CODE} AND r.src_pk = s.user_pk)` : 'false'} AS user_rejected,
          row_number() OVER (PARTITION BY ${partition} ORDER BY s.src_pk) AS rn
        FROM userport_stage s
          -- What the users' pk map holds, read from the decision table (one join, not two).
          LEFT JOIN (SELECT src_pk, keep, CASE WHEN keep THEN target_id END AS target_id,
                       CASE WHEN NOT keep THEN NULL WHEN outcome = 'merged' THEN 'merged' ELSE 'inserted' END AS kind
                     FROM up_user) m ON m.src_pk = s.user_pk
        WHERE s.run = $1 AND s.model = ${code}
      ) x`;
  };
  /** Creates the exceptions table, then inserts the kept rows with `insert` (reading `d`), writing the exceptions in the same statement. */
  const decideAndInsert = async (table: 'up_ue' | 'up_uo', code: number, insert: string): Promise<number> => {
    const decision = decide(table, code);
    await q(`CREATE TEMP TABLE ${table} ON COMMIT DROP AS ${decision} WITH NO DATA`, [run]);
    // The decision is materialized once (a tuplestore, not a table) and read twice.
    return (await q(`
      WITH d AS MATERIALIZED (${decision}),
      exceptions AS (INSERT INTO ${table} SELECT * FROM d WHERE outcome <> 'insert')
      ${insert}`, [run])).rowCount ?? 0;
  };
  // Every user these rows go to was inserted by this transaction (rows of merged users are
  // skipped) and duplicates are already ranked out, so nothing can conflict: plain inserts,
  // cheaper than ON CONFLICT's speculative insertion.
  options.onStep?.('user emails');
  const userEmailsInserted = await decideAndInsert('up_ue', C.userEmail, `
    INSERT INTO ${T.userEmail} (user_id, email, validation_hash, date_hash_added, is_verified)
    SELECT target_id, email, replace(gen_random_uuid()::text, '-', ''), now(), false
    FROM d WHERE outcome = 'insert' ORDER BY src_pk`);
  // Sentry's post-save signal gives every new user a row for its own address. Into the empty
  // target (no unique index to arbitrate) the anti-join decides: the table holds only this
  // import's rows, and its statistics are fresh so the planner hashes.
  if (bulk) await q(`ANALYZE ${T.userEmail}`);
  const prim = await q(`
    INSERT INTO ${T.userEmail} (user_id, email, validation_hash, date_hash_added, is_verified)
    SELECT new_id, email, replace(gen_random_uuid()::text, '-', ''), now(), false
    FROM up_user u WHERE new_id IS NOT NULL AND coalesce(email, '') <> ''
      ${bulk ? `AND NOT EXISTS (SELECT 1 FROM ${T.userEmail} x WHERE x.user_id = u.new_id AND x.email = u.email)` : ''}
    ${onConflict('(user_id, email)')}`);
  stats.adjacent.primaryEmails += prim.rowCount ?? 0;
  // Sentry's receivers/email.py gives every new UserEmail an Email row for its address, so an
  // export without sentry.email records still ends with one row per address of its new users.
  const signalled = await q(`
    INSERT INTO ${T.email} (email, date_added)
    SELECT email, now() FROM (
      SELECT DISTINCT ON (lower(ue.email)) ue.email, ue.user_id FROM ${T.userEmail} ue
      JOIN up_user u ON u.new_id = ue.user_id
      WHERE ue.email <> '' AND NOT EXISTS (SELECT 1 FROM ${T.email} e WHERE lower(e.email) = lower(ue.email))
      ORDER BY lower(ue.email), ue.user_id, ue.email) x
    ORDER BY user_id, email
    ${onConflict('((lower(email)))')}`);
  stats.adjacent.userEmailAddresses = (stats.adjacent.userEmailAddresses ?? 0) + (signalled.rowCount ?? 0);
  options.onStep?.('options');
  const userOptionsInserted = await decideAndInsert('up_uo', C.userOption, `
    INSERT INTO ${T.userOption} (user_id, project_id, organization_id, key, value)
    SELECT target_id, NULL, NULL, opt_key, opt_value::jsonb FROM d WHERE outcome = 'insert' ORDER BY src_pk`);
  if (bulk) { options.onStep?.('indexes'); await bulk.rebuild(); }

  // 6. Findings and counts: one pass over each decision table writes the findings (the
  // exceptions) and counts every outcome but the inserts, which the INSERTs above counted.
  options.onStep?.('findings');
  const insertedBy: Record<string, number> = { up_user: usersInserted, up_ue: userEmailsInserted, up_uo: userOptionsInserted };
  for (const [table, model] of Object.entries(MODEL_NAMES)) {
    const counts = await q(`
      WITH src AS MATERIALIZED (
        SELECT outcome, reason, src_pk, ord, off, ${FINDING_REASON[table]} AS finding
        FROM ${table} WHERE outcome NOT IN ('insert', 'inserted')
      ), findings AS (
        INSERT INTO userport_finding (run, kind, model, source_pk, ordinal, byte_offset, reason)
        SELECT $1, outcome, '${model}', src_pk, ord, off, finding FROM src WHERE outcome IN ('filtered', 'dropped', 'merged', 'renamed')
      )
      SELECT outcome, reason, count(*)::int AS n FROM src GROUP BY outcome, reason`, [run]);
    const c = stats.model(model);
    // Emails count inserted and existing from the pk map (step 3).
    if (table !== 'up_email') c.inserted += insertedBy[table]!;
    for (const { outcome, reason, n } of counts.rows as { outcome: string; reason: string | null; n: number }[]) {
      if (outcome === 'renamed') c.renamed += n; // renamed users are inserted users, counted above
      else if (outcome === 'existing') c.existing += n;
      else if (outcome === 'merged') c.merged += n;
      else if (outcome === 'filtered') c.filtered += n;
      else stats.drop(model, reason ?? outcome, n);
    }
  }
  return { bulkLoad: !!bulk };
}

/**
 * Step 2 of the merge: one pass decides who is inserted, renamed, merged or filtered (ties by
 * source pk), then the users, their lost-password hashes and their pk map are written. Reads only
 * the staged users (so it can run before the other models are staged, see {@link EarlyUsers}).
 */
async function mergeUsers(q: Q, options: MergeOptions, T: TargetTables): Promise<Omit<UsersStep, 'bulk'>> {
  // The id sequence is looked up once: pg_get_serial_sequence per row read the catalog for every
  // user (about half of this statement's time at 100k users).
  const userSeq = await idSequence(q, T.user);
  await q(`
    CREATE TEMP TABLE up_user ON COMMIT DROP AS
    WITH u AS (
      SELECT s.*, lower(s.username) AS lname,
        CASE WHEN s.keep THEN row_number() OVER (PARTITION BY s.keep, lower(s.username) ORDER BY s.src_pk) END AS rn
      FROM userport_stage s WHERE s.run = $1 AND s.model = ${modelCodes().user}
    ), ex AS (
      -- An existing user with the same name, case-insensitively (the oldest if several).
      SELECT DISTINCT ON (lower(a.username)) lower(a.username) AS lname, a.id
      FROM ${T.user} a WHERE lower(a.username) IN (SELECT lname FROM u WHERE keep)
      ORDER BY lower(a.username), a.id
    ), o AS (
      SELECT u.*, ex.id AS ex_id,
        CASE WHEN NOT u.keep THEN 'filtered'
             WHEN ex.id IS NULL AND u.rn = 1 THEN 'inserted'
             WHEN $2 THEN 'merged'
             ELSE 'renamed' END AS outcome
      FROM u LEFT JOIN ex USING (lname)
    )
    SELECT n.*,
      -- A new user's target is its new id (a subquery: nextval runs once per row).
      CASE WHEN outcome IN ('inserted', 'renamed') THEN new_id WHEN outcome = 'merged' THEN ex_id END AS target_id
    FROM (
      SELECT o.*,
        CASE WHEN outcome = 'inserted' THEN username END AS final_name,
        NULL::text AS cand,
        CASE WHEN outcome IN ('inserted', 'renamed') THEN nextval($3::regclass) END AS new_id,
        CASE WHEN outcome = 'filtered' THEN 'username not in --filter-usernames'
             WHEN outcome = 'renamed' THEN 'username taken'
             WHEN outcome = 'merged' AND ex_id IS NOT NULL THEN 'merged into existing user'
             WHEN outcome = 'merged' THEN 'merged into an earlier user of the export with the same username' END AS reason
      FROM o) n`, [options.run, options.mergeUsers, userSeq]);
  await q('ANALYZE up_user (src_pk, lname, keep, rn, outcome, new_id, target_id, final_name, email)');
  if (options.mergeUsers) {
    // Later users of a name merge into its first user when that one is inserted now.
    await q(`UPDATE up_user p SET target_id = l.new_id FROM up_user l
             WHERE p.outcome = 'merged' AND p.target_id IS NULL AND l.keep AND l.rn = 1 AND l.lname = p.lname`);
  }
  await renameUsers(q, T);
  const usersInserted = (await q(`
    INSERT INTO ${T.user} (id, password, last_login, username, first_name, email, is_staff, is_active, is_superuser,
      is_managed, is_sentry_app, is_password_expired, is_unclaimed, last_password_change, flags, session_nonce,
      date_joined, last_active, avatar_type, avatar_url)
    SELECT new_id, '!' || substr(md5(random()::text) || md5(random()::text), 1, 40), last_login, final_name,
      coalesce(first_name, ''), coalesce(email, ''), false, coalesce(is_active, true), false,
      false, is_sentry_app, false, true, now(), coalesce(flags, 0), session_nonce,
      coalesce(date_joined, now()), last_active, coalesce(avatar_type, 0), avatar_url
    FROM up_user WHERE new_id IS NOT NULL ORDER BY new_id`)).rowCount ?? 0;
  const lph = await q(`
    INSERT INTO ${LOST_PASSWORD_TABLE} (user_id, hash, date_added)
    SELECT new_id, replace(gen_random_uuid()::text, '-', ''), now() FROM up_user WHERE new_id IS NOT NULL`);
  await q(`
    INSERT INTO userport_pk_map (run, model, source_pk, target_id, kind)
    SELECT $1, 'sentry.user', src_pk, target_id, CASE WHEN outcome = 'merged' THEN 'merged' ELSE 'inserted' END
    FROM up_user WHERE keep`, [options.run]);
  // Statistics of a table another session analyzed while a (since killed) merge held uncommitted
  // rows in it say "empty" whatever its size: the planner then loops over it. Analyze what this
  // transaction filled before joining it (ANALYZE counts the transaction's own rows).
  await q('ANALYZE userport_pk_map');
  return { usersInserted, lostPasswordHashes: lph.rowCount ?? 0 };
}

/**
 * What a finding says beyond the counted reason: who. Summary counters group by the bare reason
 * (bounded keys); each finding names the user it concerns.
 */
const FINDING_REASON: Record<string, string> = {
  up_user: `CASE WHEN outcome = 'renamed' THEN reason || ': imported as ' || final_name
                 WHEN outcome = 'merged' THEN reason || ' (user id ' || target_id || ')' ELSE reason END`,
  up_email: 'reason',
  up_ue: `reason || CASE WHEN user_pk IS NOT NULL THEN ' (user pk ' || user_pk || ')'
                         ELSE ' (user ' || to_json(ARRAY[username])::text || ')' END
                 || CASE WHEN outcome = 'merged' THEN ' into user id ' || target_id ELSE '' END`,
  up_uo: `reason || CASE WHEN user_pk IS NOT NULL THEN ' (user pk ' || user_pk || ')'
                         ELSE ' (user ' || to_json(ARRAY[username])::text || ')' END
                 || CASE WHEN outcome = 'merged' THEN ' into user id ' || target_id ELSE '' END`,
};

/** Throws USERPORT_RECORD_DUPLICATE_PK at the first record, in file order, whose pk its model already had. */
async function refuseDuplicatePks(q: Q, run: number): Promise<void> {
  const dup = await q(`
    SELECT s.model, s.src_pk, s.ord, s.off, s.line, s.col FROM userport_stage s
    JOIN (SELECT model, src_pk FROM userport_stage WHERE run = $1 AND model <> ${REJECTED_USER_CODE} GROUP BY model, src_pk HAVING count(*) > 1) d
      USING (model, src_pk)
    WHERE s.run = $1 ORDER BY s.ord OFFSET 1 LIMIT 1`, [run]);
  if (!dup.rowCount) return;
  const d = dup.rows[0];
  const model = modelByCode(d.model).name;
  throw new RecordError(ErrorCodes.RECORD_DUPLICATE_PK, `${model} pk ${d.src_pk} appears more than once in the export`, {
    position: { ordinal: d.ord, offset: d.off, line: d.line, column: d.col, model, pk: d.src_pk },
  });
}

/**
 * Exports written before Sentry 23.9.1 name a row's user by username (`"user": ["alice"]`).
 * Each such row gets the source pk of the export's user with exactly that name (Django's natural
 * key is case-sensitive); an unknown name leaves it unresolved (dropped, "user not in the
 * export"). Two users of one name make the key ambiguous: refused rather than guessed, so no row
 * can land on the wrong user.
 */
async function resolveNaturalKeys(q: Q, run: number, C: ModelCodes): Promise<void> {
  const pending = await q(`SELECT 1 FROM userport_stage WHERE run = $1 AND model IN (${C.userEmail}, ${C.userOption}) AND user_pk IS NULL AND username IS NOT NULL LIMIT 1`, [run]);
  if (!pending.rowCount) return;
  const ambiguous = await q(`
    SELECT s.model, s.src_pk, s.ord, s.off, s.line, s.col, s.username FROM userport_stage s
    JOIN (SELECT username FROM userport_stage WHERE run = $1 AND model = ${C.user} AND username IS NOT NULL
          GROUP BY username HAVING count(*) > 1) d USING (username)
    WHERE s.run = $1 AND s.model IN (${C.userEmail}, ${C.userOption}) AND s.user_pk IS NULL ORDER BY s.ord LIMIT 1`, [run]);
  if (ambiguous.rowCount) {
    const d = ambiguous.rows[0];
    const model = modelByCode(d.model).name;
    throw new RecordError(ErrorCodes.RECORD_LEGACY_FORMAT,
      `${model} pk ${d.src_pk} names its user by username ${JSON.stringify(d.username)}, as exports before Sentry 23.9.1 do, ` +
      'and the export has several users of that name: refusing to guess which one', {
        position: { ordinal: d.ord, offset: d.off, line: d.line, column: d.col, model, pk: d.src_pk, field: 'user' },
      });
  }
  await q(`
    UPDATE userport_stage s SET user_pk = u.src_pk FROM userport_stage u
    WHERE s.run = $1 AND s.model IN (${C.userEmail}, ${C.userOption}) AND s.user_pk IS NULL AND s.username IS NOT NULL
      AND u.run = $1 AND u.model = ${C.user} AND u.username = s.username`, [run]);
}

/** Gives every 'renamed' user a free `<name>-<random tail>`, in set-based rounds. */
async function renameUsers(q: Q, T: TargetTables): Promise<void> {
  if (!(await q(`SELECT 1 FROM up_user WHERE outcome = 'renamed' LIMIT 1`)).rowCount) return;
  const lengths: number[] = [];
  for (const [len, tries] of RENAME_SCHEDULE) for (let i = 0; i < tries; i++) lengths.push(len);
  for (let round = 0; round < MAX_RENAME_ROUNDS; round++) {
    const len = lengths[Math.min(round, lengths.length - 1)]!;
    // A candidate is taken when any user (existing, or kept by this import) has it,
    // case-insensitively, or when two pending users drew the same one this round. Each check is
    // a plain join so the planner can hash it, however many users are renamed.
    await q(`CREATE TEMP TABLE up_cand ON COMMIT DROP AS
             SELECT src_pk, left(username, ${128 - 1 - len}) || '-' || userport_random_string(${len}) AS cand
             FROM up_user WHERE outcome = 'renamed' AND final_name IS NULL`);
    await q(`DELETE FROM up_cand c USING (SELECT lower(cand) AS lc FROM up_cand GROUP BY 1 HAVING count(*) > 1) t WHERE lower(c.cand) = t.lc`);
    await q(`DELETE FROM up_cand c USING ${T.user} a WHERE lower(a.username) = lower(c.cand)`);
    await q(`DELETE FROM up_cand c USING up_user o WHERE lower(o.final_name) = lower(c.cand)`);
    await q(`UPDATE up_user p SET final_name = c.cand FROM up_cand c WHERE p.src_pk = c.src_pk`);
    await q('DROP TABLE up_cand');
    if (!(await q(`SELECT 1 FROM up_user WHERE outcome = 'renamed' AND final_name IS NULL LIMIT 1`)).rowCount) return;
  }
  throw new Error('could not find free usernames for renamed users');
}

/**
 * The empty-target path ("load first, index after", as pgloader does a restore). When every
 * target table is empty and this transaction can lock them all at once, the unique constraints,
 * secondary indexes and foreign keys among them are dropped, the rows are inserted into bare
 * heaps, and the very same definitions (`pg_get_constraintdef`/`pg_get_indexdef`, same names) are
 * created again before the merge ends: one index build and one bulk foreign-key check per
 * constraint instead of a per-row index insertion and a per-row deferred trigger. All inside the
 * import's transaction: a failure or a dry run rolls the definitions back with the rows.
 *
 * Never on a table that holds data: the tables are locked (ACCESS EXCLUSIVE, NOWAIT) only after
 * they were seen empty, and checked again once locked. Primary keys stay (new ids are appended, so
 * their maintenance is cheap, and other tables' foreign keys may hang on them), and so does any
 * constraint or index another table's foreign key depends on, or a foreign key that points at a
 * table outside the five (its table would be locked too).
 */
export interface BulkLoad {
  /** Recreates what was dropped, in dependency order: indexes and unique constraints, then foreign keys. */
  rebuild(): Promise<void>;
}

interface DroppedObject { table: string; name: string; kind: 'index' | 'unique' | 'foreign'; definition: string }

const IDENT_SQL = (s: string) => `"${s.replace(/"/g, '""')}"`;

/** `catalog` runs the catalog queries (not traced or explained: their plans are PostgreSQL's business). */
async function enterBulkLoad(q: Q, catalog: Q, T: TargetTables): Promise<BulkLoad | undefined> {
  const tables = [T.user, T.email, T.userEmail, T.userOption, LOST_PASSWORD_TABLE];
  const list = tables.map((t) => `'${t}'::regclass`).join(', ');
  const anyRows = () => q(`SELECT ${tables.map((t) => `EXISTS (SELECT 1 FROM ${t})`).join(' OR ')} AS any`);
  // Only what this role owns can be altered; anything else keeps the incremental path.
  const owned = await catalog(`SELECT bool_and(pg_has_role(relowner, 'USAGE')) AS ok FROM pg_class WHERE oid IN (${list})`);
  if (!owned.rows[0].ok) return undefined;
  // Only what can be rebuilt exactly from pg_get_*def, and only where no kept deferred trigger
  // would leave events pending (PostgreSQL refuses CREATE INDEX on such a table): anything else
  // (a deferred foreign key to a table outside the five, row-level security, a partitioned table,
  // index tablespaces or storage options, replica identity or CLUSTER marks, comments, statistics
  // targets) keeps the incremental path.
  const unusual = await catalog(`
    SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid IN (${list}) AND (relrowsecurity OR relkind <> 'r'))
      OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid IN (${list}) AND t.tgdeferrable AND (t.tgtype & 4) <> 0 -- fires on INSERT
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.oid = t.tgconstraint AND c.contype = 'f'
                                     AND c.conrelid IN (${list}) AND c.confrelid IN (${list})))
      OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid IN (${list}) AND NOT t.tgisinternal)
      OR EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid IN (${list}) AND NOT i.indisprimary
                   AND (ic.reltablespace <> 0 OR ic.reloptions IS NOT NULL OR i.indisreplident OR i.indisclustered
                        OR EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = ic.oid)
                        OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = ic.oid AND a.attstattarget IS NOT NULL AND a.attstattarget >= 0)))
      OR EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_description d ON d.objoid = c.oid WHERE c.conrelid IN (${list}))
      AS unusual`);
  if (unusual.rows[0].unusual) return undefined;
  if ((await anyRows()).rows[0].any) return undefined;
  await q('SAVEPOINT userport_bulk_lock');
  try {
    await q(`LOCK TABLE ${tables.join(', ')} IN ACCESS EXCLUSIVE MODE NOWAIT`);
  } catch (err) {
    // Another session uses a table right now (Sentry itself, a reader): no waiting, no bulk path.
    if ((err as { code?: string }).code !== '55P03') throw err;
    await q('ROLLBACK TO SAVEPOINT userport_bulk_lock');
    return undefined;
  }
  // A row committed between the check and the lock: give the locks back (rolling back to the
  // savepoint releases them) and take the incremental path.
  if ((await anyRows()).rows[0].any) {
    await q('ROLLBACK TO SAVEPOINT userport_bulk_lock');
    return undefined;
  }
  await q('RELEASE SAVEPOINT userport_bulk_lock');
  // Constraints and indexes that nothing outside the five tables depends on.
  const objects = (await catalog(`
    SELECT c.conrelid::regclass::text AS table, c.conname AS name,
      CASE c.contype WHEN 'u' THEN 'unique' ELSE 'foreign' END AS kind,
      pg_get_constraintdef(c.oid) AS definition
    FROM pg_constraint c
    WHERE c.conrelid IN (${list}) AND c.contype IN ('u', 'f')
      AND (c.contype <> 'f' OR c.confrelid IN (${list}))
      AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = c.conindid AND c.contype = 'u'
                        AND f.conrelid NOT IN (${list}))
    UNION ALL
    SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text, 'index', pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid IN (${list}) AND NOT i.indisprimary AND i.indisvalid
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
      AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = i.indexrelid)
    ORDER BY 1, 2`)).rows as DroppedObject[];
  const order = { foreign: 0, unique: 1, index: 2 } as const;
  const drops = [...objects].sort((a, b) => order[a.kind] - order[b.kind]);
  for (const o of drops) {
    // An index by its regclass text (schema-qualified when needed), never by a bare name.
    await q(o.kind === 'index' ? `DROP INDEX ${o.name}` : `ALTER TABLE ${o.table} DROP CONSTRAINT ${IDENT_SQL(o.name)}`);
  }
  if (process.env.USERPORT_TRACE_SQL === '1') process.stderr.write(`[bulk] load first, then build: ${drops.map((o) => `${o.table}.${o.name}`).join(', ')}\n`);
  return {
    async rebuild() {
      // Index builds sort in memory up to maintenance_work_mem (64 MB by default).
      await q(`SELECT set_config('maintenance_work_mem', '256MB', true) WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < 256 * 1024 * 1024`);
      for (const o of [...drops].reverse()) {
        await q(o.kind === 'index' ? o.definition : `ALTER TABLE ${o.table} ADD CONSTRAINT ${IDENT_SQL(o.name)} ${o.definition}`);
      }
    },
  };
}
