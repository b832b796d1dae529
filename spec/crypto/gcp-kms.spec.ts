import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  applicationDefaultTokenProvider, crc32c, createGcpKmsUnwrapper, keyVersionName, parseGcpKmsConfig, type GcpKmsConfig,
} from '../../lib/crypto/gcp-kms.js';
import { loadPrivateKey } from '../../lib/crypto/keys.js';
import { openDecryptedSource } from '../../lib/decrypt.js';
import { drain, fixture, PLAINTEXT, pythonMembers, readFixture, tempDir, codeOf } from './helpers.js';
import { startKmsServer, type KmsServer } from './kms-server.js';

const CONFIG: GcpKmsConfig = { project_id: 'my-project', location: 'global', key_ring: 'relocation', key: 'relocation', version: '1' };


describe('crc32c', () => {
  it('matches the Castagnoli check values', () => {
    expect(crc32c(Buffer.from('123456789'))).to.equal(0xe3069283);
    expect(crc32c(Buffer.alloc(32))).to.equal(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).to.equal(0x62a8ab43);
    expect(crc32c(Buffer.alloc(0))).to.equal(0);
    expect(crc32c(Buffer.from('56789'), crc32c(Buffer.from('1234')))).to.equal(0xe3069283);
  });
});

describe('createGcpKmsUnwrapper', () => {
  let server: KmsServer;
  before(async () => { server = await startKmsServer(loadPrivateKey(readFixture('fixture-key.pem'))); });
  after(async () => { await server.close(); });
  beforeEach(() => { server.mode = 'ok'; server.requests = []; });

  const unwrapper = () => createGcpKmsUnwrapper({ config: CONFIG, endpoint: server.url, tokenProvider: async () => 'test-token' });

  it('unwraps data.key through asymmetricDecrypt and imports the Python fixture', async () => {
    const src = await openDecryptedSource({ path: fixture('python-export.tar') }, { unwrapper: unwrapper() });
    expect((await drain(src.stream)).equals(PLAINTEXT())).to.equal(true);
    expect(server.requests).to.have.length(1);
    const req = server.requests[0]!;
    expect(req.path).to.equal('/v1/projects/my-project/locations/global/keyRings/relocation/cryptoKeys/relocation/cryptoKeyVersions/1:asymmetricDecrypt');
    expect(req.headers.authorization).to.equal('Bearer test-token');
    const body = JSON.parse(req.body) as { ciphertext: string; ciphertextCrc32c: string };
    expect(Buffer.from(body.ciphertext, 'base64').equals(pythonMembers().wrapped)).to.equal(true);
    expect(body.ciphertextCrc32c).to.equal(String(crc32c(pythonMembers().wrapped)));
  });

  describe('on integrity failures', () => {
    it('rejects a response whose plaintextCrc32c does not match (USERPORT_DECRYPT_KMS)', async () => {
      server.mode = 'bad-plaintext-crc';
      expect(await codeOf(unwrapper().unwrap(pythonMembers().wrapped, Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
    });

    it('rejects a response that did not verify the ciphertext crc32c', async () => {
      server.mode = 'unverified-ciphertext';
      expect(await codeOf(unwrapper().unwrap(pythonMembers().wrapped, Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
    });

    it('reports HTTP errors and an unreachable endpoint as USERPORT_DECRYPT_KMS, and writes nothing', async () => {
      server.mode = 'forbidden';
      expect(await codeOf(openDecryptedSource({ path: fixture('python-export.tar') }, { unwrapper: unwrapper() }))).to.equal('USERPORT_DECRYPT_KMS');
      const dead = createGcpKmsUnwrapper({ config: CONFIG, endpoint: 'http://127.0.0.1:1', tokenProvider: async () => 't' });
      expect(await codeOf(dead.unwrap(pythonMembers().wrapped, Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
    });

    it('reports a data.key KMS cannot decrypt as USERPORT_DECRYPT_KMS', async () => {
      expect(await codeOf(unwrapper().unwrap(crypto.randomBytes(256), Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
    });
  });

  describe('options and config', () => {
    it('validates options up front, naming them', () => {
      expect(() => createGcpKmsUnwrapper({})).to.throw(/config and configPath/).with.property('code', 'USERPORT_OPTION_INVALID');
      expect(() => createGcpKmsUnwrapper({ config: CONFIG, endpoint: 'ftp://x' })).to.throw(/endpoint/).with.property('code', 'USERPORT_OPTION_INVALID');
    });

    it('requires the five fields as non-empty strings, with Sentry\'s underscore names', () => {
      expect(parseGcpKmsConfig({ ...CONFIG })).to.deep.equal(CONFIG);
      for (const bad of [{ ...CONFIG, version: 1 }, { ...CONFIG, key_ring: undefined, keyring: 'x' }, [], null, 'x']) {
        expect(() => parseGcpKmsConfig(bad)).to.throw().with.property('code', 'USERPORT_DECRYPT_KMS');
      }
    });

    it('reads the config from configPath and escapes the resource name', async () => {
      const t = tempDir();
      try {
        const file = path.join(t.dir, 'kms.json');
        fs.writeFileSync(file, JSON.stringify(CONFIG));
        const u = createGcpKmsUnwrapper({ configPath: file, endpoint: server.url, tokenProvider: async () => 't' });
        expect(await u.unwrap(pythonMembers().wrapped, Buffer.alloc(0))).to.have.length(44);
        expect(keyVersionName({ ...CONFIG, key: 'a/b' })).to.contain('cryptoKeys/a%2Fb/');
        fs.writeFileSync(file, '{"project_id": ');
        const broken = createGcpKmsUnwrapper({ configPath: file, endpoint: server.url, tokenProvider: async () => 't' });
        expect(await codeOf(broken.unwrap(pythonMembers().wrapped, Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
      } finally {
        t.remove();
      }
    });
  });

  describe('application-default credentials', () => {
    it('signs a JWT with a service account from GOOGLE_APPLICATION_CREDENTIALS and uses the token', async () => {
      const t = tempDir();
      try {
        const sa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
        server.serviceAccountKey = sa.publicKey;
        const file = path.join(t.dir, 'sa.json');
        fs.writeFileSync(file, JSON.stringify({
          type: 'service_account', client_email: 'importer@my-project.iam.gserviceaccount.com', private_key_id: 'k1',
          private_key: sa.privateKey.export({ type: 'pkcs8', format: 'pem' }), token_uri: `${server.url}/token`,
        }));
        const tokenProvider = applicationDefaultTokenProvider({ env: { GOOGLE_APPLICATION_CREDENTIALS: file } });
        const u = createGcpKmsUnwrapper({ config: CONFIG, endpoint: server.url, tokenProvider });
        expect(await u.unwrap(pythonMembers().wrapped, Buffer.alloc(0))).to.have.length(44);
        const kmsCall = server.requests.find((r) => r.path.endsWith(':asymmetricDecrypt'))!;
        expect(kmsCall.headers.authorization).to.equal('Bearer sa-token-for-importer@my-project.iam.gserviceaccount.com');
        // A second call reuses the cached token.
        await tokenProvider();
        expect(server.requests.filter((r) => r.path === '/token')).to.have.length(1);
      } finally {
        t.remove();
      }
    });

    it('falls back to the metadata server when there is no credentials file', async () => {
      const t = tempDir();
      try {
        const host = new URL(server.url).host;
        const tokenProvider = applicationDefaultTokenProvider({ env: { CLOUDSDK_CONFIG: t.dir, GCE_METADATA_HOST: host } });
        expect(await tokenProvider()).to.equal('metadata-token');
      } finally {
        t.remove();
      }
    });

    it('reports a rejected JWT as USERPORT_DECRYPT_KMS', async () => {
      const t = tempDir();
      try {
        server.serviceAccountKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
        const file = path.join(t.dir, 'sa.json');
        fs.writeFileSync(file, JSON.stringify({
          type: 'service_account', client_email: 'x@y', private_key: readFixture('other-key.pem').toString(), token_uri: `${server.url}/token`,
        }));
        expect(await codeOf(applicationDefaultTokenProvider({ env: { GOOGLE_APPLICATION_CREDENTIALS: file } })())).to.equal('USERPORT_DECRYPT_KMS');
      } finally {
        t.remove();
      }
    });
  });
});
