/**
 * `importUsers`: the whole job, wired with `await pipeline(...)`:
 * source bytes -> [decryptor] -> tokenizer + user filter + model mapper (fused) -> PostgreSQL sink.
 * Also the bookkeeping around it: the import row, resuming, the findings file, the summary.
 */
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { applySessionSettings, checkDatabaseUrl, createKnex, migrate, PG_TYPES, waitForDatabase } from './db/knex.js';
import { checkOptions, describeValue, isBoolean, isFunction, isInteger, isNonEmptyString, isStringIterable, type OptionCheck } from './options.js';
import { mergeStaged } from './db/merge.js';
import { openDecryptedSource, type KeyUnwrapper } from './decrypt.js';
import { ErrorCodes, OptionError, UserportError, wrapDbError } from './errors.js';
import type { MappedItem } from './map-models.js';
import { createPgSink, DEFAULT_BATCH_ROWS } from './pg-sink.js';
import { createRejectsFile, type RejectSink } from './rejects.js';
import { ImportStats, type ImportSummary, type StatsSnapshot } from './stats.js';
import { createRecordProcessor } from './process-records.js';
import { DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES } from './tokenize.js';

/**
 * Bytes per read from a plain file. Each chunk becomes a burst of records pushed at once (a
 * stream's highWaterMark cannot split a chunk), so big reads mean many records alive at once:
 * 1 MiB reads held ~3,000 parsed records in the tokenizer's buffer and raised peak RSS by ~20 MB
 * for no speed gain.
 */
const READ_CHUNK = 128 * 1024;

/** How long a resumable import waits for another process holding the same import id. */
const BUSY_WAIT_SECONDS = 60;

/**
 * application_name of the session that holds an import's locks: names this process and host,
 * so a resume can tell its predecessor's orphaned session (its process is gone) from a live one.
 */
function ownerName(pid = process.pid): string {
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
    if (!m || h.app !== ownerName(Number(m[1])) || processExists(Number(m[1]))) continue;
    // Waits (up to 10 s) for the session to be gone, so its locks are free on return.
    const r = await client.query<{ ok: boolean }>('SELECT pg_terminate_backend($1, 10000) AS ok', [h.pid]);
    ended ||= !!r.rows[0]?.ok;
  }
  return ended;
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, as another user's process.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Progress of a running import, reported about twice a second. */
export interface Progress {
  /** `reading` while records flow; `merging` once all are read and staged. */
  phase: 'reading' | 'merging';
  bytesRead: number;
  /** Total bytes when known (a file), else undefined. */
  totalBytes: number | undefined;
  records: number;
  seconds: number;
}

/** Options of {@link importUsers}. */
export interface ImportOptions {
  /** A file path, `-` for standard input, or a byte stream. */
  source: string | Readable;
  /**
   * `postgresql://...` of the target database. When absent, the embedded PostgreSQL in
   * `embeddedDir` is started (or reused); its package is loaded only then.
   */
  databaseUrl?: string;
  /** Folder of the embedded database, used when `databaseUrl` is absent. @default `.userport` under the current directory */
  embeddedDir?: string;
  /** Reuse an existing user on username collision instead of renaming. @default false */
  mergeUsers?: boolean;
  /** Import only these users (exact usernames) and what belongs to them. */
  filterUsernames?: string[];
  /** Run everything, report, then roll back. @default false */
  dryRun?: boolean;
  /** Commit in batches with checkpoints; re-running with the same `importId` resumes. @default false */
  resumable?: boolean;
  /**
   * Id of the import (resumable mode). @default the id of an unfinished (or finished) resumable
   * import of the same file and options, so that running the same command again continues it;
   * else a new UUID
   */
  importId?: string;
  /** Rows per committed batch in resumable mode. @default 20000 */
  batchRows?: number;
  /** Write records that fail validation here (JSON lines) instead of aborting. */
  rejectsFile?: string;
  /** With `rejectsFile`: abort after this many rejects. @default unlimited */
  maxRejects?: number;
  /** Write every finding (dropped, filtered, merged, renamed rows; or the error) here as JSON. */
  findingsFile?: string;
  /** @default 1 MiB */
  maxRecordBytes?: number;
  /** @default 64 */
  maxDepth?: number;
  /** When set, `source` is an encrypted export tarball and this unwraps its key. */
  decrypt?: KeyUnwrapper;
  /** Called about twice a second while records flow. */
  onProgress?: (p: Progress) => void;
  /** Called once the import id is known (before any record is read). */
  onStart?: (info: { importId: string; resumed: boolean; fromOrdinal: number; found?: boolean }) => void;
}

const isSource: OptionCheck = (v) => (typeof v === 'string' && v !== '') || v instanceof Readable ? undefined : 'a file path, "-" or a Readable stream';
const isUnwrapper: OptionCheck = (v) => (v !== null && typeof v === 'object' && typeof (v as KeyUnwrapper).unwrap === 'function' ? undefined : 'a KeyUnwrapper (createLocalKeyUnwrapper or createGcpKmsUnwrapper)');

const IMPORT_OPTIONS: { readonly [K in keyof ImportOptions]-?: OptionCheck } = {
  source: isSource,
  databaseUrl: isNonEmptyString,
  embeddedDir: isNonEmptyString,
  mergeUsers: isBoolean,
  filterUsernames: isStringIterable,
  dryRun: isBoolean,
  resumable: isBoolean,
  importId: (v) => (typeof v === 'string' && /^[A-Za-z0-9._-]{1,100}$/.test(v) ? undefined : "1-100 letters, digits, '.', '_' or '-'"),
  batchRows: isInteger(1),
  rejectsFile: isNonEmptyString,
  maxRejects: isInteger(0),
  findingsFile: isNonEmptyString,
  maxRecordBytes: isInteger(16),
  maxDepth: isInteger(2),
  decrypt: isUnwrapper,
  onProgress: isFunction,
  onStart: isFunction,
};

function checkImportOptions(o: ImportOptions): void {
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new OptionError(`importUsers: options must be an object, got ${describeValue(o)}`, 'options');
  checkOptions('importUsers', o, IMPORT_OPTIONS);
  if (o.source === undefined) throw new OptionError('importUsers: option source is required (a file path, "-" or a Readable stream)', 'source');
  if (o.databaseUrl !== undefined) checkDatabaseUrl(o.databaseUrl);
  if (o.databaseUrl !== undefined && o.embeddedDir !== undefined) throw new OptionError('importUsers: give databaseUrl or embeddedDir, not both', 'embeddedDir');
  if (o.resumable && o.dryRun) throw new OptionError('importUsers: resumable and dryRun cannot be combined', 'dryRun');
  if (o.importId !== undefined && !o.resumable) throw new OptionError('importUsers: importId needs resumable: true', 'importId');
  if (o.maxRejects !== undefined && o.rejectsFile === undefined) throw new OptionError('importUsers: maxRejects needs rejectsFile', 'maxRejects');
  if (o.resumable && (o.source === '-' || o.source instanceof Readable)) {
    throw new OptionError('importUsers: a resumable import needs a file source (it is read again to resume)', 'source');
  }
}

function isRegularFile(p: string): boolean {
  try { return fs.statSync(p).isFile(); } catch { return true; /* let the open report it */ }
}

/**
 * The URL of the embedded server in `dir`, started if it is not running. Loaded on demand: a
 * caller who gives a database URL never loads the embedded server's code or package.
 */
async function embeddedDatabaseUrl(dir: string | undefined): Promise<string> {
  const { startEmbedded } = await import('./db/embedded.js');
  return (await startEmbedded(dir === undefined ? {} : { dir })).url;
}

/** Size and SHA-256 of the first MiB: enough to refuse resuming with another file. */
function fingerprint(path: string): { size: number; hash: string } {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (err) {
    throw new UserportError(ErrorCodes.IO, `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(Math.min(size, 1 << 20));
    fs.readSync(fd, buf, 0, buf.length, 0);
    return { size, hash: createHash('sha256').update(buf).digest('hex') };
  } finally {
    fs.closeSync(fd);
  }
}

async function openSource(o: ImportOptions): Promise<{ stream: Readable; size: number | undefined }> {
  if (o.decrypt) {
    const input = typeof o.source === 'string' && o.source !== '-' && isRegularFile(o.source) ? { path: o.source }
      : typeof o.source === 'string' && o.source !== '-' ? { stream: fs.createReadStream(o.source) as Readable }
      : { stream: o.source === '-' ? process.stdin : (o.source as Readable) };
    const { stream, size } = await openDecryptedSource(input, { unwrapper: o.decrypt });
    return { stream, size };
  }
  if (o.source instanceof Readable) return { stream: o.source, size: undefined };
  if (o.source === '-') return { stream: process.stdin, size: undefined };
  let size: number;
  try {
    const st = fs.statSync(o.source);
    if (st.isDirectory()) throw new UserportError(ErrorCodes.IO, `${o.source} is a directory, not an export file`);
    // A FIFO or process substitution (`<(cat f)`) is streamed like standard input.
    if (!st.isFile()) return { stream: fs.createReadStream(o.source, { highWaterMark: READ_CHUNK }), size: undefined };
    size = st.size;
  } catch (err) {
    if (err instanceof UserportError) throw err;
    throw new UserportError(ErrorCodes.IO, `cannot read ${o.source}: ${(err as Error).message}`, { cause: err });
  }
  return { stream: fs.createReadStream(o.source, { highWaterMark: READ_CHUNK }), size };
}

interface ImportRow {
  run: number;
  state: string;
  source_size: number | null;
  source_fingerprint: string | null;
  options: Record<string, unknown>;
  checkpoint_ordinal: number;
  counters: StatsSnapshot | null;
  summary: ImportSummary | null;
}

/** Options that must be the same when an import is resumed. */
function resumeKey(o: ImportOptions) {
  return { mergeUsers: !!o.mergeUsers, filterUsernames: o.filterUsernames ? [...o.filterUsernames].sort() : null, encrypted: !!o.decrypt };
}

/**
 * Imports a Sentry user export. Resolves to the summary; rejects with a {@link UserportError}
 * (nothing written in atomic mode; everything up to the last checkpoint kept in resumable mode).
 */
export async function importUsers(options: ImportOptions): Promise<ImportSummary> {
  checkImportOptions(options);
  const started = Date.now();
  const databaseUrl = options.databaseUrl ?? await embeddedDatabaseUrl(options.embeddedDir);
  const mode: ImportSummary['mode'] = options.dryRun ? 'dry-run' : options.resumable ? 'resumable' : 'atomic';
  const knex = createKnex(databaseUrl, 2);
  const client = new pg.Client({ connectionString: databaseUrl, application_name: ownerName(), types: PG_TYPES });
  let clientError: Error | undefined;
  // A dead server makes pg emit 'error' on the client: without a listener the process would crash.
  client.on('error', (err) => { clientError = err; });
  const stats = new ImportStats();
  let rejects: RejectSink | undefined;
  let run = 0;
  let importId = options.importId ?? randomUUID();
  let progressTimer: NodeJS.Timeout | undefined;
  try {
    await waitForDatabase(knex);
    await migrate(knex);
    try { await client.connect(); } catch (err) { throw wrapDbError(err, 'connecting'); }
    await applySessionSettings(client);

    let skipThrough = 0;
    let resumeRejects: { bytes: number; count: number } | undefined;
    const fp = typeof options.source === 'string' && options.source !== '-' && isRegularFile(options.source) ? fingerprint(options.source) : undefined;
    let found = false;
    if (options.resumable && !fp) throw new OptionError('a resumable import needs a regular file source (it is read again to resume), not a pipe', 'source');
    if (options.resumable && options.importId === undefined) {
      const previous = await findResumableImport(client, fp!, resumeKey(options));
      if (previous) { importId = previous; found = true; }
    }
    if (options.resumable) {
      // A killed predecessor's session may still hold the lock: end it if its process is gone
      // from this host; otherwise wait a while (on another host, client_connection_check_interval
      // makes the server drop it within seconds).
      await endOrphan(client, importId);
      await client.query(`SET lock_timeout = '${BUSY_WAIT_SECONDS}s'`);
      try {
        await client.query('SELECT pg_advisory_lock(747211, hashtext($1))', [importId]);
      } catch (err) {
        if ((err as { code?: string }).code !== '55P03') throw err;
        throw new UserportError(ErrorCodes.IMPORT_BUSY, `import ${importId} is already running in another process`);
      }
      await client.query('SET lock_timeout = 0');
      const found = await client.query<ImportRow>('SELECT * FROM userport_import WHERE id = $1', [importId]);
      const row = found.rows[0];
      if (row) {
        if (row.state === 'done' && row.summary) return { ...row.summary, state: 'already-done' };
        if (row.source_size !== fp!.size || row.source_fingerprint !== fp!.hash) {
          throw new UserportError(ErrorCodes.IMPORT_MISMATCH, `import ${importId} was started with a different export file`);
        }
        const want = resumeKey(options) as Record<string, unknown>;
        // jsonb reorders keys: compare field by field.
        if (Object.keys(want).some((k) => JSON.stringify(row.options[k] ?? null) !== JSON.stringify(want[k]))) {
          throw new UserportError(ErrorCodes.IMPORT_MISMATCH, `import ${importId} was started with other options (merge, filter or decryption)`);
        }
        run = row.run;
        skipThrough = row.checkpoint_ordinal;
        if (row.counters) {
          stats.restore(row.counters);
          resumeRejects = row.counters.rejects ?? { bytes: 0, count: 0 };
        }
        await client.query(`UPDATE userport_import SET state = 'running', error = NULL, updated_at = now() WHERE run = $1`, [run]);
      } else {
        const ins = await client.query(
          `INSERT INTO userport_import (id, mode, state, source, source_size, source_fingerprint, options)
           VALUES ($1, 'resumable', 'running', $2, $3, $4, $5) RETURNING run`,
          [importId, options.source as string, fp!.size, fp!.hash, JSON.stringify(resumeKey(options))]);
        run = ins.rows[0].run;
      }
    } else {
      run = (await client.query(`SELECT nextval('userport_import_run_seq')::bigint AS run`)).rows[0].run;
    }
    options.onStart?.({ importId, resumed: skipThrough > 0, fromOrdinal: skipThrough, found });

    if (options.rejectsFile) {
      // Resuming: keep exactly the lines of the records before the checkpoint, drop any written
      // after it by the process that died.
      rejects = createRejectsFile(options.rejectsFile, { maxRejects: options.maxRejects, resumeAt: skipThrough ? resumeRejects ?? { bytes: 0, count: 0 } : undefined });
    }
    const collectRejects = !!rejects;
    const { stream: source, size } = await openSource(options);
    // Tokenizer, user filter and model mapper fused in one stream (the same pure functions as
    // createTokenizer/createUserFilter/createModelMapper, without two object-mode hops per record).
    const processor = createRecordProcessor({
      maxRecordBytes: options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES,
      maxDepth: options.maxDepth ?? DEFAULT_MAX_DEPTH,
      skipThrough,
      usernames: options.filterUsernames,
      collectRejects,
    });
    const filterActive = options.filterUsernames !== undefined;

    const finalize = async (c: pg.ClientBase) => {
      if (!options.resumable) {
        await c.query(`INSERT INTO userport_import (run, id, mode, state, source, source_size, source_fingerprint, options)
                       VALUES ($1, $2, $3, 'running', $4, $5, $6, $7)`,
          [run, importId, mode, typeof options.source === 'string' ? options.source : '(stream)', fp?.size ?? null, fp?.hash ?? null,
            JSON.stringify(resumeKey(options))]);
      }
      await mergeStaged(c, { run, mergeUsers: !!options.mergeUsers, filterActive }, stats);
      if (filterActive) {
        const r = await c.query(`SELECT name FROM unnest($2::text[]) AS name
                                 WHERE NOT EXISTS (SELECT 1 FROM userport_stage s WHERE s.run = $1 AND s.model = 1 AND s.keep AND s.username = name)
                                 ORDER BY name`, [run, [...new Set(options.filterUsernames)]]);
        stats.unmatchedUsernames = r.rows.map((x: { name: string }) => x.name);
      }
      if (options.findingsFile) await writeFindings(c, run, options.findingsFile, stats.unmatchedUsernames);
      const summary = buildSummary();
      if (options.resumable) await c.query('DELETE FROM userport_stage WHERE run = $1', [run]);
      await c.query(`UPDATE userport_import SET state = 'done', finished_at = clock_timestamp(), updated_at = clock_timestamp(), summary = $2,
                     counters = $3 WHERE run = $1`, [run, JSON.stringify(summary), JSON.stringify(stats.snapshot())]);
    };
    const checkpoint = async (c: pg.ClientBase, last: MappedItem) => {
      const snap = stats.snapshot();
      if (rejects) snap.rejects = { bytes: rejects.bytes, count: rejects.count };
      await c.query(`UPDATE userport_import SET checkpoint_ordinal = $2, checkpoint_offset = $3, counters = $4, updated_at = now()
                     WHERE run = $1`, [run, last.ordinal, last.offset + last.length, JSON.stringify(snap)]);
    };
    const sink = createPgSink({
      client, run, transaction: options.resumable ? 'batches' : 'whole', dryRun: options.dryRun,
      batchRows: options.batchRows ?? DEFAULT_BATCH_ROWS, checkpoint, finalize, stats, rejects,
    });
    if (options.onProgress) {
      const onProgress = options.onProgress;
      const report = (phase: Progress['phase']) => onProgress({
        phase, bytesRead: processor.splitter.bytesRead, totalBytes: size, records: processor.splitter.recordsSeen,
        seconds: (Date.now() - started) / 1000,
      });
      report('reading');
      progressTimer = setInterval(() => report('reading'), 500);
      progressTimer.unref();
      // Keep reporting through the merge: elapsed time must move while PostgreSQL works.
      processor.once('end', () => {
        clearInterval(progressTimer);
        report('merging');
        progressTimer = setInterval(() => report('merging'), 500);
        progressTimer.unref();
      });
    }
    const buildSummary = (): ImportSummary => {
      const s = stats.snapshot();
      return {
        importId, mode, state: 'done', records: s.records, bytes: s.bytes, seconds: (Date.now() - started) / 1000,
        models: s.models, skipped: s.skipped, unknownFields: s.unknownFields, adjacent: s.adjacent, unmatchedUsernames: s.unmatchedUsernames,
      };
    };
    try {
      await pipeline(source, processor, sink);
    } catch (err) {
      if (clientError && !(err instanceof UserportError)) throw wrapDbError(clientError, 'the import');
      throw err instanceof UserportError ? err : wrapDbError(err, 'the import');
    }
    return buildSummary();
  } catch (err) {
    const e = err instanceof UserportError ? err : wrapDbError(err, 'the import');
    if (options.findingsFile) writeErrorFinding(options.findingsFile, e);
    if (options.resumable && run) {
      await knex.raw(`UPDATE userport_import SET state = 'failed', error = ?, updated_at = now() WHERE run = ?`, [e.message, run]).catch(() => undefined);
    }
    throw e;
  } finally {
    if (progressTimer) clearInterval(progressTimer);
    await rejects?.close().catch(() => undefined);
    await client.end().catch(() => undefined);
    await knex.destroy().catch(() => undefined);
  }
}

/** Writes the findings of `run` as a JSON array, page by page (constant memory). */
async function writeFindings(c: pg.ClientBase, run: number, file: string, unmatched: string[]): Promise<void> {
  const fd = fs.openSync(file, 'w', 0o600);
  try {
    let first = true;
    const put = (obj: unknown) => { fs.writeSync(fd, (first ? '[\n' : ',\n') + JSON.stringify(obj)); first = false; };
    for (const name of unmatched) put({ finding: 'UnmatchedUsername', kind: 'unmatched', model: 'sentry.user', reason: `--filter-usernames: no user named "${name}"` });
    let after = -1;
    for (;;) {
      const page = await c.query(`SELECT kind, model, source_pk, ordinal, byte_offset, reason FROM userport_finding
                                  WHERE run = $1 AND ordinal > $2 ORDER BY ordinal LIMIT 5000`, [run, after]);
      for (const r of page.rows) {
        put({ finding: 'ImportFinding', kind: r.kind, model: r.model, pk: r.source_pk, ordinal: r.ordinal, offset: r.byte_offset, reason: r.reason });
      }
      if (page.rows.length < 5000) break;
      after = page.rows[page.rows.length - 1].ordinal;
    }
    fs.writeSync(fd, first ? '[]\n' : '\n]\n');
  } finally {
    fs.closeSync(fd);
  }
}

function writeErrorFinding(file: string, e: UserportError): void {
  try {
    const p = e.position ?? {};
    fs.writeFileSync(file, JSON.stringify([{ finding: 'ImportError', kind: e.code, reason: e.message, ...p }], null, 2) + '\n', { mode: 0o600 });
  } catch {
    // The findings file is a report; failing to write it must not hide the real error.
  }
}

/**
 * The id of the latest resumable import of the same file (size and fingerprint) and options:
 * an unfinished one first, else a finished one. Running the same command again must continue
 * it (or say it is done), never start a duplicate that renames every user.
 */
async function findResumableImport(client: pg.ClientBase, fp: { size: number; hash: string }, key: ReturnType<typeof resumeKey>): Promise<string | undefined> {
  const r = await client.query<{ id: string }>(
    `SELECT id FROM userport_import
     WHERE mode = 'resumable' AND source_size = $1 AND source_fingerprint = $2 AND options = $3::jsonb
     ORDER BY (state <> 'done') DESC, run DESC LIMIT 1`,
    [fp.size, fp.hash, JSON.stringify(key)]);
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
    await migrate(knex);
    // The lock is pg_advisory_lock(747211, hashtext(id)) (see importUsers): pg_locks shows a
    // two-key advisory lock as classid = key 1, objid = key 2 as unsigned, objsubid = 2.
    const { rows } = await knex.raw(`
      SELECT run::int AS run, id, mode, source, started_at, finished_at, checkpoint_ordinal::bigint AS checkpoint_ordinal,
             (summary->>'records')::bigint AS records, error,
             CASE WHEN state = 'running' AND NOT EXISTS (
               SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid = 747211 AND l.objid = (hashtext(i.id)::bigint & 4294967295)::oid AND l.objsubid = 2)
             THEN 'interrupted' ELSE state END AS state
      FROM userport_import i ORDER BY run`);
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
