/**
 * The client's sets of hashes (open addressing in typed arrays, at most 70% full): what the early
 * users step, the new users' rows and the Email records check as rows pass, within the memory
 * budget (issue #23). A hash met twice only sends the rows to the database's exact check.
 */

/** A set of 32-bit hashes, open addressing: `add` is false when the hash was there. */
export class HashSet32 {
  // 512 KB: 90,000 users without a rehash.
  private table = new Uint32Array(1 << 17);
  private size = 0;

  add(h: number): boolean {
    if (h === 0) h = 1;
    if ((this.size + 1) * 10 > this.table.length * 7) this.grow();
    const mask = this.table.length - 1;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const a = this.table[i]!;
      if (a === 0) { this.table[i] = h; this.size++; return true; }
      if (a === h >>> 0) return false;
    }
  }

  private grow(): void {
    const old = this.table;
    this.table = new Uint32Array(old.length * 2);
    this.size = 0;
    for (const h of old) if (h !== 0) this.add(h);
  }
}

/** A set of 64-bit hashes (two 32-bit halves, open addressing): `add` answers false when the hash was there. */
export class HashSet64 {
  private table = new Uint32Array(1 << 17);
  private size = 0;

  add(h1: number, h2: number): boolean {
    if (h1 === 0 && h2 === 0) h2 = 1;
    if ((this.size + 1) * 10 > (this.table.length >>> 1) * 7) this.grow();
    const mask = (this.table.length >>> 1) - 1;
    for (let i = h1 & mask; ; i = (i + 1) & mask) {
      const a = this.table[2 * i]!;
      const b = this.table[2 * i + 1]!;
      if (a === 0 && b === 0) {
        this.table[2 * i] = h1;
        this.table[2 * i + 1] = h2;
        this.size++;
        return true;
      }
      if (a === h1 >>> 0 && b === h2 >>> 0) return false;
    }
  }

  private grow(): void {
    const old = this.table;
    this.table = new Uint32Array(old.length * 2);
    this.size = 0;
    for (let i = 0; i < old.length; i += 2) if (old[i] !== 0 || old[i + 1] !== 0) this.add(old[i]!, old[i + 1]!);
  }
}
