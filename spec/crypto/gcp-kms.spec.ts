import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  crc32c, createGcpKmsUnwrapper, keyVersionName, parseGcpKmsConfig, type GcpKmsConfig,
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

  const unwrapper = () => createGcpKmsUnwrapper({ config: CONFIG, endpoint: server.url, auth: { getAccessToken: async () => 'test-token' } });

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
      const dead = createGcpKmsUnwrapper({ config: CONFIG, endpoint: 'http://127.0.0.1:1', auth: { getAccessToken: async () => ({ token: 't' }) } });
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
        const u = createGcpKmsUnwrapper({ configPath: file, endpoint: server.url, auth: { getAccessToken: async () => ({ token: 't' }) } });
        expect(await u.unwrap(pythonMembers().wrapped, Buffer.alloc(0))).to.have.length(44);
        expect(keyVersionName({ ...CONFIG, key: 'a/b' })).to.contain('cryptoKeys/a%2Fb/');
        fs.writeFileSync(file, '{"project_id": ');
        const broken = createGcpKmsUnwrapper({ configPath: file, endpoint: server.url, auth: { getAccessToken: async () => ({ token: 't' }) } });
        expect(await codeOf(broken.unwrap(pythonMembers().wrapped, Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
      } finally {
        t.remove();
      }
    });
  });

  describe('credentials, resolved by google-auth-library', () => {
    /** An external-account (workload identity federation) credentials file pointing at the stand-in. */
    function externalAccount(dir: string, subject: string, impersonate?: string): string {
      const subjectFile = path.join(dir, 'subject-token');
      fs.writeFileSync(subjectFile, subject);
      const file = path.join(dir, 'external-account.json');
      fs.writeFileSync(file, JSON.stringify({
        type: 'external_account',
        audience: '//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/ci/providers/local',
        subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
        token_url: `${server.url}/sts`,
        credential_source: { file: subjectFile },
        ...(impersonate ? { service_account_impersonation_url: `${server.url}/v1/projects/-/serviceAccounts/${impersonate}:generateAccessToken` } : {}),
      }));
      return file;
    }

    it('uses an external-account (workload identity) credentials file: STS token exchange, then KMS', async () => {
      const t = tempDir();
      try {
        server.subjectTokens = ['ci-job-42'];
        const u = createGcpKmsUnwrapper({ config: CONFIG, endpoint: server.url, keyFile: externalAccount(t.dir, 'ci-job-42') });
        expect(await u.unwrap(pythonMembers().wrapped, Buffer.alloc(0))).to.have.length(44);
        const kmsCall = server.requests.find((r) => r.path.endsWith(':asymmetricDecrypt'))!;
        expect(kmsCall.headers.authorization).to.equal('Bearer sts-token-for-ci-job-42');
        // A second unwrap reuses the cached token.
        await u.unwrap(pythonMembers().wrapped, Buffer.alloc(0));
        expect(server.requests.filter((r) => r.path === '/sts')).to.have.length(1);
      } finally {
        t.remove();
      }
    });

    it('impersonates a service account when the credentials say so', async () => {
      const t = tempDir();
      try {
        server.subjectTokens = ['ci-job-43'];
        const u = createGcpKmsUnwrapper({ config: CONFIG, endpoint: server.url, keyFile: externalAccount(t.dir, 'ci-job-43', 'importer@my-project.iam.gserviceaccount.com') });
        expect(await u.unwrap(pythonMembers().wrapped, Buffer.alloc(0))).to.have.length(44);
        const kmsCall = server.requests.find((r) => r.path.endsWith(':asymmetricDecrypt'))!;
        expect(kmsCall.headers.authorization).to.equal('Bearer impersonated-importer@my-project.iam.gserviceaccount.com');
      } finally {
        t.remove();
      }
    });

    it('reports refused credentials and an unreadable credentials file as USERPORT_DECRYPT_KMS, before calling KMS', async () => {
      const t = tempDir();
      try {
        server.subjectTokens = [];
        const refused = createGcpKmsUnwrapper({ config: CONFIG, endpoint: server.url, keyFile: externalAccount(t.dir, 'untrusted') });
        expect(await codeOf(refused.unwrap(pythonMembers().wrapped, Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
        const missing = createGcpKmsUnwrapper({ config: CONFIG, endpoint: server.url, keyFile: path.join(t.dir, 'nope.json') });
        expect(await codeOf(missing.unwrap(pythonMembers().wrapped, Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
        expect(server.requests.filter((r) => r.path.endsWith(':asymmetricDecrypt'))).to.have.length(0);
      } finally {
        t.remove();
      }
    });

    it('takes an injected auth client, and reports one that yields no token as USERPORT_DECRYPT_KMS', async () => {
      const u = createGcpKmsUnwrapper({ config: CONFIG, endpoint: server.url, auth: { getAccessToken: async () => ({ token: null }) } });
      expect(await codeOf(u.unwrap(pythonMembers().wrapped, Buffer.alloc(0)))).to.equal('USERPORT_DECRYPT_KMS');
      expect(server.requests).to.have.length(0);
    });

    it('loads google-auth-library only when KMS credentials are first needed', () => {
      const script = `
        import { createRequire } from 'node:module';
        const require = createRequire(import.meta.url);
        const loaded = () => Object.keys(require.cache).some((k) => k.includes('google-auth-library'));
        const lib = await import(process.argv[1]);
        const u = lib.createGcpKmsUnwrapper({ config: ${JSON.stringify(CONFIG)}, endpoint: 'http://127.0.0.1:1', keyFile: '/nonexistent/creds.json' });
        const before = loaded();
        await u.unwrap(Buffer.alloc(256)).catch(() => undefined);
        console.log(JSON.stringify({ before, after: loaded() }));
      `;
      const out = spawnSync(process.execPath, ['--input-type=module', '-e', script, path.resolve('dist/lib/index.js')], { encoding: 'utf8' });
      expect(out.status, out.stderr).to.equal(0);
      expect(JSON.parse(out.stdout)).to.deep.equal({ before: false, after: true });
    });
  });
});
