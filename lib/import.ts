/**
 * `importUsers`: the whole job, wired with `await pipeline(...)`:
 * source bytes -> [decryptor] -> tokenizer + user filter + model mapper (fused) -> PostgreSQL sink.
 * Also the bookkeeping around it: the import row and resuming (SQL in db/imports.ts), the source
 * (source.ts), the findings file (findings.ts), progress and the summary.
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { applySessionSettings, checkDatabaseUrl, createKnex, migrate, PG_TYPES, resolveDatabaseUrl, waitForDatabase } from './db/knex.js';
import { checkOptions, describeValue, isBoolean, isFunction, isInteger, isKeyUnwrapper, isNonEmptyString, isStringIterable, type OptionCheck } from './options.js';
import { describePlan, earlyUsersOverlap, mergeStaged, planFor, type MergeOptions, type MergeStep } from './db/merge/index.js';
import {
  commitOutcome, deleteStaged, findDoneImport, findImport, findResumableImport, finishImport, insertImport, insertResumableImport, lockImport, markImportFailed,
  joinWordings, markImportRunning, nextImportRun, optionDifferences, otherUnfinishedImports, ownerName, resumeKey, saveCheckpoint, unmatchedUsernames,
} from './db/imports.js';
import type { KeyUnwrapper } from './crypto/unwrapper.js';
import { ErrorCodes, opt, OptionError, sayWording, UserportError, wording, wrapDbError, type Wording } from './errors.js';
import { writeErrorFinding, writeFindings } from './findings.js';
import { fieldLimits, modelInfo, skippedReasons, type ImportScope } from './models.js';
import { isImportScope } from './filter-users.js';
import { checkImportFiles, fingerprint, isRegularFile, openSource } from './source.js';
import type { MappedItem } from './map-models.js';
import { createPgSink, DEFAULT_BATCH_ROWS } from './pg-sink.js';
import { StagedFacts } from './staged-facts.js';
import { createRejectsFile, type RejectSink } from './rejects.js';
import { ImportStats, type ImportSummary, type StatsSnapshot } from './stats.js';
import { createRecordProcessor } from './process-records.js';
import { DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES } from './tokenize.js';
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
  maxRecordBytes: isInteger(16),
  maxDepth: isInteger(2),
  decrypt: isKeyUnwrapper,
  skipLeadingText: isBoolean,
  onProgress: isFunction,
  onStart: isFunction,
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

/**
 * Imports a Sentry user export. Resolves to the summary; rejects with a {@link UserportError}
 * (nothing written in atomic mode; everything up to the last checkpoint kept in resumable mode).
 */
export async function importUsers(options: ImportOptions): Promise<ImportSummary> {
  checkImportOptions(options);
  checkImportFiles(options);
  const started = Date.now();
  const databaseUrl = await resolveDatabaseUrl(options);
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
    // The target, read once before any record: what to write, and the widths records must fit.
    const scope = options.scope ?? 'users';
    const plan = await planFor(client, scope).catch((err: unknown) => { throw err instanceof UserportError ? err : wrapDbError(err, 'reading the target database'); });

    let skipThrough = 0;
    let resumeRejects: { bytes: number; count: number } | undefined;
    const fp = typeof options.source === 'string' && options.source !== '-' && isRegularFile(options.source) ? fingerprint(options.source) : undefined;
    let found = false;
    // checkImportFiles refused anything else: a file swapped for a pipe since.
    if (options.resumable && !fp) throw new OptionError(wording`${opt('resumable')} needs ${opt('source')} to be a regular file (it is read again to resume)`, 'source');
    const key = resumeKey(options);
    if (options.resumable && options.importId === undefined) {
      const previous = await findResumableImport(client, fp!, key);
      if (previous) { importId = previous; found = true; }
    }
    const rowSource = () => ({
      importId, source: typeof options.source === 'string' ? options.source : '(stream)', fingerprint: fp, options: key,
    });
    if (options.resumable) {
      await lockImport(client, importId);
      const row = await findImport(client, importId);
      if (row) {
        if (row.state === 'done' && row.summary) return { ...row.summary, state: 'already-done' };
        if (row.source_size !== fp!.size || row.source_fingerprint !== fp!.hash) {
          throw new UserportError(ErrorCodes.IMPORT_MISMATCH, `import ${importId} was started with a different export file`);
        }
        const differs = optionDifferences(row.options, key);
        if (differs.length) {
          throw new UserportError(ErrorCodes.IMPORT_MISMATCH, wording`import ${importId} was started with other options: ${joinWordings(differs, '; ')}. Continue it with its options, or remove it and its staged rows (\`userport imports drop ${importId}\`, dropImport)`);
        }
        run = row.run;
        skipThrough = row.checkpoint_ordinal;
        if (row.counters) {
          stats.restore(row.counters);
          resumeRejects = row.counters.rejects ?? { bytes: 0, count: 0 };
        }
        await markImportRunning(client, run);
      } else {
        run = await insertResumableImport(client, rowSource());
      }
    } else {
      if (fp && !options.dryRun && !options.allowReimport) {
        const done = await findDoneImport(client, fp, key);
        if (done?.summary) return { ...done.summary, importId: done.id, state: 'already-done' };
      }
      run = await nextImportRun(client);
    }
    // A new import of a file whose earlier import is unfinished under other options: say so, or
    // that one would stay staged (and listed as interrupted) forever without anyone knowing why.
    let others: StartInfo['others'];
    if (fp && !skipThrough && !found) {
      const left = await otherUnfinishedImports(client, fp, importId);
      if (left.length) {
        others = left.map((o) => {
          const differences = optionDifferences(o.options, key);
          return { importId: o.importId, state: o.state, differs: differences.map((d) => sayWording(d)), differences };
        });
      }
    }
    options.onStart?.({ importId, resumed: skipThrough > 0, fromOrdinal: skipThrough, found, ...(others ? { others } : {}) });

    if (options.rejectsFile) {
      // Resuming: keep exactly the lines of the records before the checkpoint, drop any written
      // after it by the process that died.
      rejects = createRejectsFile(options.rejectsFile, { maxRejects: options.maxRejects, resumeAt: skipThrough ? resumeRejects ?? { bytes: 0, count: 0 } : undefined });
    }
    const collectRejects = !!rejects;
    const { stream: source, size, leadingText, gzip } = await openSource(options);
    // Tokenizer, user filter and model mapper fused in one stream (the same pure functions as
    // createTokenizer/createUserFilter/createModelMapper, without two object-mode hops per record).
    const processor = createRecordProcessor({
      maxRecordBytes: options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES,
      maxDepth: options.maxDepth ?? DEFAULT_MAX_DEPTH,
      skipThrough,
      usernames: options.filterUsernames,
      collectRejects,
      scope,
      target: {
        fieldLimits: fieldLimits((t, c) => plan.target.tables.get(t)?.columns.get(c)?.maxLength),
        optionValues: plan.userOption ? plan.target.optionValues ?? 'jsonb' : 'jsonb',
        authenticatorConfig: plan.privileges.authenticator?.config ?? 'jsonb',
      },
    });
    const filterActive = options.filterUsernames !== undefined;
    let bulkLoaded = false;
    const staged = new StagedFacts();

    // A resumed import staged part of its rows in an earlier process: every check runs then.
    let step: MergeStep | undefined;
    const mergeOptions: MergeOptions = {
      run, mergeUsers: !!options.mergeUsers, filterActive, bulkLoad: options.bulkLoad !== 'off', staged: skipThrough ? undefined : staged, plan,
      overwriteConfigs: !!options.overwriteConfigs,
      onStep: (s) => { step = s; },
      onTrace: options.onTrace, explain: options.explain,
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
    const emptyTarget = options.onProgress && options.bulkLoad !== 'off' ? await looksEmpty() : options.onProgress ? false : undefined;
    // An atomic import into empty tables starts the merge with the users while the rest of the
    // file is read (early.ts says when: once the users of a file in Sentry's order are staged).
    const early = earlyUsersOverlap(mergeOptions, plan, staged);
    let committing = false;
    const finalize = async (c: pg.ClientBase) => {
      if (!options.resumable) await insertImport(c, run, mode, rowSource());
      const merged = await mergeStaged(c, mergeOptions, stats, early.users);
      bulkLoaded = merged.bulkLoad;
      if (filterActive) {
        stats.unmatchedUsernames = await unmatchedUsernames(c, run, modelInfo('sentry.user')!.mapping.code, options.filterUsernames!);
      }
      if (options.findingsFile) await writeFindings(c, run, options.findingsFile, stats.unmatchedUsernames);
      const summary = buildSummary();
      if (options.resumable) await deleteStaged(c, run);
      await finishImport(c, run, summary, stats.snapshot());
      // The sink sends COMMIT next: from here a lost connection leaves the outcome open.
      committing = !options.dryRun;
    };
    const checkpoint = async (c: pg.ClientBase, last: MappedItem) => {
      const snap = stats.snapshot();
      if (rejects) snap.rejects = { bytes: rejects.bytes, count: rejects.count };
      await saveCheckpoint(c, run, last.ordinal, last.offset + last.length, snap);
    };
    const sink = createPgSink({
      client, run, transaction: options.resumable ? 'batches' : 'whole', dryRun: options.dryRun, staged,
      batchRows: options.batchRows ?? DEFAULT_BATCH_ROWS, checkpoint, finalize, stats, rejects,
      ...(options.resumable || options.bulkLoad === 'off' ? {} : { overlap: early }),
      ...(options.tmpDir ? { tmpDir: options.tmpDir } : {}),
      onTrace: options.onTrace,
    });
    if (options.onProgress) {
      const onProgress = options.onProgress;
      const report = (phase: Progress['phase']) => onProgress({
        phase, bytesRead: processor.splitter.bytesRead, totalBytes: size, records: processor.splitter.recordsSeen,
        seconds: (Date.now() - started) / 1000,
        ...(phase === 'merging' && step ? { step } : {}), ...(emptyTarget !== undefined ? { emptyTarget } : {}), scope,
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
        models: s.models, skipped: s.skipped, ...skippedReasons(s.skipped, scope), unknownFields: s.unknownFields, adjacent: s.adjacent, unmatchedUsernames: s.unmatchedUsernames,
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
      const e = wrapDbError(clientError ?? err, 'committing the import');
      if (e.code !== ErrorCodes.DB_CONNECT) return false;
      const outcome = await commitOutcome(databaseUrl, run, backendPid);
      if (outcome !== 'unknown') return outcome === 'committed';
      const again = fp ? 'run the same command again: it asks the database and says "already imported" if it was'
        : 'see `userport imports`: a committed import is listed as done';
      throw new UserportError(ErrorCodes.IMPORT_OUTCOME_UNKNOWN,
        `the connection to PostgreSQL was lost after import ${importId} sent its COMMIT, and the database cannot be asked whether it committed; ${again}`,
        { cause: e });
    };
    try {
      await pipeline(source, processor, sink);
    } catch (err) {
      // pipeline() settles at the first error, while the sink's cleanup (its ROLLBACK, the early
      // users step's spool file) is still running: the import fails only once nothing is left.
      if (!sink.destroyed) sink.destroy(err as Error);
      if (!sink.closed) await new Promise<void>((resolve) => sink.once('close', () => resolve()));
      if (committing && await committedAfterAll(err)) return buildSummary();
      if (clientError && !(err instanceof UserportError)) throw wrapDbError(clientError, 'the import');
      throw err instanceof UserportError ? err : wrapDbError(err, 'the import');
    }
    return buildSummary();
  } catch (err) {
    const e = err instanceof UserportError ? err : wrapDbError(err, 'the import');
    if (options.findingsFile) writeErrorFinding(options.findingsFile, e);
    if (options.resumable && run) {
      await markImportFailed(knex, run, e.message);
    }
    throw e;
  } finally {
    if (progressTimer) clearInterval(progressTimer);
    await rejects?.close().catch(() => undefined);
    await client.end().catch(() => undefined);
    await knex.destroy().catch(() => undefined);
  }
}
