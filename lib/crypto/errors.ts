/**
 * Errors of the encrypted-export path. One class, {@link DecryptError}, with a stable code per
 * kind of failure, so the CLI and tests can tell a wrong key from a tampered file without
 * reading messages. Its codes are registered with every other code in lib/errors.ts, which
 * imports nothing from here.
 */
import { DecryptErrorCodes, UserportError, type DecryptErrorCode, type UserportErrorOptions } from '../errors.js';

// The codes live in the one registry, lib/errors.ts; re-exported here for the existing imports.
export { DecryptErrorCodes, type DecryptErrorCode };

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
