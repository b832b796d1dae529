/**
 * Stage 3, in-scope records -> staging rows: validates each record's fields against its model's
 * JSON Schema (ajv, compiled once), counts unknown fields (ignored, never fatal), and lays the
 * values out in staging-column order. Everything PostgreSQL would refuse (a NUL character, a lone
 * surrogate, an over-long string, an impossible date) is caught here, so the COPY that follows
 * never fails on data and a bad record can be rejected on its own.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { ErrorCodes, RecordError } from './errors.js';
import { DEFAULT_COLLECT_REJECTS, type FlowItem, type RejectMarker, type ScopedRecord, type SkipMarker } from './filter-users.js';
import { checkOptions, isBoolean } from './options.js';
import { describeAjvError, modelInfo, STAGE_COLUMNS, type StageColumn, type StageValue } from './models.js';
import { canonicalOptionValue } from './option-values.js';
import type { RecordPosition } from './tokenize.js';

/** A validated record that will be written: `kind === 'row'` means exactly that. */
export interface StagedRow extends RecordPosition {
  kind: 'row';
  model: string;
  /** The model's staging code (`x-userport.code`). */
  code: number;
  pk: number;
  /**
   * One value per {@link STAGE_COLUMNS} entry; JSON text for `json` columns. Positional for speed:
   * read a column by name with `values[STAGE_INDEX.email]`, or all of them with {@link stagedValues}.
   */
  values: StageValue[];
  /** Fields the schema does not know (ignored), when there are any. */
  unknownFields?: string[];
}

/**
 * A user the username filter removed (never validated, never imported). The sink stages its pk
 * alone, so that its emails and options are dropped with the right reason by the merge.
 */
export interface FilteredMarker extends RecordPosition {
  kind: 'filtered';
  model: string;
  /** The model's staging code (`x-userport.code`). */
  code: number;
  pk: number;
  /** The user's username, when it has one: pre-23.9.1 exports name a row's user by it. */
  username?: string;
}

/** What the mapper emits: staged rows, filtered users, and the skip and reject markers passed through. */
export type MappedItem = StagedRow | FilteredMarker | SkipMarker | RejectMarker;

/** True for a {@link StagedRow}: a record that will be written. */
export function isStagedRow(item: { kind: string }): item is StagedRow {
  return item.kind === 'row';
}

/** True for a {@link FilteredMarker}: a user removed by the username filter. */
export function isFilteredMarker(item: { kind: string }): item is FilteredMarker {
  return item.kind === 'filtered';
}

/** A row's values by column name (`view.email`): a new object per call, for convenience off the hot path. */
export function stagedValues(row: StagedRow): { readonly [C in StageColumn]: StageValue } {
  const out = {} as { [C in StageColumn]: StageValue };
  for (let i = 0; i < STAGE_COLUMNS.length; i++) out[STAGE_COLUMNS[i]![0]] = row.values[i] ?? null;
  return out;
}

/** Options of {@link createModelMapper}. */
export interface ModelMapperOptions {
  /**
   * Pass records that fail their schema on as {@link RejectMarker}s instead of failing the
   * stream (the CLI's `--rejects-file`). @default false ({@link DEFAULT_COLLECT_REJECTS})
   */
  collectRejects?: boolean;
}

const NULLS: StageValue[] = STAGE_COLUMNS.map(() => null);

function badValue(rec: ScopedRecord, field: string, reason: string): RecordError {
  return new RecordError(ErrorCodes.RECORD_SCHEMA, `${rec.model} pk ${rec.pk}: field ${field} ${reason}`, {
    position: { ordinal: rec.ordinal, offset: rec.offset, line: rec.line, column: rec.column, model: rec.model, pk: rec.pk, field },
  });
}

/** Why PostgreSQL would refuse this string, or undefined. */
function textProblem(s: string): string | undefined {
  if (s.indexOf('\u0000') !== -1) return 'contains a NUL character, which PostgreSQL cannot store';
  if (!s.isWellFormed()) return 'contains an unpaired UTF-16 surrogate';
  return undefined;
}

/** Checks every string (and key) inside a JSON value; returns the first problem. */
function jsonProblem(v: unknown, depth = 0): string | undefined {
  if (typeof v === 'string') return textProblem(v);
  if (v === null || typeof v !== 'object') return undefined;
  if (Array.isArray(v)) {
    for (const x of v) { const p = jsonProblem(x, depth + 1); if (p) return p; }
    return undefined;
  }
  // Keys, not Object.entries: entries allocates a two-element array per member (some 70 bytes
  // each, 6 MB for an 88k-key option value), all garbage a moment later.
  const obj = v as Record<string, unknown>;
  for (const k of Object.keys(obj)) {
    const p = textProblem(k) ?? jsonProblem(obj[k], depth + 1);
    if (p) return p;
  }
  return undefined;
}

/** Validates and maps one record. Pure. Throws a {@link RecordError}. */
export function mapRecord(rec: ScopedRecord): StagedRow | FilteredMarker {
  const info = modelInfo(rec.model);
  if (!info) {
    throw new RecordError(ErrorCodes.RECORD_ENVELOPE, `mapRecord: ${rec.model} is not a user-scope model`, {
      position: { ordinal: rec.ordinal, offset: rec.offset, line: rec.line, column: rec.column, model: rec.model, pk: rec.pk },
    });
  }
  if (rec.filtered) {
    const marker: FilteredMarker = { kind: 'filtered', ordinal: rec.ordinal, offset: rec.offset, line: rec.line, column: rec.column, length: rec.length, model: rec.model, code: info.mapping.code, pk: rec.pk };
    // A pre-23.9.1 export names a row's user by username (its natural key): the filtered user's
    // name lets the merge tell such rows "user filtered out" rather than "not in the export".
    if (typeof rec.fields.username === 'string') marker.username = rec.fields.username;
    return marker;
  }
  const row: StagedRow = {
    kind: 'row', ordinal: rec.ordinal, offset: rec.offset, line: rec.line, column: rec.column, length: rec.length,
    model: rec.model, code: info.mapping.code, pk: rec.pk, values: NULLS,
  };
  const fields = rec.fields;
  if (!info.validate(fields)) {
    const { field, reason } = describeAjvError(info.validate.errors?.[0]);
    throw badValue(rec, field ?? 'fields', reason);
  }
  let unknownFields: string[] | undefined;
  for (const k of Object.keys(fields)) if (!info.known.has(k)) (unknownFields ??= []).push(k);
  const values: StageValue[] = new Array(STAGE_COLUMNS.length);
  for (let i = 0; i < STAGE_COLUMNS.length; i++) {
    const field = info.fieldFor[i];
    const v = field === undefined ? undefined : fields[field];
    if (v === undefined || v === null) { values[i] = null; continue; }
    const type = STAGE_COLUMNS[i]![1];
    const naturalKey = info.mapping.naturalKeys?.[field!];
    if (naturalKey !== undefined && Array.isArray(v)) {
      // `"user": ["alice"]`: a natural key, resolved by the merge against the export's users.
      const p = textProblem(v[0] as string);
      if (p) throw badValue(rec, field!, p);
      values[i] = null;
      values[STAGE_COLUMNS.findIndex(([c]) => c === naturalKey)] = v[0] as string;
      continue;
    }
    if (type === 'json') {
      let text: string;
      try {
        const p = jsonProblem(v);
        if (p) throw badValue(rec, field!, p);
        const canonical = canonicalOptionValue(v, () => rec.source);
        if (typeof canonical === 'string') throw badValue(rec, field!, canonical);
        if (canonical.legacy) {
          const q = jsonProblem(canonical.value);
          if (q) throw badValue(rec, field!, q);
        }
        const keyField = info.mapping.columns.key === undefined ? undefined : 'key';
        const rule = keyField === undefined ? undefined : info.valueRules.get(fields[keyField] as string);
        if (rule && !rule(canonical.value)) {
          throw new RecordError(ErrorCodes.RECORD_OPTION_VALUE,
            `${rec.model} pk ${rec.pk}: value ${JSON.stringify(canonical.value)} is not allowed for option ${String(fields[keyField!])}`, {
              position: { ordinal: rec.ordinal, offset: rec.offset, line: rec.line, column: rec.column, model: rec.model, pk: rec.pk, field: field! },
            });
        }
        text = canonical.text;
      } catch (err) {
        // Both walks recurse: a value nested a few thousand levels deep (possible when maxDepth
        // is raised) overflows the stack. That is a property of the record, not a crash.
        if (err instanceof RangeError) throw badValue(rec, field!, 'is nested too deeply to be stored');
        throw err;
      }
      values[i] = text;
    } else if (type === 'text') {
      const p = textProblem(v as string);
      if (p) throw badValue(rec, field!, p);
      values[i] = v as string;
    } else {
      values[i] = v as StageValue;
    }
  }
  row.values = values;
  if (unknownFields) row.unknownFields = unknownFields;
  return row;
}

/** Staging code of a rejected user's pk (no schema has it: the merge only looks it up). */
export const REJECTED_USER_CODE = 5;

/**
 * For a rejected `sentry.user` record with a usable pk, a staging row holding only that pk, so
 * that the merge can say its user emails and options were dropped because their user was
 * rejected (not "not in the export"). Undefined for anything else.
 */
export function rejectedUserRow(item: RejectMarker): FilteredMarker | undefined {
  const rec = item.record as { pk?: unknown } | null;
  if (item.model !== 'sentry.user' || !rec || typeof rec !== 'object' || !Number.isSafeInteger(rec.pk)) return undefined;
  // Staged like a filtered user (pk only, not kept), under a code no schema has.
  return {
    kind: 'filtered', ordinal: item.ordinal, offset: item.offset, line: item.line, column: item.column, length: item.length,
    model: 'sentry.user', code: REJECTED_USER_CODE, pk: rec.pk as number,
  };
}

/** The reject marker for a record {@link mapRecord} refused (also used by the fused processor). */
export function mapReject(rec: ScopedRecord, err: RecordError): RejectMarker {
  const { ordinal, offset, line, column, length, model, pk, fields } = rec;
  return { kind: 'reject', ordinal, offset, line, column, length, model, error: err, record: { model, pk, fields } };
}

/** Creates the model-mapping stage: {@link FlowItem} in, {@link MappedItem} out. */
export function createModelMapper(options: ModelMapperOptions = {}): Transform {
  checkOptions('createModelMapper', options, { collectRejects: isBoolean });
  const collect = options.collectRejects ?? DEFAULT_COLLECT_REJECTS;
  return new Transform({
    objectMode: true,
    highWaterMark: 64,
    transform(item: FlowItem, _enc: BufferEncoding, callback: TransformCallback) {
      if (item.kind !== 'record') return callback(null, item);
      try {
        callback(null, mapRecord(item));
      } catch (err) {
        if (!collect || !(err instanceof RecordError)) return callback(err as Error);
        callback(null, mapReject(item, err));
      }
    },
  });
}
