/**
 * userport's public API: the stages (each a Node stream), the whole import, and the pieces
 * around them. Wire stages yourself with `await pipeline(...)` from `node:stream/promises`:
 *
 *   source bytes -> createTokenizer() -> createUserFilter() -> createModelMapper() -> createPgSink()
 *
 * or call {@link importUsers} for the whole job.
 */
export { createTokenizer, RecordSplitter, DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES } from './tokenize.js';
export type { RawRecord, RecordPosition, TokenizerOptions } from './tokenize.js';
export { createUserFilter, parseUsernameList, scopeRecord } from './filter-users.js';
export type { FlowItem, RejectMarker, ScopedRecord, SkipMarker, UserFilterOptions } from './filter-users.js';
export { createModelMapper, mapRecord } from './map-models.js';
export type { MappedItem, ModelMapperOptions, StagedRow } from './map-models.js';
export { createPgSink, copyLine, copyValue, DEFAULT_BATCH_ROWS } from './pg-sink.js';
export type { PgSinkOptions } from './pg-sink.js';
export { importUsers } from './import.js';
export type { ImportOptions, Progress } from './import.js';
export { mergeStaged } from './db/merge.js';
export type { MergeOptions } from './db/merge.js';
export { createKnex, migrate, waitForDatabase } from './db/knex.js';
export { startEmbedded, stopEmbedded, defaultEmbeddedDir } from './db/embedded.js';
export type { EmbeddedOptions, EmbeddedServer } from './db/embedded.js';
export { createRejectsFile, redact } from './rejects.js';
export type { RejectSink, RejectsFileOptions } from './rejects.js';
export { ImportStats } from './stats.js';
export type { ImportSummary, ModelCounts } from './stats.js';
export { modelInfo, STAGE_COLUMNS, USER_SCOPE_MODELS, isDateTime } from './models.js';
export { createExporter, exportUsers, EXPORT_MODELS, DEFAULT_FETCH_ROWS } from './export.js';
export type { ExporterOptions, ExportStream, ExportSummary, ExportUsersOptions, ExportProgress, ExportFinding, ExcludedRows } from './export.js';
export { createExportGenerator } from './generate.js';
export type { GenerateOptions } from './generate.js';
export * from './decrypt.js';
export { UserportError, OptionError, ParseError, RecordError, DatabaseError, ExportError, ErrorCodes, formatPosition } from './errors.js';
export type { ErrorCode, Position } from './errors.js';
