/**
 * The key-unwrapper interface and its local-key implementation. Cloud KMS implements the same
 * interface in `gcp-kms.ts`, so the decrypt path does not know where the key lives.
 */
import fs from 'node:fs/promises';
import type { KeyObject } from 'node:crypto';
import { OptionError, UserportError } from '../errors.js';
import { checkOptions, isEither, isFunction, isNonEmptyString, isStringOrBuffer, type OptionCheck } from '../options.js';
import { DecryptError, DecryptErrorCodes } from './errors.js';
import { loadPrivateKey, loadPublicKey, sameRsaPublicKey, unwrapKey } from './keys.js';
import { parseFernetKey, type FernetKey } from './fernet.js';

/** Unwraps the Fernet key in `data.key`. Local RSA keys and Cloud KMS implement it. */
export interface KeyUnwrapper {
  /** Returns the 44-byte URL-safe base64 Fernet key. `publicKeyPem` is the tarball's `key.pub`. */
  unwrap(wrappedKey: Buffer, publicKeyPem: Buffer): Promise<Buffer>;
}

/**
 * The Fernet key of an export, through whichever unwrapper was given: its failure is
 * USERPORT_DECRYPT_KEY_INVALID (a coded error of its own passes through), and what it returns is
 * parsed here, so a caller's own unwrapper that returns something else is caught too.
 */
export async function unwrapFernetKey(unwrapper: KeyUnwrapper, wrapped: Buffer, publicKeyPem: Buffer): Promise<FernetKey> {
  let text: Buffer;
  try {
    text = await unwrapper.unwrap(wrapped, publicKeyPem);
  } catch (err) {
    if (err instanceof UserportError) throw err;
    throw new DecryptError(DecryptErrorCodes.KEY_INVALID, `the key unwrapper failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }
  return parseFernetKey(text);
}

/**
 * `unwrapper`, remembering what it unwrapped last: asked again for the same key members (an
 * import checks the key before the database is touched, then decrypts), it answers without a
 * second call. The Cloud KMS unwrapper is one (a round trip each); the local one loads its key
 * once and unwraps in a millisecond.
 */
export function rememberingUnwrapper(unwrapper: KeyUnwrapper): KeyUnwrapper {
  let last: { wrapped: Buffer; pub: Buffer; key: Promise<Buffer> } | undefined;
  return {
    unwrap(wrappedKey, publicKeyPem) {
      // What a caller passes is not trusted to be two buffers (a direct call may give one).
      const pub = Buffer.from(publicKeyPem ?? []);
      if (!last || !Buffer.isBuffer(wrappedKey) || !last.wrapped.equals(wrappedKey) || !last.pub.equals(pub)) {
        const key = unwrapper.unwrap(wrappedKey, publicKeyPem);
        last = { wrapped: Buffer.isBuffer(wrappedKey) ? Buffer.from(wrappedKey) : Buffer.alloc(0), pub, key };
        // A failure is not remembered: the next call asks again.
        key.catch(() => { if (last?.key === key) last = undefined; });
      }
      return last.key;
    },
  };
}

/** A passphrase, or a function asked for it only when the key turns out to be encrypted. */
export type PassphraseSource = string | Buffer | (() => Promise<string | Buffer>);

/** Options of {@link createLocalKeyUnwrapper}. */
export interface LocalKeyUnwrapperOptions {
  /** Path of the PEM private key (PKCS#8 or PKCS#1). Exactly one of this and `privateKeyPem`. */
  privateKeyPath?: string;
  /** The PEM private key itself. */
  privateKeyPem?: string | Buffer;
  /** Passphrase of an encrypted private key. */
  passphrase?: PassphraseSource;
}

const LOCAL_UNWRAPPER_OPTIONS: { readonly [K in keyof LocalKeyUnwrapperOptions]-?: OptionCheck } = {
  privateKeyPath: isNonEmptyString,
  privateKeyPem: isStringOrBuffer,
  passphrase: isEither(isStringOrBuffer, isFunction),
};

const MAX_KEY_FILE = 1024 * 1024;

function isEncryptedPem(text: string): boolean {
  return /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,ENCRYPTED/.test(text);
}

/**
 * Unwraps `data.key` with a local RSA private key, after checking that the key's public half
 * (modulus and exponent) is the export's `key.pub`: a mismatch is USERPORT_DECRYPT_KEY_MISMATCH,
 * "this key cannot decrypt this export". Options are checked now; a key given as PEM is also
 * loaded now, so a wrong passphrase fails before any input is read.
 */
export function createLocalKeyUnwrapper(options: LocalKeyUnwrapperOptions): KeyUnwrapper {
  const { privateKeyPath, privateKeyPem, passphrase } = checkOptions('createLocalKeyUnwrapper', options, LOCAL_UNWRAPPER_OPTIONS);
  if ((privateKeyPath === undefined) === (privateKeyPem === undefined)) {
    throw new OptionError('createLocalKeyUnwrapper needs exactly one of privateKeyPath and privateKeyPem', 'privateKeyPath');
  }
  const staticPassphrase = typeof passphrase === 'function' ? undefined : passphrase;
  // A PEM given inline is opened now (bad key or passphrase fail at construction), unless the
  // passphrase is to be asked for: then it is asked only when an export needs it.
  let loaded: Promise<KeyObject> | undefined =
    privateKeyPem !== undefined && !(typeof passphrase === 'function' && isEncryptedPem(String(privateKeyPem)))
      ? Promise.resolve(loadPrivateKey(privateKeyPem, staticPassphrase))
      : undefined;

  async function key(): Promise<KeyObject> {
    loaded ??= (async () => {
      let pem: Buffer;
      if (privateKeyPem !== undefined) pem = Buffer.from(privateKeyPem);
      else {
        try {
          const stat = await fs.stat(privateKeyPath!);
          if (stat.size > MAX_KEY_FILE) throw new Error(`${stat.size} bytes is too large for a key`);
          pem = await fs.readFile(privateKeyPath!);
        } catch (err) {
          throw new DecryptError(DecryptErrorCodes.KEY_INVALID, `cannot read the private key ${privateKeyPath}: ${(err as Error).message}`, { cause: err });
        }
      }
      let pass = staticPassphrase;
      if (pass === undefined && typeof passphrase === 'function' && isEncryptedPem(pem.toString('utf8'))) pass = await passphrase();
      return loadPrivateKey(pem, pass);
    })();
    return loaded;
  }

  return {
    async unwrap(wrappedKey: Buffer, publicKeyPem: Buffer): Promise<Buffer> {
      const priv = await key();
      const pub = loadPublicKey(publicKeyPem, 'key.pub in the tarball');
      if (!sameRsaPublicKey(priv, pub)) {
        throw new DecryptError(DecryptErrorCodes.KEY_MISMATCH, 'this key cannot decrypt this export: its public key is not the export\'s key.pub');
      }
      const fernetKey = unwrapKey(priv, wrappedKey);
      parseFernetKey(fernetKey);
      return fernetKey;
    },
  };
}
