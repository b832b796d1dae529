/** The client's hash sets (lib/db/merge/hash-sets.ts): a hash added twice is refused, at any size. */
import { expect } from 'chai';
import { HashSet32, HashSet64 } from '../../../lib/db/merge/hash-sets.js';

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
});
