/**
 * The export's Email rows, decided in the client and written once, straight into `sentry_email`
 * (issue #23, item 1), on the early users step's path (the bulk path, the target's tables empty or
 * holding a few rows and locked, or the general path). Sentry's rule for them: an address
 * (compared case-insensitively) that the target holds is reused, else the first record of the
 * address by source pk inserts it. Staged and decided in SQL, that cost about 1.2 s of server time
 * per 100k addresses into an empty target (a lower() per row in each of three joins, the
 * RETURNING table, the pk map's join), and 2-2.6 s into one holding 100k users; written straight
 * in, one COPY.
 *
 * Exact, or not taken (every line is then staged and the merge decides as ever):
 * - each address is compared by its ASCII lower-case form, which is PostgreSQL's lower() only for
 *   ASCII text in a database whose lower() maps A-Z to a-z: an address with any other byte, a
 *   COPY escape or a NULL, or such a database, stages them all;
 * - the file's addresses are told apart by a 64-bit hash of that form: two equal hashes (the same
 *   address twice, which only a hand-made file holds, or a collision) stage them all;
 * - the target's addresses are read once (lower()ed by the server, so by its own rules), and only
 *   those whose hash the file's set holds are kept, as text, and compared as text; one whose
 *   lower() is not plain ASCII cannot equal any of the file's. A target holding more than
 *   {@link TARGET_RATIO} times the file's addresses (and more than a few), or more than
 *   {@link MAX_HELD} of them, stages them all (the merge probes the key instead of a scan);
 * - the new rows' ids are drawn from the table's sequence before the COPY, as a block: if another
 *   session drew meanwhile (the block has a hole) they are all staged (the drawn ids stay unused,
 *   as any rolled-back insert leaves them);
 * - on the general path another session may insert one of the addresses after the read: the
 *   table's unique key refuses the COPY, which is rolled back to a savepoint, and all are staged.
 * The table's unique key (on the bulk path rebuilt after the load) stays the final arbiter.
 * State in the process: 8 bytes per address (the hash), at a load of 35-70%, for at most
 * {@link MAX_ADDRESSES} records, let go once the target's addresses are read; the target's
 * addresses that the file holds too, as text (at most {@link MAX_HELD}); into an empty table on
 * the bulk path, the new rows in the unique key's order, {@link SORT_RUN} at a time (with no
 * scratch files, {@link MAX_SORTED}).
 *
 * Into an empty table on the bulk path, the rows go in the order of the unique key the load then
 * builds (`inKeyOrder`), which PostgreSQL's sort then finds sorted: sentry_email's citext
 * UNIQUE (email), whose comparisons lower() both sides, took most of the tail's index builds.
 * The client reads and sorts them while the connection writes the other models' diverted rows
 * (the caller's `meanwhile`), so the server does not wait for the sort; they are COPYed after.
 */
import fs from 'node:fs/promises';
import type pg from 'pg';
import { FEW_ROWS } from './bulk-load.js';
import { copyFindings, uniqueViolation, type SideLines } from './direct-rows.js';
import { HashSet64, lowerIsAscii } from './hash-sets.js';
import { CopyOut } from './copy-out.js';
import { PkTrail } from './pk-map.js';
import { copyInto, cursorPages } from './run.js';
import { columnStart, intAt, lineColumn, NEWLINE, readLines, scanTabs, SRC_PK, TAB } from './staging-lines.js';

const EMAIL = lineColumn('email');
// An Email record's date_added is staged in date_joined (its mapping's column).
const DATE_ADDED = lineColumn('date_joined');
const NOW = Buffer.from('now');

/** What {@link writeDirectEmails} did. */
export interface DirectEmails {
  /** Rows inserted straight into the table. */
  written: number;
  /** Records whose address the target already held (their pk maps to that row). */
  existing: number;
  /** Lines handed back to be staged: all of them or none (with a username filter, those not filtered). */
  staged: number;
  /** Why they were staged, when they were. */
  why?: string;
  /** Records filtered, their findings written: no kept user's address keeps them ({@link filterEmails}). */
  filtered?: number;
  /** The rows went in the order of the table's unique key ({@link inKeyOrder}). */
  keyOrder?: boolean;
}

/**
 * Email records beyond which the client keeps no hashes (they are staged): the set stays within
 * 2^21 slots of 8 bytes (16 MB, at most 70% full), so the peak RSS stays under 150 MB at 2M users.
 */
export const MAX_ADDRESSES = 1_400_000;

/**
 * The target's rows (its statistics' count) beyond which, per Email record of the file, a scan of
 * the target's addresses costs more than the merge's probes of the unique key; the merge's
 * anti-join against the target's addresses (emails.ts) stops at the same ratio.
 */
export const TARGET_RATIO = 10;

/** The target's addresses that the file holds too, kept as text, beyond which all are staged (about 100 bytes each in the process: 10 MB). */
export const MAX_HELD = 100_000;

/**
 * What the sink's divert saw of the Email records it sent to the side spool, checked as they
 * arrive (no second read of the spool before the COPY): every address plain ASCII text and no two
 * alike (by a 64-bit hash of the lower-case form). `why` says what failed first.
 */
export class EmailCheck {
  /** Records seen. */
  count = 0;
  /** Why they cannot go straight in, once something says so. */
  why: string | undefined;
  private seen: HashSet64 | undefined = new HashSet64();

  note(address: unknown): void {
    this.count++;
    if (this.why !== undefined) return;
    if (!this.seen) { this.fail('an Email record came after the check was released'); return; }
    if (this.count > MAX_ADDRESSES) { this.fail(`more than ${MAX_ADDRESSES.toLocaleString('en-US')} Email records (the client keeps no more)`); return; }
    if (typeof address !== 'string') { this.fail('an Email record has no address'); return; }
    // 64 bits of the ASCII lower-case form: printable ASCII only, where PostgreSQL's lower() is the ASCII one.
    const added = this.seen.addText(0, address, true);
    if (added === undefined) this.fail('an address is not plain ASCII text');
    else if (!added) this.fail('two addresses are the same, or share a hash');
  }

  /**
   * Whether the file may hold `lowered` (an address as the database's lower() gave it): its hash
   * is in the set. False for a text that is not plain ASCII (no address noted equals it).
   */
  mayHold(lowered: string): boolean {
    if (!this.seen) throw new Error('EmailCheck.mayHold after release');
    return this.seen.hasText(0, lowered, true) === true;
  }

  /** Gives up, and lets the hashes go. */
  private fail(why: string): void {
    this.why = why;
    this.seen = undefined;
  }

  /**
   * Lets the hashes go once every record is noted (the input has ended): the COPY needs only the
   * count and the verdict. At 1.2M records that is 16 MB off the peak RSS, which came in the COPY.
   */
  release(): void {
    this.seen = undefined;
  }
}

/**
 * One range of the pk map: `span` source pks to consecutive ids from `id`, of one kind. The source
 * pks are consecutive from `pk`, or listed in `pks` (a listed range, `pks[0]` is `pk`).
 */
interface PkRange { pk: number; id: number; span: number; kind: 'inserted' | 'existing'; pks?: number[] }

/**
 * Source pks a listed range holds at most: its row stays under PostgreSQL's 2 kB TOAST threshold
 * (8 bytes a pk), so the view reads each element in place.
 */
export const MAX_LISTED = 200;

/**
 * New rows the client holds at a time to write them, into an empty table on the bulk path, in the
 * order of its unique key (`writeDirectEmails`' `bulk`): about 110 bytes each in the process (the
 * COPY text, the lower-case address, its place), 11 MB (and a side spool's read chunk of rows,
 * about 1 MB, since the count is checked at each chunk's end). More are sorted in runs of this
 * many, each to a scratch file, then merged; without scratch files, they go in file order.
 */
export const MAX_SORTED = 100_000;

/**
 * Rows of a sorted run where scratch files take the runs: the sort of one run holds the event
 * loop, and the connection's other work (writeDirectEmails' `meanwhile`) waits for it. At 100k
 * users (119,493 Email records) runs of 16,384 took the tail's Email step, options and user emails
 * 0.97 s against 1.05 s with runs of 100,000 (five imports each, alternated; 1.11 s sorting before
 * the other rows).
 */
export const SORT_RUN = 16_384;

/** {@link writeDirectEmails}' options. */
interface WriteOptions {
  bulk?: boolean;
  maxSorted?: number;
  sortRun?: number;
  scratch?: (name: string) => string;
  meanwhile?: () => Promise<void>;
}

/**
 * Writes the Email records of `run` diverted to `lines` (in file order, which the caller checked
 * is source pk order, and seen by `check`) straight into `table`, with their pk map, or hands
 * every line to `stage`. `seq` is the table's id sequence. Runs in the import's transaction on the
 * locked tables. `bulk`: the bulk path holds the table (locked, its unique key dropped, rebuilt
 * after the load); where it is empty, the rows go in the key's order ({@link inKeyOrder}), sorted
 * in the client, `maxSorted` at most without `scratch` files, else in runs of `sortRun` in them
 * (private paths the caller's folder removes). `meanwhile`, the caller's next work on the
 * connection, runs exactly once: while the client sorts the rows, where they go in the key's
 * order (the server would otherwise wait for the sort), else once the records are written or
 * staged.
 */
export async function writeDirectEmails(client: pg.ClientBase, run: number, table: string, seq: string | null,
  check: EmailCheck, lines: SideLines, stage: (lines: Buffer[]) => Promise<void>,
  options: WriteOptions = {}): Promise<DirectEmails> {
  const { meanwhile } = options;
  let ran = false;
  const once = meanwhile && (() => { ran = true; return meanwhile(); });
  const wrote = await writeEmails(client, run, table, seq, check, lines, stage, { ...options, meanwhile: once });
  if (meanwhile && !ran) await meanwhile();
  return wrote;
}

async function writeEmails(client: pg.ClientBase, run: number, table: string, seq: string | null,
  check: EmailCheck, lines: SideLines, stage: (lines: Buffer[]) => Promise<void>,
  { bulk = false, maxSorted = MAX_SORTED, sortRun = SORT_RUN, scratch, meanwhile }: WriteOptions): Promise<DirectEmails> {
  const stageAll = async (why: string): Promise<DirectEmails> => {
    check.release();
    let staged = 0;
    for await (const chunk of lines()) { staged += chunk.length; await stage(chunk); }
    return { written: 0, existing: 0, staged, why };
  };
  if (check.why !== undefined) return stageAll(check.why);
  if (!check.count) { check.release(); return { written: 0, existing: 0, staged: 0 }; }
  if (!seq) return stageAll(`${table}.id has no sequence`);
  if (!await lowerIsAscii(client)) return stageAll('the database\'s lower() does not map A-Z to a-z');
  const held = await heldAddresses(client, table, check);
  // The COPY needs only the verdict: at 1.2M records that is 16 MB off the peak RSS, which came in the COPY.
  check.release();
  if (typeof held === 'string') return stageAll(held);

  // On the general path another session may insert one of these addresses after the read above:
  // the unique key then refuses the COPY, and everything since this savepoint is undone.
  const savepoint = 'userport_direct_emails';
  await client.query(`SAVEPOINT ${savepoint}`);
  // An id for every record, drawn as one block; those of records whose address the target holds
  // go back after the COPY (unless another session drew meanwhile: then they stay unused).
  const drawn = (await client.query(`SELECT min(v)::float8 AS lo, max(v)::float8 AS hi
    FROM (SELECT nextval($1::regclass) AS v FROM generate_series(1, $2)) x`, [seq, check.count])).rows[0] as { lo: number; hi: number };
  if (drawn.hi - drawn.lo + 1 !== check.count) {
    await client.query(`RELEASE SAVEPOINT ${savepoint}`);
    return stageAll('another session drew ids from the sequence meanwhile');
  }

  const rows = new EmailRows(held, drawn.lo);
  if (bulk && held.size === 0 && (check.count <= maxSorted || scratch !== undefined) && await inKeyOrder(client, table)) {
    // The table is empty, locked by this session and without its unique key (rebuilt after the
    // load): no other session can write it, nor this COPY break a key, so nothing here needs the
    // savepoint. The client reads, numbers and sorts the rows while `meanwhile` has the
    // connection; a failure of either fails the import.
    await client.query(`RELEASE SAVEPOINT ${savepoint}`);
    const keyed = new KeyedRows(scratch ? Math.min(sortRun, maxSorted) : maxSorted, scratch);
    const sorting = rows.read(lines, (text) => keyed.add(text), keyed).then(() => keyed.sort());
    const [sorted, other] = await Promise.allSettled([sorting, meanwhile?.()]);
    if (other.status === 'rejected') throw other.reason;
    if (sorted.status === 'rejected') throw sorted.reason;
    await copyInto(client, `COPY ${table} (id, email, date_added) FROM STDIN`, table, (copy) => keyed.send(copy));
    await writePkRanges(client, run, rows.pks, rows.holders, drawn.lo);
    return { written: rows.next - drawn.lo, existing: 0, staged: 0, keyOrder: true };
  }
  try {
    await copyInto(client, `COPY ${table} (id, email, date_added) FROM STDIN`, table, (copy) => rows.read(lines, copy));
  } catch (err) {
    if (!uniqueViolation(err)) throw err;
    await client.query(`ROLLBACK TO SAVEPOINT ${savepoint}`);
    await client.query(`RELEASE SAVEPOINT ${savepoint}`);
    return stageAll('another session inserted one of the addresses meanwhile');
  }
  if (rows.existing) {
    await client.query(`SELECT setval($1::regclass, $2::bigint, $3) WHERE (SELECT last_value FROM ${seq}) = $4::bigint`,
      [seq, Math.max(rows.next - 1, 1), rows.next > 1, drawn.hi]);
  }
  await writePkRanges(client, run, rows.pks, rows.holders, drawn.lo);
  await client.query(`RELEASE SAVEPOINT ${savepoint}`);
  return { written: rows.next - drawn.lo, existing: rows.existing, staged: 0 };
}

/**
 * The COPY text of the Email records' new rows, from their staging lines in file order: each
 * record whose address the target holds (`held`, by its lower-case form) maps to that row, every
 * other one gets the next id from `first`. Notes each record's source pk (a byte each, most of the
 * time) and the holders of the addresses it reused, from which the pk map's ranges are made
 * without reading the spool again (a second pass took 0.12 s at 100k users).
 */
class EmailRows {
  readonly pks = new PkTrail();
  /** (index in file order, holder's id) of each record whose address the target holds. */
  readonly holders: number[] = [];
  /** The next id to give. */
  next: number;
  existing = 0;

  constructor(private readonly held: ReadonlyMap<string, number>, first: number) {
    this.next = first;
  }

  /** Reads every line, handing the text of the new rows to `send` a chunk at a time; each row's key to `keyed`. */
  async read(lines: SideLines, send: (text: Buffer) => Promise<void>, keyed?: KeyedRows): Promise<void> {
    const { held, pks, holders } = this;
    const tabs = new Int32Array(Math.max(EMAIL, DATE_ADDED, SRC_PK) + 1);
    const out = new CopyOut();
    for await (const chunk of lines()) {
      for (const line of chunk) {
        scanTabs(line, tabs);
        pks.push(intAt(line, columnStart(tabs, SRC_PK), tabs[SRC_PK]!));
        const start = columnStart(tabs, EMAIL);
        const holder = held.size ? held.get(line.toString('latin1', start, tabs[EMAIL]!).toLowerCase()) : undefined;
        if (holder !== undefined) {
          holders.push(pks.count - 1, holder);
          this.existing++;
          continue;
        }
        const dateStart = columnStart(tabs, DATE_ADDED);
        keyed?.row(out.length, line.toString('latin1', start, tabs[EMAIL]!).toLowerCase());
        out.int(this.next++);
        out.byte(TAB);
        out.bytes(line, start, tabs[EMAIL]!);
        out.byte(TAB);
        // A missing date_added (\N) is the transaction's start, as the merge's now().
        if (line[dateStart] === 0x5c) out.raw(NOW);
        else out.bytes(line, dateStart, tabs[DATE_ADDED]!);
        out.byte(NEWLINE);
      }
      if (out.length) await send(out.take());
    }
  }
}

/**
 * Whether the new rows go into `table` in the order of its unique key, and if so truncates it:
 * only where it is empty, under this session's ACCESS EXCLUSIVE lock (the bulk path's), no other
 * table's foreign key points at it, it has no row security, no inheritance child and the TRUNCATE
 * privilege, no publication exists (a TRUNCATE replicates, and a subscriber's table need not be
 * empty), and its address column's collation, the database's default, orders the addresses' ASCII
 * characters as bytes (C or POSIX; its lower() was checked to be ASCII's). The key is rebuilt after the load: on PostgreSQL 18 the citext
 * UNIQUE (email) of 119,493 addresses then took 0.12 s instead of 0.68 s, the table truncated in
 * this transaction and filled in key order (filled in that order without the TRUNCATE: 0.58 s;
 * truncated and filled in file order: 0.88 s). The TRUNCATE of an empty table changes no row and
 * no definition, and a rollback undoes it. Any other order would only be slower: the build sorts.
 */
async function inKeyOrder(client: pg.ClientBase, table: string): Promise<boolean> {
  const version = Number((await client.query(`SELECT current_setting('server_version_num') AS v`)).rows[0].v);
  // pg_publication is PostgreSQL 10's; any publication at all (its options vary by version) keeps the file's order.
  const published = version >= 100000 ? 'EXISTS (SELECT 1 FROM pg_publication)' : 'false';
  // The table locked by this session (the bulk path's lock, so "empty" stays true), no row
  // security, no inheritance child (TRUNCATE would reach it), TRUNCATE granted, and the address
  // column in the database's default collation (100), which the comparisons test.
  const ok = (await client.query(`SELECT NOT EXISTS (SELECT 1 FROM ${table}) AND NOT ${published}
      AND EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'relation' AND relation = $1::regclass AND pid = pg_backend_pid()
                    AND mode = 'AccessExclusiveLock' AND granted)
      AND EXISTS (SELECT 1 FROM pg_class WHERE oid = $1::regclass AND NOT relrowsecurity AND NOT relhassubclass)
      AND has_table_privilege($1::regclass, 'TRUNCATE')
      AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'email' AND attcollation = 100)
      AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid = $1::regclass AND conrelid <> $1::regclass)
      AND 'B' < 'a'::text AND 'a+' < 'a-'::text AND 'a-' < 'a.'::text AND 'a.' < 'a0'::text AND 'a9' < 'a@'::text AND 'a@' < 'a_'::text AS ok`,
  [table])).rows[0].ok as boolean;
  if (ok) await client.query(`TRUNCATE ${table}`);
  return ok;
}

/**
 * The COPY text of the new rows, sent in the order of their key (the lower-case address: code
 * units, which are bytes for plain ASCII). Up to `maxHeld` rows are held in the client and sorted
 * there. Beyond, given `scratch`, each `maxHeld` rows go sorted to a scratch file (a run) and the
 * runs are merged into the COPY: the client holds one run at a time and a read chunk of each.
 */
class KeyedRows {
  /** The rows' text, a chunk of whole rows at a time, each row's chunk and where it starts in it, and its key. */
  private texts: Buffer[] = [];
  private chunkOf: number[] = [];
  private starts: number[] = [];
  private keys: string[] = [];
  /** The held rows' order, once {@link sort} sorted them. */
  private order: number[] | undefined;
  private readonly runs: string[] = [];

  constructor(private readonly maxHeld: number, private readonly scratch?: (name: string) => string) {}

  /** Notes a row whose text starts at `at` in the text {@link add} gets next. */
  row(at: number, key: string): void {
    this.chunkOf.push(this.texts.length);
    this.starts.push(at);
    this.keys.push(key);
  }

  /** The text of the rows noted since the last call (whole rows). */
  async add(text: Buffer): Promise<void> {
    // A copy of its exact size: a CopyOut's buffer may be twice what it holds.
    this.texts.push(Buffer.from(text));
    if (this.scratch && this.keys.length >= this.maxHeld) await this.spill();
  }

  /**
   * Sorts what is held, before {@link send}: the rows held, or with runs, the last rows to their
   * run. The work is the client's alone: the caller may do other work on the connection meanwhile.
   */
  async sort(): Promise<void> {
    if (this.runs.length) {
      if (this.keys.length) await this.spill();
    } else {
      this.order ??= this.sortHeld();
    }
  }

  /** Sends every row to `copy`, in key order (sorting first what {@link sort} has not); the runs' files go. */
  async send(copy: (text: Buffer) => Promise<void>): Promise<void> {
    await this.sort();
    if (!this.runs.length) {
      await this.sendHeld(this.order!, copy, 1 << 16);
      return;
    }
    try {
      await mergeRuns(this.runs, copy);
    } finally {
      for (const file of this.runs) await fs.rm(file, { force: true });
    }
  }

  /** The held rows' indexes in key order; the keys go. */
  private sortHeld(): number[] {
    const { keys } = this;
    const order = Array.from({ length: keys.length }, (_, i) => i);
    order.sort((a, b) => (keys[a]! < keys[b]! ? -1 : keys[a]! > keys[b]! ? 1 : a - b));
    this.keys = [];
    return order;
  }

  /** The rows held, in `order`, `bytes` at a time to `to`; the holder lets them go. */
  private async sendHeld(order: readonly number[], to: (text: Buffer) => Promise<unknown>, bytes: number): Promise<void> {
    const { texts, chunkOf, starts } = this;
    this.texts = [];
    this.chunkOf = [];
    this.starts = [];
    this.order = undefined;
    const out = new CopyOut(bytes);
    for (const i of order) {
      const text = texts[chunkOf[i]!]!;
      // A row ends where the next one of its chunk starts, or with its chunk.
      out.bytes(text, starts[i]!, chunkOf[i + 1] === chunkOf[i] ? starts[i + 1]! : text.length);
      if (out.length >= bytes) await to(out.take());
    }
    if (out.length) await to(out.take());
  }

  /** The rows held, sorted, to a new run file. */
  private async spill(): Promise<void> {
    const file = this.scratch!(`email_run_${this.runs.length}`);
    const handle = await fs.open(file, 'wx', 0o600);
    this.runs.push(file);
    try {
      // writeFile writes it all, from where the last one ended (a write() may write less).
      await this.sendHeld(this.sortHeld(), (text) => handle.writeFile(text), 1 << 18);
    } finally {
      await handle.close();
    }
  }
}

/** The lower-case address of a sentry_email COPY line (`id`, `email`, `date_added`). */
function addressKey(line: Buffer): string {
  const start = line.indexOf(TAB) + 1;
  return line.toString('latin1', start, line.indexOf(TAB, start)).toLowerCase();
}

/** A run file's reader: its read chunk of lines, the line at `at` and that line's key. */
interface RunCursor { next: AsyncIterator<Buffer[]>; lines: Buffer[]; at: number; key: string }

/**
 * The read chunks of all the runs being merged, together: each run's is this much over their
 * count, from 4 KB to 64 KB. A chunk's lines are Buffer views, about 100 bytes of heap each: with
 * 64 KB a run, the 73 runs of 1M users' Email records held 10 MB more than the 12 of round twenty.
 */
const MERGE_BYTES = 1 << 20;

/** Merges the sorted run files (COPY text of sentry_email) into one COPY in key order: a binary heap of their next lines. */
async function mergeRuns(runs: readonly string[], copy: (text: Buffer) => Promise<void>): Promise<void> {
  const chunk = Math.min(1 << 16, Math.max(1 << 12, Math.floor(MERGE_BYTES / runs.length)));
  const readers = runs.map((file) => readLines(file, chunk)[Symbol.asyncIterator]());
  try {
    const heap: RunCursor[] = [];
    for (const next of readers) {
      const first = await next.next();
      if (!first.done) heap.push({ next, lines: first.value, at: 0, key: addressKey(first.value[0]!) });
    }
    await mergeHeap(heap, copy);
  } finally {
    // A failed COPY leaves no file open.
    for (const r of readers) await r.return?.(undefined);
  }
}

/** The merge itself: the cursor with the least key first, until every run is read. */
async function mergeHeap(heap: RunCursor[], copy: (text: Buffer) => Promise<void>): Promise<void> {
  const down = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && heap[l]!.key < heap[m]!.key) m = l;
      if (r < heap.length && heap[r]!.key < heap[m]!.key) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m]!, heap[i]!];
      i = m;
    }
  };
  for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i);
  const out = new CopyOut();
  while (heap.length) {
    const top = heap[0]!;
    out.raw(top.lines[top.at]!);
    out.byte(NEWLINE);
    if (out.length >= 1 << 16) await copy(out.take());
    if (++top.at === top.lines.length) {
      const more = await top.next.next();
      if (more.done) {
        heap[0] = heap[heap.length - 1]!;
        heap.pop();
        if (heap.length) down(0);
        continue;
      }
      top.lines = more.value;
      top.at = 0;
    }
    top.key = addressKey(top.lines[top.at]!);
    down(0);
  }
  if (out.length) await copy(out.take());
}

/**
 * The target's addresses that the file may hold (`check`), by their lower-case form (the
 * database's lower()), each to its lowest id: one pass over the table, a page at a time. Or why
 * the records are staged instead: a target much larger than the file, or too many of them held.
 */
async function heldAddresses(client: pg.ClientBase, table: string, check: EmailCheck): Promise<Map<string, number> | string> {
  // A few rows (a new Sentry's) are read whatever the file holds.
  const limit = Math.max(TARGET_RATIO * check.count, FEW_ROWS);
  // Its statistics' count, else (never analysed) a count that stops past the limit.
  const stats = Number((await client.query(`SELECT reltuples FROM pg_class WHERE oid = $1::regclass`, [table])).rows[0]?.reltuples ?? -1);
  const rows = stats >= 0 ? stats
    : Number((await client.query(`SELECT count(*)::float8 AS n FROM (SELECT 1 FROM ${table} LIMIT $1) x`, [limit + 1])).rows[0].n);
  if (rows > limit) return `the target holds more than ${TARGET_RATIO} times the file's addresses (the merge probes its key instead)`;
  const held = new Map<string, number>();
  for await (const page of cursorPages<[number, string | null]>(client, 'userport_held_addresses', `SELECT id::float8, lower(email::text) FROM ${table}`)) {
    for (const [id, lowered] of page) {
      if (lowered === null || !check.mayHold(lowered)) continue;
      const had = held.get(lowered);
      if (had !== undefined) {
        if (id < had) held.set(lowered, id);
      } else if (held.size < MAX_HELD) {
        held.set(lowered, id);
      } else {
        return `the target holds more than ${MAX_HELD.toLocaleString('en-US')} of the file's addresses (the client keeps no more)`;
      }
    }
  }
  return held;
}

/** The merge's reason for an Email record that no kept user's address keeps (emails.ts). */
export const EMAIL_NOT_KEPT = 'not an email of a user kept by --filter-usernames';

/**
 * With a username filter, the addresses that may keep an Email record. Sentry's rule (emails.ts):
 * an Email record is imported when its address, case-insensitively, is a kept user's email or the
 * address of one of a kept user's user emails. Noted as they pass, as 64-bit hashes of the ASCII
 * lower-case form: each kept user's email, and the address of each user email whose user the
 * filter did not remove (a kept user's, or an unknown or rejected user's: more than the rule's,
 * never fewer). So an Email record whose address is plain ASCII and not among them is filtered,
 * exactly ({@link filterEmails}); any other one is staged for the merge. An address noted that is
 * not plain ASCII text (its lower() may be an ASCII one: the Kelvin sign's is "k") and it gives up:
 * every record is staged.
 */
export class KeptAddresses {
  /** Why no record can be filtered in the client, once something says so. */
  why: string | undefined;
  private seen: HashSet64 | undefined = new HashSet64();
  private count = 0;

  note(address: unknown): void {
    if (!this.seen || typeof address !== 'string') return;
    if (++this.count > MAX_ADDRESSES) this.fail(`more than ${MAX_ADDRESSES.toLocaleString('en-US')} kept addresses (the client keeps no more)`);
    else if (this.seen.addText(0, address, true) === undefined) this.fail('a kept user\'s address is not plain ASCII text');
  }

  /** True when `address` (a record's, unescaped) is certainly none of the kept addresses: plain ASCII text, its hash not noted. */
  excludes(address: string): boolean {
    return this.seen?.hasText(0, address, true) === false;
  }

  /** Lets the hashes go. */
  release(): void {
    this.seen = undefined;
  }

  private fail(why: string): void {
    this.why = why;
    this.seen = undefined;
  }
}

/**
 * The diverted Email records of an import with a username filter: each one whose address no kept
 * user's keeps ({@link KeptAddresses}) is dropped with the merge's finding (kind filtered,
 * {@link EMAIL_NOT_KEPT}), COPYed straight into userport.findings; the others are handed to
 * `stage`, for the merge to decide as ever (every address of a partition is the same
 * case-insensitively, so a staged one is ranked among the same records as before). An address
 * with a backslash in its staging line (COPY's escapes) is staged. Only where `kept` did not give
 * up (its `why`: the caller stages every record then). Resolves to how many of each.
 */
export async function filterEmails(client: pg.ClientBase, run: number, lines: SideLines, kept: KeptAddresses,
  stage: (lines: Buffer[]) => Promise<void>): Promise<{ filtered: number; staged: number }> {
  const reason = Buffer.from(`\t${EMAIL_NOT_KEPT}\n`);
  const excluded = (line: Buffer, tabs: Int32Array) => {
    const start = columnStart(tabs, EMAIL);
    const end = tabs[EMAIL]!;
    const escape = line.indexOf(0x5c, start);
    return (escape < 0 || escape >= end) && kept.excludes(line.toString('latin1', start, end));
  };
  const filtered = await copyFindings(client, run, 'sentry.email', lines, EMAIL,
    (line, tabs, out) => { if (!excluded(line, tabs)) return false; out.raw(reason); return true; }, 'filtered');
  let staged = 0;
  const tabs = new Int32Array(EMAIL + 1);
  for await (const chunk of lines()) {
    const rest = chunk.filter((line) => { scanTabs(line, tabs); return !excluded(line, tabs); });
    staged += rest.length;
    if (rest.length) await stage(rest);
  }
  kept.release();
  return { filtered, staged };
}

/**
 * The pk map's ranges of this run's Email records, in one COPY, from their source pks in file
 * order (`pks`) and what the rows' COPY assigned: the holder in the target of the address of the
 * records at the indexes `holders` lists (index, id, ...), else the next id from `first`. Each
 * range is written as soon as the next record breaks it. Records whose ids
 * follow each other but whose source pks do not (a record's pk skips other records' pks) share a
 * listed range, up to {@link MAX_LISTED}: a generated export of 100k users, whose Email pks skip
 * one in two, took 80k rows of one pair each and a quarter of a second of the server.
 */
async function writePkRanges(client: pg.ClientBase, run: number, pks: PkTrail, holders: readonly number[], first: number): Promise<void> {
  const sql = 'COPY userport.pk_ranges (run, model, source_pk, target_id, kind, span, source_pks) FROM STDIN';
  await copyInto(client, sql, 'userport.pk_ranges', async (send) => {
    const lead = Buffer.from(`${run}\tsentry.email\t`);
    const kinds = { inserted: Buffer.from('\tinserted\t'), existing: Buffer.from('\texisting\t') };
    const consecutive = Buffer.from('\t\\N\n');
    const out = new CopyOut();
    const text = (r: PkRange) => {
      out.raw(lead);
      out.int(r.pk);
      out.byte(TAB);
      out.int(r.id);
      out.raw(kinds[r.kind]);
      out.int(r.span);
      if (!r.pks) { out.raw(consecutive); return; }
      out.byte(TAB);
      out.byte(0x7b); // {
      r.pks.forEach((pk, i) => { if (i) out.byte(0x2c); out.int(pk); });
      out.byte(0x7d); // }
      out.byte(NEWLINE);
    };
    let range: PkRange | undefined;
    let next = first;
    let h = 0;
    let index = 0;
    for (const pk of pks) {
      const holder = holders[h] === index ? holders[h + 1] : undefined;
      if (holder !== undefined) h += 2;
      index++;
      const kind = holder === undefined ? 'inserted' : 'existing';
      const id = holder ?? next++;
      if (range && range.kind === kind && id === range.id + range.span) {
        if (!range.pks && pk === range.pk + range.span) { range.span++; continue; }
        // A pk that skips: the range lists its pks from here on, while it has room.
        if (range.span < MAX_LISTED) {
          range.pks ??= Array.from({ length: range.span }, (_, i) => range!.pk + i);
          range.pks.push(pk);
          range.span++;
          continue;
        }
      }
      if (range) text(range);
      range = { pk, id, span: 1, kind };
      if (out.length >= 1 << 16) await send(out.take());
    }
    if (range) text(range);
    if (out.length) await send(out.take());
  });
}
