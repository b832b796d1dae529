import { expect } from 'chai';
import { getHeapStatistics } from 'node:v8';
import { optionErrorOf } from './helpers/options.js';
import fs from 'node:fs';
import path from 'node:path';
import { createTokenizer, PARSE_PIECE, type RawRecord } from '../lib/tokenize.js';
import { requireSharedFixtures, sharedJsonFiles } from './helpers/shared.js';
import { chunked, collect, collectError } from './helpers/streams.js';
import { streamCompliance } from './helpers/compliance.js';


/** Reference positions: byte offset, line, column of each top-level element's '{'. */
function expectedPositions(buf: Buffer) {
  const text = buf.toString('latin1'); // one char per byte
  const res: { offset: number; line: number; column: number }[] = [];
  let depth = 0; let inStr = false; let line = 1; let lineStart = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\n') { line++; lineStart = i + 1; }
    if (inStr) { if (c === '\\') i++; else if (c === '"') inStr = false; continue; }
    if (c === '"') inStr = true;
    else if (c === '{' || c === '[') { if (depth === 1 && c === '{') res.push({ offset: i, line, column: i - lineStart + 1 }); depth++; }
    else if (c === '}' || c === ']') depth--;
  }
  return res;
}

describe('createTokenizer', () => {
  describe('on valid exports', () => {
    const FIXTURES = requireSharedFixtures('sentry')!;
    for (const file of sharedJsonFiles(FIXTURES)) {
      for (const size of [1, 7, 65536]) {
        it(`splits ${file} in ${size}-byte chunks exactly like JSON.parse, with positions`, async () => {
          const buf = fs.readFileSync(path.join(FIXTURES, file));
          const records = await collect<RawRecord>(chunked(buf, size), createTokenizer());
          const expected = JSON.parse(buf.toString('utf8')) as unknown[];
          expect(records.map((r) => r.value)).to.deep.equal(expected);
          expect(records.map((r) => r.ordinal)).to.deep.equal(expected.map((_, i) => i + 1));
          expect(records.map((r) => ({ offset: r.offset, line: r.line, column: r.column }))).to.deep.equal(expectedPositions(buf));
          for (const r of records) expect(JSON.parse(buf.subarray(r.offset, r.offset + r.length).toString())).to.deep.equal(r.value);
        });
      }
    }

    it('parses a chunk larger than PARSE_PIECE a piece at a time: what JSON.parse gives, with positions; a bad byte in a late piece fails where it does in small chunks, after the earlier pieces\' records', async () => {
      const recs = Array.from({ length: 6000 }, (_, i) => ({ model: 'sentry.user', pk: i + 1, fields: { username: `user-${i}`, note: 'é "q" \\ {x}'.repeat(i % 5), list: [i, { a: [] }] } }));
      const buf = Buffer.from(JSON.stringify(recs, null, 1));
      expect(buf.length, 'several pieces').to.be.above(4 * PARSE_PIECE);
      const records = await collect<RawRecord>(chunked(buf, buf.length), createTokenizer());
      expect(records.map((r) => r.value)).to.deep.equal(recs);
      expect(records.map((r) => ({ offset: r.offset, line: r.line, column: r.column }))).to.deep.equal(expectedPositions(buf));

      // Before a record's opening brace, in the array itself (inside a string it would be a value).
      const at = buf.lastIndexOf('{', buf.indexOf('"model"', Math.floor(buf.length * 0.9)));
      const bad = Buffer.concat([buf.subarray(0, at), Buffer.from('#'), buf.subarray(at)]);
      // Read as each record is pushed ('data'): a pipeline's consumer would get its turn only after the chunk.
      let before = 0;
      const err = await new Promise<(Error & { code?: string; position?: unknown }) | undefined>((resolve) => {
        const stage = createTokenizer();
        stage.on('data', () => { before++; });
        stage.on('error', resolve);
        stage.on('end', () => resolve(undefined));
        chunked(bad, bad.length).pipe(stage);
      });
      const small = await collectError(chunked(bad, 4096), createTokenizer());
      expect(err?.code).to.equal('USERPORT_PARSE_JSON');
      expect([err?.code, err?.position]).to.deep.equal([small.code, small.position]);
      expect(before, 'the earlier pieces\' records, handed on before the bad piece is parsed').to.be.above(recs.length / 2);
    });

    it('gives each record its line and column in any layout: minified, CRLF, a record a line, blank lines and breaks inside records', async () => {
      const recs = Array.from({ length: 40 }, (_, i) => ({ model: 'sentry.user', pk: i + 1, fields: { username: `u${i}`, note: 'a "quoted" \\ {x}\n', list: [1, { a: [] }] } }));
      const layouts = {
        minified: JSON.stringify(recs),
        crlf: JSON.stringify(recs, null, 2).replace(/\n/g, '\r\n'),
        lines: `\n\n  [\n${recs.map((r) => JSON.stringify(r)).join(',\n\n')}\n]\n`,
        broken: `[${recs.map((r) => JSON.stringify(r).replace(/,/g, ',\n\t').replace(/:/g, '\n:\n')).join('\n,\n')}]`,
      };
      for (const [name, text] of Object.entries(layouts)) {
        const buf = Buffer.from(text);
        for (const size of [1, 7, 4096]) {
          const records = await collect<RawRecord>(chunked(buf, size), createTokenizer());
          expect(records.map((r) => ({ offset: r.offset, line: r.line, column: r.column })), `${name}, ${size}-byte chunks`).to.deep.equal(expectedPositions(buf));
        }
      }
    });

    it('accepts a UTF-8 byte-order mark, even split across chunks', async () => {
      const records = await collect<RawRecord>(chunked('\uFEFF[{"model":"a","pk":1,"fields":{}}]', 1), createTokenizer());
      expect(records).to.have.length(1);
      expect(records[0]!.offset).to.equal(4);
    });

    it('accepts an empty array', async () => {
      expect(await collect(chunked(' [ ]\n', 1), createTokenizer())).to.deep.equal([]);
    });

    it('handles escaped quotes and backslashes across chunk boundaries', async () => {
      const value = { model: 'x', pk: 1, fields: { a: 'q\\"}{[', b: '\\\\', c: '\\"\\\\"' } };
      const text = JSON.stringify([value, value]);
      for (const size of [1, 2, 3, 5]) {
        const records = await collect<RawRecord>(chunked(text, size), createTokenizer());
        expect(records.map((r) => r.value)).to.deep.equal([value, value]);
      }
    });

    it('keeps __proto__ and constructor as plain own keys', async () => {
      const [r] = await collect<RawRecord>(chunked('[{"model":"m","pk":1,"fields":{"__proto__":{"x":1},"constructor":2}}]', 3), createTokenizer());
      const fields = r!.value.fields as Record<string, unknown>;
      expect(Object.getPrototypeOf(fields)).to.equal(Object.prototype);
      expect(Object.keys(fields)).to.deep.equal(['__proto__', 'constructor']);
      expect(({} as Record<string, unknown>).x).to.equal(undefined);
    });

    it('counts but does not emit records up to skipThrough', async () => {
      const text = JSON.stringify([1, 2, 3, 4].map((pk) => ({ model: 'm', pk, fields: {} })));
      const records = await collect<RawRecord>(chunked(text, 4), createTokenizer({ skipThrough: 2 }));
      expect(records.map((r) => r.ordinal)).to.deep.equal([3, 4]);
    });
  });

  describe('on bad input', () => {
    const cases: [string, string, string, Record<string, number>][] = [
      ['empty input', '', 'USERPORT_INPUT_EMPTY', { offset: 0 }],
      ['whitespace only', '  \n ', 'USERPORT_INPUT_EMPTY', { offset: 4, line: 2 }],
      ['an object at top level', '{"model":1}', 'USERPORT_INPUT_NOT_ARRAY', { offset: 0, line: 1, column: 1 }],
      ['trailing garbage', '[]\n x', 'USERPORT_INPUT_TRAILING', { offset: 4, line: 2, column: 2 }],
      ['a number record', '[{"model":"a","pk":1,"fields":{}},\n 5]', 'USERPORT_RECORD_NOT_OBJECT', { ordinal: 2, line: 2, column: 2 }],
      ['a trailing comma', '[{"model":"a","pk":1,"fields":{}},]', 'USERPORT_PARSE_JSON', { offset: 34 }],
      ['a missing comma', '[{"pk":1} {"pk":2}]', 'USERPORT_PARSE_JSON', { offset: 10 }],
      ['truncation inside a record', '[{"model":"a","pk":1,"fie', 'USERPORT_INPUT_TRUNCATED', { offset: 25, ordinal: 1 }],
      ['truncation after a record', '[{"model":"a"}', 'USERPORT_INPUT_TRUNCATED', { offset: 14 }],
      ['a syntax error inside a record', '[\n  {"model": "a",\n   "pk": tru}]', 'USERPORT_PARSE_JSON', { ordinal: 1, line: 3, column: 10, offset: 28 }],
      ['a raw control character in a string', '[{"model":"a\u0001"}]', 'USERPORT_PARSE_JSON', { offset: 12 }],
    ];
    for (const [what, text, code, pos] of cases) {
      it(`fails on ${what} with ${code} and its position, in 1-byte and whole chunks`, async () => {
        for (const size of [1, 1 << 20]) {
          const err = await collectError(chunked(text, size), createTokenizer());
          expect(err.code, `${what} (chunk ${size})`).to.equal(code);
          for (const [k, v] of Object.entries(pos)) expect(err.position?.[k], `${k} (chunk ${size})`).to.equal(v);
        }
      });
    }

    it('counts a raw newline inside a string (invalid JSON) where a position after it is reported, or the record is skipped unparsed', async () => {
      // The scan counts the newlines outside strings; these are counted again from the record's bytes.
      const lineColumn = (text: string, offset: number) => {
        const before = text.slice(0, offset);
        return { line: before.split('\n').length, column: offset - (before.lastIndexOf('\n') + 1) + 1 };
      };
      const truncated = '[\n {"model":"a\nb", "pk":\n 1';
      const deep = '[{"a":"x\ny",\n "b":[[[[1]]]]}]';
      for (const size of [1, 5, 1 << 20]) {
        for (const [text, options, code] of [[truncated, {}, 'USERPORT_INPUT_TRUNCATED'], [deep, { maxDepth: 3 }, 'USERPORT_LIMIT_DEPTH']] as const) {
          const err = await collectError(chunked(text, size), createTokenizer(options));
          expect(err.code, `${code} (chunk ${size})`).to.equal(code);
          const { offset, line, column } = err.position as { offset: number; line: number; column: number };
          expect({ line, column }, `${code} (chunk ${size})`).to.deep.equal(lineColumn(text, offset));
        }
        // Record 1 is skipped (a resume), so never parsed: record 2's position is still its byte's.
        const skipped = '[{"a":"x\ny"},\n {"model":"b"}]';
        const records = await collect<RawRecord>(chunked(skipped, size), createTokenizer({ skipThrough: 1 }));
        expect(records.map((r) => ({ line: r.line, column: r.column }))).to.deep.equal([lineColumn(skipped, skipped.indexOf('{"model"'))]);
      }
    });

    it('rejects invalid UTF-8 with the offending byte position', async () => {
      const buf = Buffer.concat([Buffer.from('[{"model":"ab'), Buffer.from([0xc3, 0x28]), Buffer.from('"}]')]);
      for (const size of [1, 100]) {
        const err = await collectError(chunked(buf, size), createTokenizer());
        expect(err.code).to.equal('USERPORT_INPUT_UTF8');
        expect(err.position?.offset).to.equal(13);
      }
    });

    it('names a UTF-16 byte-order mark\'s byte order, and the iconv that converts it', async () => {
      for (const [bom, name] of [[[0xff, 0xfe], 'UTF-16LE'], [[0xfe, 0xff], 'UTF-16BE']] as const) {
        const err = await collectError(chunked(Buffer.concat([Buffer.from(bom), Buffer.from('[]', name === 'UTF-16LE' ? 'utf16le' : 'latin1')]), 100), createTokenizer());
        expect(err.code).to.equal('USERPORT_INPUT_UTF8');
        expect(err.message).to.include(`the input is ${name}, not UTF-8`).and.include(`iconv -f ${name} -t UTF-8`);
      }
    });

    it('tells a real U+FFFD from invalid UTF-8 (decoding turns invalid bytes into U+FFFD)', async () => {
      const fffd = Buffer.from([0xef, 0xbf, 0xbd]);
      const valid = Buffer.concat([Buffer.from('[{"model":"a'), fffd, Buffer.from('b","pk":1,"fields":{}}]')]);
      const invalid = Buffer.concat([Buffer.from('[{"model":"a'), fffd, Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('","pk":1,"fields":{}}]')]);
      for (const size of [1, 7, 100]) {
        const records = await collect<RawRecord>(chunked(valid, size), createTokenizer());
        expect(records.map((r) => r.value.model)).to.deep.equal(['a\ufffdb']);
        const err = await collectError(chunked(invalid, size), createTokenizer());
        expect(err.code).to.equal('USERPORT_INPUT_UTF8');
        expect(err.position).to.include({ offset: 15, line: 1, column: 16, ordinal: 1 });
      }
    });

    it('refuses a record over maxRecordBytes before buffering all of it', async () => {
      const tokenizer = createTokenizer({ maxRecordBytes: 1024 });
      const big = '[{"model":"a","pk":1,"fields":{"s":"' + 'x'.repeat(100000) + '"}}]';
      const err = await collectError(chunked(big, 256), tokenizer);
      expect(err.code).to.equal('USERPORT_LIMIT_RECORD_SIZE');
      expect(err.position?.ordinal).to.equal(1);
      expect(tokenizer.splitter.bytesRead).to.be.below(4096);
    });

    it('refuses nesting deeper than maxDepth', async () => {
      const deep = '[{"a":' + '['.repeat(100000) + ']'.repeat(100000) + '}]';
      const err = await collectError(chunked(deep, 4096), createTokenizer({ maxDepth: 64 }));
      expect(err.code).to.equal('USERPORT_LIMIT_DEPTH');
      expect(err.position?.offset).to.equal(6 + 63);
    });

    it('validates its options up front, naming them', () => {
      expect(optionErrorOf(() => createTokenizer({ maxDepth: 0 }))).to.equal('maxDepth');
      expect(optionErrorOf(() => createTokenizer({ maxRecordBytes: 1.5 }))).to.equal('maxRecordBytes');
      // More than this process's heap could hold one worst-case record of (about 22 times its size).
      const heap = getHeapStatistics().heap_size_limit;
      expect(optionErrorOf(() => createTokenizer({ maxRecordBytes: Math.ceil(heap / 22) + 1 }))).to.equal('maxRecordBytes');
      expect(() => createTokenizer({ maxRecordBytes: 1 << 20 })).to.not.throw();
    });
  });
});

streamCompliance('createTokenizer', () => createTokenizer(),
  () => chunked(JSON.stringify(Array.from({ length: 300 }, (_, i) => ({ model: 'sentry.user', pk: i + 1, fields: { username: `u${i}` } }))), 512),
  () => chunked('[{"a": tru}]', 4), 'USERPORT_PARSE_JSON');
