/**
 * Encryption of a plain export into Sentry's encrypted export format (for `userport encrypt`
 * and `userport export --encrypt-with`): the reverse of `decrypt.ts`.
 */
import type { KeyObject } from 'node:crypto';
import fs from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import os from 'node:os';
import { Readable, Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { opt, OptionError, wording } from './errors.js';
import { checkOptions, isInteger, isNonEmptyString, isStringOrBuffer, type OptionCheck } from './options.js';
import { DecryptError, DecryptErrorCodes, ioError } from './crypto/errors.js';
import { FernetEncoder, generateFernetKey, parseFernetKey, tokenLength } from './crypto/fernet.js';
import { encodeEnd, encodeHeader, paddingAfter, PUBLIC_KEY_MEMBER, readRange, TOKEN_MEMBER, WRAPPED_KEY_MEMBER } from './crypto/tar.js';
import { derivePublicPem, loadPublicKey, wrapKey } from './crypto/keys.js';
import { DEFAULT_CHUNK_SIZE, type EncryptedInput } from './decrypt.js';
import { makeSpool } from './spool.js';

/** Options of {@link createEncryptor}. */
export interface EncryptorOptions {
  /** PEM public key (SubjectPublicKeyInfo or PKCS#1) the data key is wrapped to; becomes `key.pub`. */
  publicKeyPem: Buffer | string;
  /** Exact plaintext size in bytes: tar headers come first, so it must be known up front. */
  size: number;
  /** For tests: the textual Fernet key, IV and timestamp. @default random, random, now */
  fernetKey?: Buffer | string;
  iv?: Buffer;
  timestamp?: number;
}

const ENCRYPTOR_OPTIONS: { readonly [K in keyof EncryptorOptions]-?: OptionCheck } = {
  publicKeyPem: isStringOrBuffer,
  size: isInteger(0),
  fernetKey: (v) => {
    if (typeof v !== 'string' && !Buffer.isBuffer(v)) return 'a string or a Buffer';
    const s = (typeof v === 'string' ? v : v.toString('latin1')).trim();
    return /^[A-Za-z0-9_-]{43}=$/.test(s) ? undefined : 'a Fernet key (44 characters of URL-safe base64)';
  },
  iv: (v) => (Buffer.isBuffer(v) && v.length === 16 ? undefined : 'a Buffer of 16 bytes'),
  timestamp: isInteger(0),
};

/** Everything after the token: `data.key` then `key.pub`, then the end of the archive. */
function trailer(written: number, wrapped: Buffer, pem: Buffer): Buffer {
  const parts = [
    encodeHeader({ name: WRAPPED_KEY_MEMBER, size: wrapped.length }), wrapped, Buffer.alloc(paddingAfter(wrapped.length)),
    encodeHeader({ name: PUBLIC_KEY_MEMBER, size: pem.length }), pem, Buffer.alloc(paddingAfter(pem.length)),
  ];
  const body = Buffer.concat(parts);
  return Buffer.concat([body, encodeEnd(written + body.length)]);
}

/**
 * The public half of `publicKeyPem` (option `option` of `where`; `what` names it in an error) as PEM and as a key: given a
 * private key, its public half (`key.pub` travels with the export, never the key that decrypts
 * it); an encrypted private key, or anything that is no RSA key, is refused here, before any work.
 */
export function encryptionKey(publicKeyPem: unknown, where: string, option = 'publicKeyPem', what = 'the public key to encrypt with'): { pem: Buffer; pub: KeyObject } {
  if (typeof publicKeyPem !== 'string' && !Buffer.isBuffer(publicKeyPem)) {
    throw new OptionError(wording`${opt(option)} must be a PEM string or Buffer`, undefined, where);
  }
  let pem: Buffer = Buffer.from(publicKeyPem);
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem.toString('latin1'))) {
    if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,ENCRYPTED/.test(pem.toString('latin1'))) {
      throw new OptionError(wording`${opt(option)} is an encrypted private key: give its public key (openssl rsa -in KEY -pubout)`, undefined, where);
    }
    pem = derivePublicPem(pem);
  }
  return { pem, pub: loadPublicKey(pem, what) };
}

function prepareKeys(options: { publicKeyPem: Buffer | string; fernetKey?: Buffer | string }, where: string): { pem: Buffer; fernetKey: Buffer; wrapped: Buffer } {
  const { pem, pub } = encryptionKey(options.publicKeyPem, where);
  const fernetKey = options.fernetKey !== undefined ? Buffer.from(options.fernetKey) : generateFernetKey();
  parseFernetKey(fernetKey);
  return { pem, fernetKey, wrapped: wrapKey(pub, fernetKey) };
}

/**
 * The encryptor stage: plaintext JSON in, a Sentry-compatible encrypted tarball out. Needs the
 * plaintext size up front (the token's tar header comes first); {@link encryptExport} spools
 * when it is unknown. Fails with USERPORT_DECRYPT_IO when the input is not `size` bytes.
 */
export class Encryptor extends Transform {
  private readonly fernet: FernetEncoder;
  private readonly expected: number;
  private readonly tokenBytes: number;
  private readonly wrapped: Buffer;
  private readonly pem: Buffer;
  private seen = 0;
  private written = 0;
  private started = false;

  constructor(options: EncryptorOptions) {
    checkOptions('createEncryptor', options, ENCRYPTOR_OPTIONS, ['publicKeyPem', 'size']);
    super();
    const keys = prepareKeys(options, 'createEncryptor');
    this.pem = keys.pem;
    this.wrapped = keys.wrapped;
    this.fernet = new FernetEncoder({ key: keys.fernetKey, ...(options.iv ? { iv: options.iv } : {}), ...(options.timestamp !== undefined ? { timestamp: options.timestamp } : {}) });
    this.expected = options.size;
    this.tokenBytes = tokenLength(options.size);
  }

  private out(buf: Buffer): void {
    if (!buf.length) return;
    this.written += buf.length;
    this.push(buf);
  }

  private start(): void {
    if (this.started) return;
    this.started = true;
    this.out(encodeHeader({ name: TOKEN_MEMBER, size: this.tokenBytes }));
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.expected) {
      callback(new DecryptError(DecryptErrorCodes.IO, `the input is longer than the declared ${this.expected} bytes`));
      return;
    }
    this.start();
    this.out(this.fernet.update(chunk));
    callback();
  }

  override _flush(callback: TransformCallback): void {
    if (this.seen !== this.expected) {
      callback(new DecryptError(DecryptErrorCodes.IO, `the input is ${this.seen} bytes, not the declared ${this.expected}`));
      return;
    }
    this.start();
    this.out(this.fernet.final());
    this.out(Buffer.alloc(paddingAfter(this.tokenBytes)));
    this.out(trailer(this.written, this.wrapped, this.pem));
    callback();
  }
}

/** Creates the {@link Encryptor} stage. */
export function createEncryptor(options: EncryptorOptions): Encryptor {
  return new Encryptor(options);
}

/** Options of {@link encryptExport}. */
export interface EncryptExportOptions {
  publicKeyPem: Buffer | string;
  /** Folder for the spool of the (encrypted) token when the input is a stream. @default os.tmpdir() */
  tmpDir?: string;
  /** Bytes per read. @default DEFAULT_CHUNK_SIZE */
  chunkSize?: number;
}

const ENCRYPT_EXPORT_OPTIONS: { readonly [K in keyof EncryptExportOptions]-?: OptionCheck } = {
  publicKeyPem: isStringOrBuffer,
  tmpDir: isNonEmptyString,
  chunkSize: isInteger(4096),
};

/**
 * Encrypts a plain export into `output` as Sentry's `sentry backup encrypt` would. A file is
 * streamed once (its size is known); a stream is encrypted into a private spool first (only
 * ciphertext touches the disk), because the token's size must precede it in the tar.
 */
export async function encryptExport(input: EncryptedInput, output: Writable, options: EncryptExportOptions): Promise<void> {
  checkOptions('encryptExport', options, ENCRYPT_EXPORT_OPTIONS, ['publicKeyPem']);
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  // The key is checked (the encryptor or the keys made) before the input is opened: a key that
  // cannot encrypt leaves no file open.
  let pipePath: string | undefined;
  if ('path' in input) {
    let stat: Awaited<ReturnType<typeof fs.stat>>;
    try {
      stat = await fs.stat(input.path);
    } catch (err) {
      throw ioError(`cannot read ${input.path}`, err);
    }
    if (stat.isFile()) {
      const encryptor = createEncryptor({ publicKeyPem: options.publicKeyPem, size: stat.size });
      await pipeline(createReadStream(input.path, { highWaterMark: chunkSize }), encryptor, output);
      return;
    }
    // A pipe: encrypted into the spool, as a stream is.
    pipePath = input.path;
  }
  const keys = prepareKeys(options, 'encryptExport');
  const made = pipePath === undefined ? undefined : createReadStream(pipePath, { highWaterMark: chunkSize });
  const stream = 'stream' in input ? input.stream as AsyncIterable<Buffer | string> : made!;
  const spool = await makeSpool(options.tmpDir ?? os.tmpdir()).catch((err: unknown) => {
    made?.destroy();
    throw err;
  });
  try {
    const fernet = new FernetEncoder({ key: keys.fernetKey });
    let tokenBytes = 0;
    const write = async (buf: Buffer) => {
      if (!buf.length) return;
      await spool.file.write(buf, 0, buf.length, tokenBytes);
      tokenBytes += buf.length;
    };
    for await (const chunk of stream) {
      await write(fernet.update(typeof chunk === 'string' ? Buffer.from(chunk) : chunk));
    }
    await write(fernet.final());
    const file = spool.file;
    async function* tarball(): AsyncGenerator<Buffer> {
      const header = encodeHeader({ name: TOKEN_MEMBER, size: tokenBytes });
      yield header;
      for await (const piece of readRange(file, 0, tokenBytes, chunkSize)) yield Buffer.from(piece);
      const pad = Buffer.alloc(paddingAfter(tokenBytes));
      yield pad;
      yield trailer(header.length + tokenBytes + pad.length, keys.wrapped, keys.pem);
    }
    await pipeline(Readable.from(tarball(), { objectMode: false }), output);
  } catch (err) {
    throw ioError('encrypting failed', err);
  } finally {
    await spool.remove().catch(() => undefined);
  }
}
