/**
 * `importUsers`: the whole job, wired with `await pipeline(...)`:
 * source bytes -> [decryptor] -> tokenizer + user filter + model mapper (fused) -> PostgreSQL sink.
 * Also the bookkeeping around it: the options, checked and resolved once; the source (source.ts);
 * the database (db/import-database.ts); the import row and resuming (SQL in db/imports.ts); the
 * findings file (findings.ts); progress and the summary.
 */
import os from 'node:os';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { openImportDatabase, type ImportDatabase } from './db/import-database.js';
import { checkDatabaseUrl, checkOptions, describeValue, isBoolean, isFunction, isInteger, isKeyUnwrapper, isNonEmptyString, isStringIterable, toStringSet, type OptionCheck } from './options.js';
import { describePlan, earlyUsersOverlap, mergeAfterEarlyUsers, skippedModels, type MergeOptions, type MergeStep } from './db/merge/index.js';
import { deleteStaged, finishImport, insertImport, saveCheckpoint, startImport } from './db/imports.js';
import { unmatchedUsernames } from './db/findings.js';
import { commitOutcome } from './db/commit-outcome.js';
import type { KeyUnwrapper } from './crypto/unwrapper.js';
import { ErrorCodes, opt, OptionError, UserportError, wording, wrapCallbackError, wrapDbError, type Wording } from './errors.js';
import { writeErrorFinding, writeFindings } from './findings.js';
import { fieldLimits, modelInfo, NOT_USER_DATA, registry, skippedReasons, type ImportScope } from './models.js';
import { isImportScope } from './filter-users.js';
import { prepareImportSource } from './source.js';
import { spoolsIn } from './spool.js';
import type { MappedItem } from './map-models.js';
import { DEFAULT_BATCH_ROWS, pgSink } from './pg-sink.js';
import { StagedFacts } from './staged-facts.js';
import { openRejectsFile, type RejectSink } from './rejects.js';
import { ImportStats, type ImportSummary } from './stats.js';
import { recordProcessor } from './process-records.js';
import { DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES, TOKENIZER_OPTIONS } from './tokenize.js';
import type { TraceEvent } from './trace.js';

/** Progress of a running import, reported about twice a second. */
export interface Progress {
  /** `reading` while records flow; `merging` once all are read and staged. */
  phase: 'reading' | 'merging';
  bytesRead: number;
  /** Total bytes when known (a file), else undefined. */
  totalBytes: number | undefined;
  records: number;
  seconds: number;
  /**
   * While merging: the merge's step under way (`users`, `emails`, `user emails`, `options`,
   * `indexes`, `findings`); absent before the first (the last rows still being staged).
   */
  step?: MergeStep;
  /**
   * Whether the target's users table was empty when the import started: the empty-target path
   * (bulk load, the users' step overlapped with reading) makes the merge several times shorter
   * than into a database that holds users, which an estimate of the time left needs to know.
   */
  emptyTarget?: boolean;
  /** The import's scope (the merge has a privileges step in config and global scope). */
  scope?: ImportScope;
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
  /**
   * Sentry's import scope, for the user models (README, "Scopes"): `users` as `sentry import
   * users` (no credentials, no privileges); `config` also keeps staff/superuser/managed and
   * brings permissions, roles and personal API tokens; `global` also keeps password hashes,
   * two-factor authenticators, email verification and user IPs. Never wipes. @default 'users'
   */
  scope?: ImportScope;
  /**
   * Config and global scopes: a role whose name the target already has is overwritten with the
   * imported one (Sentry's `--overwrite-configs`); else it is kept. @default false
   */
  overwriteConfigs?: boolean;
  /**
   * `auto`: when every target table is empty or holds at most 1,000 rows (a restore, a new Sentry
   * with its first admin) and all can be locked at once without waiting, load the rows into the
   * bare tables and build their unique constraints, indexes and foreign keys afterwards, in the
   * same transaction (the tables stay locked until COMMIT); `off`: always insert row by row into
   * the indexed tables (the path a target holding more rows takes). Both write the same rows.
   * @default 'auto'
   */
  bulkLoad?: 'auto' | 'off';
  /** Import only these users (exact usernames) and what belongs to them. */
  filterUsernames?: string[];
  /** Run everything, report, then roll back. @default false */
  dryRun?: boolean;
  /**
   * Import a file again although an earlier import of the same file (size and fingerprint) and
   * options finished. Without it, an atomic import of such a file changes nothing and resolves to
   * that import's summary with `state: 'already-done'` (as a finished resumable import does): a
   * second import would give every user a renamed copy. Atomic imports only: a resumable import is
   * imported again under a new `importId`. @default false
   */
  allowReimport?: boolean;
  /** Commit in batches with checkpoints; re-running with the same `importId` resumes. @default false */
  resumable?: boolean;
  /**
   * Id of the import (resumable mode). @default the id of an unfinished (or finished) resumable
   * import of the same file and options, so that running the same command again continues it;
   * else a new UUID
   */
  importId?: string;
  /** Rows per committed batch; needs `resumable` (an atomic import commits once). @default 20000 */
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
  /**
   * Skip lines of text printed before the JSON array (log lines some setups write into the
   * export) and report them in the summary (`leadingText`). Without it, such an input fails with
   * USERPORT_INPUT_NOT_ARRAY naming this option. A gzip-compressed source is always read through
   * gunzip (found by its magic bytes). @default false
   */
  skipLeadingText?: boolean;
  /**
   * Folder of temporary files: the spool of an encrypted export, and the rows read while the
   * merge's users step runs (see README, "The merge starts while the file is read"); each is
   * private (0600 in a 0700 folder) and removed when the import ends. @default os.tmpdir()
   */
  tmpDir?: string;
  /** Called about twice a second while records flow. */
  onProgress?: (p: Progress) => void;
  /** Called once the import id is known (before any record is read). */
  onStart?: (info: StartInfo) => void;
  /**
   * Cancels the import when aborted: it stops (while the merge runs, at the merge's next step),
   * rolls back what it had not committed (an atomic import writes nothing; a resumable one keeps
   * what its checkpoints committed) and rejects with USERPORT_ABORTED once its connection is
   * clean. Once the COMMIT is sent it is too late: the import ends as the database says.
   */
  signal?: AbortSignal;
  /** Told how the import works, as it happens: the merge's statements, the sink's moments ({@link TraceEvent}). */
  onTrace?: (e: TraceEvent) => void;
  /** Also tell the plan of each statement of the merge (`plan` events; each is EXPLAINed first). Needs `onTrace`. @default false */
  explain?: boolean;
}

/** What {@link ImportOptions.onStart} is told once the import id is known. */
export interface StartInfo {
  importId: string;
  /** True when this continues an import after its last checkpoint. */
  resumed: boolean;
  fromOrdinal: number;
  /** True when the import was found by its file and options (no importId given). */
  found?: boolean;
  /**
   * Unfinished (interrupted or failed) resumable imports of the same file that this new import
   * does not continue, each with how its options differ from these (`mergeUsers was off, now
   * on`): continue one with its options, or remove it and its staged rows (`dropImport`).
   */
  others?: {
    importId: string; state: 'interrupted' | 'failed';
    differs: string[];
    /** The same, in parts that name the options (`differs` says them by their library names). */
    differences: Wording[];
  }[];
}

const isSource: OptionCheck = (v) => (typeof v === 'string' && v !== '') || v instanceof Readable ? undefined : 'a file path, "-" or a Readable stream';

const IMPORT_OPTIONS: { readonly [K in keyof ImportOptions]-?: OptionCheck } = {
  source: isSource,
  databaseUrl: isNonEmptyString,
  embeddedDir: isNonEmptyString,
  tmpDir: isNonEmptyString,
  mergeUsers: isBoolean,
  scope: isImportScope,
  overwriteConfigs: isBoolean,
  bulkLoad: (v) => (v === 'auto' || v === 'off' ? undefined : '"auto" or "off"'),
  filterUsernames: isStringIterable,
  dryRun: isBoolean,
  allowReimport: isBoolean,
  resumable: isBoolean,
  importId: (v) => (typeof v === 'string' && /^[A-Za-z0-9._-]{1,100}$/.test(v) ? undefined : "1-100 letters, digits, '.', '_' or '-'"),
  batchRows: isInteger(1),
  rejectsFile: isNonEmptyString,
  maxRejects: isInteger(0),
  findingsFile: isNonEmptyString,
  maxRecordBytes: TOKENIZER_OPTIONS.maxRecordBytes,
  maxDepth: isInteger(2),
  decrypt: isKeyUnwrapper,
  skipLeadingText: isBoolean,
  onProgress: isFunction,
  onStart: isFunction,
  signal: (v) => (v instanceof AbortSignal ? undefined : 'an AbortSignal'),
  onTrace: isFunction,
  explain: isBoolean,
};

/**
 * The rules of {@link ImportOptions} that need no file and no database, each stated once: types,
 * then the combinations. Throws an {@link OptionError} naming the library option (the CLI says it
 * as its flag). Pure; {@link checkImportFiles} checks the files. `importUsers` runs both first.
 */
export function checkImportOptions(o: ImportOptions): void {
  const scope = 'importUsers';
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new OptionError(`importUsers: options must be an object, got ${describeValue(o)}`, 'options');
  checkOptions(scope, o, IMPORT_OPTIONS);
  const refuse = (w: Wording, option: string): never => { throw new OptionError(w, option, scope); };
  if (o.source === undefined) refuse(wording`option ${opt('source')} is required (a file path, "-" or a Readable stream)`, 'source');
  if (o.databaseUrl !== undefined) checkDatabaseUrl(o.databaseUrl);
  if (o.databaseUrl !== undefined && o.embeddedDir !== undefined) refuse(wording`give ${opt('databaseUrl')} or ${opt('embeddedDir')}, not both`, 'embeddedDir');
  if (o.overwriteConfigs && (o.scope ?? 'users') === 'users') {
    refuse(wording`${opt('overwriteConfigs')} needs ${opt('scope')} config or global (user scope brings no roles)`, 'overwriteConfigs');
  }
  if (o.maxRejects !== undefined && o.rejectsFile === undefined) refuse(wording`${opt('maxRejects')} needs ${opt('rejectsFile')}`, 'maxRejects');
  if (o.importId !== undefined && !o.resumable) refuse(wording`${opt('importId')} needs ${opt('resumable')}`, 'importId');
  if (o.batchRows !== undefined && !o.resumable) refuse(wording`${opt('batchRows')} needs ${opt('resumable')} (an atomic import commits once)`, 'batchRows');
  if (o.resumable && o.allowReimport) {
    refuse(wording`${opt('allowReimport')} is for atomic imports; a resumable import is imported again under a new ${opt('importId')}`, 'allowReimport');
  }
  if (o.resumable && o.dryRun) refuse(wording`${opt('resumable')} and ${opt('dryRun')} cannot be combined (a dry run commits nothing to resume)`, 'dryRun');
  if (o.explain && o.onTrace === undefined) refuse(wording`${opt('explain')} needs ${opt('onTrace')} (the plans are told to it)`, 'explain');
}

/** {@link ImportOptions} checked, with their defaults: what `importUsers` hands each stage. */
interface ResolvedImport {
  source: string | Readable;
  databaseUrl: string | undefined;
  embeddedDir: string | undefined;
  scope: ImportScope;
  mode: ImportSummary['mode'];
  resumable: boolean;
  dryRun: boolean;
  allowReimport: boolean;
  importId: string | undefined;
  mergeUsers: boolean;
  overwriteConfigs: boolean;
  bulkLoad: boolean;
  /** The usernames to keep, read once (a one-shot iterator is read here), as given and as a set. */
  filterUsernames: string[] | undefined;
  usernames: ReadonlySet<string> | undefined;
  batchRows: number;
  rejectsFile: string | undefined;
  maxRejects: number;
  findingsFile: string | undefined;
  maxRecordBytes: number;
  maxDepth: number;
  decrypt: KeyUnwrapper | undefined;
  skipLeadingText: boolean;
  tmpDir: string | undefined;
  onProgress: ((p: Progress) => void) | undefined;
  onStart: ((info: StartInfo) => void) | undefined;
  signal: AbortSignal | undefined;
  onTrace: ((e: TraceEvent) => void) | undefined;
  explain: boolean;
}

/** Checks `o` ({@link checkImportOptions}) and resolves every option once. */
function resolveImportOptions(o: ImportOptions): ResolvedImport {
  checkImportOptions(o);
  const filterUsernames = o.filterUsernames === undefined ? undefined : [...o.filterUsernames];
  return {
    source: o.source, databaseUrl: o.databaseUrl, embeddedDir: o.embeddedDir, scope: o.scope ?? 'users',
    mode: o.dryRun ? 'dry-run' : o.resumable ? 'resumable' : 'atomic',
    resumable: !!o.resumable, dryRun: !!o.dryRun, allowReimport: !!o.allowReimport, importId: o.importId,
    mergeUsers: !!o.mergeUsers, overwriteConfigs: !!o.overwriteConfigs, bulkLoad: o.bulkLoad !== 'off',
    filterUsernames, usernames: filterUsernames && toStringSet('importUsers', 'filterUsernames', filterUsernames),
    batchRows: o.batchRows ?? DEFAULT_BATCH_ROWS, rejectsFile: o.rejectsFile, maxRejects: o.maxRejects ?? Infinity, findingsFile: o.findingsFile,
    maxRecordBytes: o.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES, maxDepth: o.maxDepth ?? DEFAULT_MAX_DEPTH,
    decrypt: o.decrypt, skipLeadingText: !!o.skipLeadingText, tmpDir: o.tmpDir,
    onProgress: o.onProgress, onStart: o.onStart, signal: o.signal, onTrace: o.onTrace, explain: !!o.explain,
  };
}

/**
 * Imports a Sentry user export. Resolves to the summary; rejects with a {@link UserportError}
 * (nothing written in atomic mode; everything up to the last checkpoint kept in resumable mode).
 * A Readable `source` is the import's, as a stream given to `stream.pipeline` is: read to its end,
 * or destroyed when the import ends without reading it (a refused option, an unreachable
 * database, a file already imported), so no file descriptor or socket is left open.
 */
export async function importUsers(options: ImportOptions): Promise<ImportSummary> {
  try {
    return await runImport(options);
  } finally {
    const src = (options as { source?: unknown } | null)?.source;
    if (src instanceof Readable && !src.destroyed && !src.readableEnded) src.destroy();
  }
}

async function runImport(options: ImportOptions): Promise<ImportSummary> {
  const o = resolveImportOptions(options);
  const aborted = () => new UserportError(ErrorCodes.ABORTED,
    `the import was cancelled (its signal was aborted): ${o.resumable ? 'what its checkpoints committed stays' : 'nothing was written'}`, { cause: o.signal?.reason });
  if (o.signal?.aborted) throw aborted();
  // The validators, made now (loading the library makes none): the build's compiled module where it
  // matches schemas/, else compiled by ajv here (lib/validators.ts). Compiled between the turns of
  // the database's opening instead, they cost the read 15-30% more CPU under the CLI's small heap
  // (bench/NOTES.md, round ten).
  registry();
  // The import's private spool files (the decryption's, the early users step's) are made in one place.
  const spools = spoolsIn(o.tmpDir ?? os.tmpdir());
  // A key that cannot open a file's export is said here, before the database is touched (a pipe's
  // or a stream's key members come after its token: they are met while it is read).
  const input = await prepareImportSource(o, spools);
  if (o.signal?.aborted) {
    await input.release();
    throw aborted();
  }
  const started = Date.now();
  const stats = new ImportStats();
  let db: ImportDatabase | undefined;
  // The opened input, until the pipeline takes it (a failure before that destroys it, closing its file).
  let reading: Readable | undefined;
  let rejects: RejectSink | undefined;
  let run = 0;
  let progressTimer: NodeJS.Timeout | undefined;
  // How the caller stops an import (its signal, or a callback of its that threw), at each stage:
  // before the rows flow, each wait checks, and a Readable source given is destroyed (a stalled
  // socket wakes); while they flow, the sink is destroyed (it rolls back); once the merge runs, the
  // merge stops at its next step and the sink's own error path rolls back in order (a ROLLBACK
  // between two of the merge's statements would leave the rest to autocommit); once COMMIT is
  // sent, it is too late, and the import ends as the database says.
  let stopWith: UserportError | undefined;
  let sinkToStop: Writable | undefined;
  let merging = false;
  let committing = false;
  // Rejected by a stop: the source's opening waits on it too (a FIFO's open() with no writer yet
  // returns only when one comes, whatever is destroyed meanwhile).
  let rejectStopped: (e: UserportError) => void = () => undefined;
  const stopped = new Promise<never>((_resolve, reject) => { rejectStopped = reject; });
  stopped.catch(() => undefined);
  const stop = (e: UserportError) => {
    if (stopWith || committing) return;
    stopWith = e;
    rejectStopped(e);
    if (merging) return;
    if (sinkToStop) sinkToStop.destroy(e);
    else if (o.source instanceof Readable) {
      // Nothing may be reading it yet: its 'error' must not be the process's uncaught exception.
      o.source.once('error', () => undefined);
      o.source.destroy(e);
    } else {
      // Standard input or a pipe, perhaps still waited for by the source's opening.
      input.abort();
    }
  };
  const checkStopped = () => { if (stopWith) throw stopWith; };
  const onAbort = () => stop(aborted());
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    // An encrypted file's authentication pass runs while the database is opened (Node mostly waits
    // for the server there): 0.1-0.3 s of the 100k export's 7-9 s. Its plaintext waits for open().
    input.begin();
    const opened = await openImportDatabase(o);
    db = opened;
    checkStopped();
    const { client, plan } = opened;
    const { scope, mode } = o;
    const fp = input.fingerprint;
    const start = await startImport(client, {
      importId: o.importId, resumable: o.resumable, dryRun: o.dryRun, allowReimport: o.allowReimport, source: input.name, fingerprint: fp,
      mergeUsers: o.mergeUsers, filterUsernames: o.filterUsernames, decrypt: o.decrypt, scope, overwriteConfigs: o.overwriteConfigs,
    });
    if ('done' in start) return start.done;
    checkStopped();
    const { importId, skipThrough } = start;
    run = start.run;
    if (start.counters) stats.restore(start.counters);
    try {
      o.onStart?.({ importId, resumed: skipThrough > 0, fromOrdinal: skipThrough, found: start.found, ...(start.others ? { others: start.others } : {}) });
    } catch (err) {
      throw wrapCallbackError(err, 'onStart');
    }

    if (o.rejectsFile) {
      // Resuming: keep exactly the lines of the records before the checkpoint, drop any written
      // after it by the process that died.
      rejects = openRejectsFile(o.rejectsFile, o.maxRejects, skipThrough ? start.counters?.rejects ?? { bytes: 0, count: 0 } : undefined);
    }
    // What the source itself fails with (a reset network stream, a bad gzip member), while it is
    // sniffed or read, is reading's failure, not the database's: an ECONNRESET from there is no
    // lost connection to PostgreSQL.
    const readFailure = (err: unknown) => new UserportError(ErrorCodes.IO, `reading the source failed: ${(err as Error | null)?.message ?? String(err)}`, { cause: err });
    // A stop asked for by onStart itself: the source is not opened at all.
    checkStopped();
    const opening = input.open();
    // Stopped while the source is opened (standard input or a pipe with nothing written yet), the
    // import ends at once; what the opening gives later is let go.
    const letGo = opening.then((s) => { if (stopWith) s.stream.destroy(); }, () => undefined);
    const { stream: source, size, leadingText, gzip } = await Promise.race([opening, stopped]).catch(async (err: unknown) => {
      if (stopWith) {
        // A regular file's opening settles at once when stopped (an encrypted one's pass ends at
        // its next read): the import fails once it has let it go. A pipe's may wait for a writer.
        if (input.kind === 'file') await letGo;
        throw stopWith;
      }
      throw err instanceof UserportError ? err : readFailure(err);
    });
    reading = source;
    let sourceError: unknown;
    source.once('error', (err) => { sourceError = err; });
    // The models the target skips as they are read (Sentry 2026's Email records), with why.
    const skipModels = skippedModels(plan);
    // Tokenizer, user filter and model mapper fused in one stream (the same pure functions as
    // createTokenizer/createUserFilter/createModelMapper, without two object-mode hops per record).
    const processor = recordProcessor({
      maxRecordBytes: o.maxRecordBytes, maxDepth: o.maxDepth, skipThrough, nonObjects: 'emit', keep: o.usernames, collectRejects: !!rejects, scope,
      target: {
        fieldLimits: fieldLimits((t, c) => plan.target.tables.get(t)?.columns.get(c)?.maxLength),
        optionValues: plan.userOption ? plan.target.optionValues ?? 'jsonb' : 'jsonb',
        authenticatorConfig: plan.privileges.authenticator?.config ?? 'jsonb',
        ...(Object.keys(skipModels).length ? { skipModels } : {}),
      },
    });
    const filterActive = o.usernames !== undefined;
    let bulkLoaded = false;
    const staged = new StagedFacts();

    // A resumed import staged part of its rows in an earlier process: every check runs then.
    let step: MergeStep | undefined;
    const mergeOptions: MergeOptions = {
      run, mergeUsers: o.mergeUsers, filterActive, bulkLoad: o.bulkLoad, staged: skipThrough ? undefined : staged, plan,
      overwriteConfigs: o.overwriteConfigs,
      // The merge's steps are where a stop asked for while it runs takes effect.
      onStep: (s) => { step = s; checkStopped(); },
      onTrace: o.onTrace, explain: o.explain,
    };
    // One cheap look for the progress estimate (the merge decides the path itself, later). It
    // never waits: another import's bulk load holds the table locked, and then it is not empty.
    const looksEmpty = async () => {
      await client.query(`SET lock_timeout = '100ms'`);
      try {
        return !!(await client.query(`SELECT NOT EXISTS (SELECT 1 FROM ${plan.user.table}) AS empty`)).rows[0]?.empty;
      } catch (err) {
        if ((err as { code?: string }).code === '55P03') return false;
        throw err;
      } finally {
        await client.query('SET lock_timeout = 0');
      }
    };
    const emptyTarget = o.onProgress && o.bulkLoad ? await looksEmpty() : o.onProgress ? false : undefined;
    // The last wait before the rows flow: from here on, a stop destroys the sink.
    if (stopWith) {
      source.destroy();
      throw stopWith;
    }
    // An atomic import into empty tables starts the merge with the users while the rest of the
    // file is read (early.ts says when: once the users of a file in Sentry's order are staged).
    const early = earlyUsersOverlap({ ...mergeOptions, ...(emptyTarget ? { targetEmpty: true } : {}) }, plan, staged);
    const finalize = async (c: pg.ClientBase) => {
      merging = true;
      checkStopped();
      if (!o.resumable) await insertImport(c, run, mode, start.row);
      const merged = await mergeAfterEarlyUsers(c, mergeOptions, stats, early.users);
      bulkLoaded = merged.bulkLoad;
      if (o.filterUsernames) {
        stats.unmatchedUsernames = await unmatchedUsernames(c, run, modelInfo('sentry.user')!.mapping.code, o.filterUsernames);
      }
      if (o.findingsFile) {
        const why = skippedReasons(stats.skipped, scope, skipModels).skippedReasons ?? {};
        await writeFindings(c, run, o.findingsFile, stats.unmatchedUsernames,
          Object.entries(stats.skipped).map(([model, count]) => ({ model, count, reason: why[model] ?? NOT_USER_DATA })));
      }
      const summary = buildSummary();
      if (o.resumable) await deleteStaged(c, run);
      await finishImport(c, run, summary, stats.snapshot());
      // The sink sends COMMIT next: from here a lost connection leaves the outcome open, and a stop
      // is too late.
      checkStopped();
      committing = !o.dryRun;
    };
    const checkpoint = async (c: pg.ClientBase, last: MappedItem) => {
      const snap = stats.snapshot();
      if (rejects) snap.rejects = { bytes: rejects.bytes, count: rejects.count };
      await saveCheckpoint(c, run, last.ordinal, last.offset + last.length, snap);
    };
    const sink = pgSink({
      client, run, transaction: o.resumable ? 'batches' : 'whole', dryRun: o.dryRun, staged,
      batchRows: o.batchRows, checkpoint, finalize, stats, rejects,
      ...(o.resumable || !o.bulkLoad ? {} : { overlap: early }),
      spools,
      onTrace: o.onTrace,
    });
    // A caller's onProgress that throws stops the import (USERPORT_CALLBACK) like its signal: a
    // throw from a timer would be the process's uncaught exception. The first report runs in the
    // same tick as pipeline() below, which listens before the sink's error is emitted (next tick).
    sinkToStop = sink;
    if (o.onProgress) {
      const onProgress = o.onProgress;
      const report = (phase: Progress['phase']) => {
        if (stopWith) return;
        try {
          onProgress({
            phase, bytesRead: processor.splitter.bytesRead, totalBytes: size, records: processor.splitter.recordsSeen,
            seconds: (Date.now() - started) / 1000,
            ...(phase === 'merging' && step ? { step } : {}), ...(emptyTarget !== undefined ? { emptyTarget } : {}), scope,
          });
        } catch (err) {
          clearInterval(progressTimer);
          stop(wrapCallbackError(err, 'onProgress'));
        }
      };
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
        models: s.models, skipped: s.skipped, ...skippedReasons(s.skipped, scope, skipModels), unknownFields: s.unknownFields, adjacent: s.adjacent, unmatchedUsernames: s.unmatchedUsernames,
        bulkLoad: bulkLoaded, target: describePlan(plan),
        ...(leadingText ? { leadingText } : {}), ...(gzip ? { gzip } : {}),
      };
    };
    /**
     * The connection failed after COMMIT was sent: the answer is lost, not necessarily the
     * import. Asks the database: true when the import committed after all (it succeeded), false
     * when it rolled back (the error stands); throws IMPORT_OUTCOME_UNKNOWN, with the import id,
     * when the database cannot be asked.
     */
    const backendPid = (client as unknown as { processID?: number | null }).processID ?? undefined;
    const committedAfterAll = async (err: unknown): Promise<boolean> => {
      const e = wrapDbError(opened.clientError ?? err, 'committing the import');
      if (e.code !== ErrorCodes.DB_CONNECT) return false;
      const outcome = await commitOutcome(opened.url, run, backendPid);
      if (outcome !== 'unknown') return outcome === 'committed';
      const again = fp ? 'run the same command again: it asks the database and says "already imported" if it was'
        : 'see `userport imports`: a committed import is listed as done';
      throw new UserportError(ErrorCodes.IMPORT_OUTCOME_UNKNOWN,
        `the connection to PostgreSQL was lost after import ${importId} sent its COMMIT, and the database cannot be asked whether it committed; ${again}`,
        { cause: e });
    };
    try {
      await pipeline(source, processor, sink);
      // A stop during a dry run's merge, after its last step: nothing was written either way.
      checkStopped();
    } catch (err) {
      // pipeline() settles at the first error, while the sink's cleanup (its ROLLBACK, the early
      // users step's spool file) is still running: the import fails only once nothing is left.
      if (!sink.destroyed) sink.destroy(err as Error);
      if (!sink.closed) await new Promise<void>((resolve) => sink.once('close', () => resolve()));
      if (committing && await committedAfterAll(err)) return buildSummary();
      const lost = opened.clientError;
      if (lost && !(err instanceof UserportError)) throw wrapDbError(lost, 'the import');
      if (stopWith && !(err instanceof UserportError)) throw stopWith;
      if (err === sourceError && !(err instanceof UserportError)) throw readFailure(err);
      // The caller destroyed the source it gave (without an error) before its end.
      if ((err as { code?: unknown }).code === 'ERR_STREAM_PREMATURE_CLOSE' && source.destroyed) {
        throw readFailure(new Error('the source was closed before its end', { cause: err }));
      }
      throw err instanceof UserportError ? err : wrapDbError(err, 'the import');
    }
    // A dry run leaves the database as it found it: userport's schema too, where it made it.
    if (o.dryRun) await opened.undoFreshSchema();
    return buildSummary();
  } catch (err) {
    const e = err instanceof UserportError ? err : wrapDbError(err, 'the import');
    if (o.findingsFile) writeErrorFinding(o.findingsFile, e);
    if (o.resumable && run && db) {
      await db.markFailed(run, e.message);
    }
    // An import that wrote nothing takes away the schema it made (a resumable one keeps what its
    // checkpoints committed, to be resumed).
    if (!o.resumable) await db?.undoFreshSchema();
    throw e;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    if (progressTimer) clearInterval(progressTimer);
    await input.release();
    if (reading && !reading.destroyed) reading.destroy();
    await rejects?.close().catch(() => undefined);
    await db?.close();
  }
}
