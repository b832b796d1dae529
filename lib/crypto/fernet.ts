/**
 * Streaming Fernet (spec version 0x80), compatible with Python's `cryptography.fernet`.
 *
 * Token = 0x80 ‖ timestamp (8, BE) ‖ IV (16) ‖ AES-128-CBC ciphertext (PKCS#7) ‖ HMAC-SHA256 (32),
 * all URL-safe base64 with `=` padding. The HMAC covers everything before it, so authenticity is
 * known only at the last byte: {@link FernetReader} runs once to verify (no plaintext) and once
 * to decrypt, and the caller must not release plaintext before a verify pass succeeded
 * ({@link authenticatedPlaintext} does both, in that order).
 *
 * The hot path is native: base64 through `Buffer.from(str, 'base64url')` on whole chunks, HMAC
 * and AES through OpenSSL. The only JavaScript per chunk is bookkeeping of a 32-byte tail.
 */
import crypto from 'node:crypto';
import { Readable, Transform, type TransformCallback, type TransformOptions } from 'node:stream';
import { DecryptError, DecryptErrorCodes } from './errors.js';

export const FERNET_VERSION = 0x80;
/** Version, timestamp and IV. */
export const HEADER_LENGTH = 25;
export const TAG_LENGTH = 32;
export const BLOCK_LENGTH = 16;
/** The shortest valid token: header, one ciphertext block, tag. */
export const MIN_TOKEN_BYTES = HEADER_LENGTH + BLOCK_LENGTH + TAG_LENGTH;

/** A Fernet key split into its halves: the first 16 bytes sign, the last 16 encrypt. */
export interface FernetKey {
  signingKey: Buffer;
  encryptionKey: Buffer;
}

function tampered(message: string): DecryptError {
  return new DecryptError(DecryptErrorCodes.TAMPERED, `the export failed authentication: ${message}`);
}

/** A new random key in Fernet's textual form: 44 bytes of URL-safe base64 (what `data.key` wraps). */
export function generateFernetKey(): Buffer {
  return Buffer.from(crypto.randomBytes(32).toString('base64url') + '=', 'latin1');
}

/** Parses the 44-byte URL-safe base64 form. Throws USERPORT_DECRYPT_TAMPERED when it is not one. */
export function parseFernetKey(text: Buffer | string): FernetKey {
  const s = (typeof text === 'string' ? text : text.toString('latin1')).trim();
  const raw = Buffer.from(s, 'base64url');
  if (s.length !== 44 || raw.length !== 32 || !/^[A-Za-z0-9_+/-]{43}=$/.test(s)) {
    throw tampered('the unwrapped data key is not a Fernet key (44 bytes of URL-safe base64)');
  }
  return { signingKey: raw.subarray(0, 16), encryptionKey: raw.subarray(16) };
}

/** Length of the base64 token for a plaintext of `plaintextBytes` (PKCS#7 always adds 1..16 bytes). */
export function tokenLength(plaintextBytes: number): number {
  const raw = HEADER_LENGTH + (Math.floor(plaintextBytes / BLOCK_LENGTH) + 1) * BLOCK_LENGTH + TAG_LENGTH;
  return Math.ceil(raw / 3) * 4;
}

/**
 * Incremental strict URL-safe base64 decoder. Chunks may be cut anywhere. Node's decoder skips
 * characters outside the alphabet and stops at `=`; instead of a per-byte check, the decoded
 * length is compared with what the character count promises, which catches both.
 */
export class Base64UrlDecoder {
  private carry = '';
  private done = false;
  /** Characters consumed so far (for error positions). */
  chars = 0;
  /** The output buffer {@link push} reuses, with `reuse`. */
  private scratch: Buffer = EMPTY;

  /**
   * @param reuse {@link push} decodes into one buffer of its own, reused: what it returns holds
   * until the next push, for a caller that is done with it by then (the Fernet passes: the HMAC,
   * the cipher and the tail copy what they keep). Each chunk's decoded bytes then cost no
   * allocation (2 x 172 MB at 100k users, which made V8 collect more often).
   */
  constructor(private readonly reuse = false) {}

  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return EMPTY;
    if (this.done) throw tampered(`data after the base64 padding at character ${this.chars}`);
    const total = this.carry.length + chunk.length;
    const whole = total - (total % 4);
    // The chunk's characters before `end` complete whole groups (with the carry); the rest is carried.
    const end = whole - this.carry.length;
    if (whole === 0) {
      this.carry += chunk.toString('latin1');
      return EMPTY;
    }
    const size = (whole / 4) * 3;
    if (this.reuse && this.scratch.length < size) this.scratch = Buffer.allocUnsafe(size);
    const out = this.reuse ? this.scratch.subarray(0, size) : Buffer.allocUnsafe(size);
    let written = 0;
    let head = this.carry;
    for (let at = 0; at < end;) {
      // Pieces of PIECE characters (whole groups: the carry and the pieces before are whole groups too).
      const stop = Math.min(end, at + PIECE - head.length);
      const text = head + chunk.toString('latin1', at, stop);
      head = '';
      const n = out.write(text, written, 'base64url');
      if (n !== (text.length / 4) * 3) {
        // Padding (which always decodes short), or a character outside the alphabet: the rest is
        // one text, decided as ever.
        const rest = stop === end ? text : text + chunk.toString('latin1', stop, end);
        this.carry = chunk.toString('latin1', end);
        const last = this.decode(rest);
        return written ? Buffer.concat([out.subarray(0, written), last]) : last;
      }
      this.chars += text.length;
      written += n;
      at = stop;
    }
    this.carry = chunk.toString('latin1', end);
    return out;
  }

  /** Call at the end; the token must be a whole number of 4-character groups. */
  end(): Buffer {
    if (this.carry) throw tampered('the token is not valid base64 (its length is not a multiple of 4)');
    return EMPTY;
  }

  private decode(text: string): Buffer {
    const out = Buffer.from(text, 'base64url');
    let expected = (text.length / 4) * 3;
    if (out.length !== expected) {
      // Padding is legal only at the very end of the last group.
      const pad = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
      const firstPad = text.indexOf('=');
      expected -= pad;
      if (pad === 0 || firstPad !== text.length - pad || out.length !== expected) {
        // Node skipped the bad characters, so the decoded length cannot locate them: search.
        const bad = /[^A-Za-z0-9_-]/.exec(text);
        throw tampered(`the token is not valid URL-safe base64 (character ${this.chars + (bad ? bad.index : text.length)} of the token)`);
      }
      this.done = true;
    } else if (text.charCodeAt(text.length - 1) === 61 /* = */) {
      this.done = true;
    }
    this.chars += text.length;
    return out;
  }
}

const EMPTY = Buffer.alloc(0);

/**
 * Characters decoded from one string: a one-byte string this short is made in V8's young
 * generation, where a chunk's (512 KB) went to the large-object space, allocated and freed for each
 * chunk: decoding 230 MB took 1.08 s in chunk-sized strings, 0.18 s in pieces of 64 KB (0.17 s
 * at 32 KB, 1.36 s at 128 KB, which is no longer young); encoding 172 MB 2.0 s and 0.29 s.
 */
const PIECE = 64 * 1024;
/** Bytes whose base64 is {@link PIECE} characters (whole groups of 3). */
const PIECE_BYTES = (PIECE / 4) * 3;

/** What a verify pass learns. */
export interface FernetVerified {
  /** Exact plaintext length, read from the padding of the last block. */
  plaintextLength: number;
  /** Decoded token length. */
  tokenBytes: number;
  /** Seconds since the epoch in the token header (not checked: Sentry sets no TTL). */
  timestamp: number;
}

/**
 * One pass over a decoded token. In `verify` mode it only authenticates; in `decrypt` mode it
 * also returns plaintext pieces, and authenticates again at the end. Alone it would release
 * plaintext of bytes changed between the passes before failing: {@link decryptToken} holds each
 * segment back until its digest matches the verify pass.
 */
export class FernetReader {
  private readonly hmac: crypto.Hmac;
  private readonly key: FernetKey;
  private readonly mode: 'verify' | 'decrypt';
  private decipher: crypto.Decipher | undefined;
  private readonly head = Buffer.alloc(HEADER_LENGTH);
  private headFill = 0;
  /** The last bytes seen, withheld because they may be the tag. */
  private tail: Buffer = EMPTY;
  /** Copy of the last ciphertext bytes released (up to two blocks) to read the padding. */
  private lastCipher: Buffer = EMPTY;
  private cipherLength = 0;
  private total = 0;

  constructor(key: FernetKey, mode: 'verify' | 'decrypt') {
    this.key = key;
    this.mode = mode;
    this.hmac = crypto.createHmac('sha256', key.signingKey);
  }

  /** Feeds decoded token bytes. Returns plaintext pieces in decrypt mode (possibly none). */
  update(raw: Buffer): Buffer[] {
    const out: Buffer[] = [];
    this.total += raw.length;
    if (raw.length >= TAG_LENGTH) {
      if (this.tail.length) this.release(this.tail, out);
      this.release(raw.subarray(0, raw.length - TAG_LENGTH), out);
      this.tail = Buffer.from(raw.subarray(raw.length - TAG_LENGTH));
    } else if (raw.length > 0) {
      const joined = Buffer.concat([this.tail, raw]);
      if (joined.length > TAG_LENGTH) this.release(joined.subarray(0, joined.length - TAG_LENGTH), out);
      this.tail = joined.length > TAG_LENGTH ? joined.subarray(joined.length - TAG_LENGTH) : joined;
    }
    return out;
  }

  /**
   * Checks length, tag and padding. Returns the last plaintext piece (decrypt mode) and facts.
   * Throws USERPORT_DECRYPT_TAMPERED on any failure.
   */
  final(): { plaintext: Buffer; verified: FernetVerified } {
    if (this.total < MIN_TOKEN_BYTES) throw tampered(`the token is too short (${this.total} bytes)`);
    if (this.cipherLength % BLOCK_LENGTH !== 0) throw tampered('the ciphertext is not a whole number of AES blocks');
    const expected = this.hmac.digest();
    if (!crypto.timingSafeEqual(expected, this.tail)) throw tampered('the HMAC does not match');
    const iv = this.head.subarray(9, 25);
    const verified: FernetVerified = {
      plaintextLength: this.cipherLength - this.paddingLength(iv),
      tokenBytes: this.total,
      timestamp: Number(this.head.readBigUInt64BE(1)),
    };
    let plaintext = EMPTY;
    if (this.decipher) {
      try {
        plaintext = this.decipher.final();
      } catch (err) {
        throw new DecryptError(DecryptErrorCodes.TAMPERED, 'the export failed authentication: bad padding', { cause: err });
      }
    }
    return { plaintext, verified };
  }

  /** Decrypts the last block alone (ECB of one block, then XOR) to read the PKCS#7 pad length. */
  private paddingLength(iv: Buffer): number {
    const last = this.lastCipher.subarray(this.lastCipher.length - BLOCK_LENGTH);
    const prev = this.lastCipher.length >= 2 * BLOCK_LENGTH ? this.lastCipher.subarray(0, BLOCK_LENGTH) : iv;
    const ecb = crypto.createDecipheriv('aes-128-ecb', this.key.encryptionKey, null);
    ecb.setAutoPadding(false);
    const block = Buffer.concat([ecb.update(last), ecb.final()]);
    const pad = block[BLOCK_LENGTH - 1]! ^ prev[BLOCK_LENGTH - 1]!;
    if (pad < 1 || pad > BLOCK_LENGTH) throw tampered('bad padding');
    for (let i = BLOCK_LENGTH - pad; i < BLOCK_LENGTH; i++) {
      if ((block[i]! ^ prev[i]!) !== pad) throw tampered('bad padding');
    }
    return pad;
  }

  /** Bytes known not to be the tag: MACed, and past the header, deciphered. */
  private release(buf: Buffer, out: Buffer[]): void {
    this.hmac.update(buf);
    let rest = buf;
    if (this.headFill < HEADER_LENGTH) {
      const n = Math.min(HEADER_LENGTH - this.headFill, buf.length);
      buf.copy(this.head, this.headFill, 0, n);
      this.headFill += n;
      rest = buf.subarray(n);
      if (this.head[0] !== FERNET_VERSION) throw tampered(`unknown Fernet version 0x${this.head[0]!.toString(16)}`);
      if (this.headFill === HEADER_LENGTH && this.mode === 'decrypt') {
        this.decipher = crypto.createDecipheriv('aes-128-cbc', this.key.encryptionKey, this.head.subarray(9, 25));
      }
    }
    if (rest.length === 0) return;
    this.cipherLength += rest.length;
    const keep = 2 * BLOCK_LENGTH;
    if (rest.length >= keep) this.lastCipher = Buffer.from(rest.subarray(rest.length - keep));
    else {
      const joined = Buffer.concat([this.lastCipher, rest]);
      this.lastCipher = joined.subarray(Math.max(0, joined.length - keep));
    }
    if (this.decipher) {
      const pt = this.decipher.update(rest);
      if (pt.length) out.push(pt);
    }
  }
}

/**
 * Token text per digest of the verify pass. The decrypt pass holds back the plaintext of one
 * segment until that segment's bytes hash to what was authenticated, so a file changed between
 * the passes releases nothing it did not authenticate: memory costs one segment, and 32 bytes
 * per MiB of token for the digests (320 KB for a 10 GB export).
 */
export const SEGMENT_BYTES = 1 << 20;

/** What {@link verifyToken} learns, with the digests {@link decryptToken} checks the second read against. */
export interface VerifiedToken extends FernetVerified {
  /** SHA-256 of each {@link SEGMENT_BYTES} of token text, concatenated (the last may be shorter). */
  digests: Buffer;
}

/** Cuts chunks at every multiple of `SEGMENT_BYTES`; `end` marks a part that closes a segment. */
async function* segmented(chunks: AsyncIterable<Buffer>): AsyncGenerator<{ part: Buffer; end: boolean }> {
  let fill = 0;
  for await (const chunk of chunks) {
    let rest = chunk;
    while (rest.length) {
      const n = Math.min(rest.length, SEGMENT_BYTES - fill);
      fill += n;
      const end = fill === SEGMENT_BYTES;
      if (end) fill = 0;
      yield { part: n === rest.length ? rest : rest.subarray(0, n), end };
      rest = rest.subarray(n);
    }
  }
}

/** Authenticates a token given as base64 chunks. Throws USERPORT_DECRYPT_TAMPERED. */
export async function verifyToken(chunks: AsyncIterable<Buffer>, key: FernetKey): Promise<VerifiedToken> {
  const decoder = new Base64UrlDecoder(true);
  const reader = new FernetReader(key, 'verify');
  const digests: Buffer[] = [];
  let hash: crypto.Hash | undefined;
  for await (const { part, end } of segmented(chunks)) {
    (hash ??= crypto.createHash('sha256')).update(part);
    if (end) { digests.push(hash.digest()); hash = undefined; }
    reader.update(decoder.push(part));
  }
  if (hash) digests.push(hash.digest());
  decoder.end();
  return { ...reader.final().verified, digests: Buffer.concat(digests) };
}

/**
 * Decrypts a token given as base64 chunks. Only call after {@link verifyToken} succeeded on the
 * same bytes; pass its `digests` so that plaintext leaves only once the bytes it came from are
 * known to be the authenticated ones (without them, a changed byte is caught at the end only).
 */
export async function* decryptToken(chunks: AsyncIterable<Buffer>, key: FernetKey, digests?: Buffer): AsyncGenerator<Buffer> {
  const decoder = new Base64UrlDecoder(true);
  const reader = new FernetReader(key, 'decrypt');
  if (!digests) {
    for await (const chunk of chunks) {
      for (const piece of reader.update(decoder.push(chunk))) yield piece;
    }
  } else {
    let held: Buffer[] = [];
    let hash: crypto.Hash | undefined;
    let index = 0;
    const check = (h: crypto.Hash) => {
      const want = digests.subarray(index * 32, index * 32 + 32);
      if (want.length !== 32 || !h.digest().equals(want)) {
        throw tampered(`the export changed after it was authenticated (token bytes from ${index * SEGMENT_BYTES})`);
      }
      index++;
    };
    for await (const { part, end } of segmented(chunks)) {
      (hash ??= crypto.createHash('sha256')).update(part);
      held.push(...reader.update(decoder.push(part)));
      if (end) {
        check(hash);
        hash = undefined;
        yield* held;
        held = [];
      }
    }
    if (hash) check(hash);
    if (index * 32 !== digests.length) throw tampered(`the export changed after it was authenticated (it is shorter)`);
    yield* held;
  }
  decoder.end();
  const { plaintext } = reader.final();
  if (plaintext.length) yield plaintext;
}

/**
 * A token's plaintext as a stream, authenticated first. `passes` are two reads of the token's
 * base64 chunks, each from its start: the first is verified now, the second decrypted as the
 * stream is read and checked against the first by its digests ({@link decryptToken}). Rejects
 * with USERPORT_DECRYPT_TAMPERED before any plaintext exists. `cleanup` (close the file, remove
 * the spool) runs once, before the stream's `close`, on end, error or destroy, also when never read.
 */
export async function authenticatedPlaintext(passes: readonly [AsyncIterable<Buffer>, AsyncIterable<Buffer>], key: FernetKey, chunkSize: number,
  cleanup: () => Promise<void>): Promise<{ stream: Readable; size: number }> {
  const verified = await verifyToken(passes[0], key);
  return { stream: plaintextStream(decryptToken(passes[1], key, verified.digests), chunkSize, cleanup), size: verified.plaintextLength };
}

/** The plaintext stream of {@link authenticatedPlaintext}, pulling `iter` as it is read. */
function plaintextStream(iter: AsyncGenerator<Buffer>, chunkSize: number, cleanup: () => Promise<void>): Readable {
  let inflight: Promise<void> | undefined;
  return new Readable({
    highWaterMark: chunkSize,
    read() {
      if (inflight) return;
      inflight = (async () => {
        try {
          for (;;) {
            const { value, done } = await iter.next();
            if (this.destroyed) return;
            if (done) {
              this.push(null);
              return;
            }
            if (!this.push(value)) return;
          }
        } catch (err) {
          this.destroy(err as Error);
        } finally {
          inflight = undefined;
        }
      })();
    },
    destroy(err, callback) {
      // Let a read in progress settle before the file under it is closed.
      Promise.resolve(inflight)
        .then(() => iter.return(undefined))
        .catch(() => undefined)
        .then(cleanup)
        .then(() => callback(err), (cleanupErr: unknown) => callback(err ?? (cleanupErr as Error)));
    },
  });
}

/** Incremental URL-safe base64 encoder with `=` padding, as Python's `urlsafe_b64encode` writes. */
export class Base64UrlEncoder {
  private carry: Buffer = EMPTY;

  push(raw: Buffer): Buffer {
    let data = raw;
    // The carried bytes and the first of these make a group of their own (no copy of the chunk).
    let group = EMPTY;
    if (this.carry.length) {
      const need = 3 - this.carry.length;
      if (raw.length < need) {
        this.carry = Buffer.concat([this.carry, raw]);
        return EMPTY;
      }
      group = Buffer.concat([this.carry, raw.subarray(0, need)]);
      data = raw.subarray(need);
    }
    const whole = data.length - (data.length % 3);
    this.carry = Buffer.from(data.subarray(whole));
    if (!group.length && !whole) return EMPTY;
    const out = Buffer.allocUnsafe((group.length ? 4 : 0) + (whole / 3) * 4);
    let at = group.length ? out.write(group.toString('base64url'), 0, 'latin1') : 0;
    // Strings of PIECE characters at most, as the decoder's: young-generation strings.
    for (let i = 0; i < whole; i += PIECE_BYTES) at += out.write(data.toString('base64url', i, Math.min(whole, i + PIECE_BYTES)), at, 'latin1');
    return out;
  }

  end(): Buffer {
    if (!this.carry.length) return EMPTY;
    const s = this.carry.toString('base64url');
    this.carry = EMPTY;
    return Buffer.from(s + '='.repeat((4 - (s.length % 4)) % 4), 'latin1');
  }
}

export interface FernetEncryptOptions {
  /** The 44-byte textual key. */
  key: Buffer | string;
  /** For reproducible tests only: never reuse an IV in real use. @default 16 random bytes */
  iv?: Buffer;
  /** Seconds since the epoch written in the token. @default now */
  timestamp?: number;
}

/** Plaintext in, token text out, without streams: the encrypting stages are thin shells over it. */
export class FernetEncoder {
  private readonly cipher: crypto.Cipher;
  private readonly hmac: crypto.Hmac;
  private readonly encoder = new Base64UrlEncoder();
  private header: Buffer | undefined;

  constructor(options: FernetEncryptOptions) {
    const key = parseFernetKey(options.key);
    const iv = options.iv ?? crypto.randomBytes(16);
    if (iv.length !== 16) throw new RangeError('iv must be 16 bytes');
    this.header = Buffer.alloc(HEADER_LENGTH);
    this.header[0] = FERNET_VERSION;
    this.header.writeBigUInt64BE(BigInt(options.timestamp ?? Math.floor(Date.now() / 1000)), 1);
    iv.copy(this.header, 9);
    this.cipher = crypto.createCipheriv('aes-128-cbc', key.encryptionKey, iv);
    this.hmac = crypto.createHmac('sha256', key.signingKey);
  }

  private encode(raw: Buffer): Buffer {
    this.hmac.update(raw);
    return this.encoder.push(raw);
  }

  private start(): Buffer {
    if (!this.header) return EMPTY;
    const h = this.header;
    this.header = undefined;
    return this.encode(h);
  }

  /** Token text for the next plaintext bytes (may be empty). */
  update(plaintext: Buffer): Buffer {
    const head = this.start();
    const body = this.encode(this.cipher.update(plaintext));
    return head.length ? Buffer.concat([head, body]) : body;
  }

  /** The rest of the token: last block, tag, padding. */
  final(): Buffer {
    const head = this.start();
    const last = this.encode(this.cipher.final());
    const tag = this.hmac.digest();
    return Buffer.concat([head, last, this.encoder.push(tag), this.encoder.end()]);
  }
}

/** Plaintext in, Fernet token (URL-safe base64 text) out. */
export class FernetEncryptStream extends Transform {
  private readonly fernet: FernetEncoder;

  constructor(options: FernetEncryptOptions & TransformOptions) {
    super(options);
    this.fernet = new FernetEncoder(options);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    try {
      const text = this.fernet.update(chunk);
      callback(null, text.length ? text : undefined);
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      callback(null, this.fernet.final());
    } catch (err) {
      callback(err as Error);
    }
  }
}

/** Plaintext in, Fernet token text out. See {@link FernetEncryptOptions}. */
export function createFernetEncryptStream(options: FernetEncryptOptions & TransformOptions): FernetEncryptStream {
  return new FernetEncryptStream(options);
}
