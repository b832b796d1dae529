/**
 * A local stand-in for Cloud KMS and Google's OAuth endpoints, on 127.0.0.1 only. It speaks the
 * REST shapes userport uses: `:asymmetricDecrypt` (with crc32c fields), Google's STS token exchange and IAM `generateAccessToken` (what google-auth-library
 * calls for external-account credentials and impersonation), and the metadata server's token URL. `mode` makes it misbehave on purpose.
 */
import crypto, { type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { crc32c } from '../../lib/crypto/gcp-kms.js';

export type KmsMode = 'ok' | 'bad-plaintext-crc' | 'unverified-ciphertext' | 'forbidden';

export interface KmsServer {
  url: string;
  mode: KmsMode;
  requests: { path: string; headers: http.IncomingHttpHeaders; body: string }[];
  /** External subject tokens the STS endpoint trusts. */
  subjectTokens: string[];
  close(): Promise<void>;
}

/**
 * Writes, under `dir`, external-account credentials whose subject token (`ci-job`) the server's
 * STS trusts (a service account's token URL is fixed to Google's) and a KMS key config, and points
 * this process's environment (and so its children's) at them and at the server. Returns the
 * config's path. The caller saves and restores `process.env`.
 */
export function useKmsServer(server: KmsServer, dir: string): string {
  server.subjectTokens = ['ci-job'];
  fs.writeFileSync(path.join(dir, 'subject'), 'ci-job');
  fs.writeFileSync(path.join(dir, 'sa.json'), JSON.stringify({
    type: 'external_account', audience: '//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/ci/providers/local',
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt', token_url: `${server.url}/sts`, credential_source: { file: path.join(dir, 'subject') },
  }));
  const kms = path.join(dir, 'kms.json');
  fs.writeFileSync(kms, JSON.stringify({ project_id: 'p', location: 'global', key_ring: 'relocation', key: 'relocation', version: '1' }));
  process.env.GOOGLE_APPLICATION_CREDENTIALS = path.join(dir, 'sa.json');
  process.env.USERPORT_GCP_KMS_ENDPOINT = server.url;
  return kms;
}

export async function startKmsServer(privateKey: KeyObject): Promise<KmsServer> {
  const state: KmsServer = { url: '', mode: 'ok', requests: [], subjectTokens: [], close: async () => undefined };
  const server = http.createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const body = Buffer.concat(parts).toString('utf8');
      state.requests.push({ path: req.url ?? '', headers: req.headers, body });
      const send = (status: number, json: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(json));
      };
      const url = req.url ?? '';
      if (url.endsWith(':asymmetricDecrypt') && req.method === 'POST') {
        if (state.mode === 'forbidden' || req.headers.authorization === undefined) {
          send(403, { error: { code: 403, message: 'Permission cloudkms.cryptoKeyVersions.useToDecrypt denied', status: 'PERMISSION_DENIED' } });
          return;
        }
        const { ciphertext, ciphertextCrc32c } = JSON.parse(body) as { ciphertext: string; ciphertextCrc32c: string };
        const ct = Buffer.from(ciphertext, 'base64');
        const verified = Number(ciphertextCrc32c) === crc32c(ct) && state.mode !== 'unverified-ciphertext';
        let plaintext: Buffer;
        try {
          plaintext = crypto.privateDecrypt({ key: privateKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, ct);
        } catch {
          send(400, { error: { code: 400, message: 'Decryption failed: the ciphertext is invalid.', status: 'INVALID_ARGUMENT' } });
          return;
        }
        const crc = crc32c(plaintext) ^ (state.mode === 'bad-plaintext-crc' ? 1 : 0);
        send(200, {
          plaintext: plaintext.toString('base64'),
          plaintextCrc32c: String(crc >>> 0),
          verifiedCiphertextCrc32c: verified,
          protectionLevel: 'SOFTWARE',
        });
        return;
      }
      if (url.endsWith('/publicKey') && req.method === 'GET') {
        const pem = crypto.createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString();
        const crc = crc32c(Buffer.from(pem)) ^ (state.mode === 'bad-plaintext-crc' ? 1 : 0);
        send(200, { pem, algorithm: 'RSA_DECRYPT_OAEP_2048_SHA256', pemCrc32c: String(crc >>> 0), protectionLevel: 'SOFTWARE' });
        return;
      }
      if (url === '/sts' && req.method === 'POST') {
        // Google's Security Token Service: trades an external subject token for an access token.
        const form = new URLSearchParams(body);
        const subject = form.get('subject_token') ?? '';
        if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:token-exchange' || !state.subjectTokens.includes(subject)) {
          send(400, { error: 'invalid_grant', error_description: 'The subject token is not trusted.' });
          return;
        }
        send(200, { access_token: `sts-token-for-${subject}`, issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', token_type: 'Bearer', expires_in: 3600 });
        return;
      }
      if (url.endsWith(':generateAccessToken') && req.method === 'POST') {
        // IAM Credentials: impersonate a service account with the caller's token.
        const bearer = (req.headers.authorization ?? '').replace(/^Bearer /, '');
        if (!bearer.startsWith('sts-token-for-')) {
          send(403, { error: { code: 403, message: 'Permission iam.serviceAccounts.getAccessToken denied' } });
          return;
        }
        const account = decodeURIComponent(url.split('/serviceAccounts/')[1]?.split(':')[0] ?? '');
        send(200, { accessToken: `impersonated-${account}`, expireTime: new Date(Date.now() + 3600_000).toISOString() });
        return;
      }
      if (url === '/computeMetadata/v1/instance/service-accounts/default/token') {
        if (req.headers['metadata-flavor'] !== 'Google') {
          send(403, { error: 'missing Metadata-Flavor' });
          return;
        }
        send(200, { access_token: 'metadata-token', expires_in: 3599, token_type: 'Bearer' });
        return;
      }
      send(404, { error: { code: 404, message: `no route ${url}` } });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  state.close = () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); });
  return state;
}
