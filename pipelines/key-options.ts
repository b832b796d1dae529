/**
 * CLI adapter: turns the decryption flags (`--decrypt-with`, `--decrypt-passphrase-file`,
 * `--decrypt-with-gcp-kms`) into a {@link KeyUnwrapper}.
 */
import fs from 'node:fs/promises';
import { OptionError, printable } from '../lib/errors.js';
import { DecryptError, DecryptErrorCodes } from '../lib/crypto/errors.js';
import { createLocalKeyUnwrapper, type KeyUnwrapper } from '../lib/crypto/unwrapper.js';
import { checkKeyOpens } from '../lib/decrypt.js';
import { isRegularFile } from '../lib/source.js';
import { usage } from './cli-support.js';
import { createGcpKmsUnwrapper, readGcpKmsConfig } from '../lib/crypto/gcp-kms.js';
import { promptPassphraseOnTty } from '../lib/crypto/prompt.js';

export interface KeyUnwrapperCliOptions {
  /** `--decrypt-with`: path of a PEM RSA private key. */
  decryptWith?: string;
  /** `--decrypt-passphrase-file`: file whose content (one trailing newline dropped) is the key's passphrase. */
  passphraseFile?: string;
  /** `--decrypt-with-gcp-kms`: path of the KMS config JSON. */
  gcpKmsConfig?: string;
  /**
   * Base URL of the KMS REST API (an emulator, tests).
   * @default process.env.USERPORT_GCP_KMS_ENDPOINT, else DEFAULT_KMS_ENDPOINT
   */
  gcpKmsEndpoint?: string;
  /**
   * Asked when the key is encrypted and no passphrase file was given.
   * `null` never asks (the key then fails with USERPORT_DECRYPT_PASSPHRASE).
   * @default a no-echo prompt on the terminal when standard input is a TTY, else none
   */
  promptPassphrase?: (() => Promise<string>) | null;
}

/**
 * Turns the CLI's decryption flags into a {@link KeyUnwrapper}, or `undefined` when none was
 * given (a plain export). Validates them together: `--decrypt-with` and
 * `--decrypt-with-gcp-kms` exclude each other, a passphrase file needs `--decrypt-with`. The
 * key and passphrase are read and the key opened now, so a bad key fails before the import.
 */
export async function keyUnwrapperFromOptions(options: KeyUnwrapperCliOptions): Promise<KeyUnwrapper | undefined> {
  const { decryptWith, passphraseFile, gcpKmsConfig, gcpKmsEndpoint, promptPassphrase } = options ?? {};
  for (const [flag, value] of [['--decrypt-with', decryptWith], ['--decrypt-passphrase-file', passphraseFile], ['--decrypt-with-gcp-kms', gcpKmsConfig]] as const) {
    if (value !== undefined && (typeof value !== 'string' || value === '')) throw new OptionError(`${flag} needs a file path, got ${JSON.stringify(value)}`);
  }
  if (decryptWith !== undefined && gcpKmsConfig !== undefined) {
    throw new OptionError('--decrypt-with and --decrypt-with-gcp-kms cannot be used together: give one');
  }
  if (passphraseFile !== undefined && decryptWith === undefined) {
    throw new OptionError('--decrypt-passphrase-file needs --decrypt-with (the passphrase opens a local private key)');
  }
  if (gcpKmsConfig !== undefined) {
    const config = await readGcpKmsConfig(gcpKmsConfig);
    const endpoint = gcpKmsEndpoint ?? (process.env.USERPORT_GCP_KMS_ENDPOINT || undefined);
    return createGcpKmsUnwrapper({ config, ...(endpoint ? { endpoint } : {}) });
  }
  if (decryptWith === undefined) return undefined;
  let pem: Buffer;
  try {
    pem = await fs.readFile(decryptWith);
  } catch (err) {
    throw new DecryptError(DecryptErrorCodes.KEY_INVALID, `cannot read the private key ${decryptWith}: ${(err as Error).message}`, { cause: err });
  }
  let passphrase: string | undefined;
  if (passphraseFile !== undefined) {
    try {
      passphrase = (await fs.readFile(passphraseFile, 'utf8')).replace(/\r?\n$/, '');
    } catch (err) {
      throw new DecryptError(DecryptErrorCodes.PASSPHRASE, `cannot read the passphrase file ${passphraseFile}: ${(err as Error).message}`, { cause: err });
    }
  }
  if (passphrase === undefined && /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,ENCRYPTED/.test(pem.toString('utf8'))) {
    // Ask now, before the import starts, so a wrong passphrase fails before any input is read.
    const ask = promptPassphrase !== undefined ? promptPassphrase : (process.stdin.isTTY ? () => promptPassphraseOnTty(`Passphrase for ${decryptWith}: `) : undefined);
    if (ask) passphrase = await ask();
  }
  try {
    return createLocalKeyUnwrapper({ privateKeyPem: pem, ...(passphrase !== undefined ? { passphrase } : {}) });
  } catch (err) {
    // The library says what is wrong with "the private key"; the command says which one.
    if (!(err instanceof DecryptError)) throw err;
    throw new DecryptError(err.code, `--decrypt-with ${printable(decryptWith)}: ${err.message}`, { cause: err });
  }
}

/**
 * The key checked against SRC before any database work or output: when SRC is a regular file,
 * its tarball's key members are read (not its token) and unwrapped, so another key than the
 * export's is a usage error (exit 2), said before anything runs, as a key file that is no key is.
 * (A pipe's key members come after its token: there the decryption meets it.)
 */
export async function checkKeyForSource(src: string, unwrapper: KeyUnwrapper): Promise<void> {
  if (src === '-' || !isRegularFile(src)) return;
  await checkKeyOpens(src, unwrapper).catch((err: unknown) => {
    throw err instanceof DecryptError && err.code === DecryptErrorCodes.KEY_MISMATCH ? usage(err) : err;
  });
}
