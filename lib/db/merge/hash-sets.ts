/**
 * The client's sets of hashes (open addressing in typed arrays, at most 70% full): what the early
 * users step, the new users' rows and the Email records check as rows pass, within the memory
 * budget (issue #23). A hash met twice only sends the rows to the database's exact check.
 */

import type pg from 'pg';

/**
 * Whether the database's lower() maps A-Z to a-z, as the hashes' ASCII lower-casing does (not in a
 * Turkish locale, whose lower('I') is a dotless i): only then may a hash of ASCII-lower-cased text
 * stand for the database's lower() of it.
 */
export async function lowerIsAscii(client: pg.ClientBase): Promise<boolean> {
  return (await client.query(`SELECT lower('ABCDEFGHIJKLMNOPQRSTUVWXYZ') = 'abcdefghijklmnopqrstuvwxyz' AS ok`)).rows[0].ok === true;
}

/** A 32-bit hash of `text` (FNV-1a), ASCII letters lower-cased with `lower`; -1 when `lower` and it is not all ASCII. */
export function hash32(text: string, lower: boolean): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (lower) {
      // PostgreSQL's lower() of non-ASCII text depends on the database's locale: the caller lists it.
      if (c > 0x7f) return -1;
      if (c >= 0x41 && c <= 0x5a) c += 0x20;
    }
    h = Math.imul(h ^ c, 0x01000193);
  }
  return Math.imul(h ^ text.length, 0x85ebca6b) >>> 0;
}

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

  /** Whether `h` was added. */
  has(h: number): boolean {
    if (h === 0) h = 1;
    const mask = this.table.length - 1;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const a = this.table[i]!;
      if (a === 0) return false;
      if (a === h >>> 0) return true;
    }
  }

  private grow(): void {
    const old = this.table;
    this.table = new Uint32Array(old.length * 2);
    this.size = 0;
    for (const h of old) if (h !== 0) this.add(h);
  }
}

/** The second half HashSet64 stores for (h1, h2): (0, 0) marks an empty slot, so that hash is kept as (0, 1). */
function stored(h1: number, h2: number): number {
  return h1 === 0 && h2 === 0 ? 1 : h2;
}

/**
 * A set of 64-bit hashes (two 32-bit halves, open addressing): `add` answers false when the hash
 * was there. `addText` hashes a text (and a number before it) into the set.
 */
export class HashSet64 {
  private table = new Uint32Array(1 << 17);
  private size = 0;

  /** The last hash {@link hashText} made (as computed: {@link stored} says how the set keeps it). */
  private h1 = 0;
  private h2 = 0;

  /**
   * Adds the 64-bit hash of `prefix` (an integer up to 2^53, 0 for none) and `text`, FNV-1a and a
   * multiply-rotate hash side by side: false when it was there. With `asciiLower`, A-Z hash as
   * a-z, and a text with anything but printable ASCII or with a backslash is not hashed
   * (undefined): PostgreSQL's lower() is the ASCII one only there, and COPY escapes none of it.
   */
  addText(prefix: number, text: string, asciiLower = false): boolean | undefined {
    return this.hashText(prefix, text, asciiLower) ? this.add(this.h1, this.h2) : undefined;
  }

  /** Whether the set holds the hash {@link addText} would add (undefined where it would hash nothing). */
  hasText(prefix: number, text: string, asciiLower = false): boolean | undefined {
    if (!this.hashText(prefix, text, asciiLower)) return undefined;
    const i = this.slot(this.h1, stored(this.h1, this.h2));
    return this.table[2 * i] !== 0 || this.table[2 * i + 1] !== 0;
  }

  /** Hashes `prefix` and `text` into h1, h2; false where `asciiLower` refuses the text. */
  private hashText(prefix: number, text: string, asciiLower: boolean): boolean {
    let h1 = Math.imul(0x811c9dc5 ^ (prefix >>> 0), 0x01000193);
    let h2 = Math.imul(0x9747b28c ^ Math.floor(prefix / 0x100000000), 0x5bd1e995);
    for (let i = 0; i < text.length; i++) {
      let c = text.charCodeAt(i);
      if (asciiLower) {
        if (c < 0x20 || c > 0x7e || c === 0x5c) return false;
        if (c >= 0x41 && c <= 0x5a) c += 0x20;
      }
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h2 = Math.imul(h2 ^ c, 0x5bd1e995);
      h2 = (h2 << 13) | (h2 >>> 19);
    }
    this.h1 = h1 >>> 0;
    this.h2 = Math.imul(h2 ^ text.length, 0x85ebca6b) >>> 0;
    return true;
  }

  add(h1: number, h2: number): boolean {
    h1 >>>= 0;
    h2 = stored(h1, h2 >>> 0);
    if ((this.size + 1) * 10 > (this.table.length >>> 1) * 7) this.grow();
    const i = this.slot(h1, h2);
    if (this.table[2 * i] !== 0 || this.table[2 * i + 1] !== 0) return false;
    this.table[2 * i] = h1;
    this.table[2 * i + 1] = h2;
    this.size++;
    return true;
  }

  /** The slot that holds (h1, h2), or the empty one where it would go (linear probing). */
  private slot(h1: number, h2: number): number {
    const mask = (this.table.length >>> 1) - 1;
    for (let i = h1 & mask; ; i = (i + 1) & mask) {
      const a = this.table[2 * i]!;
      const b = this.table[2 * i + 1]!;
      if ((a === 0 && b === 0) || (a === h1 && b === h2)) return i;
    }
  }

  private grow(): void {
    const old = this.table;
    this.table = new Uint32Array(old.length * 2);
    this.size = 0;
    for (let i = 0; i < old.length; i += 2) if (old[i] !== 0 || old[i + 1] !== 0) this.add(old[i]!, old[i + 1]!);
  }
}
