/** The fused fast path must be the three public stages composed, item for item. */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { createUserFilter } from '../lib/filter-users.js';
import { createExportGenerator } from '../tools/generate.js';
import { createModelMapper, type MappedItem } from '../lib/map-models.js';
import { createRecordProcessor } from '../lib/process-records.js';
import { createTokenizer, PARSE_PIECE } from '../lib/tokenize.js';
import { requireSharedFixtures, sharedFixtures, sharedJsonFiles } from './helpers/shared.js';
import { chunked, collect, collectError } from './helpers/streams.js';
import { email, user, useremail } from './helpers/exports.js';
import { streamCompliance } from './helpers/compliance.js';

async function composed(buf: Buffer, size: number, usernames?: string[], collectRejects = false): Promise<MappedItem[]> {
  return collect<MappedItem>(chunked(buf, size), createTokenizer(), createUserFilter({ usernames, collectRejects }), createModelMapper({ collectRejects }));
}
async function fused(buf: Buffer, size: number, usernames?: string[], collectRejects = false): Promise<MappedItem[]> {
  const arrays = await collect<MappedItem[]>(chunked(buf, size), createRecordProcessor({ usernames, collectRejects }));
  return arrays.flat();
}
const plain = (items: MappedItem[]) => items.map((i) => (i.kind === 'reject' ? { ...i, error: [i.error.code, i.error.position] } : i));

describe('createRecordProcessor (the fused fast path)', () => {
  requireSharedFixtures('sentry');
  const inputs: [string, () => Promise<Buffer>][] = [
    ...sharedJsonFiles(sharedFixtures('sentry'))
      .map((f) => [f, async () => fs.readFileSync(path.join(sharedFixtures('sentry')!, f))] as [string, () => Promise<Buffer>]),
    ['a generated export with collisions and out-of-scope models', async () => {
      const chunks: Buffer[] = [];
      for await (const c of createExportGenerator({ users: 300, seed: 9, collisionRate: 0.05, outOfScopeRate: 0.2 })) chunks.push(c as Buffer);
      return Buffer.concat(chunks);
    }],
  ];
  for (const [name, load] of inputs) {
    it(`yields exactly what tokenizer + filter + mapper yield on ${name}, in any chunking`, async () => {
      const buf = await load();
      for (const size of [7, 4096, 1 << 20]) {
        expect(await fused(buf, size)).to.deep.equal(await composed(buf, size));
        expect(await fused(buf, size, ['min_user', 'user2'])).to.deep.equal(await composed(buf, size, ['min_user', 'user2']));
      }
    });
  }

  it('parses a large chunk a piece at a time: the items of small chunks, one array per piece, and an error at the same place after the same items', async () => {
    const parts: Buffer[] = [];
    for await (const c of createExportGenerator({ users: 1500, seed: 5, collisionRate: 0.05, outOfScopeRate: 0.1 })) parts.push(c as Buffer);
    const buf = Buffer.concat(parts);
    expect(buf.length, 'an export of several pieces').to.be.above(8 * PARSE_PIECE);
    const whole = await collect<MappedItem[]>(chunked(buf, buf.length), createRecordProcessor());
    expect(whole.length, 'arrays handed on for the one chunk').to.be.at.least(Math.floor(buf.length / PARSE_PIECE) - 1);
    expect(whole.flat()).to.deep.equal((await collect<MappedItem[]>(chunked(buf, 4096), createRecordProcessor())).flat());

    // A byte no JSON allows, in the last pieces: the records before it are handed on, then the error.
    // Before a record's opening brace, in the array itself (inside a string it would be a value).
    const at = buf.lastIndexOf('{', buf.indexOf('"model"', Math.floor(buf.length * 0.8)));
    const bad = Buffer.concat([buf.subarray(0, at), Buffer.from('#'), buf.subarray(at)]);
    // Read as each array is pushed ('data'): a pipeline's consumer would get its turn only after the chunk.
    const until = (size: number) => new Promise<{ seen: MappedItem[]; code?: string; position?: unknown }>((resolve) => {
      const seen: MappedItem[] = [];
      const stage = createRecordProcessor();
      stage.on('data', (items: MappedItem[]) => seen.push(...items));
      stage.on('error', (e: Error & { code?: string; position?: unknown }) => resolve({ seen, code: e.code, position: e.position }));
      stage.on('end', () => resolve({ seen }));
      chunked(bad, size).pipe(stage);
    });
    const [big, small] = [await until(bad.length), await until(4096)];
    expect(big.code).to.equal('USERPORT_PARSE_JSON');
    expect([big.code, big.position]).to.deep.equal([small.code, small.position]);
    expect(big.seen.length, 'the records before the bad byte').to.be.above(whole.flat().length / 2);
    expect(big.seen).to.deep.equal(small.seen);
  });

  it('turns invalid records into the same reject markers, or the same error', async () => {
    const buf = Buffer.from(JSON.stringify([user(1, 'a'), { model: 'sentry.user', fields: {} }, user(2, 'b', { is_active: 'no' }), useremail(1, 1, 'x@y.z')]));
    expect(plain(await fused(buf, 5, undefined, true))).to.deep.equal(plain(await composed(buf, 5, undefined, true)));
    const a = await collectError(chunked(buf, 5), createRecordProcessor());
    const b = await collectError(chunked(buf, 5), createTokenizer(), createUserFilter(), createModelMapper());
    expect([a.code, a.position]).to.deep.equal([b.code, b.position]);
    const trunc = buf.subarray(0, 40);
    const c = await collectError(chunked(trunc, 3), createRecordProcessor());
    const d = await collectError(chunked(trunc, 3), createTokenizer(), createUserFilter(), createModelMapper());
    expect([c.code, c.position]).to.deep.equal([d.code, d.position]);
  });

  it('skips the models the target skips (MapTarget.skipModels) as the mapper stage does: a skip marker each, their fields never validated', async () => {
    const target = { skipModels: { 'sentry.email': 'no sentry_email table' } };
    const records = [user(1, 'a'), email(1, 'a@x.io'), { model: 'sentry.email', pk: 2, fields: { email: 42 } }, useremail(1, 1, 'a@x.io')];
    const buf = Buffer.from(JSON.stringify(records));
    for (const size of [5, 4096]) {
      const a = (await collect<MappedItem[]>(chunked(buf, size), createRecordProcessor({ target }))).flat();
      const b = await collect<MappedItem>(chunked(buf, size), createTokenizer(), createUserFilter(), createModelMapper({ target }));
      expect(a).to.deep.equal(b);
      expect(a.map((i) => `${i.kind} ${i.model}`)).to.deep.equal(['row sentry.user', 'skip sentry.email', 'skip sentry.email', 'row sentry.useremail']);
      expect(a[2]).to.deep.include({ kind: 'skip', ordinal: 3, model: 'sentry.email' });
    }
    // Without it the same Email record is validated, and refused.
    expect((await collectError(chunked(buf, 4096), createRecordProcessor())).code).to.equal('USERPORT_RECORD_SCHEMA');
    expect(() => createRecordProcessor({ target: { skipModels: { 'sentry.email': '' } } })).to.throw(/skipModels map model -> why/);
  });

  it('emits one array per chunk, not one object per record', async () => {
    const buf = Buffer.from(JSON.stringify(Array.from({ length: 50 }, (_, i) => user(i + 1, `u${i}`))));
    const arrays = await collect<MappedItem[]>(Readable.from([buf]), createRecordProcessor());
    expect(arrays).to.have.length(1);
    expect(arrays[0]).to.have.length(50);
  });
});

const usersJson = () => JSON.stringify(Array.from({ length: 300 }, (_, i) => user(i + 1, `u${i + 1}`)));
streamCompliance('createRecordProcessor', () => createRecordProcessor(), () => chunked(usersJson(), 512), () => chunked('[{"a": tru}]', 4), 'USERPORT_PARSE_JSON');
