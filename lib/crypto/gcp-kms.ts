/**
 * Cloud KMS key unwrapping over REST (`cryptoKeyVersions.asymmetricDecrypt`), without Google's
 * client libraries: one `fetch` per export. Integrity follows KMS's guide: the request carries
 * crc32c(ciphertext) and the response must say `verifiedCiphertextCrc32c`; the response's
 * `plaintextCrc32c` must equal crc32c(plaintext). Either mismatch means "corrupted in transit".
 *
 * Credentials are Google's application-default sources, in their order:
 * GOOGLE_APPLICATION_CREDENTIALS (service account -> signed JWT -> OAuth token, or authorized
 * user -> refresh token), gcloud's well-known file, then the metadata server.
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { OptionError } from '../errors.js';
import { DecryptError, DecryptErrorCodes } from './errors.js';
import type { KeyUnwrapper } from './unwrapper.js';
import { parseFernetKey } from './fernet.js';

/** The KMS config file's fields, with Sentry's underscore names. */
export interface GcpKmsConfig {
  project_id: string;
  location: string;
  key_ring: string;
  key: string;
  version: string;
}

/** @default 'https://cloudkms.googleapis.com' */
export const DEFAULT_KMS_ENDPOINT = 'https://cloudkms.googleapis.com';
const TOKEN_SCOPE = 'https://www.googleapis.com/auth/cloud-platform';
const DEFAULT_TOKEN_URI = 'https://oauth2.googleapis.com/token';
/** KMS answers in well under a second; a hung connection should not hang the import. */
const REQUEST_TIMEOUT_MS = 60_000;

function kmsError(message: string, cause?: unknown): DecryptError {
  return new DecryptError(DecryptErrorCodes.KMS, `Cloud KMS: ${message}`, cause === undefined ? {} : { cause });
}

// Castagnoli polynomial, reflected. Payloads are a few hundred bytes: a byte table is plenty.
const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32C (Castagnoli) of `data`, as an unsigned 32-bit number. Pass `crc` to continue one. */
export function crc32c(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC32C_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** Validates a parsed config file. Throws USERPORT_DECRYPT_KMS naming the bad field. */
export function parseGcpKmsConfig(value: unknown, source = 'the KMS config'): GcpKmsConfig {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw kmsError(`${source} must be a JSON object`);
  const obj = value as Record<string, unknown>;
  for (const field of ['project_id', 'location', 'key_ring', 'key', 'version'] as const) {
    const v = obj[field];
    if (typeof v !== 'string' || v === '') {
      throw kmsError(`${source} needs "${field}" as a non-empty string, got ${v === undefined ? 'nothing' : JSON.stringify(v)}`);
    }
  }
  return obj as unknown as GcpKmsConfig;
}

/** Reads and validates a KMS config file. */
export async function readGcpKmsConfig(file: string): Promise<GcpKmsConfig> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    throw kmsError(`cannot read the config ${file}: ${(err as Error).message}`, err);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw kmsError(`the config ${file} is not JSON`, err);
  }
  return parseGcpKmsConfig(json, `the config ${file}`);
}

/** The resource name of the key version. */
export function keyVersionName(c: GcpKmsConfig): string {
  const e = encodeURIComponent;
  return `projects/${e(c.project_id)}/locations/${e(c.location)}/keyRings/${e(c.key_ring)}/cryptoKeys/${e(c.key)}/cryptoKeyVersions/${e(c.version)}`;
}

/** Resolves to an OAuth2 access token. */
export type AccessTokenProvider = () => Promise<string>;

type FetchFn = typeof fetch;

async function requestJson(fetchFn: FetchFn, url: string, init: RequestInit, what: string): Promise<Record<string, unknown>> {
  let res: Response;
  try {
    res = await fetchFn(url, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch (err) {
    throw kmsError(`${what} failed: ${(err as Error).message}`, err);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : {};
  } catch {
    body = undefined;
  }
  if (!res.ok) {
    const detail = (body as { error?: { message?: unknown } | string; error_description?: unknown } | undefined);
    const msg = typeof detail?.error === 'object' && typeof detail.error?.message === 'string' ? detail.error.message
      : typeof detail?.error_description === 'string' ? detail.error_description
      : typeof detail?.error === 'string' ? detail.error : text.slice(0, 200);
    throw kmsError(`${what} answered HTTP ${res.status}${msg ? `: ${msg}` : ''}`);
  }
  if (typeof body !== 'object' || body === null) throw kmsError(`${what} answered with something that is not a JSON object`);
  return body as Record<string, unknown>;
}

export interface AdcOptions {
  /** @default process.env */
  env?: NodeJS.ProcessEnv;
  /** @default globalThis.fetch */
  fetch?: FetchFn;
}

/**
 * Google application-default credentials as an {@link AccessTokenProvider}. Tokens are cached
 * until a minute before they expire.
 */
export function applicationDefaultTokenProvider(options: AdcOptions = {}): AccessTokenProvider {
  const env = options.env ?? process.env;
  const fetchFn = options.fetch ?? globalThis.fetch;
  let cached: { token: string; expires: number } | undefined;

  async function credentialsFile(): Promise<Record<string, unknown> | undefined> {
    const explicit = env.GOOGLE_APPLICATION_CREDENTIALS;
    const wellKnown = path.join(env.CLOUDSDK_CONFIG ?? path.join(os.homedir(), '.config', 'gcloud'), 'application_default_credentials.json');
    const file = explicit || wellKnown;
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (err) {
      if (explicit) throw kmsError(`cannot read GOOGLE_APPLICATION_CREDENTIALS ${file}: ${(err as Error).message}`, err);
      return undefined;
    }
    try {
      return JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      throw kmsError(`the credentials file ${file} is not JSON`, err);
    }
  }

  async function fetchToken(): Promise<{ token: string; expiresIn: number }> {
    const creds = await credentialsFile();
    let body: Record<string, unknown>;
    if (creds?.type === 'service_account') {
      const email = creds.client_email;
      const key = creds.private_key;
      if (typeof email !== 'string' || typeof key !== 'string') throw kmsError('the service-account file lacks client_email or private_key');
      const tokenUri = typeof creds.token_uri === 'string' ? creds.token_uri : DEFAULT_TOKEN_URI;
      const now = Math.floor(Date.now() / 1000);
      const header = { alg: 'RS256', typ: 'JWT', ...(typeof creds.private_key_id === 'string' ? { kid: creds.private_key_id } : {}) };
      const claims = { iss: email, scope: TOKEN_SCOPE, aud: tokenUri, iat: now, exp: now + 3600 };
      const unsigned = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
      let signature: string;
      try {
        signature = crypto.sign('sha256', Buffer.from(unsigned), key).toString('base64url');
      } catch (err) {
        throw kmsError('cannot sign with the service account\'s private_key', err);
      }
      body = await requestJson(fetchFn, tokenUri, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', assertion: `${unsigned}.${signature}` }).toString(),
      }, 'the OAuth token endpoint');
    } else if (creds?.type === 'authorized_user') {
      const { client_id, client_secret, refresh_token } = creds;
      if (typeof client_id !== 'string' || typeof client_secret !== 'string' || typeof refresh_token !== 'string') {
        throw kmsError('the authorized-user credentials lack client_id, client_secret or refresh_token');
      }
      const tokenUri = typeof creds.token_uri === 'string' ? creds.token_uri : DEFAULT_TOKEN_URI;
      body = await requestJson(fetchFn, tokenUri, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'refresh_token', client_id, client_secret, refresh_token }).toString(),
      }, 'the OAuth token endpoint');
    } else if (creds !== undefined) {
      throw kmsError(`unsupported credentials type ${JSON.stringify(creds.type)} (expected service_account or authorized_user)`);
    } else {
      const host = env.GCE_METADATA_HOST || 'metadata.google.internal';
      body = await requestJson(fetchFn, `http://${host}/computeMetadata/v1/instance/service-accounts/default/token`, {
        headers: { 'Metadata-Flavor': 'Google' },
      }, 'the metadata server (no GOOGLE_APPLICATION_CREDENTIALS or gcloud credentials were found)');
    }
    if (typeof body.access_token !== 'string') throw kmsError('the token response has no access_token');
    return { token: body.access_token, expiresIn: typeof body.expires_in === 'number' ? body.expires_in : 300 };
  }

  return async () => {
    if (cached && cached.expires > Date.now()) return cached.token;
    const { token, expiresIn } = await fetchToken();
    cached = { token, expires: Date.now() + Math.max(0, expiresIn - 60) * 1000 };
    return token;
  };
}

export interface GcpKmsUnwrapperOptions {
  /** The config, already parsed. Exactly one of this and `configPath`. */
  config?: GcpKmsConfig;
  /** Path of the JSON config (`project_id`, `location`, `key_ring`, `key`, `version`). */
  configPath?: string;
  /** Base URL of the KMS REST API (tests point it at a local server). @default DEFAULT_KMS_ENDPOINT */
  endpoint?: string;
  /** @default applicationDefaultTokenProvider() */
  tokenProvider?: AccessTokenProvider;
  /** @default globalThis.fetch */
  fetch?: FetchFn;
}

/** Calls `asymmetricDecrypt` on the configured key version, with both crc32c checks. */
export async function kmsAsymmetricDecrypt(
  ciphertext: Buffer,
  config: GcpKmsConfig,
  options: { endpoint?: string; tokenProvider: AccessTokenProvider; fetch?: FetchFn },
): Promise<Buffer> {
  const endpoint = (options.endpoint ?? DEFAULT_KMS_ENDPOINT).replace(/\/+$/, '');
  const token = await options.tokenProvider();
  const body = await requestJson(options.fetch ?? globalThis.fetch, `${endpoint}/v1/${keyVersionName(config)}:asymmetricDecrypt`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    // int64 fields travel as decimal strings in proto3 JSON.
    body: JSON.stringify({ ciphertext: ciphertext.toString('base64'), ciphertextCrc32c: String(crc32c(ciphertext)) }),
  }, 'asymmetricDecrypt');
  if (body.verifiedCiphertextCrc32c !== true) throw kmsError('the request was corrupted in transit (verifiedCiphertextCrc32c is not true)');
  if (typeof body.plaintext !== 'string') throw kmsError('the asymmetricDecrypt response has no plaintext');
  const plaintext = Buffer.from(body.plaintext, 'base64');
  const claimed = body.plaintextCrc32c;
  if ((typeof claimed !== 'string' && typeof claimed !== 'number') || Number(claimed) !== crc32c(plaintext)) {
    throw kmsError('the response was corrupted in transit (plaintextCrc32c does not match)');
  }
  return plaintext;
}

/**
 * Fetches the PEM public key of the configured key version (`cryptoKeyVersions.getPublicKey`),
 * checking `pemCrc32c`, for encrypting to a KMS-held key as `sentry backup encrypt
 * --encrypt-with-gcp-kms` does.
 */
export async function kmsGetPublicKey(
  config: GcpKmsConfig,
  options: { endpoint?: string; tokenProvider?: AccessTokenProvider; fetch?: FetchFn } = {},
): Promise<Buffer> {
  const endpoint = (options.endpoint ?? DEFAULT_KMS_ENDPOINT).replace(/\/+$/, '');
  const tokenProvider = options.tokenProvider ?? applicationDefaultTokenProvider(options.fetch ? { fetch: options.fetch } : {});
  const token = await tokenProvider();
  const body = await requestJson(options.fetch ?? globalThis.fetch, `${endpoint}/v1/${keyVersionName(config)}/publicKey`, {
    headers: { authorization: `Bearer ${token}` },
  }, 'getPublicKey');
  if (typeof body.pem !== 'string') throw kmsError('the getPublicKey response has no pem');
  const pem = Buffer.from(body.pem, 'utf8');
  const claimed = body.pemCrc32c;
  if (claimed !== undefined && Number(claimed) !== crc32c(pem)) throw kmsError('the public key was corrupted in transit (pemCrc32c does not match)');
  return pem;
}

/**
 * A {@link KeyUnwrapper} over Cloud KMS. `key.pub` is not compared (as in Sentry): KMS holds the
 * key, and a wrong key fails at KMS or at the Fernet HMAC.
 */
export function createGcpKmsUnwrapper(options: GcpKmsUnwrapperOptions): KeyUnwrapper {
  const { config, configPath, endpoint } = options ?? {};
  if ((config === undefined) === (configPath === undefined)) {
    throw new OptionError('createGcpKmsUnwrapper needs exactly one of config and configPath');
  }
  if (configPath !== undefined && (typeof configPath !== 'string' || configPath === '')) {
    throw new OptionError(`configPath must be a non-empty string, got ${JSON.stringify(configPath)}`);
  }
  if (endpoint !== undefined) {
    let u: URL | undefined;
    try { u = new URL(endpoint); } catch { u = undefined; }
    if (!u || (u.protocol !== 'https:' && u.protocol !== 'http:')) throw new OptionError(`endpoint must be an http(s) URL, got ${JSON.stringify(endpoint)}`);
  }
  const checked = config !== undefined ? parseGcpKmsConfig(config) : undefined;
  const tokenProvider = options.tokenProvider ?? applicationDefaultTokenProvider(options.fetch ? { fetch: options.fetch } : {});
  return {
    async unwrap(wrappedKey: Buffer): Promise<Buffer> {
      const cfg = checked ?? (await readGcpKmsConfig(configPath!));
      const fernetKey = await kmsAsymmetricDecrypt(wrappedKey, cfg, { endpoint, tokenProvider, ...(options.fetch ? { fetch: options.fetch } : {}) });
      parseFernetKey(fernetKey);
      return fernetKey;
    },
  };
}
