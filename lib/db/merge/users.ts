/**
 * Step 2 of the merge: one pass decides who is inserted, renamed, merged or filtered (ties by
 * source pk), new ids are drawn in file order (as Sentry's import inserts), then the users, their
 * lost-password hashes and their pk map are written. Reads only the staged users, so it can run
 * before the other models are staged (see early.ts).
 */
import { DatabaseError, ErrorCodes } from '../../errors.js';
import { hash32, HashSet32 } from './hash-sets.js';
import { insertPkRanges } from './pk-map.js';
import { analyzeSampled, idSequence, modelCodes, retryOnUnique, sqlLiteral, together, type Q } from './run.js';
import type { WritePlan } from './plan.js';

/**
 * Sentry's suffix schedule for renamed users (`unique_db_instance`): tail length, attempts. Its
 * `sizes` are `(attempts, size)` pairs, `(1, 2), (5, 3), (20, 5), (1, 12)`, 27 tries in all (their
 * comments say "2 attempts", "3 attempts", but the loop reads `for attempts, size in sizes`).
 * Where Sentry then fails on the UNIQUE key, userport goes on with 12 characters until unique.
 */
const RENAME_SCHEDULE: [number, number][] = [[2, 1], [3, 5], [5, 20], [12, 1]];
const MAX_RENAME_ROUNDS = 200;

/** What the users' step wrote. */
export interface UsersWritten {
  usersInserted: number;
  lostPasswordHashes: number;
  /**
   * Where the step's own decisions are: `up_user`, or `up_exc` where it decided only the
   * exceptions (up_user is then a view over every staged user, {@link plainUsers}: each other
   * user inserted as it is, or, staged but not kept, removed by the username filter).
   */
  decided: 'up_user' | 'up_exc';
}

/** The finding of a staged user the username filter removed. */
export const USERNAME_NOT_LISTED = 'username not in --filter-usernames';

export interface UsersStepOptions {
  run: number;
  mergeUsers: boolean;
}

/**
 * How the users' step runs: `empty` on the empty-target path (no user exists; the tables' unique
 * indexes are dropped); `lostPasswordsLater`: the caller writes the new users' lost-password
 * hashes itself (the early step, from the client: direct-rows.ts).
 */
interface UsersStepPath {
  empty: boolean;
  /**
   * The bulk path over a few existing rows (a new Sentry's admin): the existing users that share a
   * name or an address are found by joins, which hash the few (IN (...) hashed every user of the
   * export first: 0.3 s at 100k users, to match one admin); elsewhere by IN (...), which keeps a
   * lookup per user where the export is small against the target.
   */
  few?: boolean;
  /**
   * On the general path: the client read the target's users (they were not many against the
   * import's) without a lock, and `repeats.existing` says which of their values may meet a staged
   * user's, so the step decides only the exceptions, as over a few. The existing holders are still
   * found by lookups, not `few`'s joins (those hash the existing users: here as many as the
   * import's). Another session may add a user after that read: where it takes one of the import's
   * names or email_unique values, the unique key refuses the INSERT, and the step's next attempt
   * decides against the table itself (without `repeats.existing`).
   */
  unlocked?: boolean;
  lostPasswordsLater?: boolean; repeats?: UserRepeats; ordinals?: OrdinalRun;
  /** The sequence behind the users' ids, where the caller looked it up already (null: none). */
  userSeq?: string | null;
}

/**
 * What the client saw of the staged users ({@link UserRepeatCheck}): the source pks of the kept
 * users that may repeat the name (case-insensitively) of an earlier kept user of the import, and
 * of those that may repeat its `email_unique` candidate. A superset: every true repeat is listed
 * (a user listed in error is ranked with the others of its name, exactly). Only these are ranked.
 */
export interface UserRepeats {
  names: readonly number[];
  candidates: readonly number[];
  /** Over a target that holds a few users ({@link UserRepeatCheck.meet}): which of its values may meet a staged user's. */
  existing?: ExistingMatches;
}

/**
 * Of a target's few users, the values that may equal a staged user's (a superset: every true
 * match is listed, as the database's lower() gave it): names (lower-cased), email_unique values,
 * and addresses (lower-cased; undefined when a staged address is not plain ASCII, which no hash
 * compares: every staged address is then probed). Only these are probed by the users' decision,
 * not every existing user's for every staged user.
 */
export interface ExistingMatches {
  names: string[];
  candidates: string[];
  addresses: string[] | undefined;
}

/** One existing user's values as the users step reads them: lower(username), lower(email), email_unique. */
export interface ExistingUser {
  ln: string | null;
  le: string | null;
  eu: string | null;
}

/** Users beyond which the client keeps no hashes: three sets of 2^21 4-byte slots (24 MB), at most 70% full. */
export const MAX_CHECKED_USERS = 1_400_000;
/** Listed users beyond which the client gives up (the step then finds the repeats itself). */
const MAX_LISTED_REPEATS = 100_000;

/**
 * Notes each kept user as it is staged, in file order, and lists the possible repeats
 * ({@link UserRepeats}): a user whose lower-cased name or whose candidate hashes like an earlier
 * one's, or whose name is not plain ASCII. Two names equal under PostgreSQL's lower() are equal
 * under ASCII lower-casing when both are ASCII, whatever the locale, so every repeat is listed.
 * The list is only exact for the users noted, in source pk order (the caller's facts say so).
 */
export class UserRepeatCheck {
  /**
   * The hashes: of the names, of the candidates where the target has `email_unique`, and of the
   * addresses (lower-cased, for a target's few users: {@link meet}; gone at the first that is not
   * plain ASCII); gone once taken or given up.
   */
  private sets: { names: HashSet32; candidates: HashSet32 | undefined; addresses: HashSet32 | undefined } | undefined;
  /** What {@link meet} found, for the list. */
  private existing: ExistingMatches | undefined;
  private readonly names: number[] = [];
  private readonly candidates: number[] = [];
  private count = 0;
  /** Why there is no list, once something says so. */
  why: string | undefined;

  /**
   * `withCandidates`: whether the target has `email_unique` (else no candidate is noted);
   * `withAddresses`: whether the addresses are noted (not where the target was empty when the
   * import began: they would only serve {@link meet}, and a target that is still empty has nobody
   * to meet; one filled meanwhile gets every address probed).
   */
  constructor(withCandidates = true, withAddresses = true) {
    this.sets = { names: new HashSet32(), candidates: withCandidates ? new HashSet32() : undefined, addresses: withAddresses ? new HashSet32() : undefined };
  }

  note(pk: number, username: unknown, email: unknown, emailUnique: unknown): void {
    if (this.why !== undefined) return;
    if (!this.sets) { this.why = 'a user came after the list was taken'; return; }
    if (++this.count > MAX_CHECKED_USERS) { this.give(`more than ${MAX_CHECKED_USERS.toLocaleString('en-US')} users (the client keeps no more)`); return; }
    const name = typeof username === 'string' ? hash32(username, true) : -1;
    if (name < 0 || !this.sets.names.add(name)) this.names.push(pk);
    if (this.sets.candidates) {
      // nullif(coalesce(email_unique, email), ''), compared as it is.
      const candidate = emailUnique ?? email;
      if (typeof candidate === 'string' ? candidate !== '' && !this.sets.candidates.add(hash32(candidate, false)) : candidate != null) {
        this.candidates.push(pk);
      }
    }
    if (this.sets.addresses && typeof email === 'string' && email !== '') {
      // lower(email), compared with an existing user's where it is not empty ('' never is).
      const address = hash32(email, true);
      if (address < 0) this.sets.addresses = undefined;
      else this.sets.addresses.add(address);
    }
    if (this.names.length + this.candidates.length > MAX_LISTED_REPEATS) this.give('too many possible repeats');
  }

  /**
   * Before {@link take}, over a target that holds a few users (read by the users step, under the
   * bulk path's lock), whose `lower()` is ASCII's for ASCII text: the values of theirs that may
   * equal a noted user's, for the list. Every noted user whose value equals one of theirs hashes
   * like it: a name or address that is plain ASCII is lower-cased alike by both; one that is not
   * is listed by name (as every non-ASCII name is), or voids the addresses' set; and an existing
   * value that is not plain ASCII after lower() can only equal such a user's. Noted users only:
   * the users step decides the filtered ones, which are staged but not noted, without them.
   */
  meet(existing: readonly ExistingUser[]): void {
    if (!this.found()) return;
    for (const u of existing) this.meetOne(u.ln, u.le, u.eu);
  }

  /**
   * {@link meet} for one existing user, so that a target's users can be read a page at a time
   * (the general path, {@link forgetExisting}); false once the values listed pass
   * {@link MAX_LISTED_REPEATS} (nothing is listed then: the caller forgets them).
   */
  meetOne(ln: string | null, le: string | null, eu: string | null): boolean {
    const found = this.found();
    if (!found) return false;
    const { names, candidates, addresses } = this.sets!;
    if (ln !== null && mayMeet(names, ln, true)) found.names.push(ln);
    if (candidates && eu !== null && mayMeet(candidates, eu, false)) found.candidates.push(eu);
    if (addresses && found.addresses && le !== null && mayMeet(addresses, le, true)) found.addresses.push(le);
    return found.names.length + found.candidates.length + (found.addresses?.length ?? 0) <= MAX_LISTED_REPEATS;
  }

  /** What {@link meet} found so far (none yet: empty lists); undefined once the list is given up. */
  private found(): ExistingMatches | undefined {
    if (this.why !== undefined || !this.sets) return undefined;
    return this.existing ??= { names: [], candidates: [], addresses: this.sets.addresses ? [] : undefined };
  }

  /** Drops what {@link meet} found: the users step then probes the target's users itself. */
  forgetExisting(): void {
    this.existing = undefined;
  }

  /** Whether the users are still noted (no reason to give up yet): a list is still to come. */
  get listing(): boolean {
    return this.why === undefined && this.sets !== undefined;
  }

  /** The list, once every user is noted; the hashes are let go. Undefined when the check gave up. */
  take(): UserRepeats | undefined {
    this.sets = undefined;
    return this.why === undefined ? { names: this.names, candidates: this.candidates, ...(this.existing ? { existing: this.existing } : {}) } : undefined;
  }

  private give(why: string): void {
    this.why = why;
    this.sets = undefined;
  }
}

/** Whether `value` (lower-cased first with `lower`) hashes like a value of `set`; never for '' (which no probe compares). */
function mayMeet(set: HashSet32, value: string, lower: boolean): boolean {
  if (value === '') return false;
  const h = hash32(value, lower);
  return h >= 0 && set.has(h);
}

/**
 * The kept users' ordinals in the file, as the client saw them staged ({@link UserOrdinals}):
 * `first` to `first + count - 1`, each a kept user's, with source pks increasing. Without
 * `--merge-users` every kept user gets a new id, in file order: `id = block start - first + ord`.
 */
export interface OrdinalRun {
  first: number;
  count: number;
}

/**
 * Notes each kept user's ordinal as it is staged, in file order: whether they came one after
 * another (no filtered or rejected user, no record of another model between them), with
 * increasing source pks. O(1) state.
 */
export class UserOrdinals {
  private first = 0;
  private count = 0;
  private lastPk = -Infinity;
  private broken = false;

  note(ordinal: number, pk: number): void {
    if (this.broken) return;
    if (this.count > 0 && (ordinal !== this.first + this.count || !(pk > this.lastPk))) { this.broken = true; return; }
    if (this.count === 0) this.first = ordinal;
    this.count++;
    this.lastPk = pk;
  }

  /** The run of every kept user noted, when they came one after another. */
  run(): OrdinalRun | undefined {
    return this.broken || this.count === 0 ? undefined : { first: this.first, count: this.count };
  }
}

/**
 * The users' step, safe against other writers ({@link retryOnUnique}): a session that creates
 * one of the import's usernames (or `email_unique` addresses) after the decision is seen by the
 * step's next attempt, so the name is renamed (or merged into with `--merge-users`) exactly as a
 * name that was there before the import. Everything of the step is redone, temp tables and pk map
 * included.
 */
export async function mergeUsers(q: Q, S: string, options: UsersStepOptions, plan: WritePlan, path: UsersStepPath): Promise<UsersWritten> {
  let attempt = 0;
  return retryOnUnique(q, 'users', plan.user.table,
    () => mergeUsersOnce(q, S, options, plan, attempt++ > 0 && path.unlocked ? againstTheTable(path) : path));
}

/** `path` without what the client read of the target's users ({@link UsersStepPath.unlocked}). */
function againstTheTable(path: UsersStepPath): UsersStepPath {
  return { ...path, unlocked: false, repeats: path.repeats && { names: path.repeats.names, candidates: path.repeats.candidates } };
}

async function mergeUsersOnce(q: Q, S: string, options: UsersStepOptions, plan: WritePlan, path: UsersStepPath): Promise<UsersWritten> {
  const U = plan.user.table;
  // The id sequence is looked up once: pg_get_serial_sequence per row read the catalog for every
  // user (about half of the decision statement's time at 100k users).
  const userSeq = path.userSeq !== undefined ? path.userSeq : await idSequence(q, U);
  if (!userSeq) throw new DatabaseError(ErrorCodes.TARGET_SCHEMA, `${U}.id in the target database has no sequence to draw new ids from`);
  // New ids are drawn below in file order; an id the target's id column cannot hold (Sentry 9's
  // 32-bit ids) stops the import before any is drawn. Without --merge-users every kept user gets
  // one (inserted or renamed); with it, one per name that no existing user holds (counted after
  // the statistics below are sane: the count joins auth_user).
  const kept = `SELECT count(*) AS n FROM ${S} s WHERE s.run = $1 AND s.model = ${modelCodes().user} AND s.keep`;
  // One statement for what the step reads before it decides (each a round trip, waiting for Node
  // between two chunks of the export: 4 statements, 20-40 ms at 100k users): whether auth_user's
  // statistics are stale, the kept users, where the sequence stands and which way it counts.
  const start = (await q(`
    SELECT (SELECT reltuples <= 0 AND relpages > 0 FROM pg_class WHERE oid = ${sqlLiteral(U)}::regclass) AS stale,
      ${options.mergeUsers ? 'NULL::bigint' : `(${kept})`} AS n, q.last_value::text AS v, q.is_called,
      (SELECT seqincrement > 0 FROM pg_sequence WHERE seqrelid = ${sqlLiteral(userSeq)}::regclass) AS up
    FROM ${userSeq} q`, options.mergeUsers ? [] : [options.run])).rows[0] as { stale: boolean | null; n: string | null; v: string; is_called: boolean; up: boolean | null };
  // The decisions join auth_user (names, addresses, email_unique). Statistics that say "empty"
  // over pages that hold rows (a killed merge's dead rows, as autovacuum left them before a
  // resume) make the planner loop over it for every user: 71 s instead of 10 at 50k users. Such
  // statistics are refreshed first; sane ones are left alone.
  if (start.stale) await q(`ANALYZE ${U} (id, username, email${plan.user.emailUnique ? ', email_unique' : ''})`);
  const count = Number(options.mergeUsers ? (await q(`SELECT count(*) AS n FROM (SELECT lower(s.username) AS l FROM ${S} s WHERE s.run = $1 AND s.model = ${modelCodes().user} AND s.keep GROUP BY 1) g
       WHERE NOT EXISTS (SELECT 1 FROM ${U} a WHERE lower(a.username) = g.l)`, [options.run])).rows[0].n : start.n);
  const tooMany = (n: number | string, highest: bigint) => new DatabaseError(ErrorCodes.TARGET_LIMIT,
    `importing ${n} users would need user ids up to ${highest}, more than the target's ${U}.id holds (${plan.user.idLimit}): nothing was written`);
  if (count > 0) {
    const highest = BigInt(start.v) + BigInt(count) - (start.is_called ? 0n : 1n);
    if (highest > BigInt(plan.user.idLimit)) throw tooMany(count, highest);
  }
  const limitReached = (err: unknown) => {
    // The sequence itself at its end (a name another session freed between the count and the
    // decision, with --merge-users, made one more user new): the same stop.
    if ((err as { code?: string }).code === '2200H') {
      throw new DatabaseError(ErrorCodes.TARGET_LIMIT, `importing more than ${count} users would need user ids past the end of ${userSeq}: nothing was written`);
    }
    throw err;
  };
  // Where the client saw every kept user come one after another (path.ordinals) and each gets a
  // new id (no --merge-users), the ids are one block drawn at once, each user's `offset + ord`:
  // no sort of the users by file order for nextval (0.1 s at 100k users, an external sort of
  // 0.6 s at 1M), and the users' INSERT and pk map read it from the staged rows.
  const block = path.ordinals && !options.mergeUsers && count > 0 && count === path.ordinals.count
    ? await drawBlock(q, userSeq, !!start.up, count, path.ordinals.first).catch(limitReached) : undefined;
  if (block && block.highest > BigInt(plan.user.idLimit)) throw tooMany(`more than ${count}`, block.highest);
  // One block without a hole: each id is offset + ord. With holes, the drawn ids go to the users
  // in file order through up_ids, and the INSERT and pk map read them from the decisions.
  const offset = block?.offset;
  // One statement decides every user and draws the new ids. Only the names (and email_unique
  // candidates) that repeat are ranked: a hash of all, then a window over the few that repeat (a
  // sort of every user by name, two decision tables and their joins cost 0.9 s at 100k users).
  const params: unknown[] = [options.run, options.mergeUsers];
  const param = (value: unknown) => `$${params.push(value)}`;
  // Each new user's id: nextval in ord order (above the sort), its ordinal's in the block, or,
  // for a block with holes, the id up_ids holds for its ordinal.
  const drawnJoin = block && offset === undefined ? ` LEFT JOIN up_ids i ON i.k = d.ord - ${path.ordinals!.first}` : '';
  const newId = !block ? `nextval(${param(userSeq)}::regclass)` : drawnJoin ? 'y.drawn' : `${offset}::bigint + y.ord`;
  // Where every kept user is new with its ordinal's id and the client listed the possible repeats,
  // over a target that holds no user or a few: the statement decides only the users that may be
  // exceptions (a name or candidate of the client's list, or an existing user's name, address or
  // email_unique), into up_exc, and up_user is every staged user with those decisions, the others
  // inserted as they are ({@link plainUsers}). Deciding every user through the CTEs below cost
  // 0.6 s at 100k users; the two statements 0.4 s. Not in the global scope (a plain user's
  // keep_pw reads its extra fields).
  const exceptions = offset !== undefined && path.repeats !== undefined && (path.empty || !!path.few || !!path.unlocked) && plan.scope !== 'global'
    ? exceptionFilter(S, plan, path, param) : undefined;
  await q(`
    CREATE TEMP TABLE ${exceptions ? 'up_exc' : 'up_user'} ON COMMIT DROP AS
    WITH ${exceptions ? `${exceptions.listed}, ` : ''}u AS MATERIALIZED (
      SELECT s.src_pk, s.ord, s.off, s.keep, s.username, s.email, s.email_unique,${plan.scope === 'global' ? ' s.extra::jsonb AS x,' : ''} lower(s.username) AS lname
      FROM ${S} s WHERE s.run = $1 AND s.model = ${modelCodes().user}${exceptions ? ` AND ${exceptions.where}` : ''}
    ), rl AS (
      SELECT src_pk, row_number() OVER (PARTITION BY lname ORDER BY src_pk) AS rn
      FROM u WHERE keep AND lname IN (${path.repeats
        ? `SELECT lname FROM u WHERE keep AND src_pk IN (SELECT unnest(${param(path.repeats.names)}::bigint[]))`
        : 'SELECT lname FROM u WHERE keep GROUP BY lname HAVING count(*) > 1'})
    ), ex AS (
      -- An existing user with the same name, case-insensitively (the oldest if several).
      ${path.few ? `SELECT DISTINCT ON (a.lname) a.lname, a.id
      FROM (SELECT lower(x.username) AS lname, x.id FROM ${U} x) a JOIN u ON u.lname = a.lname AND u.keep
      ORDER BY a.lname, a.id` : `SELECT DISTINCT ON (lower(a.username)) lower(a.username) AS lname, a.id
      FROM ${U} a WHERE lower(a.username) IN (SELECT lname FROM u WHERE keep)
      ORDER BY lower(a.username), a.id`}
    ), o AS (
      SELECT u.*, CASE WHEN u.keep THEN coalesce(rl.rn, 1) END AS rn, ex.id AS ex_id,
        CASE WHEN NOT u.keep THEN 'filtered'
             WHEN ex.id IS NULL AND coalesce(rl.rn, 1) = 1 THEN 'inserted'
             WHEN $2 THEN 'merged'
             ELSE 'renamed' END AS outcome
      FROM u LEFT JOIN rl USING (src_pk) LEFT JOIN ex USING (lname)
    ), d AS (
      SELECT o.src_pk, o.ord, o.off, o.keep, o.username, o.email, o.email_unique, o.lname, o.rn, o.ex_id, o.outcome,
        CASE WHEN outcome = 'inserted' THEN username END AS final_name,
        -- Global scope keeps the password hash of a claimed user (Sentry: unless is_unclaimed).
        ${keepPassword(plan, 'o.x')} AS keep_pw,
        CASE WHEN outcome = 'filtered' THEN '${USERNAME_NOT_LISTED}'
             WHEN outcome = 'renamed' THEN 'username taken'
             WHEN outcome = 'merged' AND ex_id IS NOT NULL THEN 'merged into existing user'
             WHEN outcome = 'merged' THEN 'merged into an earlier user of the export with the same username' END AS reason,
        ${NEW_USER} AS new
      FROM o
    )${addresses(plan, path, param)}
    -- nextval in the projection above the sort: one id per new user, in ord order (a volatile
    -- function keeps the subquery from being flattened); or the drawn block's, by ordinal.
    SELECT z.src_pk, z.ord, z.off, z.keep, z.username, z.email, z.email_unique, z.lname, z.rn, z.ex_id, z.outcome,
      z.final_name, z.keep_pw, z.reason, z.new_id,
      coalesce(z.new_id, CASE WHEN z.outcome = 'merged' THEN z.ex_id END) AS target_id, z.email_unique_final, z.address_note
    FROM (SELECT y.*, CASE WHEN y.new THEN ${newId} END AS new_id
          FROM (SELECT d.*,
                  ${plan.user.emailUnique ? `CASE WHEN a.src_pk IS NOT NULL THEN a.email_unique_final WHEN d.new THEN ${CANDIDATE} END` : 'NULL::text'} AS email_unique_final,
                  a.address_note${drawnJoin ? ', i.v AS drawn' : ''}
                FROM d LEFT JOIN a USING (src_pk)${block ? drawnJoin : ' ORDER BY d.ord'}) y) z`,
  params).catch(limitReached);
  const decided = exceptions ? 'up_exc' : 'up_user';
  // In one round trip: up_user as a view over the exceptions' decisions, where the sequence stands
  // now, and how many users are renamed.
  const now = await together(q, [
    ...(exceptions ? ['ANALYZE up_exc', plainUsers(S, plan, offset!, options.run)] : []),
    `SELECT last_value::text AS v FROM ${userSeq}`,
    `SELECT count(*) AS n FROM ${decided} WHERE outcome = 'renamed'`,
  ]);
  // The same, where the sequence goes further than the id column: where it stands now.
  const after = BigInt(now.at(-2)!.rows[0].v as string);
  if (count > 0 && after > BigInt(plan.user.idLimit)) throw tooMany(`more than ${count}`, after);
  // A small sample is enough for these plans (how few are renamed or merged, how many are new):
  // the default target read 30,000 rows of nine columns, 0.3-0.6 s at 100k users.
  // (A view over the staged users, where only the exceptions were decided: its tables' statistics serve.)
  if (!exceptions) await analyzeSampled(q, 'up_user (src_pk, lname, keep, rn, outcome, new_id, target_id, final_name, email)');
  if (options.mergeUsers) {
    // Later users of a name merge into its first user when that one is inserted now.
    await q(`UPDATE up_user p SET target_id = l.new_id FROM up_user l
             WHERE p.outcome = 'merged' AND p.target_id IS NULL AND l.keep AND l.rn = 1 AND l.lname = p.lname`);
  }
  await renameUsers(q, plan, decided, Number(now.at(-1)!.rows[0].n));
  // The profile columns are read from the staged rows here, once: the decision tables carry only
  // what the decisions, findings and children need (each user's staged row copied into both of
  // them was about a third of this step's time at 100k users).
  const x = plan.scope === 'users' ? '' : 's.extra::jsonb AS x, ';
  // OFFSET 0 keeps the subquery below from being pulled up into the INSERT's SELECT: else each
  // of the plan's x->>'...' (and keep_pw's two) would cast the staged text to jsonb again, about
  // fourteen parses per user in the global scope (4.1 s of 100k users' INSERT, against 0.6 s in
  // user scope). Only with x: user scope's plan stays as it was.
  const once = x ? 'OFFSET 0' : '';
  if (offset !== undefined) {
    // Every kept user is new, its id its ordinal's: the INSERT reads only the users whose name or
    // email_unique the decisions changed (renamed, or an address another user holds) from the
    // decisions. A table of their own, analysed, so the INSERT hashes those few and reads the
    // staged users in file order (the planner cannot tell how few they are from up_user's).
    // Where only the exceptions were decided, only they can differ (read from up_exc: at 1M users
    // a scan of up_user was 0.6 s).
    await together(q, [`CREATE TEMP TABLE up_user_x ON COMMIT DROP AS
             SELECT d.src_pk, d.final_name, d.email_unique_final FROM ${decided} d
             WHERE d.keep AND (d.final_name IS DISTINCT FROM d.username
                               OR d.email_unique_final IS DISTINCT FROM ${plan.user.emailUnique ? CANDIDATE : 'NULL::text'})`, 'ANALYZE up_user_x']);
  }
  // The plan's values over `u`: each new user's staged row with its id, name, email_unique, keep_pw.
  const insertUsers = (u: string) => `INSERT INTO ${U} (${plan.user.columns.join(', ')}) SELECT ${plan.user.values.join(', ')} FROM ${u}`;
  if (offset === undefined) {
    const usersInserted = (await q(`
      ${insertUsers(`(SELECT s.*, ${x}d.new_id, d.final_name, d.email_unique_final, d.keep_pw
            FROM up_user d JOIN ${S} s ON s.run = $1 AND s.model = ${modelCodes().user} AND s.src_pk = d.src_pk
            WHERE d.new_id IS NOT NULL ${once}) u`)}
      ORDER BY u.new_id`, [options.run])).rowCount ?? 0;
    const lostPasswordHashes = path.lostPasswordsLater ? 0 : await insertLostPasswords(q, plan);
    await insertPkRanges(q, options.run, 'sentry.user', `
      SELECT src_pk, target_id, CASE WHEN outcome = 'merged' THEN 'merged' ELSE 'inserted' END AS kind
      FROM up_user WHERE keep`);
    return { usersInserted, lostPasswordHashes, decided };
  }
  // Every kept user new, its id its ordinal's: the users and their pk map in one round trip (the
  // run a literal). The kept users' ordinals are consecutive and their pks increase: a run of
  // consecutive pks is a run of one src_pk - ord, and maps to consecutive ids. One hash
  // aggregate, no sort.
  const run = Number(options.run);
  const [users] = await together(q, [`
    ${insertUsers(`(SELECT y.*, ${keepPassword(plan, 'y.x')} AS keep_pw FROM (SELECT s.*, ${x}${offset}::bigint + s.ord AS new_id,
            CASE WHEN e.src_pk IS NULL THEN s.username ELSE e.final_name END AS final_name,
            CASE WHEN e.src_pk IS NULL THEN ${plan.user.emailUnique ? candidateOf('s') : 'NULL::text'} ELSE e.email_unique_final END AS email_unique_final
          -- The staged rows come in file order, ids ascending: no sort either (1M users: a hash
          -- of every decision and an external sort, 2 s).
          FROM ${S} s LEFT JOIN up_user_x e ON e.src_pk = s.src_pk
          WHERE s.run = ${run} AND s.model = ${modelCodes().user} AND s.keep ${once}) y) u`)}`, `
    INSERT INTO userport.pk_ranges (run, model, source_pk, target_id, kind, span)
    SELECT ${run}, 'sentry.user', min(src_pk), ${offset}::bigint + min(ord), 'inserted', count(*)::int
    FROM up_user WHERE keep GROUP BY src_pk - ord`]);
  const lostPasswordHashes = path.lostPasswordsLater ? 0 : await insertLostPasswords(q, plan);
  return { usersInserted: users!.rowCount ?? 0, lostPasswordHashes, decided };
}

/** Whether a new user keeps its exported password hash (global scope, a claimed user; Sentry: unless is_unclaimed), over the staged `extra` object `x`. */
function keepPassword(plan: WritePlan, x: string): string {
  return plan.scope === 'global' ? `(${x} ? 'password') AND NOT coalesce((${x}->>'is_unclaimed')::boolean, false)` : 'false';
}

/** The new users' ids, drawn at once ({@link drawBlock}). */
interface Block {
  /** Where one block without a hole came: each user's id is `offset + ord`. Undefined: `up_ids` holds them. */
  offset: bigint | undefined;
  /** The highest id drawn. */
  highest: bigint;
}

/**
 * Draws `count` ids from `seq` (ascending) in one statement. Where they are one run, resolves to
 * the offset that makes the kept user of ordinal `first` its first id (`id = offset + ord`).
 * Where another session drew meanwhile (the run has holes) or the sequence counts by more than 1,
 * the ids drawn are kept in draw order in `up_ids` (k, from 0, and the id): the users get them in
 * file order, as one nextval each would have given them, and none is drawn twice. Resolves to
 * undefined for a sequence that counts down (nextval per user, as everywhere else).
 */
async function drawBlock(q: Q, seq: string, up: boolean, count: number, first: number): Promise<Block | undefined> {
  if (!up) return undefined;
  if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`drawBlock: count ${count}`);
  // The ids are materialized once; only a run with holes is written out (its one-time filter
  // reads the aggregate first). The table and the draw in one round trip.
  const [, draw] = await together(q, [`CREATE TEMP TABLE up_ids (k bigint, v bigint) ON COMMIT DROP`, `
    WITH drawn AS MATERIALIZED (SELECT nextval(${sqlLiteral(seq)}::regclass) AS v FROM generate_series(1, ${count})),
    r AS (SELECT min(v) AS lo, max(v) AS hi FROM drawn),
    kept AS (INSERT INTO up_ids SELECT row_number() OVER () - 1, v FROM drawn WHERE (SELECT hi - lo + 1 <> ${count} FROM r) RETURNING 1)
    SELECT lo::text AS lo, hi::text AS hi, (SELECT count(*) FROM kept)::int AS kept FROM r`]);
  const drawn = draw!.rows[0] as { lo: string; hi: string; kept: number };
  const highest = BigInt(drawn.hi);
  if (!drawn.kept) return { offset: BigInt(drawn.lo) - BigInt(first), highest };
  await q('ANALYZE up_ids');
  return { offset: undefined, highest };
}

/**
 * The new users' lost-password hashes, in id order: Sentry's import gives every user it creates
 * one (32 random characters; uuid4 hex here, as the README's compatibility table says), but, in
 * the global scope, a user whose password hash it keeps. Resolves to
 * their count.
 */
export async function insertLostPasswords(q: Q, plan: WritePlan): Promise<number> {
  if (!plan.lostPassword) return 0;
  return (await q(`
    INSERT INTO ${plan.lostPassword.table} (user_id, hash, date_added)
    SELECT new_id, replace(gen_random_uuid()::text, '-', ''), now() FROM up_user WHERE new_id IS NOT NULL AND NOT keep_pw ORDER BY new_id`)).rowCount ?? 0;
}

/**
 * The staged users that may be exceptions to "inserted as it is, with its candidate" (see
 * {@link plainUsers}), for the users' decision statement: `listed`, a CTE `k` of the names (`ln`)
 * and candidates (`c`) of the users the client listed as possible repeats, and `where`, a filter of
 * the staged users `s` that keeps every user of such a name or candidate (all the users each
 * ranking needs), and on a target that holds a few users, every user that shares a name, address
 * or email_unique with one of them. One scan of the staged users finds the listed ones.
 */
function exceptionFilter(S: string, plan: WritePlan, path: UsersStepPath, param: (value: unknown) => string): { listed: string; where: string } {
  const U = plan.user.table;
  const names = param(path.repeats!.names);
  const candidates = param(path.repeats!.candidates);
  const few = !path.empty;
  const unique = plan.user.emailUnique;
  const listed = `k AS MATERIALIZED (
      SELECT CASE WHEN t.src_pk IN (SELECT unnest(${names}::bigint[])) THEN lower(t.username) END AS ln,
             CASE WHEN t.src_pk IN (SELECT unnest(${candidates}::bigint[])) THEN ${candidateOf('t')} END AS c
      FROM ${S} t WHERE t.run = $1 AND t.model = ${modelCodes().user}
        AND (t.src_pk IN (SELECT unnest(${names}::bigint[])) OR t.src_pk IN (SELECT unnest(${candidates}::bigint[]))))`;
  // The target's users whose values may meet a staged user's, where the client's hashes said
  // which (UserRepeatCheck.meet): those alone are probed; else all of them (its addresses alone
  // where a staged address was not plain ASCII). A new Sentry's admin meets nobody: the probes of
  // every staged user's lower(email) and of the admin's values cost 0.09 s at 100k users.
  const met = path.repeats!.existing;
  const theirs = (values: string[] | undefined, all: string) => (values ? ` UNION ALL SELECT unnest(${param(values)}::text[])` : ` UNION ALL ${all}`);
  const addresses = !few ? '' : met?.addresses?.length === 0 ? ''
    : `
        OR lower(s.email) IN (${met?.addresses ? `SELECT unnest(${param(met.addresses)}::text[])` : `SELECT lower(x.email) FROM ${U} x WHERE x.email <> ''`})`;
  const where = `(lower(s.username) IN (SELECT ln FROM k${few ? theirs(met?.names, `SELECT lower(x.username) FROM ${U} x`) : ''})${addresses}${
    unique ? `
        OR ${candidateOf('s')} IN (SELECT c FROM k${few ? theirs(met?.candidates, `SELECT x.email_unique FROM ${U} x`) : ''})` : ''})`;
  return { listed, where };
}

/**
 * The decisions of every staged user (`up_user`, the columns the users' decision statement gives
 * it) where that statement decided only the exceptions (`up_exc`, {@link exceptionFilter}): an
 * exception's row is its decision; every other kept user is inserted as it is (rank 1, its own
 * name, its candidate as email_unique, no note), with its ordinal's id from the block (`offset`);
 * a user the filter removed (staged, not kept) is filtered. A view, not a table: the few readers
 * of every user (the pk map, the receivers, the findings, a rename's check) read the staged users
 * once each, where writing and analysing the table took 0.25 s at 100k users. Dropped with up_exc
 * at commit (ON COMMIT DROP cascades). `run` is this import's number, a literal (a view has no
 * parameters); nothing changes the staged users after this.
 */
function plainUsers(S: string, plan: WritePlan, offset: bigint, run: number): string {
  const known = (column: string, plain: string) => `CASE WHEN e.src_pk IS NOT NULL THEN e.${column} ${plain} END AS ${column}`;
  return `
    CREATE TEMP VIEW up_user AS
    SELECT s.src_pk, s.ord, s.off, s.keep, s.username, s.email, s.email_unique, lower(s.username) AS lname,
      ${known('rn', 'WHEN s.keep THEN 1')}, e.ex_id,
      ${known('outcome', "WHEN s.keep THEN 'inserted' ELSE 'filtered'")},
      ${known('final_name', 'WHEN s.keep THEN s.username')},
      ${known('keep_pw', 'ELSE false')},
      ${known('reason', `WHEN NOT s.keep THEN '${USERNAME_NOT_LISTED}'`)},
      ${known('new_id', `WHEN s.keep THEN ${offset}::bigint + s.ord`)},
      ${known('target_id', `WHEN s.keep THEN ${offset}::bigint + s.ord`)},
      ${known('email_unique_final', `WHEN s.keep THEN ${plan.user.emailUnique ? candidateOf('s') : 'NULL::text'}`)},
      e.address_note
    FROM ${S} s LEFT JOIN up_exc e ON e.src_pk = s.src_pk
    WHERE s.run = ${Number(run)} AND s.model = ${modelCodes().user}`;
}

/** The characters of a renamed user's random tail (Sentry's `get_random_string` default). */
const TAIL_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789';

/**
 * `len` random characters of {@link TAIL_CHARS}, as one SQL expression, drawn per row: what the
 * migrations' `userport.random_string(len)` returns, without a function call per row (a SQL
 * function over generate_series and string_agg: 1.3 s for 100k tails against 0.1 s inline, and
 * every round of renames draws one per pending user).
 */
export function randomTail(len: number): string {
  if (!Number.isInteger(len) || len < 1) throw new RangeError(`randomTail: length ${len}`);
  return Array.from({ length: len }, () => `substr('${TAIL_CHARS}', 1 + floor(random() * ${TAIL_CHARS.length})::int, 1)`).join(' || ');
}

/** The users that get a new id (and a row in the target): inserted as they are, or renamed. */
const NEW_USER = `outcome IN ('inserted', 'renamed')`;

/** A user's `email_unique` candidate, over the row `t`: the exported one, else the address (none when empty). */
const candidateOf = (t: string) => `nullif(coalesce(${t}.email_unique, ${t}.email), '')`;

/** {@link candidateOf} the decisions (`d`). */
const CANDIDATE = candidateOf('d');

/** The note of a new user whose candidate (`cand`) an earlier user of the export (`first_pk`) holds, over `x`. */
const EARLIER_HOLDER = (x: string) =>
  `'email_unique left empty: ' || ${x}.cand || ' is the email_unique of an earlier user of the export (pk ' || ${x}.first_pk || ')'`;

/**
 * Each new user's `email_unique` (where the target has that UNIQUE column, Sentry 2025+) and a
 * note when its address is already another user's: the CTE `a` of (src_pk, email_unique_final,
 * address_note) over the decisions (`d`), holding only the new users that are exceptions; every
 * other new user keeps its candidate ({@link CANDIDATE}). Sentry keeps an exported `email_unique`
 * and otherwise sets it to the address; an address another user already holds (in the database,
 * or a user of this export with a lower pk) would fail the whole import on the UNIQUE key, so it
 * is left empty (NULL, which the key allows) and the finding says so.
 */
function addresses(plan: WritePlan, path: UsersStepPath, param: (value: unknown) => string): string {
  const U = plan.user.table;
  // One pass over the new users, joined (never a lookup per user) to the existing holders:
  // - of the address, case-insensitively (the oldest): a note either way;
  // - of the email_unique candidate, where the target has that column.
  // Over a few existing users, joins, as for the names (`few`, in the step).
  // On the empty-target path there are none: no join at all (the dropped indexes would make
  // each probe a scan of a killed merge's dead rows before a resume). Only candidates that
  // repeat are ranked (a hash of all, a window over the few).
  const unique = plan.user.emailUnique;
  const shared = path.empty ? 'NULL::bigint' : 's.id';
  const holder = path.empty || !unique ? 'NULL::bigint' : 'h.id';
  if (path.empty && path.repeats) {
    // No user exists, and the client listed the possible repeats: the exceptions are the later
    // users of each listed candidate, found among those users alone.
    if (!unique || !path.repeats.candidates.length) {
      return `, a AS (SELECT NULL::bigint AS src_pk, NULL::text AS email_unique_final, NULL::text AS address_note WHERE false)`;
    }
    return `, a AS (
      SELECT x.src_pk, NULL::text AS email_unique_final,
        ${EARLIER_HOLDER('x')} AS address_note
      FROM (SELECT d.src_pk, ${CANDIDATE} AS cand, row_number() OVER w AS rn, first_value(d.src_pk) OVER w AS first_pk
            FROM d WHERE d.new AND ${CANDIDATE} IN (SELECT ${CANDIDATE} FROM d WHERE d.new AND d.src_pk IN (SELECT unnest(${param(path.repeats.candidates)}::bigint[])))
            WINDOW w AS (PARTITION BY ${CANDIDATE} ORDER BY d.src_pk)) x
      WHERE x.rn > 1
    )`;
  }
  return `, nu AS MATERIALIZED (
      SELECT d.src_pk, lower(d.email) AS le, ${unique ? CANDIDATE : 'NULL::text'} AS cand FROM d WHERE d.new
    ), c AS (
      SELECT y.src_pk, y.cand, ${unique ? 'coalesce(r.rn, 1)' : '1'} AS rn, ${unique ? 'r.first_pk' : 'NULL::bigint'} AS first_pk, ${holder} AS holder, ${shared} AS shared
      FROM nu y
        ${unique ? `LEFT JOIN (SELECT src_pk, row_number() OVER w AS rn, first_value(src_pk) OVER w AS first_pk
                   FROM nu WHERE cand IN (${path.repeats
                     ? `SELECT cand FROM nu WHERE src_pk IN (SELECT unnest(${param(path.repeats.candidates)}::bigint[]))`
                     : 'SELECT cand FROM nu WHERE cand IS NOT NULL GROUP BY cand HAVING count(*) > 1'})
                   WINDOW w AS (PARTITION BY cand ORDER BY src_pk)) r USING (src_pk)` : ''}
        ${path.empty ? '' : path.few ? `LEFT JOIN (SELECT DISTINCT ON (a.le) a.le, a.id
                   FROM (SELECT lower(x.email) AS le, x.id FROM ${U} x WHERE x.email <> '') a JOIN nu n ON n.le = a.le
                   ORDER BY a.le, a.id) s ON s.le = y.le` : `LEFT JOIN (SELECT DISTINCT ON (lower(a.email)) lower(a.email) AS le, a.id FROM ${U} a
                   WHERE a.email <> '' AND lower(a.email) IN (SELECT le FROM nu)
                   ORDER BY lower(a.email), a.id) s ON s.le = y.le`}
        ${path.empty || !unique ? '' : `LEFT JOIN (SELECT DISTINCT ON (a.email_unique) a.email_unique, a.id
                   FROM ${U} a ${path.few ? 'JOIN nu n ON n.cand = a.email_unique' : 'WHERE a.email_unique IN (SELECT cand FROM nu)'}
                   ORDER BY a.email_unique, a.id) h ON h.email_unique = y.cand`}
    ), a AS (
      SELECT c.src_pk,
        ${unique ? 'CASE WHEN c.cand IS NOT NULL AND c.rn = 1 AND c.holder IS NULL THEN c.cand END' : 'NULL::text'} AS email_unique_final,
        CASE WHEN c.holder IS NOT NULL THEN 'email_unique left empty: ' || c.cand || ' is the email_unique of existing user id ' || c.holder
             WHEN c.cand IS NOT NULL AND c.rn > 1 THEN ${EARLIER_HOLDER('c')}
             WHEN c.shared IS NOT NULL THEN 'address also held by existing user id ' || c.shared END AS address_note
      FROM c WHERE c.rn > 1 OR c.holder IS NOT NULL OR c.shared IS NOT NULL
    )`;
}

/**
 * Gives every 'renamed' user a free `<name>-<random tail>`, in set-based rounds. The renamed users
 * are read and named in `decided`: up_user, or up_exc where only the exceptions were decided (every
 * renamed user is one: the rounds then read and update those few, not every user, and up_user gets
 * their names at the end).
 */
async function renameUsers(q: Q, plan: WritePlan, decided: 'up_user' | 'up_exc', renamed: number): Promise<void> {
  let pending = renamed;
  if (!pending) return;
  const lengths: number[] = [];
  for (const [len, tries] of RENAME_SCHEDULE) for (let i = 0; i < tries; i++) lengths.push(len);
  for (let round = 0; pending > 0; round++) {
    if (round === MAX_RENAME_ROUNDS) throw new Error('could not find free usernames for renamed users');
    const len = lengths[Math.min(round, lengths.length - 1)]!;
    // A candidate is taken when any user (existing, or kept by this import) has it,
    // case-insensitively, or when two pending users drew the same one this round. Each check
    // scans the users once against a hash of the few candidates, however many users are renamed.
    // A round's statements in one round trip; the UPDATE's count is what is left.
    const steps = await together(q, [`CREATE TEMP TABLE up_cand ON COMMIT DROP AS
             SELECT src_pk, left(username, ${plan.user.usernameMax - 1 - len}) || '-' || ${randomTail(len)} AS cand
             FROM ${decided} WHERE outcome = 'renamed' AND final_name IS NULL`,
      'ANALYZE up_cand',
      `DELETE FROM up_cand c USING (SELECT lower(cand) AS lc FROM up_cand GROUP BY 1 HAVING count(*) > 1) t WHERE lower(c.cand) = t.lc`,
      // The users, existing and this import's: a join of the two (USING) was planned as a merge
      // join over a sort of every user (its row estimate for lower() = lower() is thousands of
      // times the truth), external past work_mem: 4.0 s against 0.6 s into a database holding 2M
      // users, 0.14 s against 0.04 s holding 200k.
      // Every candidate holds a '-' (`<name>-<tail>`), and lower() neither makes nor takes one: only
      // the names that hold one are lower-cased and compared (at 100k users the import's users'
      // check took 60-73 ms, lower-casing every name; with this 23-25 ms).
      `DELETE FROM up_cand c WHERE lower(c.cand) IN (
               SELECT k FROM (SELECT lower(a.username) AS k FROM ${plan.user.table} a WHERE strpos(a.username, '-') > 0) x
               WHERE k IN (SELECT lower(cand) FROM up_cand))`,
      // A kept user's final name, lower-cased: lname where it keeps its name (no lower() over every
      // user each round: 0.3 s at 100k users), else the name an earlier round gave it (in `decided`).
      // The users are scanned once against a hash of the few candidates.
      `DELETE FROM up_cand c WHERE lower(c.cand) IN (
               SELECT k FROM (SELECT o.lname AS k FROM up_user o WHERE o.outcome = 'inserted' AND strpos(o.username, '-') > 0
                              UNION ALL SELECT lower(r.final_name) FROM ${decided} r WHERE r.outcome = 'renamed') x
               WHERE k IN (SELECT lower(cand) FROM up_cand))`,
      `UPDATE ${decided} p SET final_name = c.cand FROM up_cand c WHERE p.src_pk = c.src_pk`,
      'DROP TABLE up_cand']);
    pending -= steps[5]!.rowCount ?? 0;
  }
  // Drawn among the exceptions: up_user, a view over them, reads their names from there.
}
