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

    it('refuses data after the padding', () => {
      const dec = new Base64UrlDecoder();
      dec.push(Buffer.from('YQ=='));
      expect(() => dec.push(Buffer.from('YQ=='))).to.throw().with.property('code', 'USERPORT_DECRYPT_TAMPERED');
    });
  });
});
