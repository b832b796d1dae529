/**
 * userport's public API: the stages (each a Node stream), the whole import, the items that flow
 * between stages with their type guards, the errors, and the database helpers a caller needs.
 * Wire stages yourself with `await pipeline(...)` from `node:stream/promises`:
 *
 *   source bytes -> createTokenizer() -> createUserFilter() -> createModelMapper() -> createPgSink()
 *
 * or call {@link importUsers} for the whole job. Importing this module changes nothing in the host
 * process: no pg type parser, no process listener, no global.
 *
 * @packageDocumentation
 */
import type { EmbeddedOptions, EmbeddedServer } from './db/embedded.js';
import { checkOptions, isInteger, isNonEmptyString } from './options.js';

// Stages.
export { createTokenizer, DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES } from './tokenize.js';
export type { RawRecord, RecordPosition, RecordSplitter, TokenizerOptions } from './tokenize.js';
export { createUserFilter, DEFAULT_COLLECT_REJECTS, isRejectMarker, isScopedRecord, isSkipMarker } from './filter-users.js';
export type { FlowItem, RejectMarker, ScopedRecord, SkipMarker, UserFilterOptions } from './filter-users.js';
export { createModelMapper, isFilteredMarker, isStagedRow, stagedValues } from './map-models.js';
export type { FilteredMarker, MapTarget, MappedItem, ModelMapperOptions, StagedRow } from './map-models.js';
export { STAGE_COLUMNS, STAGE_INDEX, USER_SCOPE_MODELS } from './models.js';
export type { FieldLimits, ImportScope, ModelMapping, StageColumn, StageValue } from './models.js';
// The tokenizer, user filter and model mapper fused into one stage (what importUsers runs).
export { createRecordProcessor } from './process-records.js';
export type { RecordProcessorOptions } from './process-records.js';
export { createPgSink, DEFAULT_BATCH_ROWS } from './pg-sink.js';
export { StagedFacts } from './staged-facts.js';
export type { PgSinkOptions } from './pg-sink.js';
export type { Overlap, OverlapWork } from './overlap.js';

// The whole job.
export { checkImportOptions, importUsers } from './import.js';
export { checkImportFiles } from './source.js';
export type { SourceCheckOptions, SourceKind } from './source.js';
export type { ImportOptions, Progress, StartInfo } from './import.js';
export { STATEMENTS_APART } from './trace.js';
export type { TraceEvent, TraceOptions } from './trace.js';
export { dropImport } from './db/imports.js';
export type { DroppedImport } from './db/imports.js';
export { ImportStats } from './stats.js';
export type { ImportSummary, ModelCounts, StatsSnapshot } from './stats.js';
export { createRejectsFile } from './rejects.js';
export type { RejectSink, RejectsFileOptions } from './rejects.js';

// The other half of a migration: Sentry's user tables out as `sentry export users|config|global` writes them.
export { createExporter, exportUsers, exportModels, EXPORT_MODELS, DEFAULT_FETCH_ROWS } from './export.js';
export type { ExporterOptions, ExportModel, ExportScope, ExportStream, ExportSummary, ExportUsersOptions, ExportProgress, ExportFinding, ExcludedRows } from './export.js';
// One findings format for both directions (`findingsFile` of importUsers and exportUsers).
export type { Finding } from './findings.js';

// Encrypted exports.
export { createDecryptor, decryptExport, openDecryptedSource, Decryptor } from './decrypt.js';
export type { DecryptedSource, DecryptorOptions, EncryptedInput, OpenDecryptedOptions } from './decrypt.js';
export { createEncryptor, encryptExport, Encryptor } from './encrypt.js';
export type { EncryptExportOptions, EncryptorOptions } from './encrypt.js';
export { createLocalKeyUnwrapper } from './crypto/unwrapper.js';
export type { KeyUnwrapper, LocalKeyUnwrapperOptions, PassphraseSource } from './crypto/unwrapper.js';
export { createGcpKmsUnwrapper } from './crypto/gcp-kms.js';
export type { GcpKmsConfig, GcpKmsUnwrapperOptions, GoogleAccessTokenSource } from './crypto/gcp-kms.js';

// Errors.
export { UserportError, OptionError, ParseError, RecordError, DatabaseError, ExportError, ErrorCodes, opt, sayWording, wording } from './errors.js';
export type { ConnectionFacts, ErrorCode, OptionName, Position, UserportErrorOptions, Wording } from './errors.js';
export { DecryptError, DecryptErrorCodes } from './crypto/errors.js';
export type { DecryptErrorCode } from './crypto/errors.js';

// Database helpers: the tables (for createPgSink), the merge (its usual finalize), the embedded server.
export { createKnex, migrate, waitForDatabase } from './db/knex.js';
export { describePlan, mergeStaged, planFor, writePlan } from './db/merge/index.js';
export type { MergeOptions, MergeOutcome, MergeStep, PrivilegePlan, WritePlan } from './db/merge/index.js';
export { readTarget } from './db/target.js';
export type { Target, TargetColumn, TargetTable, OptionValueEncoding } from './db/target.js';
export { beginImportRun, finishImportRun, reserveImportRun } from './db/runs.js';
export type { ImportRunOptions } from './db/runs.js';
export type { EmbeddedConfig, EmbeddedOptions, EmbeddedServer } from './db/embedded.js';

/**
 * Starts (or reuses) the embedded PostgreSQL kept in `options.dir` and resolves to its URL and
 * settings. The server outlives this process; stop it with {@link stopEmbedded}. Its code and
 * package are loaded on this first call only.
 */
export async function startEmbedded(options: EmbeddedOptions = {}): Promise<EmbeddedServer> {
  // Checked before any folder is made or server started.
  checkOptions('startEmbedded', options, { dir: isNonEmptyString, port: isInteger(1, 65535), logFile: isNonEmptyString });
  return (await import('./db/embedded.js')).startEmbedded(options);
}

/**
 * Stops the embedded PostgreSQL in `dir` (default: `.userport` under the current directory) if
 * it runs; resolves to true when it was running.
 */
export async function stopEmbedded(dir?: string): Promise<boolean> {
  const embedded = await import('./db/embedded.js');
  return embedded.stopEmbedded(dir ?? embedded.defaultEmbeddedDir());
}
