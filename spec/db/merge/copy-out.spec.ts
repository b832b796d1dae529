/**
 * CopyOut (lib/db/merge/copy-out.ts): the COPY text of the rows the client writes straight in,
 * built in one buffer. Each piece must be the text a template string would have made.
 */
import { expect } from 'chai';
import { CopyOut } from '../../../lib/db/merge/copy-out.js';

describe('CopyOut: COPY text built in one buffer', () => {
  it('writes integers as String() does: zero, negatives, every digit count up to the largest safe integer', () => {
    const values = [0, 7, -7, 10, 99, 100, 12345, -2147483648, 2147483647, 4294967296, 1e15, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER];
    for (let n = 1; n < 1e16; n *= 10) values.push(n - 1, n, n + 1);
    const out = new CopyOut(4);
    for (const v of values) { out.int(v); out.byte(0x0a); }
    expect(out.take().toString()).to.equal(values.map((v) => `${v}\n`).join(''));
  });

  it('refuses what is not a safe integer, rather than writing a wrong number', () => {
    const out = new CopyOut();
    for (const bad of [NaN, 1.5, Infinity, 2 ** 53]) expect(() => out.int(bad)).to.throw(RangeError, /not a safe integer/);
  });

  it('copies short and long pieces of a line, grows past its capacity, and hands out each chunk once', () => {
    const line = Buffer.from(`abc\t${'x'.repeat(100)}\tdef`);
    const out = new CopyOut(8);
    out.bytes(line, 0, 3);
    out.byte(0x09);
    out.bytes(line, 4, 104);
    out.raw(Buffer.from('\\N'));
    const first = out.take();
    expect(first.toString()).to.equal(`abc\t${'x'.repeat(100)}\\N`);
    expect(out.length).to.equal(0);
    out.bytes(line, 105, 108);
    // The text handed out is not written again by what follows.
    expect(first.toString()).to.equal(`abc\t${'x'.repeat(100)}\\N`);
    expect(out.take().toString()).to.equal('def');
  });

  it('takes back what was written after a mark, also across a growth of its buffer, and refuses a mark it never wrote to', () => {
    const out = new CopyOut(4);
    out.raw(Buffer.from('kept\t'));
    const mark = out.length;
    out.raw(Buffer.from('dropped, and long enough to grow the buffer\n'));
    out.rewind(mark);
    out.raw(Buffer.from('after\n'));
    for (const bad of [-1, out.length + 1, 1.5]) expect(() => out.rewind(bad)).to.throw(RangeError, /not within/);
    expect(out.take().toString()).to.equal('kept\tafter\n');
  });

  it('writes uuid4s as 32 hex digits (version 4, RFC 4122 variant), none twice across refills of its pool (4,096 a refill)', () => {
    const out = new CopyOut();
    for (let i = 0; i < 20_000; i++) {
      out.uuid4Hex();
      out.byte(0x0a);
    }
    const written = out.take().toString().split('\n').slice(0, -1);
    expect(written).to.have.length(20_000);
    for (const u of written) expect(u).to.match(/^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$/);
    expect(new Set(written).size).to.equal(20_000);
  });
});
