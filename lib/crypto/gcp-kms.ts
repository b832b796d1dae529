/**
 * Cloud KMS key unwrapping over REST (`cryptoKeyVersions.asymmetricDecrypt`), without Google's
 * KMS client library: one `fetch` per export. Integrity follows KMS's guide: the request carries
 * crc32c(ciphertext) and the response must say `verifiedCiphertextCrc32c`; the response's
 * `plaintextCrc32c` must equal crc32c(plaintext). Either mismatch means "corrupted in transit".
 *
 * Credentials are resolved by Google's own google-auth-library (every credential type Google
 * supports: service account, authorized user, external account / workload identity federation,
 * impersonation, the metadata server with its retries), imported only when KMS is first used.
 */
import fs from 'node:fs/promises';
import { OptionError } from '../errors.js';
import { checkOptions, isFunction, isNonEmptyString, isObject } from '../options.js';
import { DecryptError, DecryptErrorCodes } from './errors.js';
import { rememberingUnwrapper, type KeyUnwrapper } from './unwrapper.js';
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

/**
 * What userport needs of a Google credential: an access token. google-auth-library's `GoogleAuth`
 * (resolves to a string) and every `AuthClient` (`{ token }`: service account, impersonated,
 * external account / workload identity, compute) fit.
 */
export interface GoogleAccessTokenSource {
  getAccessToken(): Promise<string | null | undefined | { token?: string | null }>;
}

/**
 * Google's own credential resolution (google-auth-library), loaded only now that KMS is used:
 * application-default credentials, or the credentials file `keyFile` (service account,
 * authorized user, external account, impersonated service account).
 */
async function googleAuth(keyFile: string | undefined, projectId: string | undefined): Promise<GoogleAccessTokenSource> {
  let GoogleAuth: typeof import('google-auth-library').GoogleAuth;
  try {
    ({ GoogleAuth } = await import('google-auth-library'));
  } catch (err) {
    // An optional dependency: only KMS users need it.
    throw kmsError('Cloud KMS needs google-auth-library, an optional dependency that is not installed: install it (npm install google-auth-library), or pass your own auth client (auth)', err);
  }
  // The project is known from the KMS config: without it, google-auth-library would look it up
  // (Cloud Resource Manager, for external accounts) before giving a token.
  return new GoogleAuth({ scopes: [TOKEN_SCOPE], ...(keyFile !== undefined ? { keyFile } : {}), ...(projectId !== undefined ? { projectId } : {}) });
}

/** An access token from `source`, or USERPORT_DECRYPT_KMS saying why there is none. */
async function accessToken(source: GoogleAccessTokenSource): Promise<string> {
  let got: Awaited<ReturnType<GoogleAccessTokenSource['getAccessToken']>>;
  try {
    got = await source.getAccessToken();
  } catch (err) {
    throw kmsError(`cannot get Google credentials: ${(err as Error)?.message ?? String(err)}`, err);
  }
  const token = typeof got === 'string' ? got : got?.token;
  if (typeof token !== 'string' || token === '') throw kmsError('the Google credentials gave no access token');
  return token;
}

/** A lazily made credential: the injected one, or google-auth-library's on first use. */
function tokenSource(auth: GoogleAccessTokenSource | undefined, keyFile: string | undefined): (projectId?: string) => Promise<string> {
  let made: Promise<GoogleAccessTokenSource> | undefined;
  return async (projectId) => accessToken(auth ?? await (made ??= googleAuth(keyFile, projectId)));
}

/** Options of {@link createGcpKmsUnwrapper}. */
export interface GcpKmsUnwrapperOptions {
  /** The config, already parsed. Exactly one of this and `configPath`. */
  config?: GcpKmsConfig;
  /** Path of the JSON config (`project_id`, `location`, `key_ring`, `key`, `version`). */
  configPath?: string;
  /** Base URL of the KMS REST API (tests point it at a local server). @default DEFAULT_KMS_ENDPOINT */
  endpoint?: string;
  /**
   * Credentials: a google-auth-library `GoogleAuth` or `AuthClient` you made (impersonation,
   * workload identity...). @default application-default credentials, resolved by google-auth-library
   */
  auth?: GoogleAccessTokenSource;
  /** Credentials file (any type google-auth-library reads) instead of application-default credentials. */
  keyFile?: string;
  /** @default globalThis.fetch */
  fetch?: FetchFn;
}

/** Calls `asymmetricDecrypt` on the configured key version, with both crc32c checks. */
export async function kmsAsymmetricDecrypt(
  ciphertext: Buffer,
  config: GcpKmsConfig,
  options: { endpoint?: string; token: (projectId?: string) => Promise<string>; fetch?: FetchFn },
): Promise<Buffer> {
  const endpoint = (options.endpoint ?? DEFAULT_KMS_ENDPOINT).replace(/\/+$/, '');
  const token = await options.token(config.project_id);
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
  options: { endpoint?: string; auth?: GoogleAccessTokenSource; keyFile?: string; fetch?: FetchFn } = {},
): Promise<Buffer> {
  const endpoint = (options.endpoint ?? DEFAULT_KMS_ENDPOINT).replace(/\/+$/, '');
  const token = await tokenSource(options.auth, options.keyFile)(config.project_id);
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
  checkOptions('createGcpKmsUnwrapper', options, {
    config: isObject,
    configPath: isNonEmptyString,
    endpoint: (v) => {
      let u: URL | undefined;
      try { u = new URL(String(v)); } catch { u = undefined; }
      return typeof v === 'string' && u && (u.protocol === 'https:' || u.protocol === 'http:') ? undefined : 'an http(s) URL';
    },
    auth: (v) => (v !== null && typeof v === 'object' && typeof (v as GoogleAccessTokenSource).getAccessToken === 'function' ? undefined : 'a google-auth-library GoogleAuth or AuthClient'),
    keyFile: isNonEmptyString,
    fetch: isFunction,
  });
  const { config, configPath, endpoint, auth, keyFile } = options ?? {};
  if ((config === undefined) === (configPath === undefined)) {
    throw new OptionError('createGcpKmsUnwrapper needs exactly one of config and configPath', config === undefined ? 'config' : 'configPath');
  }
  if (auth !== undefined && keyFile !== undefined) throw new OptionError('createGcpKmsUnwrapper: give auth or keyFile, not both', 'keyFile');
  const checked = config !== undefined ? parseGcpKmsConfig(config) : undefined;
  const token = tokenSource(auth, keyFile);
  // An import asks twice for the same key (its check before the database is touched, then the
  // decryption): the second time is answered from here, without a second KMS round trip.
  return rememberingUnwrapper({
    async unwrap(wrappedKey: Buffer): Promise<Buffer> {
      const cfg = checked ?? (await readGcpKmsConfig(configPath!));
      const fernetKey = await kmsAsymmetricDecrypt(wrappedKey, cfg, { endpoint, token, ...(options.fetch ? { fetch: options.fetch } : {}) });
      parseFernetKey(fernetKey);
      return fernetKey;
    },
  });
}
