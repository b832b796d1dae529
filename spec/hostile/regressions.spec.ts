/**
 * Regression tests for bugs the hostile-input work found in lib/. Each block names the bug; the
 * reproducer is the smallest input that showed it.
 */
import { expect } from 'chai';
import { RecordSplitter } from '../../lib/tokenize.js';
import { UserportError } from '../../lib/errors.js';

function splitError(buf: Buffer, chunk = buf.length): UserportError {
  const splitter = new RecordSplitter();
  try {
    for (let i = 0; i < buf.length; i += chunk) splitter.write(buf.subarray(i, i + chunk));
    splitter.end();
  } catch (err) {
    expect(err).to.be.instanceOf(UserportError);
    return err as UserportError;
  }
  throw new Error('expected the splitter to fail');
}

describe('regressions', () => {
  describe('invalid UTF-8 position', () => {
    // The binary search for the first bad byte reused one streaming TextDecoder: the pending
    // bytes of one probe were prepended to the next, so a multi-byte character before the bad
    // byte moved the reported offset backwards (here to 11 instead of 13).
    it('reports the first byte of the ill-formed sequence, after multi-byte characters', () => {
      const buf = Buffer.from('5b7b2273223a22e282ac78c3a9e282ffac71227d5d', 'hex'); // [{"s":"€xé\xe2\x82\xff¬q"}]
      const err = splitError(buf);
      expect(err.code).to.equal('USERPORT_INPUT_UTF8');
      expect(err.position).to.include({ offset: 13, line: 1, column: 14, ordinal: 1 });
    });

    it('reports a truncated sequence at its lead byte, after emoji', () => {
      const buf = Buffer.concat([Buffer.from('[{"s":"😀😀😀x'), Buffer.from([0xe2, 0x82]), Buffer.from('"}]')]);
      const err = splitError(buf, 3);
      expect(err.code).to.equal('USERPORT_INPUT_UTF8');
      expect(err.position?.offset).to.equal(Buffer.byteLength('[{"s":"😀😀😀x'));
    });
  });
});

describe('regressions: a partial byte-order mark', () => {
  // The BOM skipper consumed EF BB (or EF) and then went on as if the mark were complete:
  // "\xEF\xBB[]" was accepted as an empty export although it is not valid UTF-8.
  for (const [what, hex] of [['EF BB', 'efbb5b5d'], ['EF', 'ef5b5d'], ['EF BB alone', 'efbb']] as const) {
    it(`refuses ${what} with USERPORT_INPUT_UTF8 at byte 0, whole and byte by byte`, () => {
      for (const chunk of [1, 100]) {
        const err = splitError(Buffer.from(hex, 'hex'), chunk);
        expect(err.code).to.equal('USERPORT_INPUT_UTF8');
        expect(err.position).to.include({ offset: 0, line: 1, column: 1 });
      }
    });
  }

  it('still accepts a whole mark split over chunks', () => {
    const splitter = new RecordSplitter();
    const buf = Buffer.from('\uFEFF[{"a":1}]');
    const out = [];
    for (let i = 0; i < buf.length; i++) out.push(...splitter.write(buf.subarray(i, i + 1)));
    splitter.end();
    expect(out.map((r) => r.value)).to.deep.equal([{ a: 1 }]);
  });
});
