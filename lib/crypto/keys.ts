/**
 * RSA keys for wrapping the Fernet data key: loading (PKCS#8 or PKCS#1 PEM, encrypted or not),
 * matching a private key to the export's `key.pub`, and RSA-OAEP-SHA256 wrap / unwrap.
 *
 * Sentry matches keys by comparing PEM bytes, so a `key.pub` written as PKCS#1 or with CRLF
 * line ends never matches. Here a key matches when its public modulus and exponent equal
 * those of `key.pub`, whatever the encoding.
 */
import crypto, { type KeyObject } from 'node:crypto';
import { DecryptError, DecryptErrorCodes } from './errors.js';

const OAEP = { padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' } as const;

function errorCode(err: unknown): string {
  return String((err as { code?: unknown })?.code ?? '');
}

/**
 * Loads an RSA private key from PEM (`PRIVATE KEY`, `RSA PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`
 * or a legacy `Proc-Type: 4,ENCRYPTED` PKCS#1). Throws USERPORT_DECRYPT_PASSPHRASE when the key
 * is encrypted and the passphrase is missing or wrong, USERPORT_DECRYPT_KEY_INVALID otherwise.
 */
export function loadPrivateKey(pem: Buffer | string, passphrase?: string | Buffer): KeyObject {
  let key: KeyObject;
  const text = typeof pem === 'string' ? pem : pem.toString('utf8');
  const encrypted = /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,ENCRYPTED/.test(text);
  if (encrypted && (passphrase === undefined || passphrase.length === 0)) {
    throw new DecryptError(DecryptErrorCodes.PASSPHRASE, 'the private key is encrypted: give its passphrase with --decrypt-passphrase-file');
  }
  try {
    key = crypto.createPrivateKey({ key: text, format: 'pem', ...(passphrase !== undefined ? { passphrase } : {}) });
  } catch (err) {
    if (errorCode(err) === 'ERR_MISSING_PASSPHRASE') {
      throw new DecryptError(DecryptErrorCodes.PASSPHRASE, 'the private key is encrypted: give its passphrase with --decrypt-passphrase-file', { cause: err });
    }
    if (encrypted) {
      throw new DecryptError(DecryptErrorCodes.PASSPHRASE, 'the passphrase does not open the private key', { cause: err });
    }
    throw new DecryptError(DecryptErrorCodes.KEY_INVALID, 'the private key is not a PEM RSA private key (PKCS#8 or PKCS#1)', { cause: err });
  }
  if (key.asymmetricKeyType !== 'rsa') {
    throw new DecryptError(DecryptErrorCodes.KEY_INVALID, `the private key is ${key.asymmetricKeyType ?? 'not asymmetric'}, not RSA`);
  }
  return key;
}

/**
 * Loads an RSA public key from PEM (`PUBLIC KEY` SubjectPublicKeyInfo or `RSA PUBLIC KEY` PKCS#1).
 * `what` names it in the error, e.g. `key.pub in the tarball`.
 */
export function loadPublicKey(pem: Buffer | string, what = 'the public key'): KeyObject {
  let key: KeyObject;
  try {
    key = crypto.createPublicKey({ key: typeof pem === 'string' ? pem : pem.toString('utf8'), format: 'pem' });
  } catch (err) {
    throw new DecryptError(DecryptErrorCodes.KEY_INVALID, `${what} is not a PEM RSA public key`, { cause: err });
  }
  if (key.asymmetricKeyType !== 'rsa') {
    throw new DecryptError(DecryptErrorCodes.KEY_INVALID, `${what} is ${key.asymmetricKeyType ?? 'not asymmetric'}, not RSA`);
  }
  return key;
}

/** The SubjectPublicKeyInfo PEM of an unencrypted PEM private key: its public half only. */
export function derivePublicPem(privatePem: Buffer | string): Buffer {
  try {
    return Buffer.from(crypto.createPublicKey({ key: privatePem, format: 'pem' }).export({ type: 'spki', format: 'pem' }));
  } catch (err) {
    throw new DecryptError(DecryptErrorCodes.KEY_INVALID, 'the key to encrypt with is not a PEM RSA key', { cause: err });
  }
}

/** True when both keys have the same RSA public modulus and exponent. Either may be private. */
export function sameRsaPublicKey(a: KeyObject, b: KeyObject): boolean {
  const pub = (k: KeyObject) => (k.type === 'public' ? k : crypto.createPublicKey(k));
  const ja = pub(a).export({ format: 'jwk' });
  const jb = pub(b).export({ format: 'jwk' });
  return ja.kty === 'RSA' && jb.kty === 'RSA' && ja.n === jb.n && ja.e === jb.e;
}

/** RSA-OAEP (SHA-256, MGF1-SHA-256, no label) encryption of the textual Fernet key. */
export function wrapKey(publicKey: KeyObject, fernetKey: Buffer): Buffer {
  return crypto.publicEncrypt({ key: publicKey, ...OAEP }, fernetKey);
}

/** RSA-OAEP-SHA256 decryption of `data.key`. Throws USERPORT_DECRYPT_TAMPERED when it fails. */
export function unwrapKey(privateKey: KeyObject, wrapped: Buffer): Buffer {
  try {
    return crypto.privateDecrypt({ key: privateKey, ...OAEP }, wrapped);
  } catch (err) {
    throw new DecryptError(DecryptErrorCodes.TAMPERED, 'data.key cannot be unwrapped with this key: it was tampered with or corrupted', { cause: err });
  }
}
