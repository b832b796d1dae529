import { expect } from 'chai';
import crypto from 'node:crypto';
import {
  Base64UrlDecoder, Base64UrlEncoder, FernetReader, createFernetEncryptStream, decryptToken, generateFernetKey,
  parseFernetKey, tokenLength, verifyToken, MIN_TOKEN_BYTES,
} from '../../lib/crypto/fernet.js';
import { unwrapKey, loadPrivateKey } from '../../lib/crypto/keys.js';
import { chunked } from '../helpers/streams.js';
import { drain, flipBase64, PLAINTEXT, pythonMembers, readFixture, codeOf } from './helpers.js';

async function encrypt(plaintext: Buffer, key: Buffer, chunk = 65536): Promise<Buffer> {
  return drain(chunked(plaintext, chunk).pipe(createFernetEncryptStream({ key })));
}


async function decryptAll(token: Buffer, key: Buffer, chunk: number): Promise<{ out: Buffer; size: number }> {
  const k = parseFernetKey(key);
  const { plaintextLength } = await verifyToken(chunked(token, chunk), k);
  const parts: Buffer[] = [];
  for await (const p of decryptToken(chunked(token, chunk), k)) parts.push(p);
  return { out: Buffer.concat(parts), size: plaintextLength };
}

describe('Fernet', () => {
  describe('interoperability', () => {
    it('verifies and decrypts the token Python\'s cryptography made, in 1, 7 and 1 MiB chunks', async () => {
      const { token, wrapped } = pythonMembers();
      const key = unwrapKey(loadPrivateKey(readFixture('fixture-key.pem')), wrapped);
      for (const size of [1, 7, 1 << 20]) {
        const { out, size: n } = await decryptAll(token, key, size);
        expect(out.equals(PLAINTEXT())).to.equal(true);
        expect(n).to.equal(PLAINTEXT().length);
      }
    });

    it('writes tokens Python would write: version 0x80, padded URL-safe base64, predicted length', async () => {
      const key = generateFernetKey();
      for (const n of [0, 1, 15, 16, 17, 1000, 65537]) {
        const plain = crypto.randomBytes(n);
        const token = await encrypt(plain, key, 7);
        expect(token.length).to.equal(tokenLength(n));
        expect(token.toString('latin1')).to.match(/^gA[A-Za-z0-9_-]*=*$/);
        const { out, size } = await decryptAll(token, key, 13);
        expect(out.equals(plain)).to.equal(true);
        expect(size).to.equal(n);
      }
    });
  });

  describe('on tampering', () => {
    let key: Buffer;
    let token: Buffer;
    before(async () => {
      key = generateFernetKey();
      token = await encrypt(crypto.randomBytes(100_000), key);
    });

    for (const [where, at] of [['start', (t: Buffer) => 3], ['middle', (t: Buffer) => t.length >> 1], ['end', (t: Buffer) => t.length - 3]] as const) {
      it(`rejects one changed byte at the ${where} of the token with USERPORT_DECRYPT_TAMPERED`, async () => {
        const bad = flipBase64(token, at(token));
        expect(await codeOf(verifyToken(chunked(bad, 4096), parseFernetKey(key)))).to.equal('USERPORT_DECRYPT_TAMPERED');
      });
    }

    it('rejects a character outside the alphabet, padding in the middle, and a short length', async () => {
      const k = parseFernetKey(key);
      const bang = Buffer.from(token); bang[500] = 0x21;
      const pad = Buffer.from(token); pad[500] = 0x3d;
      for (const bad of [bang, pad, token.subarray(0, token.length - 1), token.subarray(0, 40)]) {
        expect(await codeOf(verifyToken(chunked(bad, 1000), k))).to.equal('USERPORT_DECRYPT_TAMPERED');
      }
    });

    it('rejects a token cut to a whole number of blocks (the HMAC no longer matches)', async () => {
      const cut = token.subarray(0, token.length - 64);
      expect(await codeOf(verifyToken(chunked(cut, 999), parseFernetKey(key)))).to.equal('USERPORT_DECRYPT_TAMPERED');
    });

    it('rejects the right token under another key', async () => {
      expect(await codeOf(verifyToken(chunked(token, 4096), parseFernetKey(generateFernetKey())))).to.equal('USERPORT_DECRYPT_TAMPERED');
    });

    it('in decrypt mode checks the HMAC again before the last block, so a swapped file still fails', async () => {
      const k = parseFernetKey(key);
      const bad = flipBase64(token, token.length >> 1);
      const gen = decryptToken(chunked(bad, 4096), k);
      expect(await codeOf((async () => { for await (const _ of gen) { /* drain */ } })())).to.equal('USERPORT_DECRYPT_TAMPERED');
    });

    it('rejects tokens shorter than the minimum', () => {
      const r = new FernetReader(parseFernetKey(key), 'verify');
      r.update(Buffer.alloc(MIN_TOKEN_BYTES - 1, 0x80));
      expect(() => r.final()).to.throw().with.property('code', 'USERPORT_DECRYPT_TAMPERED');
    });
  });

  describe('parseFernetKey', () => {
    it('accepts 44-byte base64 of 32 bytes (either alphabet, as Python does) and refuses anything else', () => {
      expect(parseFernetKey(generateFernetKey()).signingKey).to.have.length(16);
      expect(parseFernetKey(Buffer.alloc(32, 0xfb).toString('base64')).encryptionKey.equals(Buffer.alloc(16, 0xfb))).to.equal(true);
      for (const bad of ['', 'x'.repeat(44), '!'.repeat(43) + '=', crypto.randomBytes(33).toString('base64url'), crypto.randomBytes(32).toString('hex')]) {
        expect(() => parseFernetKey(bad)).to.throw().with.property('code', 'USERPORT_DECRYPT_TAMPERED');
      }
    });
  });

  describe('Base64UrlDecoder / Base64UrlEncoder', () => {
    it('agree with Buffer for every length and every cut', () => {
      for (let n = 0; n < 40; n++) {
        const raw = crypto.randomBytes(n);
        for (const cut of [1, 2, 3, 5]) {
          const enc = new Base64UrlEncoder();
          const textParts: Buffer[] = [];
          for (let i = 0; i < raw.length; i += cut) textParts.push(enc.push(raw.subarray(i, i + cut)));
          textParts.push(enc.end());
          const text = Buffer.concat(textParts);
          expect(text.toString('latin1')).to.equal(raw.toString('base64').replace(/\+/g, '-').replace(/\//g, '_'));
          const dec = new Base64UrlDecoder();
          const outParts: Buffer[] = [];
          for (let i = 0; i < text.length; i += cut) outParts.push(dec.push(text.subarray(i, i + cut)));
          outParts.push(dec.end());
          expect(Buffer.concat(outParts).equals(raw)).to.equal(true);
        }
      }
    });

    it('decodes chunks of many pieces as the whole-chunk decoder did: the bytes, the error and its character', () => {
      // The decoder before pieces (one string a chunk), kept here as the reference.
      class Reference {
        private carry = '';
        private done = false;
        private chars = 0;
        push(chunk: Buffer): Buffer {
          if (chunk.length === 0) return Buffer.alloc(0);
          if (this.done) throw new Error(`data after the base64 padding at character ${this.chars}`);
          let str = chunk.toString('latin1');
          if (this.carry) str = this.carry + str;
          const whole = str.length - (str.length % 4);
          this.carry = str.slice(whole);
          if (whole === 0) return Buffer.alloc(0);
          const text = whole === str.length ? str : str.slice(0, whole);
          const out = Buffer.from(text, 'base64url');
          let expected = (text.length / 4) * 3;
          if (out.length !== expected) {
            const pad = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
            expected -= pad;
            if (pad === 0 || text.indexOf('=') !== text.length - pad || out.length !== expected) {
              const bad = /[^A-Za-z0-9_-]/.exec(text);
              throw new Error(`the token is not valid URL-safe base64 (character ${this.chars + (bad ? bad.index : text.length)} of the token)`);
            }
            this.done = true;
          } else if (text.charCodeAt(text.length - 1) === 61) {
            this.done = true;
          }
          this.chars += text.length;
          return out;
        }
        end(): Buffer {
          if (this.carry) throw new Error('the token is not valid base64 (its length is not a multiple of 4)');
          return Buffer.alloc(0);
        }
      }
      const run = (dec: { push(b: Buffer): Buffer; end(): Buffer }, text: Buffer, cuts: number[]) => {
        const parts: Buffer[] = [];
        try {
          let at = 0;
          for (let i = 0; at < text.length; i++) {
            const next = Math.min(text.length, at + cuts[i % cuts.length]!);
            parts.push(dec.push(text.subarray(at, next)));
            at = next;
          }
          parts.push(dec.end());
          return { bytes: Buffer.concat(parts).toString('hex') };
        } catch (err) {
          return { error: (err as Error).message.replace(/^the export failed authentication: /, '') };
        }
      };
      const random = (seed: number) => () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
      const r = random(20261206);
      const PIECE = 64 * 1024;
      let errors = 0;
      for (let round = 0; round < 96; round++) {
        const raw = crypto.randomBytes(Math.floor(r() * 3 * PIECE) + 1);
        const text = Buffer.from(raw.toString('base64url') + '='.repeat((4 - (raw.toString('base64url').length % 4)) % 4), 'latin1');
        // Clean, then one character changed: outside the alphabet, a padding '=', a byte above 0x7f.
        const variant = Buffer.from(text);
        if (round % 4 !== 0) {
          // At a piece's edges (where a piece ends with it), or anywhere.
          const edges = [PIECE - 1, PIECE, 2 * PIECE - 1, text.length - 1, text.length - 3].filter((e) => e >= 0 && e < text.length);
          const at = round % 2 === 0 ? edges[Math.floor(r() * edges.length)]! : Math.floor(r() * text.length);
          variant[at] = [0x21, 0x3d, 0xe9][Math.floor(round / 4) % 3]!;
        }
        // Chunks of a piece and more (several pieces each), and uneven ones that leave a carry.
        for (const cuts of [[text.length], [3 * PIECE + 1], [PIECE + 3, 5, 2 * PIECE - 1], [Math.floor(r() * 4 * PIECE) + 1, 7]]) {
          const want = run(new Reference(), variant, cuts);
          expect(run(new Base64UrlDecoder(), variant, cuts), `round ${round}, cuts ${cuts.join(',')}`).to.deep.equal(want);
          // Reusing its output buffer (each output copied before the next push, as the passes use it).
          const reusing = new Base64UrlDecoder(true);
          const copying = { push: (b: Buffer) => Buffer.from(reusing.push(b)), end: () => reusing.end() };
          expect(run(copying, variant, cuts), `reusing, round ${round}, cuts ${cuts.join(',')}`).to.deep.equal(want);

          if (want.error) errors++;
          else if (round % 4 === 0) expect(want.bytes).to.equal(raw.toString('hex'));
        }
      }
      // The changed characters were refused (most: a '=' at the very end, or in its padding, is valid).
      expect(errors).to.be.greaterThan(100);
    });

    it('with reuse, decodes every chunk into one buffer of its own', () => {
      const text = Buffer.from(crypto.randomBytes(30 * 6144).toString('base64url'), 'latin1');
      const outputs = (reuse: boolean) => {
        const dec = new Base64UrlDecoder(reuse);
        const seen = new Set<ArrayBufferLike>();
        for (let at = 0; at < text.length; at += 8192) seen.add(dec.push(text.subarray(at, at + 8192)).buffer);
        return seen.size;
      };
      expect(outputs(true)).to.equal(1);
      expect(outputs(false)).to.equal(30);
    });

    it('encodes chunks of many pieces, cut anywhere, as Buffer does', () => {
      const PIECE_BYTES = 48 * 1024;
      for (const size of [PIECE_BYTES - 1, PIECE_BYTES, 3 * PIECE_BYTES + 2, 200_000]) {
        const raw = crypto.randomBytes(size);
        const want = raw.toString('base64url') + '='.repeat((4 - (raw.toString('base64url').length % 4)) % 4);
        for (const cuts of [[size], [PIECE_BYTES + 1, 2], [1, 2 * PIECE_BYTES + 1], [size - 1, 1]]) {
          const enc = new Base64UrlEncoder();
          const parts: Buffer[] = [];
          for (let at = 0, i = 0; at < size; i++) {
            const next = Math.min(size, at + cuts[i % cuts.length]!);
            parts.push(enc.push(raw.subarray(at, next)));
            at = next;
          }
          parts.push(enc.end());
          expect(Buffer.concat(parts).toString('latin1') === want, `size ${size}, cuts ${cuts.join(',')}`).to.equal(true);
        }
      }
    });

    it('refuses data after the padding', () => {
      const dec = new Base64UrlDecoder();
      dec.push(Buffer.from('YQ=='));
      expect(() => dec.push(Buffer.from('YQ=='))).to.throw().with.property('code', 'USERPORT_DECRYPT_TAMPERED');
    });
  });
});
