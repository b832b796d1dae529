/**
 * The validators of `schemas/` (lib/validators.ts): the build's compiled module decides every
 * record as ajv compiling the same schemas in the process does, and is used only when it was made
 * from the schemas and ajv at hand.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { compiledValidatorsSource, isDateTime, isTimeZone, schemaSet } from '../lib/models.js';
import { compileValidators, loadCompiledValidators, schemaDigest, validatorsFor, type Formats, type SchemaSet, type Validators } from '../lib/validators.js';
import { sharedFixtures, sharedJsonFiles } from './helpers/shared.js';
import { isIP } from 'node:net';

const FORMATS: Formats = { 'date-time': isDateTime, 'time-zone': isTimeZone, 'ip-address': (s) => isIP(s) !== 0 };

/** Field values that break or pass each kind of schema rule. */
const VALUES: unknown[] = [
  null, 0, -1, 1.5, 2 ** 53, '', 'x', 'x'.repeat(300), 'ß'.repeat(128), true, false, {}, [], [1], { a: 1 },
  '2021-07-17T21:08:52.713Z', '2021-13-01T00:00:00Z', '10.0.0.1', '::1', 'not an address', 'Europe/Vienna', 'europe/vienna',
  'user@example.com', 'en', 'de-at',
];

/** Every record of the exports at hand: the sample, and with ../shared the exports Sentry's repository ships. */
function corpus(): { model: string; fields: Record<string, unknown> }[] {
  const files = [path.resolve('samples/users.json')];
  for (const dir of [sharedFixtures('sentry'), sharedFixtures('sentry-backup')]) {
    for (const f of sharedJsonFiles(dir)) files.push(path.join(dir!, f));
  }
  const out: { model: string; fields: Record<string, unknown> }[] = [];
  for (const f of files) {
    const records = JSON.parse(fs.readFileSync(f, 'utf8')) as unknown;
    if (!Array.isArray(records)) continue;
    for (const r of records as { model?: unknown; fields?: unknown }[]) {
      if (typeof r?.model === 'string' && typeof r.fields === 'object' && r.fields !== null) out.push({ model: r.model, fields: r.fields as Record<string, unknown> });
    }
  }
  return out;
}

/** What a validator says of `x`: valid or not, and its first error as the import reads it. */
function verdict(v: Validators['envelope'], x: unknown): string {
  const ok = v(x);
  const e = v.errors?.[0];
  return JSON.stringify([ok, e && { instancePath: e.instancePath, schemaPath: e.schemaPath, keyword: e.keyword, params: e.params, message: e.message }]);
}

describe('the JSON Schema validators', () => {
  const set = schemaSet();

  it('the build wrote the compiled module, made from these schemas, and it is what an import uses', () => {
    const loaded = loadCompiledValidators(set, FORMATS);
    expect(loaded?.origin).to.equal('precompiled');
    expect(validatorsFor(set, FORMATS).origin).to.equal('precompiled');
    // The build's file is this source, byte for byte (the digest alone would not say the code is the same).
    const file = new URL('../lib/validators.compiled.cjs', import.meta.url);
    expect(fs.readFileSync(file, 'utf8')).to.equal(compiledValidatorsSource());
  });

  it('decides every record, field and option value as ajv compiling the schemas here does', () => {
    const pre = loadCompiledValidators(set, FORMATS)!;
    const here = compileValidators(set, FORMATS);
    expect(here.origin).to.equal('compiled');
    expect([...pre.models.keys()]).to.deep.equal([...here.models.keys()]);
    let compared = 0;
    let invalid = 0;
    const same = (a: Validators['envelope'], b: Validators['envelope'], x: unknown, what: string) => {
      const va = verdict(a, x);
      expect(va, what).to.equal(verdict(b, x));
      compared++;
      if (va.startsWith('[false')) invalid++;
    };
    const records = corpus();
    for (const r of records) {
      same(pre.envelope, here.envelope, { model: r.model, pk: 1, fields: r.fields }, `envelope of ${r.model}`);
      const p = pre.models.get(r.model);
      const h = here.models.get(r.model);
      if (!p || !h) continue;
      same(p.validate, h.validate, r.fields, r.model);
      // Each field replaced by each value, removed, and an unknown one added.
      for (const key of Object.keys(r.fields)) {
        for (const value of VALUES) same(p.validate, h.validate, { ...r.fields, [key]: value }, `${r.model}.${key} = ${JSON.stringify(value)}`);
        const { [key]: _gone, ...rest } = r.fields;
        same(p.validate, h.validate, rest, `${r.model} without ${key}`);
      }
      same(p.validate, h.validate, { ...r.fields, unknown_field: 1 }, `${r.model} with an unknown field`);
    }
    for (const [name, p] of pre.models) {
      const h = here.models.get(name)!;
      for (const value of VALUES) same(p.validate, h.validate, value, `${name} of ${JSON.stringify(value)}`);
      expect([...p.valueRules.keys()]).to.deep.equal([...h.valueRules.keys()]);
      for (const [key, rule] of p.valueRules) for (const value of VALUES) same(rule, h.valueRules.get(key)!, value, `${name} option ${key} = ${JSON.stringify(value)}`);
    }
    for (const value of VALUES) same(pre.envelope, here.envelope, value, `envelope of ${JSON.stringify(value)}`);
    // The sample alone brings four models; the mutations make both verdicts common.
    expect(new Set(records.map((r) => r.model)).size).to.be.at.least(4);
    expect(invalid).to.be.above(1000);
    expect(compared - invalid).to.be.above(100);
  });

  it('is not used when made from other schemas, or when it is missing: ajv compiles them here', () => {
    const email = set.models.findIndex((m) => m.name === 'sentry.email');
    const schema = set.models[email]!.schema as { properties: Record<string, Record<string, unknown>> };
    // One rule tightened: the address at most 5 characters.
    const other: SchemaSet = {
      ...set,
      models: set.models.map((m, i) => i !== email ? m : { ...m, schema: { ...schema, properties: { ...schema.properties, email: { ...schema.properties.email, maxLength: 5 } } } }),
    };
    expect(schemaDigest(other)).not.to.equal(schemaDigest(set));
    expect(loadCompiledValidators(other, FORMATS)).to.equal(undefined);
    const v = validatorsFor(other, FORMATS);
    expect(v.origin).to.equal('compiled');
    const fields = { email: 'a@example.com', date_added: '2021-07-17T21:08:52Z' };
    expect(v.models.get('sentry.email')!.validate(fields)).to.equal(false);
    expect(validatorsFor(set, FORMATS).models.get('sentry.email')!.validate(fields)).to.equal(true);
    expect(loadCompiledValidators(set, FORMATS, 'validators.missing.cjs')).to.equal(undefined);
  });
});
