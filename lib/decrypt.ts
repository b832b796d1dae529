/**
 * Decryption of Sentry's encrypted exports (tar of `export.json` Fernet token, `data.key`
 * RSA-OAEP-wrapped key, `key.pub`). CONTRACT ONLY: the implementation is being written on the
 * `crypto` branch; until it lands every entry point here rejects with USERPORT_DECRYPT_UNAVAILABLE.
 */
import type { Readable } from 'node:stream';
import { UserportError } from './errors.js';

/** Unwraps the Fernet key in `data.key`. Local RSA keys and Cloud KMS implement it. */
export interface KeyUnwrapper {
  /** Returns the 44-byte URL-safe base64 Fernet key. `publicKeyPem` is the tarball's `key.pub`. */
  unwrap(wrappedKey: Buffer, publicKeyPem: Buffer): Promise<Buffer>;
}

/** Where the encrypted tarball comes from: a seekable file (two passes) or a stream (spooled). */
export type EncryptedInput = { path: string } | { stream: Readable };

export interface OpenDecryptedOptions {
  unwrapper: KeyUnwrapper;
  /** Folder for the private spool file when the input is a stream. @default os.tmpdir() */
  tmpDir?: string;
}

export interface DecryptedSource {
  /** Plaintext JSON bytes; only produced after the whole token's HMAC was verified. */
  stream: Readable;
  /** Plaintext size in bytes when known (for progress). */
  size?: number;
}

/** Authenticates the whole export, then resolves to a stream of its plaintext. */
export async function openDecryptedSource(_input: EncryptedInput, _options: OpenDecryptedOptions): Promise<DecryptedSource> {
  throw new UserportError('USERPORT_DECRYPT_UNAVAILABLE', 'decryption is not available in this build');
}
