/**
 * The JSON Schema validators of `schemas/`, made by ajv. `npm run build` has ajv compile them
 * into a module of plain functions (ajv's standalone code, `dist/lib/validators.compiled.cjs`,
 * written by `tools/compile-validators.ts`) stamped with a digest of the schemas and of ajv's
 * version and options; an import loads that module when its digest matches, else (no such file,
 * other schemas, another ajv) ajv compiles them in the process as it always did. Loading them costs an
 * import 5-10 ms where loading ajv and compiling cost 120-150 ms of every import's start.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Ajv, ValidateFunction } from 'ajv';

const require = createRequire(import.meta.url);

/** The compiled module's file name, beside this one. */
export const COMPILED_VALIDATORS = 'validators.compiled.cjs';
/** Changes when the compiled module's shape changes (its digest covers it). */
const MODULE_FORMAT = 'userport-validators/1';

/** A JSON Schema, as read. */
type Schema = Record<string, unknown>;

/** What is compiled: the record envelope's schema, and each model's schema and value rules. */
export interface SchemaSet {
  envelope: Schema;
  models: { name: string; schema: Schema; valueRules: Record<string, Schema> }[];
}

/** The `format` checks the schemas name (`date-time`, `time-zone`, `ip-address`), by name. */
export type Formats = Record<string, (s: string) => boolean>;

/** The compiled validators of a {@link SchemaSet}, and where they came from. */
export interface Validators {
  envelope: ValidateFunction;
  models: Map<string, { validate: ValidateFunction; valueRules: Map<string, ValidateFunction> }>;
  /** `precompiled`: loaded from the build's module; `compiled`: compiled by ajv in this process. */
  origin: 'precompiled' | 'compiled';
}

/** A format as ajv takes it, and as its standalone code reads it (`formats[name].validate`). */
type FormatDefinitions = Record<string, { type: 'string'; validate: (s: string) => boolean }>;

/** The compiled module as `require` returns it. */
interface CompiledModule {
  digest: string;
  /** The validators by export name, given the formats. */
  make(formats: FormatDefinitions): Record<string, ValidateFunction>;
}

function formatDefinitions(formats: Formats): FormatDefinitions {
  return Object.fromEntries(Object.entries(formats).map(([name, validate]) => [name, { type: 'string' as const, validate }]));
}

function ajvPackage(): typeof import('ajv') {
  return require('ajv') as typeof import('ajv');
}

/** ajv's options, the same for both ways (the digest covers them). */
const AJV_OPTIONS = { allErrors: false, strict: true, allowUnionTypes: true } as const;

function newAjv(formats: Formats, source: boolean): Ajv {
  const { Ajv: AjvClass, _ } = ajvPackage();
  const ajv = new AjvClass({
    ...AJV_OPTIONS,
    // Standalone code names the formats by this identifier: the compiled module's `make` receives them.
    ...(source ? { code: { source: true, formats: _`formats` } } : {}),
  });
  ajv.addKeyword({ keyword: 'x-userport', schemaType: 'object' });
  for (const [name, format] of Object.entries(formatDefinitions(formats))) ajv.addFormat(name, format);
  return ajv;
}

/** The export names of the compiled module: `e`, `m<i>` per model, `m<i>_<j>` per value rule. */
function exportNames(set: SchemaSet): { envelope: string; models: { validate: string; rules: [string, string][] }[] } {
  return {
    envelope: 'e',
    models: set.models.map((m, i) => ({ validate: `m${i}`, rules: Object.keys(m.valueRules).map((k, j) => [k, `m${i}_${j}`]) })),
  };
}

/** Digest of what the compiled module is made from: its format, ajv's version and options, the schemas and their order. */
export function schemaDigest(set: SchemaSet): string {
  const version = (require('ajv/package.json') as { version: string }).version;
  return createHash('sha256').update(JSON.stringify([MODULE_FORMAT, version, AJV_OPTIONS, set])).digest('hex');
}

function assemble(set: SchemaSet, fns: Record<string, ValidateFunction>, origin: Validators['origin']): Validators {
  const names = exportNames(set);
  const models: Validators['models'] = new Map();
  set.models.forEach((m, i) => {
    const n = names.models[i]!;
    models.set(m.name, { validate: fns[n.validate]!, valueRules: new Map(n.rules.map(([key, name]) => [key, fns[name]!])) });
  });
  return { envelope: fns[names.envelope]!, models, origin };
}

/** Compiles every validator of `set` with ajv, in this process. */
export function compileValidators(set: SchemaSet, formats: Formats): Validators {
  const ajv = newAjv(formats, false);
  const names = exportNames(set);
  const fns: Record<string, ValidateFunction> = { [names.envelope]: ajv.compile(set.envelope) };
  set.models.forEach((m, i) => {
    fns[names.models[i]!.validate] = ajv.compile(m.schema);
    for (const [key, name] of names.models[i]!.rules) fns[name] = ajv.compile(m.valueRules[key]!);
  });
  return assemble(set, fns, 'compiled');
}

/**
 * The source of the compiled module: ajv's standalone code of every validator of `set`, inside a
 * `make(formats)` that returns them by export name, with the set's digest.
 */
export function compiledModuleSource(set: SchemaSet, formats: Formats): string {
  const ajv = newAjv(formats, true);
  const names = exportNames(set);
  const refs: Record<string, string> = {};
  const add = (schema: Schema, name: string) => {
    // Each under an `$id` of its export name (standalone code exports schemas by id), in place of its own.
    ajv.addSchema({ ...schema, $id: `userport:${name}` });
    refs[name] = `userport:${name}`;
  };
  add(set.envelope, names.envelope);
  set.models.forEach((m, i) => {
    add(m.schema, names.models[i]!.validate);
    for (const [key, name] of names.models[i]!.rules) add(m.valueRules[key]!, name);
  });
  const standalone = (require('ajv/dist/standalone') as { default: (ajv: Ajv, refs: Record<string, string>) => string }).default;
  return `'use strict';
// Generated by tools/compile-validators.ts (npm run build) from schemas/: do not edit.
exports.digest = ${JSON.stringify(schemaDigest(set))};
exports.make = function make(formats) {
const exports = {};
${standalone(ajv, refs)}
return exports;
};
`;
}

/**
 * The compiled module's validators when it exists beside this file and was made from `set` (its
 * digest), else undefined.
 */
export function loadCompiledValidators(set: SchemaSet, formats: Formats, file = COMPILED_VALIDATORS): Validators | undefined {
  let mod: CompiledModule;
  try {
    mod = require(`./${file}`) as CompiledModule;
  } catch (err) {
    if ((err as { code?: string }).code === 'MODULE_NOT_FOUND') return undefined;
    throw err;
  }
  if (mod.digest !== schemaDigest(set)) return undefined;
  return assemble(set, mod.make(formatDefinitions(formats)), 'precompiled');
}

/** The validators of `set`: the build's compiled module where it matches, else compiled now. */
export function validatorsFor(set: SchemaSet, formats: Formats): Validators {
  return loadCompiledValidators(set, formats) ?? compileValidators(set, formats);
}
