import { expect } from 'chai';
import crypto from 'node:crypto';
import { loadPrivateKey, loadPublicKey, sameRsaPublicKey, unwrapKey, wrapKey } from '../../lib/crypto/keys.js';
import { createLocalKeyUnwrapper, rememberingUnwrapper } from '../../lib/crypto/unwrapper.js';
import { generateFernetKey } from '../../lib/crypto/fernet.js';
import { pythonMembers, readFixture, codeOf } from './helpers.js';

function codeOfSync(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  throw new Error('expected an error');
}

describe('keys', () => {
  const pub = () => loadPublicKey(readFixture('fixture-key.pub'));

  describe('loadPrivateKey', () => {
    it('loads PKCS#8 and PKCS#1 PEM, both matching key.pub by modulus and exponent', () => {
      for (const f of ['fixture-key.pem', 'fixture-key.pkcs1.pem']) {
        expect(sameRsaPublicKey(loadPrivateKey(readFixture(f)), pub())).to.equal(true);
      }
      expect(readFixture('fixture-key.pkcs1.pem').toString()).to.contain('BEGIN RSA PRIVATE KEY');
    });

    it('opens an encrypted key with its passphrase', () => {
      const key = loadPrivateKey(readFixture('fixture-key.encrypted.pem'), 'fixture-passphrase');
      expect(sameRsaPublicKey(key, pub())).to.equal(true);
    });

    it('asks for the passphrase (USERPORT_DECRYPT_PASSPHRASE) when it is missing or wrong', () => {
      expect(codeOfSync(() => loadPrivateKey(readFixture('fixture-key.encrypted.pem')))).to.equal('USERPORT_DECRYPT_PASSPHRASE');
      expect(codeOfSync(() => loadPrivateKey(readFixture('fixture-key.encrypted.pem'), 'wrong'))).to.equal('USERPORT_DECRYPT_PASSPHRASE');
    });

    it('opens a legacy encrypted PKCS#1 key (Proc-Type: 4,ENCRYPTED)', () => {
      const legacy = loadPrivateKey(readFixture('fixture-key.pem')).export({ type: 'pkcs1', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'pw' }) as string;
      expect(legacy).to.contain('Proc-Type: 4,ENCRYPTED');
      expect(codeOfSync(() => loadPrivateKey(legacy))).to.equal('USERPORT_DECRYPT_PASSPHRASE');
      expect(sameRsaPublicKey(loadPrivateKey(legacy, 'pw'), pub())).to.equal(true);
    });

    it('refuses garbage and non-RSA keys with USERPORT_DECRYPT_KEY_INVALID', () => {
      const ed = crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
      expect(codeOfSync(() => loadPrivateKey('not a key'))).to.equal('USERPORT_DECRYPT_KEY_INVALID');
      expect(codeOfSync(() => loadPrivateKey(ed))).to.equal('USERPORT_DECRYPT_KEY_INVALID');
      expect(codeOfSync(() => loadPublicKey('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n'))).to.equal('USERPORT_DECRYPT_KEY_INVALID');
    });
  });

  describe('sameRsaPublicKey', () => {
    it('matches key.pub written as PKCS#1 with CRLF, and not another key', () => {
      const pkcs1 = pub().export({ type: 'pkcs1', format: 'pem' }).toString().replace(/\n/g, '\r\n');
      expect(sameRsaPublicKey(loadPrivateKey(readFixture('fixture-key.pem')), loadPublicKey(pkcs1))).to.equal(true);
      expect(sameRsaPublicKey(loadPrivateKey(readFixture('other-key.pem')), pub())).to.equal(false);
    });
  });

  describe('wrapKey / unwrapKey', () => {
    it('round-trips with OAEP-SHA256 and unwraps the key Python wrapped', () => {
      const priv = loadPrivateKey(readFixture('fixture-key.pem'));
      const dek = generateFernetKey();
      expect(unwrapKey(priv, wrapKey(pub(), dek)).equals(dek)).to.equal(true);
      expect(unwrapKey(priv, pythonMembers().wrapped)).to.have.length(44);
    });

    it('reports a changed data.key as USERPORT_DECRYPT_TAMPERED', () => {
      const bad = Buffer.from(pythonMembers().wrapped);
      bad[100] = bad[100]! ^ 1;
      expect(codeOfSync(() => unwrapKey(loadPrivateKey(readFixture('fixture-key.pem')), bad))).to.equal('USERPORT_DECRYPT_TAMPERED');
    });
  });

  describe('createLocalKeyUnwrapper', () => {
    it('validates its options up front, naming them', () => {
      expect(() => createLocalKeyUnwrapper({})).to.throw(/privateKeyPath and privateKeyPem/).with.property('code', 'USERPORT_OPTION_INVALID');
      expect(() => createLocalKeyUnwrapper({ privateKeyPath: 'a', privateKeyPem: 'b' })).to.throw().with.property('code', 'USERPORT_OPTION_INVALID');
      expect(() => createLocalKeyUnwrapper({ privateKeyPath: '' })).to.throw(/privateKeyPath/).with.property('code', 'USERPORT_OPTION_INVALID');
    });

    it('opens an inline key at construction, so a missing passphrase fails before any input', () => {
      expect(codeOfSync(() => createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.encrypted.pem') }))).to.equal('USERPORT_DECRYPT_PASSPHRASE');
    });

    it('asks a passphrase function only when the key is encrypted', async () => {
      let asked = 0;
      const ask = async () => { asked++; return 'fixture-passphrase'; };
      const { wrapped, pub: pem } = pythonMembers();
      const plain = createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.pem'), passphrase: ask });
      expect(await plain.unwrap(wrapped, pem)).to.have.length(44);
      expect(asked).to.equal(0);
      const enc = createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.encrypted.pem'), passphrase: ask });
      expect(await enc.unwrap(wrapped, pem)).to.have.length(44);
      expect(asked).to.equal(1);
    });

    it('says USERPORT_DECRYPT_KEY_MISMATCH for a valid key that is not the export\'s', async () => {
      const { wrapped, pub: pem } = pythonMembers();
      const other = createLocalKeyUnwrapper({ privateKeyPem: readFixture('other-key.pem') });
      expect(await codeOf(other.unwrap(wrapped, pem))).to.equal('USERPORT_DECRYPT_KEY_MISMATCH');
    });

    it('reads a key from a path, and reports an unreadable path as USERPORT_DECRYPT_KEY_INVALID', async () => {
      const { wrapped, pub: pem } = pythonMembers();
      expect(await createLocalKeyUnwrapper({ privateKeyPath: 'spec/fixtures/crypto/fixture-key.pkcs1.pem' }).unwrap(wrapped, pem)).to.have.length(44);
      expect(await codeOf(createLocalKeyUnwrapper({ privateKeyPath: 'spec/fixtures/crypto/nope.pem' }).unwrap(wrapped, pem))).to.equal('USERPORT_DECRYPT_KEY_INVALID');
    });
  });
});

describe('rememberingUnwrapper', () => {
  it('asks its unwrapper once for the same key members, again for others, and again after a failure', async () => {
    const asked: string[] = [];
    let fail = false;
    const u = rememberingUnwrapper({
      async unwrap(wrapped: Buffer, pub: Buffer) {
        asked.push(`${wrapped.toString()}/${pub.toString()}`);
        if (fail) throw new Error('KMS unavailable');
        return Buffer.from(`key of ${wrapped.toString()}`);
      },
    });
    expect((await u.unwrap(Buffer.from('a'), Buffer.from('p'))).toString()).to.equal('key of a');
    expect((await u.unwrap(Buffer.from('a'), Buffer.from('p'))).toString()).to.equal('key of a');
    expect(asked).to.deep.equal(['a/p']);
    await u.unwrap(Buffer.from('b'), Buffer.from('p'));
    await u.unwrap(Buffer.from('b'), Buffer.from('q'));
    expect(asked).to.deep.equal(['a/p', 'b/p', 'b/q']);
    fail = true;
    const c = Buffer.from('c');
    let caught = 0;
    for (let i = 0; i < 2; i++) await u.unwrap(c, Buffer.from('p')).catch(() => { caught++; });
    expect(caught).to.equal(2);
    expect(asked.slice(3)).to.deep.equal(['c/p', 'c/p']);
  });
});
