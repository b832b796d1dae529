/**
 * The users' step of a merge started while the rest of the file is still being read: the sink
 * runs it as its overlap ({@link earlyUsersOverlap}) when the first row of another model follows
 * a first run of users, so PostgreSQL decides and writes the users while Node parses the other
 * models. On the bulk path where it can be taken (the target tables empty or holding a few rows,
 * locked, see bulk-load.ts), else on the general path; inside a savepoint, with the state of the
 * two id sequences it draws from noted: if a user row comes later after all (a file not in
 * Sentry's model order), {@link undoEarlyUsers} puts the sequences back (where nobody else drew
 * meanwhile; on the bulk path the tables are still locked) and rolls back to the savepoint, and
 * `mergeStaged` then merges everything as if this never ran, so the result, ids included, does
 * not depend on file order.
 */
import type pg from 'pg';
import type { StagedFacts } from '../../staged-facts.js';
import { FEW_ROWS, type BulkLoad } from './bulk-load.js';
import { enterWritePath, type RowChecksOff } from './row-checks.js';
import { writtenTables, type WritePlan } from './plan.js';
import type { TraceOptions } from '../../trace.js';
import { copyNewRows, directOptions, directUserEmails, dropScopedFindings, FilteredUsers, SCOPED_OPTION, scopedOptions, sideName, uniqueViolation, writeDirectRows,
  writeLostPasswords, writeScopedOptions, type DirectModel, type EarlyFindings, type EarlyRows, type SideLines } from './direct-rows.js';
import { EmailCheck, filterEmails, KeptAddresses, writeDirectEmails, type DirectEmails } from './direct-emails.js';
import { NewUsers } from './pk-map.js';
import { lowerIsAscii } from './hash-sets.js';
import { cursorPages, idSequence, markSequences, modelCodes, openMerge, putSequenceBack, refuseSequencesBehind, runner, sqlLiteral, stagedInTransaction, together, type Q,
  type SequenceMark } from './run.js';
import type { SkipMarker } from '../../filter-users.js';
import type { FilteredMarker, StagedRow } from '../../map-models.js';
import { REJECTED_USER_CODE, STAGE_INDEX } from '../../models.js';
import { insertLostPasswords, MAX_CHECKED_USERS, mergeUsers, UserOrdinals, UserRepeatCheck, type ExistingUser, type OrdinalRun, type UsersStepOptions, type UsersWritten } from './users.js';

/** What the users' step wrote (step 2 of the merge), and how. */
export interface UsersStep extends UsersWritten {
  bulk: BulkLoad | undefined;
}

/** The early users step, done: what it wrote and how to put the id sequences back. */
export interface EarlyUsers {
  readonly step: UsersStep;
  readonly sequences: readonly (SequenceMark & { after: string })[];
  /** Rows staged in the transaction when the step analysed the staging table ({@link stagedInTransaction}). */
  readonly staged: number;
  /** Rows written straight into the target at the end of the input, by table: the new users' (direct-rows.ts), the Email records' (direct-emails.ts). */
  readonly direct?: ReadonlyMap<string, number>;
  /**
   * Records dropped at the end of the input, their findings written, by model and the reason the
   * merge counts: the new users' scoped options.
   */
  readonly dropped?: readonly { model: string; reason: string; count: number }[];
  /** Rows of users the username filter removed, dropped at the end of the input with their findings, by model. */
  readonly filtered?: readonly { model: string; count: number }[];
  /** The per-row foreign-key checks turned off on the general path (row-checks.ts): the merge turns them on again when it ends. */
  readonly rowChecks?: RowChecksOff;
}

export const EARLY_SAVEPOINT = 'userport_early_users';
/** The savepoint around the rows the early step's early part writes before the input ends. */
export const EARLY_ROWS_SAVEPOINT = 'userport_early_rows';

/** The early part does not write: why (its savepoint is rolled back, the end writes everything). */
class EarlyDeclined extends Error {}

/** What the early part wrote before the input ended, under {@link EARLY_ROWS_SAVEPOINT}, until the end keeps or undoes it. */
interface EarlyWrite {
  models: Map<DirectModel, EarlyRows>;
  scoped?: EarlyFindings;
  /** The id sequences of the tables written, by name: where they stood before, and after the last write. */
  sequences: Map<string, { mark: SequenceMark; after: string }>;
  /** On the bulk path, the tables whose indexes and constraints were built again after their rows. */
  rebuilt: string[];
}

/** What the early users step needs of the merge's options. */
export type EarlyUsersOptions = UsersStepOptions & TraceOptions & {
  bulkLoad?: boolean; filterActive?: boolean;
  /** The target's users table was empty when the import began (the client then keeps no hash of the users' addresses). */
  targetEmpty?: boolean;
};

/**
 * Starts {@link EarlyUsers}: inside a savepoint, takes the bulk path (locks, drops) where it can,
 * else stays on the general path (a target that holds more than a few rows, or whose tables
 * another session holds), and notes the id sequences. Quick; resolves undefined without
 * `bulkLoad` (`--bulk-load off`: the merge alone, after the input). Then `run()` does the users'
 * step (seconds at 100k users) and finishes the users' tables: the new users' lost-password
 * hashes, and on the bulk path those two tables' indexes and constraints. Runs in the import's transaction, on the connection that staged
 * the users.
 */
export async function beginEarlyUsers(client: pg.ClientBase, options: EarlyUsersOptions, plan: WritePlan,
  check?: UserRepeatCheck, ordinals?: OrdinalRun): Promise<{ bulk: BulkLoad | undefined; run(): Promise<EarlyUsers> } | undefined> {
  if (!options.bulkLoad) return undefined;
  const q = runner(client, options);
  const { S } = await openMerge(q, { sampled: true });
  const staged = await stagedInTransaction(q, S);
  await refuseSequencesBehind(q, writtenTables(plan));
  await q(`SAVEPOINT ${EARLY_SAVEPOINT}`);
  // Inside the savepoint: undone with the step, and then decided again by the merge.
  const { bulk, rowChecks } = await enterWritePath(q, client, plan, true);
  // Over a few existing users (locked), the client's hashes say which of their values may meet
  // the staged users' (users.ts: the step then probes those, not every one for every user).
  // On the general path, where the target's users are not many against the import's, the client
  // reads them too (without a lock: see users.ts, UsersStepPath.unlocked), where the step can then
  // decide only the exceptions (every kept user new, in one block of ids).
  const few = !!bulk && !bulk.empty;
  if (check && few) await meetExisting(client, plan, check);
  const unlocked = !!check && !bulk && !!ordinals && !options.mergeUsers && plan.scope !== 'global'
    && await meetUnlocked(client, plan, check, ordinals.count);
  const repeats = check?.take();
  const userSeq = await idSequence(q, plan.user.table);
  const seqs = [userSeq, plan.lostPassword && await idSequence(q, plan.lostPassword.table)].filter((seq): seq is string => !!seq);
  const before = await markSequences(q, seqs);
  return {
    bulk,
    async run() {
      // The lost-password hashes are made in the client once the users are in (in the global
      // scope the users' step writes them: it skips the users whose password hash it keeps).
      const later = plan.lostPassword !== undefined && plan.scope !== 'global';
      const written = await mergeUsers(q, S, options, plan, { empty: bulk?.empty ?? false, few, unlocked, lostPasswordsLater: later, repeats, ordinals, userSeq });
      if (later) written.lostPasswordHashes = await lostPasswordsNow(q, client, plan, options.run);
      // The users' tables are complete: their indexes and constraints are built now, while Node
      // still reads the file (the server waits for it otherwise), not after the other tables' rows.
      if (bulk) await bulk.rebuild([plan.user.table, ...(plan.lostPassword ? [plan.lostPassword.table] : [])], { serial: true });
      // After the lost-password hashes, which draw from their own sequence (both in one round trip).
      const now = await markSequences(q, seqs);
      const sequences = before.map((mark, i) => ({ ...mark, after: now[i]!.lastValue }));
      return {
        step: { bulk, ...written },
        sequences,
        staged,
        ...(rowChecks ? { rowChecks } : {}),
      };
    },
  };
}

/**
 * Hands `check` the target's users ({@link UserRepeatCheck.meet}): a few, on the bulk path, under
 * its lock. Not where the database's lower() is not ASCII's for ASCII letters (a Turkish locale's
 * I): the step then probes every staged user against them all, as without the check.
 */
async function meetExisting(client: pg.ClientBase, plan: WritePlan, check: UserRepeatCheck): Promise<void> {
  if (!await lowerIsAscii(client)) return;
  check.meet((await client.query(existingUsers(plan))).rows as ExistingUser[]);
}

/** One existing user as {@link existingUsers} reads it in rowMode array: {@link ExistingUser}'s values in order. */
type ExistingRow = [string | null, string | null, string | null];

/** The target's users' values that {@link UserRepeatCheck.meet} compares: an {@link ExistingUser} each. */
function existingUsers(plan: WritePlan): string {
  return `SELECT lower(username) AS ln, lower(email) AS le, ${plan.user.emailUnique ? 'email_unique' : 'NULL'}::text AS eu FROM ${plan.user.table}`;
}

/** Target users the general path reads into the client, per kept user of the import ({@link meetUnlocked}). */
const UNLOCKED_RATIO = 2;

/**
 * On the general path, hands `check` the target's users ({@link UserRepeatCheck.meetOne}), a page
 * at a time through a cursor, where they are at most {@link UNLOCKED_RATIO} times the import's
 * `users` (and at most {@link MAX_CHECKED_USERS}): the users step then decides only the users that
 * may be exceptions, instead of joining every staged user to every existing one (1.0-1.3 s at 100k
 * users into a target holding 100k). Resolves to whether it did; false, with nothing kept, where
 * they are more, too many of their values may meet the import's, or the database's lower() is not
 * ASCII's for ASCII letters.
 */
async function meetUnlocked(client: pg.ClientBase, plan: WritePlan, check: UserRepeatCheck, users: number): Promise<boolean> {
  if (!check.listing || !await lowerIsAscii(client)) return false;
  const limit = Math.min(Math.max(UNLOCKED_RATIO * users, FEW_ROWS), MAX_CHECKED_USERS);
  const held = Number((await client.query(`SELECT count(*)::float8 AS n FROM (SELECT 1 FROM ${plan.user.table} LIMIT $1) x`, [limit + 1])).rows[0].n);
  if (held > limit) return false;
  let read = 0;
  let kept = true;
  for await (const page of cursorPages<ExistingRow>(client, 'userport_existing_users', existingUsers(plan))) {
    // Rows another session added since the count are read too, up to the limit.
    read += page.length;
    if (read > limit) kept = false;
    for (let i = 0; kept && i < page.length; i++) kept = check.meetOne(page[i]![0], page[i]![1], page[i]![2]);
    if (!kept) break;
  }
  if (!kept) check.forgetExisting();
  return kept;
}

/**
 * The new users' lost-password hashes, which the users' step left to its caller: made in the
 * client, or by the merge's INSERT beyond MAX_RANGES ranges of new users. Resolves to their count.
 */
async function lostPasswordsNow(q: Q, client: pg.ClientBase, plan: WritePlan, run: number): Promise<number> {
  const table = plan.lostPassword!.table;
  const t0 = performance.now();
  const ids = await NewUsers.read(client, run);
  const written = ids ? await writeLostPasswords(client, table, ids) : await insertLostPasswords(q, plan);
  q.trace({ kind: 'direct-rows', table, written, staged: 0, repeated: false, ms: performance.now() - t0 });
  return written;
}

/**
 * Puts back the id sequences the early rows drew from, as {@link undoEarlyUsers} does the users':
 * only where nobody else drew from them meanwhile (the ids then stay unused, as a rolled-back
 * insert leaves them), so that the rows written again at the end get the ids the merge alone gives.
 */
async function undoEarlySequences(q: Q, wrote: EarlyWrite): Promise<void> {
  for (const s of wrote.sequences.values()) await putSequenceBack(q, s.mark, s.after);
}

/**
 * Undoes {@link beginEarlyUsers}: the id sequences first, while the tables are still locked (and
 * only where nobody else drew from them meanwhile), then everything else by the savepoint. Call it
 * before staging anything more: the rollback also drops what was staged after the savepoint.
 */
export async function undoEarlyUsers(client: pg.ClientBase, early: EarlyUsers, trace: TraceOptions = {}): Promise<void> {
  const q = runner(client, trace);
  q.trace({ kind: 'early-undone' });
  for (const s of early.sequences) await putSequenceBack(q, s, s.after);
  await q(`ROLLBACK TO SAVEPOINT ${EARLY_SAVEPOINT}`);
  await q(`RELEASE SAVEPOINT ${EARLY_SAVEPOINT}`);
}

/**
 * The early users step as the work a `whole`-mode sink overlaps with reading (its `overlap`
 * option). When: once the first row of another model follows a first run of user rows with
 * increasing pks (Sentry's order, as `staged` saw it); never when the file starts otherwise. At the
 * end, before the spool is COPYed, the step is undone if a user row came after all. `users` is
 * what the step wrote, for `mergeStaged`: undefined until it ran, and again once undone.
 */
export function earlyUsersOverlap(options: EarlyUsersOptions, plan: WritePlan, staged: StagedFacts) {
  let users: EarlyUsers | undefined;
  const codes = modelCodes();
  // The models whose rows of new users go straight in. User emails not in the global scope, which
  // keeps each row's own verification state (decided from its extra fields by the merge).
  const direct: DirectModel[] = [];
  if (plan.userOption) direct.push(directOptions(codes.userOption, plan.userOption.table));
  if (plan.userEmail && plan.scope !== 'global') direct.push(directUserEmails(codes.userEmail, plan.userEmail.table));
  // The options scoped to an organization or project, which are dropped: a new user's finding goes straight in.
  const scoped = plan.userOption ? scopedOptions(codes.userOption) : undefined;
  // Email records too (direct-emails.ts); with a username filter, those that no kept user's
  // address keeps are dropped with their findings, and the rest staged. A target without
  // sentry_email (Sentry 2026) never sees one: the mapper skips them (skippedModels, plan.ts).
  const emailTable = options.filterActive ? undefined : plan.email?.table;
  const emailSide = !plan.email ? undefined : emailTable ? sideName(emailTable) : 'sentry_email_filtered';
  const emailCheck = new EmailCheck();
  // With a username filter, the addresses that may keep an Email record: the kept users' own, and
  // those of every user email whose user the filter did not remove.
  const keptAddresses = options.filterActive && plan.email ? new KeptAddresses() : undefined;
  // The staged users' possible repeats, noted as they pass (users.ts ranks only those); none
  // where the step never starts early (--bulk-load off).
  const userCheck = options.bulkLoad ? new UserRepeatCheck(plan.user.emailUnique, !options.targetEmpty) : undefined;
  // And whether the kept users came one after another: their new ids are then one block (users.ts).
  const ordinals = new UserOrdinals();
  // The users a username filter removed: their rows are dropped straight to their findings.
  const filteredUsers = options.filterActive ? new FilteredUsers() : undefined;
  // The models of the rows after the step started, as they come: a model is over (sealed) once a
  // row of another follows its rows, and a row of a sealed model is late (a file not in Sentry's
  // order). The early part writes the side spools of sealed models while the input is still read.
  let current: number | undefined;
  const sealedCodes = new Set<number>();
  const lateCodes = new Set<number>();
  // The sides the early part may write, by their model: not the Email records' (see writeEarly).
  const sideCodes = new Map<string, number>(direct.map((m) => [sideName(m.table), m.code]));
  if (scoped) sideCodes.set(scoped.side, codes.userOption);
  // What the early part wrote so far (its savepoint is open), and whether it stopped for good.
  let early: EarlyWrite | undefined;
  let earlyOff = false;

  /**
   * The diverted Email records: straight in, dropped with their findings (filtered), or staged;
   * `meanwhile`, the other diverted rows' work, runs once, while the client sorts the records
   * where they go in their key's order (writeDirectEmails), else after them.
   */
  const writeEmails = async (q: Q, client: pg.ClientBase, emails: SideLines, exact: boolean, stage: (lines: Buffer[]) => Promise<void>,
    scratch: (name: string) => string, meanwhile: () => Promise<void>) => {
    const why = !exact ? 'the file is not in source pk order, or the early users step was undone' : keptAddresses?.why;
    const table = emailTable ?? 'sentry_email';
    const t0 = performance.now();
    let wrote: DirectEmails = { written: 0, existing: 0, staged: 0, why };
    if (why) {
      emailCheck.release();
      keptAddresses?.release();
      for await (const chunk of emails()) { wrote.staged += chunk.length; await stage(chunk); }
    } else if (keptAddresses) wrote = { ...wrote, ...(await filterEmails(client, options.run, emails, keptAddresses, stage)) };
    // writeDirectEmails runs `meanwhile` itself (during its sort, or after the records).
    else wrote = await writeDirectEmails(client, options.run, table, await idSequence(q, table), emailCheck, emails, stage,
      { bulk: !!users?.step.bulk, scratch, meanwhile });
    q.trace({ kind: 'direct-emails', table, ...wrote, ms: performance.now() - t0 });
    if (why || keptAddresses) await meanwhile();
    return wrote;
  };

  /**
   * The early part: once the step is done while the input is still read, the side spools of the
   * models whose rows are over (sealed) are written as the end would write them, under a savepoint,
   * as each model ends, so the connection does not wait for the input's end: the new users'
   * options and user emails, the scoped options' findings (not the Email records, whose sort in
   * the client would slow the read, which Node's one thread bounds). Only where the file is in source
   * pk order so far and the step's users stand; a model whose pairs may repeat is left for the
   * end. The lines of other users and the filtered users' findings wait for the end, which keeps
   * these rows or undoes them ({@link keepEarly}).
   */
  const writeEarly = async (client: pg.ClientBase, sides: ReadonlyMap<string, SideLines>) => {
    if (earlyOff || !users || staged.usersAfterOthers || !staged.pksIncreasing) return;
    const models = direct.filter((m) => sides.has(sideName(m.table)) && !m.pairs.mayRepeat);
    const scopedLines = scoped && sides.get(scoped.side);
    if (!models.length && !scopedLines) return;
    const q = runner(client, options);
    const t0 = performance.now();
    // The savepoint and the tables' id sequences in one round trip (Node is reading the export).
    const found = await together(q, [...(early ? [] : [`SAVEPOINT ${EARLY_ROWS_SAVEPOINT}`]),
      ...models.map((m) => `SELECT pg_get_serial_sequence(${sqlLiteral(m.table)}, 'id') AS seq`)]);
    const wrote: EarlyWrite = early ?? { models: new Map(), sequences: new Map(), rebuilt: [] };
    early = wrote;
    const tables: string[] = [];
    // Where each table's id sequence stands first, so that an undo puts it back (undoEarlySequences).
    const seqs = found.slice(found.length - models.length).map((r) => r.rows[0].seq as string | null).filter((seq): seq is string => !!seq);
    for (const mark of await markSequences(q, seqs.filter((seq) => !wrote.sequences.has(seq)))) {
      wrote.sequences.set(mark.seq, { mark, after: mark.lastValue });
    }
    let why: string | undefined;
    try {
      const newUsers = await NewUsers.read(client, options.run);
      if (!newUsers) throw new EarlyDeclined('the new users are more ranges of ids than the client reads');
      if (scopedLines) {
        wrote.scoped = await dropScopedFindings(client, options.run, newUsers, 'sentry.useroption', scopedLines);
        tables.push('userport.findings');
      }
      for (const m of models) {
        wrote.models.set(m, await copyNewRows(client, m, newUsers, sides.get(sideName(m.table))!));
        tables.push(m.table);
      }
      // On the bulk path these tables are complete too: their indexes and constraints now, while
      // the input is still read, as the users' tables' at the end of the step.
      const complete = models.map((m) => m.table);
      if (users.step.bulk && complete.length) {
        wrote.rebuilt.push(...complete);
        await users.step.bulk.rebuild(complete, { serial: true });
      }
    } catch (err) {
      if (!(err instanceof EarlyDeclined) && !uniqueViolation(err)) throw err;
      why = err instanceof EarlyDeclined ? err.message : 'a row of a new user came twice';
      await q(`ROLLBACK TO SAVEPOINT ${EARLY_ROWS_SAVEPOINT}`);
      await q(`RELEASE SAVEPOINT ${EARLY_ROWS_SAVEPOINT}`);
    }
    // (Read after a rollback: a refused COPY leaves the transaction aborted until then, and a
    // sequence's draws are not rolled back.)
    for (const mark of await markSequences(q, seqs)) wrote.sequences.get(mark.seq)!.after = mark.lastValue;
    if (why === undefined) q.trace({ kind: 'early-rows', tables, ms: performance.now() - t0 });
    else await dropEarly(q, wrote, why);
  };

  /**
   * After the rollback of {@link EARLY_ROWS_SAVEPOINT}: the early part stops for good, what it
   * built again is marked dropped again (the merge's last step builds it) and its sequences are
   * put back, so the end writes those models as ever.
   */
  const dropEarly = async (q: Q, wrote: EarlyWrite, why: string) => {
    early = undefined;
    earlyOff = true;
    users?.step.bulk?.unbuild(wrote.rebuilt);
    await undoEarlySequences(q, wrote);
    q.trace({ kind: 'early-rows-undone', why });
  };

  /**
   * At the end: keeps what the early part wrote where it is still exact (the file in source pk
   * order, no row of those models after it, no pair twice), else undoes it (the end then writes
   * those models as ever).
   */
  const keepEarly = async (q: Q, exact: boolean): Promise<EarlyWrite | undefined> => {
    const wrote = early;
    early = undefined;
    earlyOff = true;
    if (!wrote) return undefined;
    // The models written: the options' when their scoped findings were.
    const written = [...wrote.models.keys()].map((m) => m.code).concat(wrote.scoped ? [codes.userOption] : []);
    const why = !exact ? 'the file is not in source pk order'
      : written.some((code) => lateCodes.has(code)) ? 'a row of a model written came after rows of another model'
      : [...wrote.models.keys()].some((m) => m.pairs.mayRepeat) ? 'a (user, key) may come twice' : undefined;
    if (why === undefined) {
      await q(`RELEASE SAVEPOINT ${EARLY_ROWS_SAVEPOINT}`);
      return wrote;
    }
    await q(`ROLLBACK TO SAVEPOINT ${EARLY_ROWS_SAVEPOINT}`);
    await q(`RELEASE SAVEPOINT ${EARLY_ROWS_SAVEPOINT}`);
    await dropEarly(q, wrote, why);
    return undefined;
  };

  return {
    get users(): EarlyUsers | undefined { return users; },
    // Asked for each row before `staged` notes it: the first row of another model starts the step,
    // so every row staged before it is a user's, and each other model is diverted from its first row.
    // A skipped record (out of scope, or of a model the target skips: the Email records on Sentry
    // 2026) after the users starts it as such a row does; one before any user is passed over.
    when(row: StagedRow | FilteredMarker | SkipMarker): 'now' | 'later' | 'never' {
      if (row.kind === 'skip') {
        if (staged.leadingUsers === 0) return 'later';
      } else if (staged.usersOnly && (row.code === codes.user || row.code === REJECTED_USER_CODE)) {
        if (row.kind === 'row' && row.code === codes.user) {
          userCheck?.note(row.pk, row.values[STAGE_INDEX.username], row.values[STAGE_INDEX.email], row.values[STAGE_INDEX.email_unique]);
          ordinals.note(row.ordinal, row.pk);
          keptAddresses?.note(row.values[STAGE_INDEX.email]);
        } else if (row.kind === 'filtered') {
          filteredUsers?.note(row.pk);
        }
        return 'later';
      }
      if (staged.leadingUsers > 0 && staged.pksIncreasing && !staged.usersAfterOthers) return 'now';
      userCheck?.take(); // the hashes go: no early step
      return 'never';
    },
    // While the step runs, the options that may belong straight in wait in the side spool.
    divert: (row: StagedRow) => {
      if (row.code !== current) {
        if (current !== undefined) sealedCodes.add(current);
        if (sealedCodes.has(row.code)) lateCodes.add(row.code);
        current = row.code;
      }
      if (keptAddresses && row.code === codes.userEmail) {
        const userPk = row.values[STAGE_INDEX.user_pk];
        if (!(typeof userPk === 'number' && filteredUsers?.has(userPk))) keptAddresses.note(row.values[STAGE_INDEX.email]);
      }
      for (const m of direct) if (m.diverts(row)) return sideName(m.table);
      if (scoped?.diverts(row)) return scoped.side;
      if (emailSide === undefined || row.code !== codes.email) return undefined;
      if (emailTable) emailCheck.note(row.values[STAGE_INDEX.email]);
      return emailSide;
    },
    async start(client: pg.ClientBase) {
      const started = await beginEarlyUsers(client, options, plan, userCheck, ordinals.run());
      return started && {
        run: async () => { users = await started.run(); },
        finish: async () => {
          if (!staged.usersAfterOthers) return;
          // The early rows' savepoint goes with the step's; their sequences are put back first.
          if (early) await undoEarlySequences(runner(client, options), early);
          early = undefined;
          earlyOff = true;
          await undoEarlyUsers(client, users!, options);
          users = undefined;
        },
        early: {
          sealed: (name: string) => {
            const code = sideCodes.get(name);
            return code !== undefined && sealedCodes.has(code) && !lateCodes.has(code);
          },
          write: (sides: ReadonlyMap<string, SideLines>) => writeEarly(client, sides),
        },
        async writeDiverted(sides: ReadonlyMap<string, SideLines>, stage: (lines: Buffer[]) => Promise<void>, scratch: (name: string) => string) {
          // Only where file order is source pk order and the new users stand: else all are staged.
          const exact = !!users && staged.pksIncreasing;
          const q = runner(client, options);
          const kept = await keepEarly(q, exact);
          // The input has ended: the pairs' hashes go, whatever is written.
          for (const m of direct) m.pairs.release();
          const rest = new Map(sides);
          const emails = emailSide === undefined ? undefined : rest.get(emailSide);
          if (emailSide !== undefined) rest.delete(emailSide);
          // The scoped options' side (when not exact, it is staged below with the sides of no model).
          const scopedLines = scoped && exact ? rest.get(scoped.side) : undefined;
          if (scopedLines) rest.delete(scoped!.side);
          let dropped: Awaited<ReturnType<typeof writeScopedOptions>> | undefined;
          let done: Awaited<ReturnType<typeof writeDirectRows>> = new Map();
          // The other models' diverted rows, written on the connection while the client sorts the
          // Email records (or after them).
          const others = async () => {
            // The new users, read once for the models written straight in and the scoped options.
            const newUsers = exact && (direct.length || scopedLines) ? await NewUsers.read(client, options.run) : undefined;
            dropped = scopedLines && await writeScopedOptions(client, options.run, newUsers, 'sentry.useroption', scopedLines, stage, kept?.scoped);
            if (dropped) q.trace({ kind: 'direct-findings', model: 'sentry.useroption', reason: SCOPED_OPTION, ...dropped });
            done = await writeDirectRows(client, newUsers, exact ? direct : [], rest, stage,
              filteredUsers && { run: options.run, users: filteredUsers }, kept?.models);
            for (const [model, rows] of done) q.trace({ kind: 'direct-rows', table: model.table, ...rows });
          };
          const addresses = emails ? await writeEmails(q, client, emails, exact, stage, scratch, others) : (await others(), undefined);
          const written = new Map([...done].map(([m, r]) => [m.table, r.written]));
          if (emailTable && addresses?.written) written.set(emailTable, addresses.written);
          if (users) {
            users = { ...users, direct: written, dropped: [
              ...(dropped?.dropped ? [{ model: 'sentry.useroption', reason: SCOPED_OPTION, count: dropped.dropped }] : []),
            ], filtered: [
              ...(addresses?.filtered ? [{ model: 'sentry.email', count: addresses.filtered }] : []),
              ...[...done].filter(([, r]) => r.filtered > 0).map(([m, r]) => ({ model: m.name, count: r.filtered })),
            ] };
          }
        },
      };
    },
  };
}
