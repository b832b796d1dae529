/**
 * Stage 3, in-scope records -> staging rows: validates each record's fields against its model's
 * JSON Schema (ajv, compiled once, on first use), counts unknown fields (ignored, never fatal), and lays the
 * values out in staging-column order. Everything PostgreSQL would refuse (a NUL character, a lone
 * surrogate, an over-long string, an impossible date) is caught here, so the COPY that follows
 * never fails on data and a bad record can be rejected on its own.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { ErrorCodes, printable, RecordError } from './errors.js';
import { DEFAULT_COLLECT_REJECTS, isImportScope, skipMarker, type FlowItem, type RejectMarker, type ScopedRecord, type SkipMarker } from './filter-users.js';
import { checkOptions, isBoolean, type OptionCheck } from './options.js';
import { describeAjvError, modelInfo, REJECTED_USER_CODE, timeZoneSpelled, STAGE_COLUMNS, STAGE_INDEX, type FieldLimits, type ImportScope, type ModelInfo, type StageColumn, type StageValue } from './models.js';
import { canonicalOptionValue } from './option-values.js';
import { encodePickledField, type PickleInput } from './pickle.js';
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
  /** What the target database is like, where it matters to the values (an import reads it from the target). @default Sentry's current schema */
  target?: MapTarget;
  /**
   * Pass records that fail their schema on as {@link RejectMarker}s instead of failing the
   * stream (the CLI's `--rejects-file`). @default false ({@link DEFAULT_COLLECT_REJECTS})
   */
  collectRejects?: boolean;
  /**
   * The import's scope ({@link ImportScope}): in `config` and `global` the credentials and
   * privileges are staged too (the `extra` column). @default 'users'
   */
  scope?: ImportScope;
}

const NULLS: StageValue[] = STAGE_COLUMNS.map(() => null);

/** Throws RECORD_OPTION_VALUE when `value` is not one Sentry allows for the record's option key (valueRules). */
function checkOptionValue(rec: ScopedRecord, info: ModelInfo, fields: Record<string, unknown>, field: string, value: unknown): void {
  if (info.mapping.columns.key === undefined) return;
  const rule = info.valueRules.get(fields.key as string);
  if (!rule || rule(value)) return;
  // Sentry takes zone names exactly as tzdata writes them: say which one a wrong case meant.
  const meant = fields.key === 'timezone' && typeof value === 'string' ? timeZoneSpelled(value) : undefined;
  throw new RecordError(ErrorCodes.RECORD_OPTION_VALUE,
    // printable: JSON.stringify leaves U+2028, U+2029 and C1 controls as they are.
    `${rec.model} pk ${rec.pk}: value ${printable(JSON.stringify(value))} is not allowed for option ${printable(String(fields.key))}${meant ? ` (Sentry takes zone names as written: ${JSON.stringify(meant)})` : ''}`, {
      position: { ordinal: rec.ordinal, offset: rec.offset, line: rec.line, column: rec.column, model: rec.model, pk: rec.pk, field },
    });
}

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

/** The fields with legacy names renamed (a new object only when one is present). */
function currentNames(fields: Record<string, unknown>, legacy: Record<string, string> | undefined): Record<string, unknown> {
  if (!legacy) return fields;
  let out = fields;
  for (const old in legacy) {
    const now = legacy[old]!;
    // Both present: the current name wins and the old one counts as an unknown field.
    if (!(old in fields) || now in fields) continue;
    if (out === fields) out = { ...fields };
    out[now] = out[old];
    delete out[old];
  }
  return out;
}

/** Digits of an integer beyond what a double holds exactly: such a number cannot be pickled exactly from JSON.parse. */
const BIG_INTEGER = /(?<![.\d])-?\d{16,}(?![.\deE])/;

/**
 * The canonical JSON text of an option value as Sentry 9 stores it (django-picklefield: base64 of
 * a Python 2 cPickle, protocol 2). A number too large to carry exactly is a RECORD_TARGET error,
 * never a changed value.
 */
function pickledOptionValue(text: string, rec: ScopedRecord, field: string): string {
  const refuse = (why: string) => new RecordError(ErrorCodes.RECORD_TARGET, `${rec.model} pk ${rec.pk}: field ${field} ${why}`, {
    position: { ordinal: rec.ordinal, offset: rec.offset, line: rec.line, column: rec.column, model: rec.model, pk: rec.pk, field },
  });
  const value = JSON.parse(text) as unknown;
  if (BIG_INTEGER.test(text) && JSON.stringify(value) !== text) throw refuse('holds a number the target\'s pickled column cannot store exactly');
  try {
    return encodePickledField(value as PickleInput);
  } catch (err) {
    // An infinite number (1e400 parses to Infinity): Python's pickle of it would not be this value.
    throw refuse(`cannot be stored in the target's pickled column: ${(err as Error).message}`);
  }
}

/**
 * A list of strings as Sentry's exports have written it: a JSON array, a string holding one
 * (`'[]'`, Django's ArrayField), or a Python repr (`"['users.admin', 'options.admin']"`, older
 * role permissions and API scopes). Undefined when the text is none of these.
 */
export function parseStringList(v: unknown): string[] | undefined {
  if (Array.isArray(v)) return v.every((x) => typeof x === 'string') ? v as string[] : undefined;
  if (typeof v !== 'string') return undefined;
  const s = v.trim();
  if (s.startsWith('[') && s.includes('"') || s === '[]') {
    try {
      const parsed = JSON.parse(s) as unknown;
      if (Array.isArray(parsed) && parsed.every((x) => typeof x === 'string')) return parsed as string[];
    } catch { /* a repr, below */ }
  }
  // Python's repr of a list of str: ['a', 'b'] (or "a" where the string holds a quote).
  const m = /^\[(.*)\]$/s.exec(s);
  if (!m) return undefined;
  const out: string[] = [];
  const item = /\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*(,|$)/gy;
  const body = m[1]!;
  if (body.trim() === '') return out;
  let at = 0;
  while (at < body.length) {
    item.lastIndex = at;
    const x = item.exec(body);
    if (!x) return undefined;
    out.push((x[1] ?? x[2]!).replace(/\\(.)/g, '$1'));
    at = item.lastIndex;
    if (x[3] === '') break;
  }
  return at >= body.length ? out : undefined;
}

/**
 * An authenticator's `config` as exported: Sentry writes it as a string holding JSON
 * (`"\"\""`, `"{\"secret\": ...}"`); a raw JSON value is taken as it is.
 */
function authenticatorConfig(v: unknown): unknown {
  if (typeof v !== 'string') return v;
  try {
    return JSON.parse(v) as unknown;
  } catch {
    return v;
  }
}

/** Fields whose value is normalized before it is staged, by model. */
const EXTRA_VALUES: Record<string, Record<string, 'list' | 'config' | 'digits'>> = {
  'sentry.userrole': { permissions: 'list' },
  'sentry.apitoken': { scope_list: 'list', scopes: 'digits' },
  'sentry.apiauthorization': { scope_list: 'list', scopes: 'digits' },
  'sentry.authenticator': { config: 'config' },
};

/**
 * The `extra` column of a record in config or global scope: the fields of `x-userport.extra`
 * as one JSON object, lists and configs in one canonical form, the authenticator's config in the
 * target's encoding (JSON value, JSON text, or a base64 pickle as Sentry 9 stores it).
 */
function extraColumn(rec: ScopedRecord, info: ModelInfo, fields: Record<string, unknown>, target: MapTarget | undefined): string {
  const out: Record<string, unknown> = {};
  const rules = EXTRA_VALUES[rec.model];
  for (const f of info.mapping.extra!) {
    let v = fields[f];
    if (v === undefined) continue;
    const rule = rules?.[f];
    if (rule === 'list' && v !== null) {
      const list = parseStringList(v);
      if (!list) throw badValue(rec, f, 'must be a list of strings (a JSON array, or its text as Sentry writes it)');
      v = list;
    } else if (rule === 'digits' && v !== null) {
      v = String(v);
    } else if (rule === 'config') {
      const config = authenticatorConfig(v);
      const p = jsonProblem(config);
      if (p) throw badValue(rec, f, p);
      const enc = target?.authenticatorConfig ?? 'jsonb';
      if (enc === 'pickle') {
        try {
          v = encodePickledField(config as PickleInput);
        } catch (err) {
          throw badValue(rec, f, `cannot be stored in the target's pickled column: ${(err as Error).message}`);
        }
      } else {
        v = enc === 'json-text' ? JSON.stringify(config) : config;
      }
    } else if (typeof v === 'string') {
      const p = textProblem(v);
      if (p) throw badValue(rec, f, p);
    }
    out[f] = v;
  }
  return JSON.stringify(out);
}

/**
 * Validates and maps one record. Pure. Throws a {@link RecordError}. `target`: what the target
 * database is like ({@link MapTarget}): the widths records must fit, how option values are stored.
 * `scope`: the import's scope; in config and global the credentials are staged as well.
 */
export function mapRecord(rec: ScopedRecord, target?: MapTarget, scope: ImportScope = 'users'): StagedRow | FilteredMarker {
  const limits = target?.fieldLimits;
  const info = modelInfo(rec.model, scope);
  if (!info) {
    throw new RecordError(ErrorCodes.RECORD_ENVELOPE, `mapRecord: ${rec.model} is not a model of the ${scope} scope`, {
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
  const fields = currentNames(rec.fields, info.mapping.legacyNames);
  if (!info.validate(fields)) {
    const { field, reason } = describeAjvError(info.validate.errors?.[0]);
    throw badValue(rec, field ?? 'fields', reason);
  }
  const narrow = limits?.[rec.model];
  if (narrow) {
    for (const field in narrow) {
      const v = fields[field];
      const { max, column } = narrow[field]!;
      if (typeof v === 'string' && v.length > max) {
        throw new RecordError(ErrorCodes.RECORD_TARGET,
          `${rec.model} pk ${rec.pk}: field ${field} has ${v.length} characters, more than the target's ${column} holds (${max})`, {
            position: { ordinal: rec.ordinal, offset: rec.offset, line: rec.line, column: rec.column, model: rec.model, pk: rec.pk, field },
          });
      }
    }
  }
  let unknownFields: string[] | undefined;
  // (for-in: the parsed record's own fields, without an array of their names per record.)
  for (const k in fields) if (!info.known.has(k)) (unknownFields ??= []).push(k);
  // Every column NULL, then the model's own columns (a user's 14, an option's 4, an address's 1),
  // not all 20 looked up for every record.
  const values = NULLS.slice();
  for (const { index: i, field, type } of info.mapped) {
    const v = fields[field];
    if (v === undefined || v === null) {
      // A null option value is checked too: Sentry's serializer refuses null for the keys it checks.
      if (v === null && type === 'json') checkOptionValue(rec, info, fields, field, null);
      if (v === undefined && info.mapping.whenAbsent?.[field] === 'now') values[i] = new Date().toISOString();
      continue;
    }
    const naturalKey = info.mapping.naturalKeys?.[field];
    if (naturalKey !== undefined && Array.isArray(v)) {
      // `"user": ["alice"]`: a natural key, resolved by the merge against the export's users.
      const p = textProblem(v[0] as string);
      if (p) throw badValue(rec, field, p);
      values[i] = null;
      values[STAGE_COLUMNS.findIndex(([c]) => c === naturalKey)] = v[0] as string;
      continue;
    }
    if (type === 'json') {
      let text: string;
      try {
        const p = jsonProblem(v);
        if (p) throw badValue(rec, field, p);
        const canonical = canonicalOptionValue(v, () => rec.source);
        if (typeof canonical === 'string') throw badValue(rec, field, canonical);
        if (canonical.legacy) {
          const q = jsonProblem(canonical.value);
          if (q) throw badValue(rec, field, q);
        }
        checkOptionValue(rec, info, fields, field, canonical.value);
        text = target?.optionValues === 'pickle' ? pickledOptionValue(canonical.text, rec, field) : canonical.text;
      } catch (err) {
        // Both walks recurse: a value nested a few thousand levels deep (possible when maxDepth
        // is raised) overflows the stack. That is a property of the record, not a crash.
        if (err instanceof RangeError) throw badValue(rec, field, 'is nested too deeply to be stored');
        throw err;
      }
      values[i] = text;
    } else if (type === 'text') {
      const p = textProblem(v as string);
      if (p) throw badValue(rec, field, p);
      values[i] = v as string;
    } else {
      values[i] = v as StageValue;
    }
  }
  if (info.mapping.extra && (scope !== 'users' || info.mapping.scope !== 'user')) values[EXTRA_INDEX] = extraColumn(rec, info, fields, target);
  row.values = values;
  if (unknownFields) row.unknownFields = unknownFields;
  return row;
}

const EXTRA_INDEX = STAGE_INDEX.extra;

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

/**
 * What the mapper needs to know of the target database: column widths narrower than the
 * schemas' (Sentry 9's 75-character addresses), how option values are stored there (jsonb,
 * JSON text, or Sentry 9's pickles), and the models it has no table for that Sentry itself skips.
 */
export interface MapTarget {
  fieldLimits?: FieldLimits;
  /** @default 'jsonb' */
  optionValues?: 'jsonb' | 'json-text' | 'pickle';
  /** How `auth_authenticator.config` is stored (config and global scopes). @default 'jsonb' */
  authenticatorConfig?: 'jsonb' | 'json-text' | 'pickle';
  /**
   * Models whose records are skipped (counted, never validated or staged), each with why: the
   * ones the target has no table for and Sentry's own importer skips there (`sentry.email` on
   * Sentry 2026, which removed the model: its importer skips the models it does not know).
   * importUsers fills it from the target ({@link skippedModels} in db/merge/plan.ts). @default none
   */
  skipModels?: Readonly<Record<string, string>>;
}

/**
 * The skip marker of an in-scope record whose model `target` skips ({@link MapTarget.skipModels}),
 * or undefined. Its envelope was checked (it is a {@link ScopedRecord}); its fields are not.
 */
export function targetSkip(rec: ScopedRecord, target: MapTarget | undefined): SkipMarker | undefined {
  if (target?.skipModels === undefined || !Object.hasOwn(target.skipModels, rec.model)) return undefined;
  return skipMarker(rec, rec.model);
}

/** A {@link MapTarget}. */
export const isMapTarget: OptionCheck = (v) => {
  if (v === null || typeof v !== 'object') return 'a MapTarget object ({ fieldLimits, optionValues })';
  const t = v as MapTarget;
  if (t.optionValues !== undefined && !['jsonb', 'json-text', 'pickle'].includes(t.optionValues)) return "a MapTarget whose optionValues is 'jsonb', 'json-text' or 'pickle'";
  if (t.authenticatorConfig !== undefined && !['jsonb', 'json-text', 'pickle'].includes(t.authenticatorConfig)) return "a MapTarget whose authenticatorConfig is 'jsonb', 'json-text' or 'pickle'";
  if (t.skipModels !== undefined && (t.skipModels === null || typeof t.skipModels !== 'object'
    || !Object.values(t.skipModels).every((why) => typeof why === 'string' && why.length > 0))) return 'a MapTarget whose skipModels map model -> why (a non-empty string)';
  const ok = t.fieldLimits === undefined || (t.fieldLimits !== null && typeof t.fieldLimits === 'object'
    && Object.values(t.fieldLimits).every((m) => m !== null && typeof m === 'object'
      && Object.values(m as object).every((l) => l !== null && typeof l === 'object' && Number.isInteger((l as { max: unknown }).max)
        && typeof (l as { column: unknown }).column === 'string')));
  return ok ? undefined : 'a MapTarget whose fieldLimits map model -> field -> { max, column }';
};

/** Creates the model-mapping stage: {@link FlowItem} in, {@link MappedItem} out. */
export function createModelMapper(options: ModelMapperOptions = {}): Transform {
  checkOptions('createModelMapper', options, { collectRejects: isBoolean, target: isMapTarget, scope: isImportScope });
  const collect = options.collectRejects ?? DEFAULT_COLLECT_REJECTS;
  const target = options.target;
  const scope = options.scope ?? 'users';
  return new Transform({
    objectMode: true,
    highWaterMark: 64,
    transform(item: FlowItem, _enc: BufferEncoding, callback: TransformCallback) {
      if (item.kind !== 'record') return callback(null, item);
      const skip = targetSkip(item, target);
      if (skip) return callback(null, skip);
      try {
        callback(null, mapRecord(item, target, scope));
      } catch (err) {
        if (!collect || !(err instanceof RecordError)) return callback(err as Error);
        callback(null, mapReject(item, err));
      }
    },
  });
}
