/**
 * Stage 2, records -> in-scope records: checks each record's envelope (`{model, pk, fields}`),
 * keeps the four user-scope models and counts every other model as skipped, and applies the
 * username filter.
 *
 * A user removed by the filter is not dropped here but passed on marked `filtered`: its source pk
 * must reach the database so that its emails and options (which may come before or after it in
 * the file) are dropped with the right reason. Whether a child row belongs to a kept user cannot
 * be decided in one streaming pass without remembering every pk, and that memory lives in
 * PostgreSQL, not here.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { ErrorCodes, RecordError } from './errors.js';
import { checkOptions, isBoolean, isStringIterable, toStringSet, type OptionCheck } from './options.js';
import { describeAjvError, IMPORT_SCOPES, modelInfo, modelSchemas, registry, type ImportScope } from './models.js';
import type { RawRecord, RecordPosition } from './tokenize.js';

/** A record of a user-scope model with a valid envelope. */
export interface ScopedRecord extends RecordPosition {
  kind: 'record';
  /** Lower-cased model name (`sentry.user`). */
  model: string;
  pk: number;
  fields: Record<string, unknown>;
  /** True for a user removed by the username filter: only its pk is staged. */
  filtered: boolean;
  /** The record's JSON text, when the tokenizer kept it (see {@link RawRecord.source}). */
  source?: string;
}

/** A record of a model outside the user scope: counted, not imported. */
export interface SkipMarker extends RecordPosition {
  kind: 'skip';
  model: string;
}

/** A record that failed validation while rejects are being collected. */
export interface RejectMarker extends RecordPosition {
  kind: 'reject';
  /** Lower-cased model name when the record had a valid one. */
  model: string | undefined;
  error: RecordError;
  record: unknown;
}

/** What flows between the object stages: every record of the export, in order, exactly once. */
export type FlowItem = ScopedRecord | SkipMarker | RejectMarker;

/** True for a {@link ScopedRecord}: a user-scope record on its way to the mapper. */
export function isScopedRecord(item: { kind: string }): item is ScopedRecord {
  return item.kind === 'record';
}

/** True for a {@link SkipMarker}: a record of a model outside the user scope. */
export function isSkipMarker(item: { kind: string }): item is SkipMarker {
  return item.kind === 'skip';
}

/** True for a {@link RejectMarker}: a record that failed validation while rejects are collected. */
export function isRejectMarker(item: { kind: string }): item is RejectMarker {
  return item.kind === 'reject';
}

/** Options of {@link createUserFilter}. */
export interface UserFilterOptions {
  /** Usernames to keep (exact match). Undefined: keep every user. An empty set keeps none. */
  usernames?: Iterable<string>;
  /**
   * Pass records that fail their envelope check on as {@link RejectMarker}s instead of failing
   * the stream (the CLI's `--rejects-file`). @default false ({@link DEFAULT_COLLECT_REJECTS})
   */
  collectRejects?: boolean;
  /**
   * The import's scope: which models are imported (`users`: users, emails, user emails, options;
   * `config` adds permissions, roles and personal API tokens; `global` adds authenticators and
   * user IPs). Records of other models are counted and skipped. @default 'users'
   */
  scope?: ImportScope;
}

/** An {@link ImportScope}. */
export const isImportScope: OptionCheck = (v) => (IMPORT_SCOPES.includes(v as ImportScope) ? undefined : `one of ${IMPORT_SCOPES.map((s) => `'${s}'`).join(', ')}`);

/** Rejects fail the stream unless asked otherwise. */
export const DEFAULT_COLLECT_REJECTS = false;

/** The checks of {@link UserFilterOptions}, shared with the fused record processor. */
export const USER_FILTER_OPTIONS: { readonly [K in keyof UserFilterOptions]-?: OptionCheck } = {
  usernames: isStringIterable,
  collectRejects: isBoolean,
  scope: isImportScope,
};

/**
 * Parses a username list: commas or newlines separate names; surrounding whitespace is trimmed;
 * empty entries are ignored.
 */
export function parseUsernameList(text: string): string[] {
  return text.split(/[,\r\n]+/).map((s) => s.trim()).filter((s) => s.length > 0);
}

function position(raw: RecordPosition): RecordPosition {
  return { ordinal: raw.ordinal, offset: raw.offset, line: raw.line, column: raw.column, length: raw.length };
}

/** The skip marker of the record at `at`, of `model` (the scope's, or the mapper's for a model the target skips). */
export function skipMarker(at: RecordPosition, model: string): SkipMarker {
  return { kind: 'skip', ordinal: at.ordinal, offset: at.offset, line: at.line, column: at.column, length: at.length, model };
}

/** A model name as the envelope schema (`schemas/record.json`) allows it. */
const MODEL_NAME = /^[A-Za-z0-9_]+\.[A-Za-z0-9_]+$/;

/** Checks one raw record's envelope and classifies it. Pure. Throws a {@link RecordError}. */
export function scopeRecord(raw: RawRecord, keep: ReadonlySet<string> | undefined, scope: ImportScope = 'users'): ScopedRecord | SkipMarker {
  const { envelope } = registry();
  if (raw.nonObject) {
    throw new RecordError(ErrorCodes.RECORD_NOT_OBJECT, `record ${raw.ordinal} is not an object`, {
      position: { ordinal: raw.ordinal, offset: raw.offset, line: raw.line, column: raw.column },
    });
  }
  const v = raw.value;
  // An out-of-scope record is only counted, as Sentry's importer skips it before deserializing
  // it: its pk need not be an integer (`sentry.actor` rows of 2021 exports have "pk": "1").
  const named = typeof v.model === 'string' && v.model.length <= 200 && MODEL_NAME.test(v.model) ? v.model.toLowerCase() : undefined;
  if (named !== undefined && !modelInfo(named, scope)) {
    return skipMarker(raw, named);
  }
  if (!(envelope as (x: unknown) => boolean)(v)) {
    const { field, reason } = describeAjvError(envelope.errors?.[0]);
    const model = typeof v.model === 'string' ? v.model.toLowerCase() : undefined;
    // A pk past 2^53 is not what the file says once parsed (9223372036854775808 reads as
    // ...776000): the position does not quote it, the message says what is wrong with it.
    const pk = typeof v.pk === 'number' && Number.isInteger(v.pk) && !Number.isSafeInteger(v.pk) ? undefined : v.pk;
    throw new RecordError(ErrorCodes.RECORD_ENVELOPE, `record ${raw.ordinal}: ${field ?? 'record'} ${reason}`, {
      position: { ordinal: raw.ordinal, offset: raw.offset, line: raw.line, column: raw.column, model, pk, field },
    });
  }
  const model = (v.model as string).toLowerCase();
  if (!modelInfo(model, scope)) {
    return skipMarker(raw, model);
  }
  const fields = v.fields as Record<string, unknown>;
  let filtered = false;
  if (keep && model === 'sentry.user') {
    const username = fields.username;
    filtered = !(typeof username === 'string' && keep.has(username));
  }
  return {
    kind: 'record', ordinal: raw.ordinal, offset: raw.offset, line: raw.line, column: raw.column, length: raw.length,
    model, pk: v.pk as number, fields, filtered, source: raw.source,
  };
}

/** The reject marker for a record {@link scopeRecord} refused (also used by the fused processor). */
export function scopeReject(raw: RawRecord, err: RecordError): RejectMarker {
  const m = err.position?.model;
  return { kind: 'reject', ...position(raw), model: m && modelSchemas().has(m) ? m : undefined, error: err, record: raw.nonObject ? raw.nonObject.value : raw.value };
}

/** Creates the scope-and-filter stage: {@link RawRecord} in, {@link FlowItem} out. */
export function createUserFilter(options: UserFilterOptions = {}): Transform {
  checkOptions('createUserFilter', options, USER_FILTER_OPTIONS);
  const keep = options.usernames === undefined ? undefined : toStringSet('createUserFilter', 'usernames', options.usernames);
  const collect = options.collectRejects ?? DEFAULT_COLLECT_REJECTS;
  const scope = options.scope ?? 'users';
  return new Transform({
    objectMode: true,
    highWaterMark: 64,
    transform(raw: RawRecord, _enc: BufferEncoding, callback: TransformCallback) {
      let item: FlowItem;
      try {
        item = scopeRecord(raw, keep, scope);
      } catch (err) {
        if (!collect || !(err instanceof RecordError)) return callback(err as Error);
        item = scopeReject(raw, err);
      }
      callback(null, item);
    },
  });
}
