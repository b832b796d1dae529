/**
 * Model knowledge, read from the JSON Schemas in `schemas/`: which models are in the user scope,
 * how each field is validated, and which staging column it lands in (`x-userport.columns`).
 * Stages never branch on model names; they look the model up here.
 */
import fs from 'node:fs';
import { isIP } from 'node:net';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { compiledModuleSource, validatorsFor, type Formats, type SchemaSet, type Validators } from './validators.js';

/** Type of a staging column, which decides how a value is checked and encoded for COPY. */
export type ColumnType = 'text' | 'bool' | 'timestamptz' | 'int' | 'json' | 'doc';

/**
 * The staging table's data columns, in COPY order. One wide table for all four models lets the
 * sink keep a single COPY stream open for the whole import (models may interleave in any order).
 */
export const STAGE_COLUMNS = [
  ['username', 'text'], ['first_name', 'text'], ['email', 'text'],
  ['is_active', 'bool'], ['is_sentry_app', 'bool'],
  ['last_login', 'timestamptz'], ['date_joined', 'timestamptz'], ['last_active', 'timestamptz'],
  ['flags', 'int'], ['session_nonce', 'text'], ['avatar_type', 'int'], ['avatar_url', 'text'],
  ['email_unique', 'text'], ['is_suspended', 'bool'],
  ['user_pk', 'int'], ['project_id', 'int'], ['organization_id', 'int'],
  ['opt_key', 'text'], ['opt_value', 'json'],
  // The fields only the config and global scopes write (x-userport.extra), as one JSON object:
  // NULL in user scope, so `import users` pays one empty column for them, not twenty.
  ['extra', 'doc'],
] as const satisfies readonly (readonly [string, ColumnType])[];

/** The name of a staging column (`username`, `email`...), a key of `STAGE_INDEX`. */
export type StageColumn = (typeof STAGE_COLUMNS)[number][0];

/**
 * Index of each staging column in `StagedRow.values`: `row.values[STAGE_INDEX.email]`. A table of
 * constants rather than named properties on every row, so the hot path allocates nothing more.
 */
export const STAGE_INDEX: { readonly [C in StageColumn]: number } = Object.freeze(
  Object.fromEntries(STAGE_COLUMNS.map(([c], i) => [c, i])) as { [C in StageColumn]: number });

/** A value on its way to a staging column: JSON text for `json` columns, else the JS value. */
export type StageValue = string | number | boolean | null;

/**
 * Sentry's import scopes, as far as they concern users: `users` (`sentry import users`), `config`
 * (also admin privileges: permissions, roles, personal API tokens) and `global` (also passwords,
 * two-factor authenticators, verification state, user IPs).
 */
export type ImportScope = 'users' | 'config' | 'global';

/** The import scopes, narrowest first. */
export const IMPORT_SCOPES: readonly ImportScope[] = ['users', 'config', 'global'];

/** The `x-userport` block of a model schema. */
export interface ModelMapping {
  /**
   * The narrowest import scope that brings the model (Sentry's `RelocationScope`): `user` models
   * travel with every scope, `config` ones with config and global, `global` ones with global only.
   */
  scope: 'user' | 'config' | 'global';
  /**
   * Fields staged in the `extra` column (one JSON object) when the import's scope is config or
   * global: the credentials and privileges user scope never imports, and every field of the
   * models only those scopes bring.
   */
  extra?: string[];
  /**
   * Fields that hold secrets (password hashes, authenticator configs, API tokens): masked in the
   * rejects file, never quoted in a message.
   */
  secret?: string[];
  /** Small integer stored in the staging table's `model` column. */
  code: number;
  /** Target table in Sentry's schema. */
  table: string;
  /** Field name -> staging column. */
  columns: Record<string, StageColumn>;
  /**
   * Field name -> the column of Sentry's table it is written to, for the text fields whose width
   * differs between Sentry's releases: a target narrower than the schema's `maxLength` (Sentry 9's
   * 75-character addresses) is checked against its own width (see {@link fieldLimits}).
   */
  targetColumns?: Record<string, string>;
  /**
   * Values checked per key, as Sentry's `UserOptionsSerializer` checks them on import: for each
   * key, a JSON Schema of the decoded value. Keys not listed are not checked.
   */
  valueRules?: Record<string, Record<string, unknown>>;
  /**
   * Foreign keys that exports before Sentry 23.9.1 wrote as natural keys (`"user": ["alice"]`):
   * field -> staging column that holds the key for the merge to resolve.
   */
  naturalKeys?: Record<string, StageColumn>;
  /**
   * Fields older Sentry releases wrote under another name: old name -> current name. Sentry 21.x
   * and 22.x exports name the option's foreign keys `project` and `organization` (Django writes
   * a ForeignKey under its field name); since 2023 they are HybridCloudForeignKeys named
   * `project_id` and `organization_id`. The old name means what the new one means.
   */
  legacyNames?: Record<string, string>;
  /**
   * Field -> what is staged when a record lacks the field (not when it is null), where Sentry's
   * model gives a nullable field a default: Django builds the object from the record's fields,
   * so a missing one takes its default. `now` is `default=timezone.now`: the time the record is
   * mapped (an ISO timestamp), as Sentry's is the time it deserializes it.
   */
  whenAbsent?: Record<string, 'now'>;
  /**
   * The model's place in Sentry's export (`sorted_dependencies()`), as Sentry's 2024-05 release
   * snapshot (`tests/sentry/backup/snapshots/ReleaseTests/test_at_head.pysnap` @ 009c94a9) orders
   * them: user, userip, userpermission, userrole, userroleuser, email, authenticator, useroption,
   * useremail, apitoken, apiauthorization. (The 23.7.1 export and the 2023 `sorted.json` put
   * useremail before useroption and apiauthorization before apitoken: the graph's order changed.)
   */
  exportRank: number;
  /**
   * The fields Sentry's serializer writes, in Django's declaration order: `[field, encoding,
   * column?]` (column defaults to the field's name). Fields a database lacks are left out
   * (`email_unique` before 2025, `is_suspended` before 2026).
   */
  export: [string, 'text' | 'bool' | 'int' | 'int-string' | 'date' | 'json' | 'json-string' | 'text-array', string?][];
}

export interface ModelInfo {
  name: string;
  mapping: ModelMapping;
  validate: ValidateFunction;
  /** Every field the schema knows (mapped or ignored); anything else counts as unknown. */
  known: Set<string>;
  /** The staging columns a field feeds, in column order: what the per-record mapping visits (the others stay NULL). */
  mapped: readonly { index: number; field: string; type: ColumnType }[];
  /** Compiled {@link ModelMapping.valueRules}, by key. */
  valueRules: Map<string, ValidateFunction>;
  /** The JSON Schema itself. */
  schema: Record<string, unknown>;
}

const SCHEMA_DIR = new URL('../../schemas/', import.meta.url);
const USER_SCOPE = ['sentry.user', 'sentry.email', 'sentry.useremail', 'sentry.useroption'] as const;
export type UserScopeModel = (typeof USER_SCOPE)[number];
/** The models the config and global scopes add (one schema each in `schemas/`). */
const PRIVILEGE_MODELS = [
  'sentry.userpermission', 'sentry.userrole', 'sentry.userroleuser', 'sentry.authenticator', 'sentry.userip',
  'sentry.apitoken', 'sentry.apiauthorization',
] as const;

/** True when an import in `scope` brings records of a model whose own scope is `own`. */
export function scopeIncludes(scope: ImportScope, own: ModelMapping['scope']): boolean {
  return own === 'user' || (own === 'config' && scope !== 'users') || (own === 'global' && scope === 'global');
}

/** Value of the two ASCII digits at `i`, or -1. */
function twoDigits(s: string, i: number): number {
  const a = s.charCodeAt(i) - 48;
  const b = s.charCodeAt(i + 1) - 48;
  return a >= 0 && a <= 9 && b >= 0 && b <= 9 ? a * 10 + b : -1;
}

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/**
 * Strict ISO-8601 date-time that PostgreSQL's timestamptz accepts: a real calendar date, year
 * 1-9999, offset within ±15:59. The grammar is
 * `YYYY-MM-DD[T ]hh:mm:ss[.f{1,9}][Z|±hh[:]mm]`, read with `charCodeAt`: a regular expression
 * with ten capture groups allocated a match and ten strings per timestamp, four per user.
 */
export function isDateTime(s: string): boolean {
  const n = s.length;
  if (n < 19) return false;
  const y1 = twoDigits(s, 0), y2 = twoDigits(s, 2);
  const mo = twoDigits(s, 5), d = twoDigits(s, 8), h = twoDigits(s, 11), mi = twoDigits(s, 14), sec = twoDigits(s, 17);
  if (y1 < 0 || y2 < 0 || mo < 0 || d < 0 || h < 0 || mi < 0 || sec < 0) return false;
  const t = s.charCodeAt(10);
  if (s.charCodeAt(4) !== 0x2d || s.charCodeAt(7) !== 0x2d || (t !== 0x54 && t !== 0x20)
    || s.charCodeAt(13) !== 0x3a || s.charCodeAt(16) !== 0x3a) return false;
  let i = 19;
  if (i < n && s.charCodeAt(i) === 0x2e) {
    let k = i + 1;
    while (k < n && k - i <= 9) {
      const c = s.charCodeAt(k);
      if (c < 0x30 || c > 0x39) break;
      k++;
    }
    if (k === i + 1) return false;
    i = k;
  }
  if (i < n) {
    const c = s.charCodeAt(i);
    if (c === 0x5a /* Z */) {
      if (i + 1 !== n) return false;
    } else if (c === 0x2b || c === 0x2d) {
      const oh = twoDigits(s, i + 1);
      if (oh < 0) return false;
      const colon = s.charCodeAt(i + 3) === 0x3a ? 1 : 0;
      const om = twoDigits(s, i + 3 + colon);
      if (om < 0 || i + 5 + colon !== n) return false;
      // PostgreSQL refuses a UTC offset beyond 15:59 ("time zone displacement out of range").
      if (oh > 15 || om > 59) return false;
    } else {
      return false;
    }
  }
  const y = y1 * 100 + y2;
  if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 59) return false;
  const dim = mo === 2 && ((y % 4 === 0 && y % 100 !== 0) || y % 400 === 0) ? 29 : DAYS_IN_MONTH[mo - 1]!;
  return d <= dim;
}

/**
 * The names Sentry's `timezone` option takes: its `zoneinfo.available_timezones()` (schemas/
 * time-zones.json, tzdata of the file's date), and the zones this Node's ICU lists, for zones newer
 * than the file. Exact and case-sensitive, as Sentry's ChoiceField is: `europe/vienna` is not a
 * zone to Sentry (Python's ZoneInfo refuses it), although Intl would take it.
 */
let timeZones: ReadonlySet<string> | undefined;

function zoneNames(): ReadonlySet<string> {
  return timeZones ??= new Set([
    ...(JSON.parse(fs.readFileSync(new URL('time-zones.json', SCHEMA_DIR), 'utf8')) as { zones: string[] }).zones,
    ...Intl.supportedValuesOf('timeZone'),
  ]);
}

/** An IANA time zone name as Sentry accepts it for the `timezone` user option. */
export function isTimeZone(s: string): boolean {
  return zoneNames().has(s);
}

/** The zone name `s` spells in other letter case (`europe/vienna`: `Europe/Vienna`), for an error to suggest. */
export function timeZoneSpelled(s: string): string | undefined {
  const lower = s.toLowerCase();
  for (const z of zoneNames()) if (z.toLowerCase() === lower) return z;
  return undefined;
}

function loadSchema(name: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(new URL(`${name}.json`, SCHEMA_DIR), 'utf8')) as Record<string, unknown>;
}

/** The formats the schemas name, checked as Sentry's fields are. */
const FORMATS: Formats = {
  'date-time': isDateTime,
  'time-zone': isTimeZone,
  // Django's GenericIPAddressField (what `UserIP.full_clean` checks): an IPv4 or IPv6 address.
  'ip-address': (s: string) => isIP(s) !== 0,
};

/** A model as `schemas/` describes it: everything of a {@link ModelInfo} but its compiled validators. */
export type ModelSchema = Omit<ModelInfo, 'validate' | 'valueRules'>;

let schemaCache: Map<string, ModelSchema> | undefined;

/**
 * The models read from `schemas/`, nothing compiled: what only reads the mappings (the exporter's
 * model list, the rejects' redaction) uses these, so loading the library or exporting compiles no
 * validator.
 */
export function modelSchemas(): ReadonlyMap<string, ModelSchema> {
  if (schemaCache) return schemaCache;
  const models = new Map<string, ModelSchema>();
  for (const name of [...USER_SCOPE, ...PRIVILEGE_MODELS]) {
    const schema = loadSchema(name);
    const mapping = schema['x-userport'] as ModelMapping;
    const props = Object.keys(schema.properties as object);
    const mapped = STAGE_COLUMNS.flatMap(([col, type], index) => {
      const field = Object.keys(mapping.columns).find((f) => mapping.columns[f] === col);
      return field === undefined ? [] : [{ index, field, type }];
    });
    models.set(name, { name, mapping, known: new Set(props), mapped, schema });
  }
  return (schemaCache = models);
}

/** What the validators are made from: the envelope's schema, then each model's, in `modelSchemas()` order. */
export function schemaSet(): SchemaSet {
  return {
    envelope: loadSchema('record'),
    models: [...modelSchemas().values()].map((m) => ({ name: m.name, schema: m.schema, valueRules: m.mapping.valueRules ?? {} })),
  };
}

/** The source of the build's compiled validators (`tools/compile-validators.ts` writes it). */
export function compiledValidatorsSource(): string {
  return compiledModuleSource(schemaSet(), FORMATS);
}

/**
 * The models with their validators, made at once on first use (an import asks when it starts):
 * loaded from the build's compiled module, or compiled by ajv here (lib/validators.ts). Each
 * object is made whole, its validators set once: the per-record path reads them (validators that
 * replaced a compiling stub on first use cost the read 15-25% more CPU).
 */
function build() {
  const v = validatorsFor(schemaSet(), FORMATS);
  const models = new Map<string, ModelInfo>();
  for (const m of modelSchemas().values()) {
    const { validate, valueRules } = v.models.get(m.name)!;
    models.set(m.name, { ...m, validate, valueRules });
  }
  return { envelope: v.envelope, models, origin: v.origin };
}

let cache: ReturnType<typeof build> | undefined;

/** The compiled schemas (built once, on first use). */
export function registry(): { envelope: ValidateFunction; models: Map<string, ModelInfo>; origin: Validators['origin'] } {
  return (cache ??= build());
}

/**
 * The model named `name` (already lower-cased) when an import in `scope` brings it, else
 * undefined (out of scope: counted and skipped).
 */
export function modelInfo(name: string, scope: ImportScope = 'users'): ModelInfo | undefined {
  const m = registry().models.get(name);
  return m && scopeIncludes(scope, m.mapping.scope) ? m : undefined;
}

/**
 * Staging code of a rejected user's pk: no schema has it, the merge only looks it up, so that the
 * user emails and options of a rejected user are dropped as "user rejected", not "not in the export".
 */
export const REJECTED_USER_CODE = 5;

/** Model info by staging code. */
export function modelByCode(code: number): ModelInfo {
  for (const m of registry().models.values()) if (m.mapping.code === code) return m;
  throw new Error(`no model with code ${code}`);
}

/** The four models `sentry export users` writes. */
export const USER_SCOPE_MODELS: readonly UserScopeModel[] = USER_SCOPE;

/** Why an import skips the records of a model that has no more particular reason ({@link skipReason}). */
export const NOT_USER_DATA = 'not user data';

/**
 * Why records of `model` are skipped by an import in `scope`, where the reason is more than "not
 * user data": a privilege model of a wider scope, or a model of the global scope that needs the
 * organisations or applications userport does not import.
 */
export function skipReason(model: string, scope: ImportScope): string | undefined {
  const m = modelSchemas().get(model);
  if (m && !scopeIncludes(scope, m.mapping.scope)) return `imported by import ${m.mapping.scope} only`;
  if (scope === 'users') return undefined;
  return NEEDS_ORGANISATIONS[model];
}

/**
 * The summary's reasons of the skipped models (`skipped`: model -> count) that have one: the
 * target's (`byTarget`, the mapper's `skipModels`), else the scope's ({@link skipReason}); and the
 * scope when it is not `users`.
 */
export function skippedReasons(skipped: Record<string, number>, scope: ImportScope, byTarget: Readonly<Record<string, string>> = {}): { skippedReasons?: Record<string, string>; scope?: Exclude<ImportScope, 'users'> } {
  const reason = (m: string) => (Object.hasOwn(byTarget, m) ? byTarget[m] : skipReason(m, scope));
  const reasons = Object.fromEntries(Object.keys(skipped).map((m) => [m, reason(m)]).filter(([, r]) => r !== undefined)) as Record<string, string>;
  return { ...(Object.keys(reasons).length ? { skippedReasons: reasons } : {}), ...(scope !== 'users' ? { scope } : {}) };
}

/** Models of Sentry's global scope that hang on organisation data userport does not import. */
const NEEDS_ORGANISATIONS: Record<string, string> = {
  'sentry.authidentity': 'needs its sentry.authprovider, organisation data userport does not import',
  'sentry.apiapplication': 'organisation data userport does not import (application-bound tokens are skipped with it)',
  'sentry.apigrant': 'needs its sentry.apiapplication, organisation data userport does not import',
  'sentry.lostpasswordhash': 'excluded from every scope by Sentry (userport writes new ones)',
  'sentry.useravatar': 'excluded from every scope by Sentry',
};

/** Every model an import or export in `scope` handles, in registry order. */
export function scopeModels(scope: ImportScope): ModelInfo[] {
  return [...registry().models.values()].filter((m) => scopeIncludes(scope, m.mapping.scope));
}

/**
 * Widths of one target database, by model and field, where they are narrower than the schema's:
 * a value longer than its column would fail (or be truncated by) PostgreSQL. The mapper checks
 * them with the schema, so such a record is a coded error or a reject naming it, never a failed
 * COPY or merge.
 */
export type FieldLimits = Readonly<Record<string, Readonly<Record<string, { max: number; column: string }>>>>;

/**
 * {@link FieldLimits} of a target whose tables have the given column widths
 * (`widthOf(table, column)`: characters, or null when unbounded or absent).
 */
export function fieldLimits(widthOf: (table: string, column: string) => number | null | undefined): FieldLimits {
  const out: Record<string, Record<string, { max: number; column: string }>> = {};
  for (const m of modelSchemas().values()) {
    const props = m.schema.properties as Record<string, { maxLength?: number }>;
    for (const [field, column] of Object.entries(m.mapping.targetColumns ?? {})) {
      const width = widthOf(m.mapping.table, column);
      if (width == null) continue;
      if (props[field]?.maxLength !== undefined && width >= props[field]!.maxLength!) continue;
      (out[m.name] ??= {})[field] = { max: width, column: `${m.mapping.table}.${column}` };
    }
  }
  return out;
}

/** Turns an ajv error into (field, reason). */
export function describeAjvError(e: ErrorObject | undefined): { field: string | undefined; reason: string } {
  if (!e) return { field: undefined, reason: 'is invalid' };
  let field = e.instancePath.replace(/^\//, '').replace(/\//g, '.') || undefined;
  if (e.keyword === 'required') {
    const missing = (e.params as { missingProperty: string }).missingProperty;
    field = field ? `${field}.${missing}` : missing;
    return { field, reason: 'is required' };
  }
  if (e.keyword === 'format') return { field, reason: 'must be an ISO-8601 date-time with a real calendar date' };
  if (e.keyword === 'anyOf' && field === 'flags') return { field, reason: 'must be a non-negative integer or a decimal string' };
  if (e.keyword === 'anyOf' && field === 'user') return { field, reason: 'must be an integer pk (or, before Sentry 23.9.1, a [username] natural key)' };
  return { field, reason: e.message ?? 'is invalid' };
}
