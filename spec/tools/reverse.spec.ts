import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { expect } from 'chai';
import { recordSpans, reverseExport } from '../../tools/bench/reverse.js';
import { createExportGenerator } from '../../tools/generate.js';
import { tmpFolder } from '../helpers/setup.js';

describe('reverseExport', () => {
  let dir: string;
  beforeEach(() => { dir = tmpFolder('userport-reverse-spec-'); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function generated(users: number, indent: number): Promise<string> {
    const file = path.join(dir, `g-${indent}.json`);
    await pipeline(createExportGenerator({ users, seed: 9, indent }), fs.createWriteStream(file));
    return file;
  }

  it('writes the same records in reverse order, laid out as the original (pretty and compact), over many 1 MiB windows', async () => {
    for (const indent of [2, 0]) {
      // 3000 users: about 5 MB pretty-printed, so reading and windows cross many boundaries.
      const src = await generated(3000, indent);
      const dest = path.join(dir, `r-${indent}.json`);
      const r = await reverseExport(src, dest);
      const original = JSON.parse(fs.readFileSync(src, 'utf8')) as unknown[];
      expect(original.length).to.be.greaterThan(15000);
      expect(r.records).to.equal(original.length);
      // The generator prints exactly as JSON.stringify does, so the reversed file must be
      // JSON.stringify of the reversed array, byte for byte.
      const text = fs.readFileSync(dest, 'utf8');
      expect(text === JSON.stringify([...original].reverse(), null, indent), `indent ${indent}`).to.equal(true);
      expect(r.bytes).to.equal(fs.statSync(src).size);
    }
  });

  it('copies record texts byte for byte: strings with brackets, quotes and escapes, records bigger than a window, nested arrays', async () => {
    const big = { model: 'sentry.user', pk: 2, fields: { s: 'x'.repeat(1_500_000) + ' } ] { [ \\" ' } };
    const records = [
      { model: 'sentry.user', pk: 1, fields: { s: 'a "quoted" {brace} [bracket] \\ back\\\\slash \\"', u: 'Zoë 李', n: [1, [2, { a: [] }]] } },
      big,
      { model: 'sentry.email', pk: 3, fields: { email: 'x@example.com' } },
    ];
    const src = path.join(dir, 'tricky.json');
    fs.writeFileSync(src, `  ${JSON.stringify(records, null, 4)}\n`);
    const dest = path.join(dir, 'tricky-r.json');
    await reverseExport(src, dest);
    expect(JSON.parse(fs.readFileSync(dest, 'utf8'))).to.deep.equal([...records].reverse());
  });

  it('keeps an empty array as it is, and refuses a truncated file or one that is not an array', async () => {
    const empty = path.join(dir, 'empty.json');
    fs.writeFileSync(empty, '[ ]');
    const dest = path.join(dir, 'out.json');
    expect(await reverseExport(empty, dest)).to.deep.equal({ records: 0, bytes: 3 });
    expect(fs.readFileSync(dest, 'utf8')).to.equal('[ ]');
    const cut = path.join(dir, 'cut.json');
    fs.writeFileSync(cut, JSON.stringify([{ a: 1 }, { b: '}' }]).slice(0, -3));
    for (const [file, text] of [[cut, null], [path.join(dir, 'obj.json'), '{"a": [1]}']] as const) {
      if (text !== null) fs.writeFileSync(file, text);
      let err: unknown;
      try { await recordSpans(file); } catch (e) { err = e; }
      expect(err, file).to.be.instanceOf(Error);
    }
  });
});
