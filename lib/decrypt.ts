/**
 * Decryption of Sentry's encrypted exports: an uncompressed tar of `export.json` (one Fernet
 * token over the whole JSON), `data.key` (the textual Fernet key, RSA-OAEP-SHA256 wrapped) and
 * `key.pub` (the PEM public key), in that order. Also the reverse, for `userport encrypt`.
 *
 * Nothing unauthenticated leaves this module. The key members come after the data and Fernet's
 * HMAC covers the whole token, so: find the members, unwrap the key, verify the HMAC over the
 * whole token, and only then decrypt in a second pass. A file is read twice (headers are found
 * by seeking, so the first read of the token is the verify pass); a stream is first spooled,
 * still encrypted, to a private temporary file (mode 0600 in a 0700 folder), removed when the
 * plaintext stream closes or on any failure. Memory stays at a few chunks whatever the size.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import { createReadStream, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Duplex, Readable, Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { OptionError, UserportError } from './errors.js';
import { DecryptError, DecryptErrorCodes } from './crypto/errors.js';
import { decryptToken, FernetEncoder, generateFernetKey, parseFernetKey, tokenLength, verifyToken, type FernetKey } from './crypto/fernet.js';
import { encodeEnd, encodeHeader, isRegularFile, paddingAfter, readExactly, scanTarFile, TarParser, type TarEntry } from './crypto/tar.js';
import { derivePublicPem, loadPublicKey, wrapKey } from './crypto/keys.js';
import { createLocalKeyUnwrapper, type KeyUnwrapper } from './crypto/unwrapper.js';
import { createGcpKmsUnwrapper, readGcpKmsConfig } from './crypto/gcp-kms.js';
import { promptPassphraseOnTty } from './crypto/prompt.js';

export { DecryptError, DecryptErrorCodes, type DecryptErrorCode } from './crypto/errors.js';
export { createLocalKeyUnwrapper, type KeyUnwrapper, type LocalKeyUnwrapperOptions, type PassphraseSource } from './crypto/unwrapper.js';
export {
  createGcpKmsUnwrapper, kmsGetPublicKey, crc32c, readGcpKmsConfig, DEFAULT_KMS_ENDPOINT,
  type GcpKmsConfig, type GcpKmsUnwrapperOptions, type GoogleAccessTokenSource,
} from './crypto/gcp-kms.js';

/** Member names. Sentry's code says renaming them breaks its decrypt side. */
export const TOKEN_MEMBER = 'export.json';
export const WRAPPED_KEY_MEMBER = 'data.key';
export const PUBLIC_KEY_MEMBER = 'key.pub';
/** `data.key` and `key.pub` are a few hundred bytes; they are held in memory, so cap them. */
export const MAX_KEY_MEMBER_SIZE = 64 * 1024;
/**
 * Read size over the token. Big chunks keep the per-chunk JavaScript negligible, but each chunk
 * becomes a string for the base64 decoder: at 1 MiB those strings land in V8's large-object
 * space and peak RSS doubled (55 -> 120 MB decrypting 230 MB), for no measurable speed gain
 * over 512 KiB. @default 512 KiB
 */
export const DEFAULT_CHUNK_SIZE = 512 * 1024;

/** Where the encrypted tarball comes from: a seekable file (two passes) or a stream (spooled). */
export type EncryptedInput = { path: string } | { stream: Readable };

/** Options of {@link openDecryptedSource} and {@link decryptExport}. */
export interface OpenDecryptedOptions {
  unwrapper: KeyUnwrapper;
  /** Folder for the private spool file when the input is a stream. @default os.tmpdir() */
  tmpDir?: string;
  /** Bytes per read of the token. @default DEFAULT_CHUNK_SIZE */
  chunkSize?: number;
}

/** What {@link openDecryptedSource} resolves to: the plaintext stream, once the whole token is authenticated. */
export interface DecryptedSource {
  /** Plaintext JSON bytes; only produced after the whole token's HMAC was verified. */
  stream: Readable;
  /** Plaintext size in bytes when known (for progress). */
  size?: number;
}

function checkOptions(options: OpenDecryptedOptions, where: string): { chunkSize: number; tmpDir: string } {
  if (typeof options !== 'object' || options === null) throw new OptionError(`${where} needs an options object`);
  if (typeof options.unwrapper?.unwrap !== 'function') {
    throw new OptionError(`${where}: unwrapper must be a KeyUnwrapper (createLocalKeyUnwrapper or createGcpKmsUnwrapper), got ${typeof options.unwrapper}`);
  }
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize < 4096 || chunkSize > 64 * 1024 * 1024) {
    throw new OptionError(`${where}: chunkSize must be an integer between 4096 and 67108864, got ${String(options.chunkSize)}`);
  }
  if (options.tmpDir !== undefined && (typeof options.tmpDir !== 'string' || options.tmpDir === '')) {
    throw new OptionError(`${where}: tmpDir must be a non-empty string, got ${JSON.stringify(options.tmpDir)}`);
  }
  return { chunkSize, tmpDir: options.tmpDir ?? os.tmpdir() };
}

function ioError(what: string, err: unknown): UserportError {
  if (err instanceof UserportError) return err;
  return new DecryptError(DecryptErrorCodes.IO, `${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

function tarError(message: string): DecryptError {
  return new DecryptError(DecryptErrorCodes.TAR, `not a Sentry encrypted export: ${message}`);
}

/**
 * Checks members as they come: exactly one each of `export.json`, `data.key`, `key.pub` as
 * regular files, nothing else that is a file (directories and links are ignored, as Sentry does).
 */
class MemberCheck {
  readonly seen = new Map<string, TarEntry>();

  accept(entry: TarEntry): boolean {
    if (!isRegularFile(entry.type)) return false;
    if (entry.name !== TOKEN_MEMBER && entry.name !== WRAPPED_KEY_MEMBER && entry.name !== PUBLIC_KEY_MEMBER) {
      throw tarError(`unexpected member "${entry.name}" (expected only ${TOKEN_MEMBER}, ${WRAPPED_KEY_MEMBER} and ${PUBLIC_KEY_MEMBER})`);
    }
    if (this.seen.has(entry.name)) throw tarError(`member "${entry.name}" appears twice`);
    if (entry.name !== TOKEN_MEMBER && entry.size > MAX_KEY_MEMBER_SIZE) {
      throw tarError(`member "${entry.name}" is ${entry.size} bytes, more than ${MAX_KEY_MEMBER_SIZE}`);
    }
    this.seen.set(entry.name, entry);
    return true;
  }

  complete(): { token: TarEntry; wrappedKey: TarEntry; publicKey: TarEntry } {
    const missing = [TOKEN_MEMBER, WRAPPED_KEY_MEMBER, PUBLIC_KEY_MEMBER].filter((n) => !this.seen.has(n));
    if (missing.length) throw tarError(`missing member${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`);
    return { token: this.seen.get(TOKEN_MEMBER)!, wrappedKey: this.seen.get(WRAPPED_KEY_MEMBER)!, publicKey: this.seen.get(PUBLIC_KEY_MEMBER)! };
  }
}

/**
 * Reads `length` bytes at `start` in chunks. The yielded buffer is reused: consumers copy what
 * they keep (the base64 decoder's `toString` does).
 */
async function* readRange(file: FileHandle, start: number, length: number, chunkSize: number): AsyncGenerator<Buffer> {
  const buf = Buffer.allocUnsafe(Math.min(chunkSize, Math.max(length, 1)));
  let pos = start;
  const end = start + length;
  while (pos < end) {
    const want = Math.min(buf.length, end - pos);
    const { bytesRead } = await file.read(buf, 0, want, pos);
    if (bytesRead === 0) throw new DecryptError(DecryptErrorCodes.TRUNCATED, `the input ended early at byte ${pos}`);
    pos += bytesRead;
    yield buf.subarray(0, bytesRead);
  }
}

async function unwrapFernetKey(unwrapper: KeyUnwrapper, wrapped: Buffer, publicKeyPem: Buffer): Promise<{ text: Buffer; key: FernetKey }> {
  let text: Buffer;
  try {
    text = await unwrapper.unwrap(wrapped, publicKeyPem);
  } catch (err) {
    if (err instanceof UserportError) throw err;
    throw new DecryptError(DecryptErrorCodes.KEY_INVALID, `the key unwrapper failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }
  return { text, key: parseFernetKey(text) };
}

/**
 * The plaintext stream over a verified token. `cleanup` (close the file, remove the spool) runs
 * once, before `close` is emitted, on end, error or destroy, also when never read.
 */
function plaintextStream(file: FileHandle, start: number, length: number, key: FernetKey, digests: Buffer, chunkSize: number, cleanup: () => Promise<void>): Readable {
  const iter = decryptToken(readRange(file, start, length, chunkSize), key, digests);
  let inflight: Promise<void> | undefined;
  return new Readable({
    highWaterMark: chunkSize,
    read() {
      if (inflight) return;
      inflight = (async () => {
        try {
          for (;;) {
            const { value, done } = await iter.next();
            if (this.destroyed) return;
            if (done) {
              this.push(null);
              return;
            }
            if (!this.push(value)) return;
          }
        } catch (err) {
          this.destroy(err as Error);
        } finally {
          inflight = undefined;
        }
      })();
    },
    destroy(err, callback) {
      // Let a read in progress settle before the file under it is closed.
      Promise.resolve(inflight)
        .then(() => iter.return(undefined))
        .catch(() => undefined)
        .then(cleanup)
        .then(() => callback(err), (cleanupErr: unknown) => callback(err ?? (cleanupErr as Error)));
    },
  });
}

/**
 * Spool folders still on disk. The library installs no process handlers: a spool goes away with
 * its stream (close, destroy, failure). A program that wants spools gone when it is killed, as the
 * CLI does, calls {@link removeLiveSpoolsSync} from its own signal and exit handlers.
 */
const liveSpools = new Set<string>();

/** Removes every spool folder still on disk, synchronously (for a host's exit or signal handler). */
export function removeLiveSpoolsSync(): void {
  for (const d of liveSpools) rmSync(d, { recursive: true, force: true });
  liveSpools.clear();
}

function trackSpool(dir: string): void {
  liveSpools.add(dir);
}

function untrackSpools(dir: string): void {
  liveSpools.delete(dir);
}

async function makeSpool(tmpDir: string): Promise<{ dir: string; file: FileHandle; remove: () => Promise<void> }> {
  let dir: string;
  try {
    // mkdtemp makes the folder 0700; the file inside is 0600 and created exclusively.
    dir = await fs.mkdtemp(path.join(tmpDir, 'userport-spool-'));
  } catch (err) {
    throw ioError(`cannot create the spool folder in ${tmpDir}`, err);
  }
  trackSpool(dir);
  let file: FileHandle | undefined;
  let removed = false;
  const remove = async () => {
    if (removed) return;
    removed = true;
    await file?.close().catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
    untrackSpools(dir);
  };
  try {
    file = await fs.open(path.join(dir, 'export.json.fernet'), 'wx+', 0o600);
  } catch (err) {
    await remove();
    throw ioError('cannot create the spool file', err);
  }
  return { dir, file, remove };
}

async function openFile(file: string, options: OpenDecryptedOptions, chunkSize: number): Promise<DecryptedSource> {
  let fh: FileHandle;
  try {
    fh = await fs.open(file, 'r');
  } catch (err) {
    throw ioError(`cannot open ${file}`, err);
  }
  try {
    const stat = await fh.stat();
    if (!stat.isFile()) {
      // A pipe or device cannot be read twice: treat it as a stream.
      await fh.close();
      return await openStream(createReadStream(file, { highWaterMark: chunkSize }), options, chunkSize);
    }
    const check = new MemberCheck();
    await scanTarFile(fh, stat.size, (e) => {
      check.accept(e);
      return false;
    });
    const m = check.complete();
    const wrapped = Buffer.alloc(m.wrappedKey.size);
    const pub = Buffer.alloc(m.publicKey.size);
    await readExactly(fh, wrapped, m.wrappedKey.dataOffset);
    await readExactly(fh, pub, m.publicKey.dataOffset);
    const { key } = await unwrapFernetKey(options.unwrapper, wrapped, pub);
    const verified = await verifyToken(readRange(fh, m.token.dataOffset, m.token.size, chunkSize), key);
    // The same open handle serves the second pass, so replacing the file by rename cannot
    // swap in other bytes; writing into it can, and the segment digests catch that before release.
    const stream = plaintextStream(fh, m.token.dataOffset, m.token.size, key, verified.digests, chunkSize, () => fh.close());
    return { stream, size: verified.plaintextLength };
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw ioError(`cannot read ${file}`, err);
  }
}

async function openStream(input: Readable, options: OpenDecryptedOptions, chunkSize: number): Promise<DecryptedSource> {
  const tmpDir = options.tmpDir ?? os.tmpdir();
  const spool = await makeSpool(tmpDir);
  try {
    const parser = new TarParser();
    const check = new MemberCheck();
    const small = new Map<string, Buffer[]>();
    let current: TarEntry | undefined;
    let spooled = 0;
    try {
      for await (const chunk of input as AsyncIterable<Buffer | string>) {
        const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        for (const ev of parser.push(buf)) {
          if (ev.kind === 'entry') {
            current = check.accept(ev.entry) ? ev.entry : undefined;
            if (current && current.name !== TOKEN_MEMBER) small.set(current.name, []);
          } else if (ev.kind === 'data') {
            if (current?.name === TOKEN_MEMBER) {
              await spool.file.write(ev.chunk, 0, ev.chunk.length, spooled);
              spooled += ev.chunk.length;
            } else if (current) {
              small.get(current.name)!.push(Buffer.from(ev.chunk));
            }
          } else {
            current = undefined;
          }
        }
      }
    } catch (err) {
      throw ioError('reading the encrypted input failed', err);
    }
    parser.end();
    const m = check.complete();
    const wrapped = Buffer.concat(small.get(WRAPPED_KEY_MEMBER)!);
    const pub = Buffer.concat(small.get(PUBLIC_KEY_MEMBER)!);
    const { key } = await unwrapFernetKey(options.unwrapper, wrapped, pub);
    const verified = await verifyToken(readRange(spool.file, 0, m.token.size, chunkSize), key);
    const stream = plaintextStream(spool.file, 0, m.token.size, key, verified.digests, chunkSize, spool.remove);
    return { stream, size: verified.plaintextLength };
  } catch (err) {
    await spool.remove().catch(() => undefined);
    throw ioError('spooling the encrypted input failed', err);
  }
}

/**
 * Authenticates the whole export, then resolves to a stream of its plaintext. Rejects with a
 * {@link DecryptError} (`USERPORT_DECRYPT_*`) before any plaintext exists when the key does not
 * match, the tar is malformed or truncated, or any byte of the token or key was changed.
 * The caller must consume or destroy `stream`: that closes the file and removes the spool.
 */
export async function openDecryptedSource(input: EncryptedInput, options: OpenDecryptedOptions): Promise<DecryptedSource> {
  const { chunkSize } = checkOptions(options, 'openDecryptedSource');
  if (typeof input !== 'object' || input === null) throw new OptionError('openDecryptedSource: input must be { path } or { stream }');
  if ('path' in input) {
    if (typeof input.path !== 'string' || input.path === '') throw new OptionError(`openDecryptedSource: input.path must be a non-empty string, got ${JSON.stringify(input.path)}`);
    return openFile(input.path, options, chunkSize);
  }
  if (!(input.stream instanceof Readable) && typeof (input.stream as { [Symbol.asyncIterator]?: unknown })?.[Symbol.asyncIterator] !== 'function') {
    throw new OptionError('openDecryptedSource: input.stream must be a Readable');
  }
  return openStream(input.stream, options, chunkSize);
}

/** Options of {@link createDecryptor}: the same as {@link OpenDecryptedOptions}. */
export type DecryptorOptions = OpenDecryptedOptions;

/**
 * The decryptor stage: encrypted tarball bytes in, plaintext JSON bytes out. It spools the
 * token (still encrypted) while the input arrives, authenticates when the input ends, and only
 * then produces output. Emits `authenticated` with `{ size }` (plaintext bytes) just before the
 * first output. Destroying it removes the spool.
 */
export class Decryptor extends Duplex {
  private readonly inbound: Readable;
  private readonly opening: Promise<void>;
  private source: Readable | undefined;
  /** Plaintext size, known once authenticated. */
  size: number | undefined;

  constructor(options: DecryptorOptions) {
    const { chunkSize } = checkOptions(options, 'createDecryptor');
    super({ readableHighWaterMark: chunkSize, writableHighWaterMark: 64 * 1024 });
    // The writable side feeds a private Readable that openDecryptedSource iterates; `_write`
    // calls back only when that Readable wants more, so backpressure reaches the producer.
    const inbound = new Readable({ highWaterMark: chunkSize, read: () => this.resumeWriter() });
    this.inbound = inbound;
    this.opening = openDecryptedSource({ stream: inbound }, options).then(
      (src) => {
        if (this.destroyed) {
          // Destroyed while authenticating: wait for the spool to go before `close`.
          return new Promise<void>((resolve) => {
            src.stream.once('close', () => resolve());
            src.stream.destroy();
          });
        }
        this.source = src.stream;
        this.size = src.size;
        this.emit('authenticated', { size: src.size });
        src.stream.on('data', (c: Buffer) => {
          if (!this.push(c)) src.stream.pause();
        });
        src.stream.once('end', () => this.push(null));
        src.stream.once('error', (err) => this.destroy(err));
        return undefined;
      },
      (err: Error) => {
        this.destroy(err);
      },
    );
  }

  private pendingWrite: (() => void) | undefined;

  private resumeWriter(): void {
    const cb = this.pendingWrite;
    this.pendingWrite = undefined;
    cb?.();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.inbound.push(chunk)) callback();
    else this.pendingWrite = () => callback();
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.inbound.push(null);
    callback();
  }

  override _read(): void {
    this.source?.resume();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const src = this.source;
    if (!this.inbound.destroyed) this.inbound.destroy();
    const waitSource = src && !src.closed
      ? new Promise<void>((resolve) => { src.once('close', () => resolve()); src.destroy(); })
      : Promise.resolve();
    // Call back only once the spool is gone, so `close` means nothing is left on disk.
    Promise.all([this.opening, waitSource]).then(() => callback(err), () => callback(err));
  }
}

/** Creates the {@link Decryptor} stage (tar bytes in, verified plaintext out). */
export function createDecryptor(options: DecryptorOptions): Decryptor {
  return new Decryptor(options);
}

/**
 * Decrypts an export to `output` (a file stream, stdout, ...). Nothing is written unless the
 * whole export authenticated first.
 */
export async function decryptExport(input: EncryptedInput, output: Writable, options: OpenDecryptedOptions): Promise<{ size: number | undefined }> {
  const src = await openDecryptedSource(input, options);
  await pipeline(src.stream, output);
  return { size: src.size };
}

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

/** Everything after the token: `data.key` then `key.pub`, then the end of the archive. */
function trailer(written: number, wrapped: Buffer, pem: Buffer): Buffer {
  const parts = [
    encodeHeader({ name: WRAPPED_KEY_MEMBER, size: wrapped.length }), wrapped, Buffer.alloc(paddingAfter(wrapped.length)),
    encodeHeader({ name: PUBLIC_KEY_MEMBER, size: pem.length }), pem, Buffer.alloc(paddingAfter(pem.length)),
  ];
  const body = Buffer.concat(parts);
  return Buffer.concat([body, encodeEnd(written + body.length)]);
}

function prepareKeys(options: { publicKeyPem: Buffer | string; fernetKey?: Buffer | string }, where: string): { pem: Buffer; fernetKey: Buffer; wrapped: Buffer } {
  if (typeof options.publicKeyPem !== 'string' && !Buffer.isBuffer(options.publicKeyPem)) {
    throw new OptionError(`${where}: publicKeyPem must be a PEM string or Buffer`);
  }
  let pem: Buffer = Buffer.from(options.publicKeyPem);
  // `key.pub` travels with the export: given a private key, write only its public half, never
  // the key that decrypts the export.
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem.toString('latin1'))) {
    if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,ENCRYPTED/.test(pem.toString('latin1'))) {
      throw new OptionError(`${where}: publicKeyPem is an encrypted private key: give its public key (openssl rsa -in KEY -pubout)`, 'publicKeyPem');
    }
    pem = derivePublicPem(pem);
  }
  const pub = loadPublicKey(pem, 'the public key to encrypt with');
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
    if (!Number.isSafeInteger(options?.size) || options.size < 0) {
      throw new OptionError(`createEncryptor: size must be the plaintext size, an integer >= 0, got ${String(options?.size)}`);
    }
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

/**
 * Encrypts a plain export into `output` as Sentry's `sentry backup encrypt` would. A file is
 * streamed once (its size is known); a stream is encrypted into a private spool first (only
 * ciphertext touches the disk), because the token's size must precede it in the tar.
 */
export async function encryptExport(input: EncryptedInput, output: Writable, options: EncryptExportOptions): Promise<void> {
  const chunkSize = options?.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize < 4096) throw new OptionError(`encryptExport: chunkSize must be an integer >= 4096, got ${String(options?.chunkSize)}`);
  if ('path' in input) {
    let size: number;
    try {
      const stat = await fs.stat(input.path);
      if (!stat.isFile()) return encryptExport({ stream: createReadStream(input.path, { highWaterMark: chunkSize }) }, output, options);
      size = stat.size;
    } catch (err) {
      throw ioError(`cannot read ${input.path}`, err);
    }
    await pipeline(createReadStream(input.path, { highWaterMark: chunkSize }), createEncryptor({ publicKeyPem: options.publicKeyPem, size }), output);
    return;
  }
  const keys = prepareKeys(options, 'encryptExport');
  const spool = await makeSpool(options.tmpDir ?? os.tmpdir());
  try {
    const fernet = new FernetEncoder({ key: keys.fernetKey });
    let tokenBytes = 0;
    const write = async (buf: Buffer) => {
      if (!buf.length) return;
      await spool.file.write(buf, 0, buf.length, tokenBytes);
      tokenBytes += buf.length;
    };
    for await (const chunk of input.stream as AsyncIterable<Buffer | string>) {
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
  return createLocalKeyUnwrapper({ privateKeyPem: pem, ...(passphrase !== undefined ? { passphrase } : {}) });
}
