import { expect } from 'chai';
import fs from 'node:fs/promises';
import { TarParser, decodeHeader, encodeHeader, parsePax, scanTarFile, BLOCK, RECORD, type TarEntry } from '../../lib/crypto/tar.js';
import { fixture, makeTar, readFixture } from './helpers.js';

const LONG = 'dir/' + 'n'.repeat(120) + '.txt';
const EXPECTED: [string, Buffer][] = [
  ['short.txt', Buffer.from('hello')],
  [LONG, Buffer.alloc(1000, 'x')],
  ['\u00e9t\u00e9.txt', Buffer.alloc(0)],
  ['third.bin', Buffer.concat([0, 1, 2].map(() => Buffer.from(Array.from({ length: 256 }, (_, i) => i))))],
];

function parseInChunks(tar: Buffer, size: number): [string, Buffer][] {
  const parser = new TarParser();
  const out: [string, Buffer][] = [];
  let parts: Buffer[] = [];
  for (let i = 0; i < tar.length; i += size) {
    for (const ev of parser.push(tar.subarray(i, i + size))) {
      if (ev.kind === 'entry') parts = [];
      else if (ev.kind === 'data') parts.push(Buffer.from(ev.chunk));
      else out.push([ev.entry.name, Buffer.concat(parts)]);
    }
  }
  parser.end();
  return out;
}

function errorOf(fn: () => unknown): { code?: string } {
  try {
    fn();
  } catch (err) {
    return err as { code?: string };
  }
  throw new Error('expected an error');
}

describe('TarParser', () => {
  describe('on archives written by Python\'s tarfile', () => {
    for (const file of ['pax.tar', 'gnu.tar']) {
      for (const size of [1, 7, 512, 4096, 1 << 20]) {
        it(`reads ${file} (PAX x/g headers or GNU L long names) in ${size}-byte chunks`, () => {
          expect(parseInChunks(readFixture(file), size)).to.deep.equal(EXPECTED);
        });
      }
    }
  });

  describe('on its own writer', () => {
    it('round-trips names, sizes and data, and pads to whole records', () => {
      const list: [string, Buffer][] = [['a', Buffer.from('1')], ['b.bin', Buffer.alloc(512, 7)], ['c', Buffer.alloc(513, 9)]];
      const tar = makeTar(list);
      expect(tar.length % RECORD).to.equal(0);
      expect(parseInChunks(tar, 3)).to.deep.equal(list);
    });

    it('writes a valid checksum and a GNU base-256 size past 8 GiB', () => {
      const big = encodeHeader({ name: 'big', size: 9 * 1024 ** 3 });
      expect(decodeHeader(big)).to.deep.equal({ name: 'big', size: 9 * 1024 ** 3, type: '0' });
    });
  });

  describe('on damage', () => {
    it('fails with USERPORT_DECRYPT_TRUNCATED when the input ends inside a member', () => {
      const tar = makeTar([['a', Buffer.alloc(2000, 1)]]);
      const parser = new TarParser();
      parser.push(tar.subarray(0, 1000));
      expect(errorOf(() => parser.end()).code).to.equal('USERPORT_DECRYPT_TRUNCATED');
    });

    it('fails with USERPORT_DECRYPT_TRUNCATED when the input ends inside a header', () => {
      const parser = new TarParser();
      parser.push(makeTar([['a', Buffer.from('x')]]).subarray(0, 100));
      expect(errorOf(() => parser.end()).code).to.equal('USERPORT_DECRYPT_TRUNCATED');
    });

    it('accepts a missing end-of-archive marker when every member is whole, as tarfile does', () => {
      const tar = makeTar([['a', Buffer.from('x')]]).subarray(0, 2 * BLOCK);
      expect(parseInChunks(tar, 100)).to.deep.equal([['a', Buffer.from('x')]]);
    });

    it('fails with USERPORT_DECRYPT_TAR on a bad header checksum', () => {
      const tar = makeTar([['a', Buffer.from('x')]]);
      tar[0] = 0x62;
      expect(errorOf(() => new TarParser().push(tar)).code).to.equal('USERPORT_DECRYPT_TAR');
    });

    it('fails with USERPORT_DECRYPT_TAR on something that is not a tar at all', () => {
      expect(errorOf(() => new TarParser().push(Buffer.alloc(BLOCK, 'A'))).code).to.equal('USERPORT_DECRYPT_TAR');
    });
  });
});

describe('parsePax', () => {
  it('reads records with multi-byte values and rejects a wrong length', () => {
    const rec = (k: string, v: string) => {
      const body = ` ${k}=${v}\n`;
      let len = Buffer.byteLength(body) + 2;
      if (String(len).length + Buffer.byteLength(body) !== len) len += 1;
      return `${len}${body}`;
    };
    const data = Buffer.from(rec('path', 'caf\u00e9/\u2603.txt') + rec('size', '12'));
    expect([...parsePax(data)]).to.deep.equal([['path', 'caf\u00e9/\u2603.txt'], ['size', '12']]);
    expect(errorOf(() => parsePax(Buffer.from('99 path=x\n'))).code).to.equal('USERPORT_DECRYPT_TAR');
  });
});

describe('scanTarFile', () => {
  for (const file of ['pax.tar', 'gnu.tar']) {
    it(`lists ${file}'s members with data offsets, reading headers only`, async () => {
      const buf = readFixture(file);
      const fh = await fs.open(fixture(file), 'r');
      try {
        const entries: TarEntry[] = await scanTarFile(fh, buf.length);
        expect(entries.map((e) => [e.name, buf.subarray(e.dataOffset, e.dataOffset + e.size)])).to.deep.equal(EXPECTED);
      } finally {
        await fh.close();
      }
    });
  }
});
