/**
 * Step 3 of the merge, the Email records that were staged (direct-emails.ts writes them straight
 * in where it can): an address the target holds is reused, case-insensitively, else the first
 * record of the address by source pk inserts it; with a username filter, only the kept users'
 * addresses. Their pk map, and the counts.
 */
import { type ImportStats } from '../../stats.js';
import { EMAIL_NOT_KEPT, TARGET_RATIO } from './direct-emails.js';
import { NO_EMAIL_TABLE, type WritePlan } from './plan.js';
import { insertPkRanges } from './pk-map.js';
import { modelCodes, retryOnUnique, type Q } from './run.js';

/** Whether `table` holds fewer than `rows` rows, as its statistics say (false when it has none yet). */
async function fewAgainst(q: Q, table: string, rows: number): Promise<boolean> {
  const r = await q(`SELECT reltuples FROM pg_class WHERE oid = $1::regclass`, [table]);
  const tuples = Number(r.rows[0]?.reltuples ?? -1);
  return tuples >= 0 && tuples < rows;
}

/** What the emails' step needs of the merge's options. */
export interface EmailsStepOptions {
  run: number;
  /** A username filter is active: only the kept users' addresses are imported. */
  filterActive: boolean;
  /** False: the staging table holds this run's users alone (no Email record to decide). */
  othersStaged?: boolean;
}

/**
 * Step 3, emails: reuse an existing row with the same address, case-insensitively; with a
 * username filter, only the addresses of kept users (their primary email and their useremail
 * rows). A target without `sentry_email` (Sentry 2026) drops them all, a finding each: only Email
 * records staged by a caller's own pipeline reach it there, since importUsers skips them as they
 * are read (`skippedModels`, plan.ts).
 */
export async function mergeEmails(q: Q, S: string, options: EmailsStepOptions, plan: WritePlan, bulk: 'empty' | 'few' | undefined, stats: ImportStats,
  direct: { userEmails: boolean; emails: boolean }): Promise<void> {
  const { run } = options;
  const C = modelCodes();
  // The kept users' user emails: staged, and those that went straight in (direct-rows.ts).
  const kept = options.filterActive
    ? `lower(s.email) IN (SELECT lower(email) FROM up_user WHERE keep
         UNION SELECT lower(s2.email) FROM ${S} s2 JOIN up_user u2 ON u2.src_pk = s2.user_pk AND u2.keep
               WHERE s2.run = $1 AND s2.model = ${C.userEmail}
         ${direct.userEmails ? `UNION SELECT lower(ue.email) FROM ${plan.userEmail!.table} ue JOIN up_user u3 ON u3.new_id = ue.user_id` : ''})`
    : 'true';
  const absent = `'${NO_EMAIL_TABLE}'`;
  const stagedEmails = (await q(`
    CREATE TEMP TABLE up_email ON COMMIT DROP AS
    SELECT s.src_pk, s.ord, s.off, s.email, lower(s.email) AS le, s.date_joined AS date_added,
      row_number() OVER (PARTITION BY lower(s.email) ORDER BY s.src_pk) AS rn,
      CASE WHEN NOT ${!!plan.email} THEN 'dropped' WHEN ${kept} THEN NULL ELSE 'filtered' END AS outcome,
      CASE WHEN NOT ${!!plan.email} THEN ${absent} WHEN ${kept} THEN NULL ELSE '${EMAIL_NOT_KEPT}' END AS reason
    FROM ${S} s WHERE s.run = $1 AND s.model = ${C.email}${options.othersStaged === false ? ' WITH NO DATA' : ''}`, [run])).rowCount ?? 0;
  if (!plan.email) return;
  const E = plan.email.table;
  if (stagedEmails > 0) await insertEmails(q, run, E, plan.email.arbiter, bulk);
  // Written straight in (direct-emails.ts): statistics for the joins that follow, as after the
  // insert. Not on the bulk path: its unique key, rebuilt at the end, counts the table's rows
  // for the next import's plans, and the receivers' anti-join reads its size from its pages.
  else if (!bulk && direct.emails) await q(`ANALYZE ${E} (id)`);
  const emailCounts = await q(`SELECT kind, sum(span)::int AS n FROM userport.pk_ranges WHERE run = $1 AND model = 'sentry.email' GROUP BY kind`, [run]);
  for (const { kind, n } of emailCounts.rows as { kind: 'inserted' | 'existing'; n: number }[]) stats.model('sentry.email')[kind] += n;
}

/**
 * The staged Email records' rows (up_email) and pk map: reuse an address the target holds, else insert it.
 *
 * Into a target with the unique key, ON CONFLICT probes it once for each address and takes the
 * speculative-insertion path for each row it writes; one hashed anti-join over the target's
 * addresses, then a plain INSERT, costs about half as long (120k addresses into a table holding
 * 240k: 2.5-2.9 s against 0.2 + 1.1-1.5 s) where the target holds at most {@link TARGET_RATIO} times
 * the import's addresses (direct-emails.ts, where the same ratio decides whether
 * the client reads the target's addresses), beyond which the scan would cost more than the probes.
 */
async function insertEmails(q: Q, run: number, E: string, arbiter: string | undefined, bulk: 'empty' | 'few' | undefined): Promise<void> {
  await q('ANALYZE up_email (src_pk, le, rn, outcome)');
  const addresses = Number((await q(`SELECT count(*) AS n FROM up_email WHERE rn = 1 AND outcome IS NULL`)).rows[0].n);
  // On the bulk path the unique key is dropped: into empty tables nothing can conflict, into a few
  // rows the anti-join (hashed over them) decides; so it does into a target not much larger than
  // the import, where the key only catches another session's address (see retryOnUnique).
  const probe = !bulk && arbiter !== undefined && !(await fewAgainst(q, E, addresses * TARGET_RATIO));
  const conflict = probe ? `ON CONFLICT ${arbiter} DO NOTHING` : '';
  const guard = bulk === 'empty' || probe ? '' : `AND NOT EXISTS (SELECT 1 FROM ${E} x WHERE lower(x.email::text) = e.le)`;
  const inserted = await retryOnUnique(q, 'emails', E, async () => {
    // What this import inserts is what its INSERT returned, not "ids above the old maximum": other
    // sessions may insert addresses meanwhile. Kept in a table of its own (with statistics): joined
    // straight from a RETURNING CTE, the planner looped over it (103 s at 30k users).
    await q(`CREATE TEMP TABLE up_email_new (id bigint, le text) ON COMMIT DROP`);
    return (await q(`
      WITH ins AS (
        INSERT INTO ${E} (email, date_added)
        SELECT email, coalesce(date_added, now()) FROM up_email e WHERE rn = 1 AND outcome IS NULL ${guard} ORDER BY src_pk
        ${conflict}
        RETURNING id, lower(email::text) AS le)
      INSERT INTO up_email_new SELECT id, le FROM ins`)).rowCount ?? 0;
  });
  // Every address inserted (none was in the target): no record maps to a row the target held, and
  // the join that finds those (a scan of the whole table, 0.3-0.4 s at 200k addresses, growing with
  // the target) is skipped.
  const held = bulk !== 'empty' && inserted < addresses;
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
    ${!held ? '' : `UNION ALL
    SELECT e.src_pk, se.id, 'existing' FROM up_email e JOIN ${E} se ON lower(se.email::text) = e.le
    WHERE e.outcome IS NULL AND NOT EXISTS (SELECT 1 FROM up_email_new n WHERE n.le = e.le)`}`);
}

