/**
 * SQL on the import table (`userport.imports`) and the resume protocol around it: the advisory
 * lock that says an import is running (and ending an orphaned holder), finding the import to
 * resume, checkpoints, and the final state. `importUsers` (lib/import.ts) drives these.
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import type pg from 'pg';
import { jsonText } from './json-text.js';
import { createKnex, isMigrated, migrate, waitForDatabase } from './knex.js';
import { ErrorCodes, opt, OptionError, printable, sayWording, UserportError, wording, type Wording } from '../errors.js';
import { processAlive } from '../spool.js';
import type { ImportSummary, StatsSnapshot } from '../stats.js';

/** What of an import's options {@link resumeKey} reads. */
export interface ResumeKeyOptions {
  mergeUsers?: boolean;
  filterUsernames?: Iterable<string>;
  decrypt?: unknown;
  scope?: string;
  overwriteConfigs?: boolean;
}

/**
 * The options that must be the same when an import is resumed (or found done): stored in the
 * import's row, compared by {@link optionDifferences}.
 */
export function resumeKey(o: ResumeKeyOptions): Record<string, unknown> {
  return {
    mergeUsers: !!o.mergeUsers, filterUsernames: o.filterUsernames ? [...o.filterUsernames].sort() : null, encrypted: !!o.decrypt,
    // Only when not the default, so imports recorded before the scopes existed still match.
    ...(o.scope && o.scope !== 'users' ? { scope: o.scope } : {}), ...(o.overwriteConfigs ? { overwriteConfigs: true } : {}),
  };
}

/** One resume-key value as a person reads it. */
function describeKeyValue(key: string, v: unknown): string {
  if (key === 'mergeUsers' || key === 'overwriteConfigs') return v ? 'on' : 'off';
  if (key === 'scope') return v ? String(v) : 'users';
  if (key === 'encrypted') return v ? 'encrypted' : 'plain';
  if (key === 'filterUsernames') {
    if (!Array.isArray(v)) return 'no filter';
    const names = v.slice(0, 3).map((x) => printable(String(x))).join(', ');
    return `${v.length} ${v.length === 1 ? 'name' : 'names'} (${names}${v.length > 3 ? ', ...' : ''})`;
  }
  return JSON.stringify(v ?? null);
}

/**
 * How the resume-key options `before` (an import's row) differ from `now`, one entry per option:
 * `mergeUsers was off, now on`, in parts that name the option. jsonb reorders keys, so options
 * are compared one by one, each as it is stored ({@link jsonText}: a lone surrogate in a
 * username of the filter is U+FFFD in the row).
 */
export function optionDifferences(before: Record<string, unknown>, now: Record<string, unknown>): Wording[] {
  const label = (k: string): Wording => (k === 'encrypted' ? wording`the export (${opt('decrypt')})` : k === 'scope' ? ['the scope'] : [opt(k)]);
  return Object.keys(now).filter((k) => jsonText(before[k] ?? null) !== jsonText(now[k] ?? null))
    .map((k) => wording`${label(k)} was ${describeKeyValue(k, before[k] ?? null)}, now ${describeKeyValue(k, now[k])}`);
}

/** `parts` joined by `separator`, as one wording. */
export function joinWordings(parts: readonly Wording[], separator: string): Wording {
  return parts.flatMap((w, i) => (i ? [separator, ...w] : [...w]));
}

/** How long a resumable import waits for another process holding the same import id. */
const BUSY_WAIT_SECONDS = 60;

/**
 * application_name of the session that holds an import's locks: names this process and host,
 * so a resume can tell its predecessor's orphaned session (its process is gone) from a live one.
 */
export function ownerName(pid = process.pid): string {
  return `userport ${pid}@${os.hostname()}`.slice(0, 63);
}

/**
 * Ends the server session still holding import `importId`'s lock when the process that opened it
 * (on this host) no longer exists: after a SIGKILL it would run its statement to the end, holding
 * the import lock and the merge lock. Its transaction rolls back, as a crash would have.
 * Returns whether an orphan was ended.
 */
async function endOrphan(client: pg.Client, importId: string): Promise<boolean> {
  const holders = await client.query<{ pid: number; app: string }>(
    `SELECT a.pid, a.application_name AS app FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 747211 AND l.objid = hashtext($1)::oid AND l.objsubid = 2
       AND a.pid <> pg_backend_pid()`, [importId]);
  let ended = false;
  for (const h of holders.rows) {
    const m = /^userport (\d+)@/.exec(h.app);
    if (!m || h.app !== ownerName(Number(m[1])) || processAlive(Number(m[1]))) continue;
    // Waits (up to 10 s) for the session to be gone, so its locks are free on return.
    const r = await client.query<{ ok: boolean }>('SELECT pg_terminate_backend($1, 10000) AS ok', [h.pid]);
    ended ||= !!r.rows[0]?.ok;
  }
  return ended;
}

/**
 * Takes import `importId`'s advisory lock for this session. A killed predecessor's session may
 * still hold it: it is ended if its process is gone from this host; otherwise this waits a while
 * (on another host, client_connection_check_interval makes the server drop it within seconds),
 * then fails with IMPORT_BUSY.
 */
export async function lockImport(client: pg.Client, importId: string): Promise<void> {
  await endOrphan(client, importId);
  await client.query(`SET lock_timeout = '${BUSY_WAIT_SECONDS}s'`);
  try {
    await client.query('SELECT pg_advisory_lock(747211, hashtext($1))', [importId]);
  } catch (err) {
    if ((err as { code?: string }).code !== '55P03') throw err;
    throw new UserportError(ErrorCodes.IMPORT_BUSY, `import ${importId} is already running in another process`);
  }
  await client.query('SET lock_timeout = 0');
}

/** A row of `userport.imports`. */
export interface ImportRow {
  run: number;
  state: string;
  source_size: number | null;
  source_fingerprint: string | null;
  options: Record<string, unknown>;
  checkpoint_ordinal: number;
  counters: StatsSnapshot | null;
  summary: ImportSummary | null;
}

/** The row of import `importId`, if any. */
export async function findImport(client: pg.ClientBase, importId: string): Promise<ImportRow | undefined> {
  const found = await client.query<ImportRow>('SELECT * FROM userport.imports WHERE id = $1', [importId]);
  return found.rows[0];
}

/** Marks an import being resumed as running again. */
export async function markImportRunning(client: pg.ClientBase, run: number): Promise<void> {
  await client.query(`UPDATE userport.imports SET state = 'running', error = NULL, updated_at = now() WHERE run = $1`, [run]);
}

/** What an import row records of its source and options. */
export interface ImportRowSource {
  importId: string;
  source: string;
  fingerprint: { size: number; hash: string } | undefined;
  /** The options that must be the same to resume (jsonb). */
  options: unknown;
}

/** Inserts the row of a new resumable import; resolves to its run number. */
export async function insertResumableImport(client: pg.ClientBase, r: ImportRowSource): Promise<number> {
  const ins = await client.query(
    `INSERT INTO userport.imports (id, mode, state, source, source_size, source_fingerprint, options)
     VALUES ($1, 'resumable', 'running', $2, $3, $4, $5) RETURNING run`,
    [r.importId, r.source, r.fingerprint!.size, r.fingerprint!.hash, jsonText(r.options)]);
  return ins.rows[0].run;
}

/** A fresh run number for an import whose row is written only at the end (atomic, dry run). */
export async function nextImportRun(client: pg.ClientBase): Promise<number> {
  return (await client.query(`SELECT nextval('userport.imports_run_seq')::bigint AS run`)).rows[0].run;
}

/** Inserts the row of an atomic (or dry-run) import, inside its transaction, at the end. */
export async function insertImport(c: pg.ClientBase, run: number, mode: ImportSummary['mode'], r: ImportRowSource): Promise<void> {
  await c.query(`INSERT INTO userport.imports (run, id, mode, state, source, source_size, source_fingerprint, options)
                 VALUES ($1, $2, $3, 'running', $4, $5, $6, $7)`,
    [run, r.importId, mode, r.source, r.fingerprint?.size ?? null, r.fingerprint?.hash ?? null,
      jsonText(r.options)]);
}

/** Drops the staged rows of `run` (a resumable import's stage outlives its batches). */
export async function deleteStaged(c: pg.ClientBase, run: number): Promise<void> {
  await c.query('DELETE FROM userport.stage WHERE run = $1', [run]);
}

/** Marks `run` done with its summary and counters. */
export async function finishImport(c: pg.ClientBase, run: number, summary: ImportSummary, counters: StatsSnapshot): Promise<void> {
  await c.query(`UPDATE userport.imports SET state = 'done', finished_at = clock_timestamp(), updated_at = clock_timestamp(), summary = $2,
                 counters = $3 WHERE run = $1`, [run, jsonText(summary), jsonText(counters)]);
}

/** Records a checkpoint: every record through `ordinal` (ending at byte `offset`) is committed. */
export async function saveCheckpoint(c: pg.ClientBase, run: number, ordinal: number, offset: number, counters: StatsSnapshot): Promise<void> {
  await c.query(`UPDATE userport.imports SET checkpoint_ordinal = $2, checkpoint_offset = $3, counters = $4, updated_at = now()
                 WHERE run = $1`, [run, ordinal, offset, jsonText(counters)]);
}

/**
 * Marks `run` failed with `message`; never throws (the import's own error is what matters). A
 * run already done is left alone: its COMMIT may have gone through although its answer was lost.
 */
export async function markImportFailed(client: pg.ClientBase, run: number, message: string): Promise<void> {
  await client.query(`UPDATE userport.imports SET state = 'failed', error = $1, updated_at = now() WHERE run = $2 AND state <> 'done'`, [message, run]).catch(() => undefined);
}

/**
 * The latest finished (not dry-run) import of the same file (size and fingerprint) and options,
 * in any mode: an atomic import of it again would give every user a second, renamed copy.
 */
export async function findDoneImport(client: pg.ClientBase, fp: { size: number; hash: string }, key: unknown): Promise<ImportRow & { id: string } | undefined> {
  const r = await client.query<ImportRow & { id: string }>(
    `SELECT * FROM userport.imports
     WHERE state = 'done' AND mode <> 'dry-run' AND source_size = $1 AND source_fingerprint = $2 AND options = $3::jsonb
     ORDER BY run DESC LIMIT 1`,
    [fp.size, fp.hash, jsonText(key)]);
  return r.rows[0];
}

/**
 * The id of the latest resumable import of the same file (size and fingerprint) and options:
 * an unfinished one first, else a finished one. Running the same command again must continue
 * it (or say it is done), never start a duplicate that renames every user.
 */
export async function findResumableImport(client: pg.ClientBase, fp: { size: number; hash: string }, key: unknown): Promise<string | undefined> {
  const r = await client.query<{ id: string }>(
    `SELECT id FROM userport.imports
     WHERE mode = 'resumable' AND source_size = $1 AND source_fingerprint = $2 AND options = $3::jsonb
     ORDER BY (state <> 'done') DESC, run DESC LIMIT 1`,
    [fp.size, fp.hash, jsonText(key)]);
  return r.rows[0]?.id;
}

/** One import as `userport imports` lists it. */
export interface ImportListing {
  run: number;
  id: string;
  mode: ImportSummary['mode'];
  /**
   * `running` only while a process holds the import (its advisory lock, held by a live session);
   * `interrupted` when the row says running but nobody does: killed, or the server died.
   */
  state: 'running' | 'interrupted' | 'failed' | 'done';
  source: string;
  startedAt: Date;
  finishedAt: Date | null;
  checkpointOrdinal: number;
  records: number | null;
  error: string | null;
}

/** Every import in the database at `databaseUrl`, oldest first. */
export async function listImports(databaseUrl: string): Promise<ImportListing[]> {
  const knex = createKnex(databaseUrl, 2);
  try {
    await waitForDatabase(knex);
    // A listing reads only: a database userport never imported into has no imports to list.
    if (!(await isMigrated(knex))) return [];
    // The lock is pg_advisory_lock(747211, hashtext(id)) (see importUsers): pg_locks shows a
    // two-key advisory lock as classid = key 1, objid = key 2 as unsigned, objsubid = 2.
    const { rows } = await knex.raw(`
      SELECT run::int AS run, id, mode, source, started_at, finished_at, checkpoint_ordinal::bigint AS checkpoint_ordinal,
             -- A library run (beginImportRun/finishImportRun) has no summary: its counters say how many.
             COALESCE(summary->>'records', counters->>'records')::bigint AS records, error,
             CASE WHEN state = 'running' AND NOT EXISTS (
               SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid = 747211 AND l.objid = (hashtext(i.id)::bigint & 4294967295)::oid AND l.objsubid = 2)
             THEN 'interrupted' ELSE state END AS state
      FROM userport.imports i ORDER BY run`);
    return (rows as Record<string, unknown>[]).map((r) => ({
      run: Number(r.run), id: String(r.id), mode: r.mode as ImportListing['mode'], state: r.state as ImportListing['state'],
      source: String(r.source), startedAt: new Date(r.started_at as string), finishedAt: r.finished_at ? new Date(r.finished_at as string) : null,
      checkpointOrdinal: Number(r.checkpoint_ordinal ?? 0), records: r.records === null || r.records === undefined ? null : Number(r.records),
      error: (r.error as string | null) ?? null,
    }));
  } finally {
    await knex.destroy();
  }
}

/** What {@link dropImport} removed. */
export interface DroppedImport {
  id: string;
  /** The state it was in: `interrupted` (nobody held it) or `failed`. */
  state: 'interrupted' | 'failed';
  /** Staged rows removed with it. */
  stagedRows: number;
}

/**
 * Removes an interrupted or failed import and what it left: its staged rows, findings and pk map
 * (the last two exist only if a merge committed, which a resumable import's merge never does
 * without finishing). Refused, changing nothing, for an unknown id (USERPORT_OPTION_INVALID), a
 * running import (USERPORT_IMPORT_BUSY: a live session holds its lock) and a done one
 * (USERPORT_OPTION_INVALID: its rows are Sentry's now, and its record is what says so).
 */
export async function dropImport(databaseUrl: string, importId: string): Promise<DroppedImport> {
  // Two connections: migrate holds one for its lock while knex's migrator uses another.
  const knex = createKnex(databaseUrl, 2);
  try {
    await waitForDatabase(knex);
    await migrate(knex);
    return await knex.transaction(async (trx) => {
      // Without waiting: a held lock means a live process is importing it right now.
      const locked = (await trx.raw('SELECT pg_try_advisory_xact_lock(747211, hashtext(?)) AS ok', [importId])).rows[0].ok as boolean;
      const row = (await trx.raw('SELECT run::bigint AS run, state FROM userport.imports WHERE id = ? FOR UPDATE', [importId])).rows[0] as { run: string; state: string } | undefined;
      if (!row) throw new OptionError(`no import ${importId} in this database (userport imports lists them)`, 'importId');
      if (!locked) throw new UserportError(ErrorCodes.IMPORT_BUSY, `import ${importId} is running in another process: stop it first`);
      if (row.state === 'done') {
        throw new OptionError(`import ${importId} is done: its rows are in Sentry's tables, and dropping its record would not remove them`, 'importId');
      }
      const staged = await trx.raw('DELETE FROM userport.stage WHERE run = ?', [row.run]);
      await trx.raw('DELETE FROM userport.findings WHERE run = ?', [row.run]);
      await trx.raw('DELETE FROM userport.pk_ranges WHERE run = ?', [row.run]);
      await trx.raw('DELETE FROM userport.imports WHERE run = ?', [row.run]);
      return { id: importId, state: row.state === 'failed' ? 'failed' : 'interrupted', stagedRows: staged.rowCount ?? 0 };
    });
  } finally {
    await knex.destroy();
  }
}

/** An unfinished import of the same file that a new import does not continue. */
export interface OtherUnfinished {
  importId: string;
  state: 'interrupted' | 'failed';
  /** Its options that must match to continue it (as `resumeKey` records them). */
  options: Record<string, unknown>;
}

/**
 * Unfinished resumable imports of the same file (size and fingerprint) other than `exceptId`
 * that nobody runs: a new import of that file should say they exist, and how to continue or drop
 * them, instead of leaving them staged forever.
 */
export async function otherUnfinishedImports(client: pg.ClientBase, fp: { size: number; hash: string }, exceptId: string): Promise<OtherUnfinished[]> {
  const r = await client.query<{ id: string; state: string; options: Record<string, unknown> }>(
    `SELECT id, state, options FROM userport.imports i
     WHERE mode = 'resumable' AND state IN ('running', 'failed') AND source_size = $1 AND source_fingerprint = $2 AND id <> $3
       AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
         AND l.classid = 747211 AND l.objid = (hashtext(i.id)::bigint & 4294967295)::oid AND l.objsubid = 2)
     ORDER BY run`, [fp.size, fp.hash, exceptId]);
  return r.rows.map((x) => ({ importId: x.id, state: x.state === 'failed' ? 'failed' : 'interrupted', options: x.options ?? {} }));
}

/** What {@link startImport} needs of an import. */
export interface ImportStartOptions extends ResumeKeyOptions {
  /** The id asked for (resumable imports); else one is found or made. */
  importId: string | undefined;
  resumable: boolean;
  dryRun: boolean;
  allowReimport: boolean;
  /** The source as the row records it: its path, or `(stream)`. */
  source: string;
  /** A regular file's size and fingerprint; undefined for a pipe or stream. */
  fingerprint: { size: number; hash: string } | undefined;
}

/** An import that runs: its run number, id, where it resumes, and what the row records. */
export interface StartedImport {
  run: number;
  importId: string;
  /** True when the import was found by its file and options (no importId given). */
  found: boolean;
  /** The checkpoint a resumed import continues after (0: from the start). */
  skipThrough: number;
  /** A resumed import's counters at its checkpoint. */
  counters: StatsSnapshot | null;
  /** Unfinished imports of the same file that this one does not continue, with how their options differ. */
  others: { importId: string; state: 'interrupted' | 'failed'; differs: string[]; differences: Wording[] }[] | undefined;
  /** What the import's row records (written at the end by an atomic import, now by a resumable one). */
  row: ImportRowSource;
}

/**
 * The resume protocol at the start of an import, on its connection: a resumable import finds its
 * id (by file and options when none is given), takes its lock and continues after its checkpoint
 * (refused, IMPORT_MISMATCH, when the file or the options differ), or inserts its row; an atomic
 * import of a file done already is not done again (unless `allowReimport`). Resolves to the
 * summary of the import already done, or to the import that runs.
 */
export async function startImport(client: pg.Client, o: ImportStartOptions): Promise<{ done: ImportSummary } | StartedImport> {
  const fp = o.fingerprint;
  const key = resumeKey(o);
  let importId = o.importId ?? randomUUID();
  let found = false;
  if (o.resumable && o.importId === undefined) {
    const previous = await findResumableImport(client, fp!, key);
    if (previous) { importId = previous; found = true; }
  }
  const row: ImportRowSource = { importId, source: o.source, fingerprint: fp, options: key };
  let before: ImportRow | undefined;
  if (o.resumable) {
    await lockImport(client, importId);
    before = await findImport(client, importId);
    if (before?.state === 'done' && before.summary) return { done: { ...before.summary, state: 'already-done' } };
    if (before && (before.source_size !== fp!.size || before.source_fingerprint !== fp!.hash)) {
      throw new UserportError(ErrorCodes.IMPORT_MISMATCH, `import ${importId} was started with a different export file`);
    }
    const differs = before ? optionDifferences(before.options, key) : [];
    if (differs.length) {
      throw new UserportError(ErrorCodes.IMPORT_MISMATCH, wording`import ${importId} was started with other options: ${joinWordings(differs, '; ')}. Continue it with its options, or remove it and its staged rows (\`userport imports drop ${importId}\`, dropImport)`);
    }
  } else if (fp && !o.dryRun && !o.allowReimport) {
    const done = await findDoneImport(client, fp, key);
    if (done?.summary) return { done: { ...done.summary, importId: done.id, state: 'already-done' } };
  }
  const skipThrough = before?.checkpoint_ordinal ?? 0;
  // A new import of a file whose earlier import is unfinished under other options: say so, or
  // that one would stay staged (and listed as interrupted) forever without anyone knowing why.
  let others: StartedImport['others'];
  if (fp && !skipThrough && !found) {
    const left = await otherUnfinishedImports(client, fp, importId);
    if (left.length) {
      others = left.map((x) => {
        const differences = optionDifferences(x.options, key);
        return { importId: x.importId, state: x.state, differs: differences.map((d) => sayWording(d)), differences };
      });
    }
  }
  // The run last: a failure from here on is the import's own (importUsers marks its row failed).
  let run: number;
  if (!o.resumable) run = await nextImportRun(client);
  else if (!before) run = await insertResumableImport(client, row);
  else {
    run = before.run;
    await markImportRunning(client, run);
  }
  return { run, importId, found, skipThrough, counters: before?.counters ?? null, others, row };
}
