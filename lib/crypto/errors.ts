/**
 * Errors of the encrypted-export path. One class, {@link DecryptError}, with a stable code per
 * kind of failure, so the CLI and tests can tell a wrong key from a tampered file without
 * reading messages.
 */
import { UserportError, type UserportErrorOptions } from '../errors.js';

/** Stable codes of {@link DecryptError}. */
export const DecryptErrorCodes = {
  /** The private key is a valid RSA key, but not the one the export was encrypted to. */
  KEY_MISMATCH: 'USERPORT_DECRYPT_KEY_MISMATCH',
  /** A key (private key file, `key.pub`, public key to encrypt with) cannot be loaded or is not RSA. */
  KEY_INVALID: 'USERPORT_DECRYPT_KEY_INVALID',
  /** The token or the wrapped key failed authentication: tampered, corrupted or malformed. */
  TAMPERED: 'USERPORT_DECRYPT_TAMPERED',
  /** The tarball ends inside a header or a member. */
  TRUNCATED: 'USERPORT_DECRYPT_TRUNCATED',
  /** The tarball is not a Sentry encrypted export: bad header, missing, extra or duplicate member. */
  TAR: 'USERPORT_DECRYPT_TAR',
  /** The private key is encrypted and no passphrase, or a wrong one, was given. */
  PASSPHRASE: 'USERPORT_DECRYPT_PASSPHRASE',
  /** Cloud KMS failed: config, credentials, HTTP error, or a crc32c integrity mismatch. */
  KMS: 'USERPORT_DECRYPT_KMS',
  /** Reading the input, or writing/reading the private spool file, failed. */
  IO: 'USERPORT_DECRYPT_IO',
} as const;

/** A code of {@link DecryptError}: one of {@link DecryptErrorCodes}. */
export type DecryptErrorCode = (typeof DecryptErrorCodes)[keyof typeof DecryptErrorCodes];

/** A failure to decrypt (or encrypt) a Sentry encrypted export. `code` says which kind. */
export class DecryptError extends UserportError {
  override name = 'DecryptError';
  declare readonly code: DecryptErrorCode;

  constructor(code: DecryptErrorCode, message: string, options: UserportErrorOptions = {}) {
    super(code, message, options);
  }
}

/** An I/O failure as a USERPORT_DECRYPT_IO error (a UserportError passes through unchanged). */
export function ioError(what: string, err: unknown): UserportError {
  if (err instanceof UserportError) return err;
  return new DecryptError(DecryptErrorCodes.IO, `${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}
