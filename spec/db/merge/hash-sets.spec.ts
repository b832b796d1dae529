/** The client's hash sets and text hashes (lib/db/merge/hash-sets.ts): a hash added twice is refused, at any size. */
import { expect } from 'chai';
import { hash32, HashSet32, HashSet64 } from '../../../lib/db/merge/hash-sets.js';

describe('the client\'s hash sets', () => {
  it('HashSet64: a hash added twice is refused, and the set keeps every hash as it grows', () => {
    const set = new HashSet64();
    // Past its first table (2^16 slots) twice over.
    const n = 300_000;
    let added = 0;
    for (let i = 0; i < n; i++) if (set.add(i * 2654435761, i ^ 0x5bd1e995)) added++;
    let again = 0;
    for (let i = 0; i < n; i++) if (set.add(i * 2654435761, i ^ 0x5bd1e995)) again++;
    expect({ added, again }).to.deep.equal({ added: n, again: 0 });
    expect(set.add(0, 0)).to.equal(true);
    expect(set.add(0, 0)).to.equal(false);
    // Both halves count: the same first half with another second half is another hash.
    const halves = new HashSet64();
    expect([halves.add(7, 1), halves.add(7, 2), halves.add(8, 1), halves.add(7, 1), halves.add(7, 2)]).to.deep.equal([true, true, true, false, false]);
  });

  it('HashSet32: a hash added twice is refused, and the set keeps every hash as it grows', () => {
    const set = new HashSet32();
    // Past its first table (2^17 slots) twice over; 0 is stored as 1.
    const n = 300_000;
    let added = 0;
    for (let i = 1; i <= n; i++) if (set.add(Math.imul(i, 2654435761) >>> 0)) added++;
    let again = 0;
    for (let i = 1; i <= n; i++) if (set.add(Math.imul(i, 2654435761) >>> 0)) again++;
    expect({ added, again }).to.deep.equal({ added: n, again: 0 });
    // 0 marks an empty slot: it is stored as 1 (a shared hash, so the database checks).
    const small = new HashSet32();
    expect([small.add(0), small.add(1), small.add(0)]).to.deep.equal([true, false, false]);
  });

  it('HashSet64.addText: the same text (and number) twice is refused; with asciiLower, case does not count and only plain ASCII is hashed', () => {
    const set = new HashSet64();
    expect([set.addText(0, 'a@x.io'), set.addText(0, 'a@x.io'), set.addText(0, 'A@X.IO')]).to.deep.equal([true, false, true]);
    // The number before the text counts, in all its 53 bits: user pk 1 and 2^32 + 1 are two users.
    expect([set.addText(1, 'k'), set.addText(2, 'k'), set.addText(2 ** 32 + 1, 'k'), set.addText(1, 'k')]).to.deep.equal([true, true, true, false]);
    // A text and the same text with one more character (a NUL too), or the empty text, are other texts.
    expect([set.addText(1, 'k\u0000'), set.addText(1, '')]).to.deep.equal([true, true]);
    const lower = new HashSet64();
    // Folded, a text hashes as its lower-case form does unfolded.
    expect([lower.addText(0, 'Bob@X.io', true), lower.addText(0, 'bob@x.IO', true), lower.addText(0, 'bob@x.io'), lower.addText(0, 'Bob@X.io')]).to.deep.equal([true, false, false, true]);
    // Not printable ASCII, or a backslash (escaped in COPY text): not hashed at all.
    expect(['zoë@x.io', 'tab\there', 'back\\slash', 'del\u007f'].map((t) => lower.addText(0, t, true))).to.deep.equal([undefined, undefined, undefined, undefined]);
    // The same texts hash where case is not folded.
    expect(set.addText(0, 'zoë@x.io')).to.equal(true);
  });

  it('HashSet64.hasText: finds what addText added (case folded alike), adds nothing, and grows with the set', () => {
    const set = new HashSet64();
    const n = 300_000; // the first table takes 45,875 at most: the set grows three times
    for (let i = 0; i < n; i++) set.addText(0, `u${i}@Example.com`, true);
    let found = 0;
    let foreign = 0;
    for (let i = 0; i < n; i++) {
      if (set.hasText(0, `U${i}@EXAMPLE.COM`, true)) found++;
      if (set.hasText(0, `v${i}@example.com`, true)) foreign++;
    }
    expect({ found, foreign }).to.deep.equal({ found: n, foreign: 0 });
    // Another number before the text, or a text the fold refuses: not there.
    expect([set.hasText(1, 'u1@example.com', true), set.hasText(0, 'zoë@x.io', true)]).to.deep.equal([false, undefined]);
    // Asking added nothing: each text is still new to addText.
    expect([set.addText(0, 'v1@example.com', true), set.addText(0, 'u1@example.com', true)]).to.deep.equal([true, false]);
  });

  it('hash32: lower-cases ASCII letters when asked, and answers -1 for non-ASCII text then', () => {
    expect(hash32('Bob', true)).to.equal(hash32('bob', true));
    expect(hash32('Bob', false)).to.not.equal(hash32('bob', false));
    expect(hash32('zoë', true)).to.equal(-1);
    expect(hash32('zoë', false)).to.not.equal(hash32('zoe', false));
    // A NUL is a character like any other.
    expect(hash32('a', false)).to.not.equal(hash32('a\u0000', false));
  });
});
