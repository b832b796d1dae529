/**
 * Decryption of Sentry's encrypted exports: an uncompressed tar of `export.json` (one Fernet
 * token over the whole JSON), `data.key` (the textual Fernet key, RSA-OAEP-SHA256 wrapped) and
 * `key.pub` (the PEM public key), in that order. The reverse, for `userport encrypt`, is in
 * `encrypt.ts`; the spool file in `spool.ts`.
 *
 * Nothing unauthenticated leaves this module. The key members come after the data and Fernet's
 * HMAC covers the whole token, so: find the members, unwrap the key, verify the HMAC over the
 * whole token, and only then decrypt in a second pass. A file is read twice (headers are found
 * by seeking, so the first read of the token is the verify pass); a stream is first spooled,
 * still encrypted, to a private temporary file (mode 0600 in a 0700 folder), removed when the
 * plaintext stream closes or on any failure. Memory stays at a few chunks whatever the size.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import os from 'node:os';
import { Duplex, Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { OptionError, UserportError } from './errors.js';
import { checkOptions as checkKnownOptions, isInteger, isKeyUnwrapper, isNonEmptyString, type OptionCheck } from './options.js';
import { DecryptError, DecryptErrorCodes, ioError } from './crypto/errors.js';
import { decryptToken, parseFernetKey, verifyToken, type FernetKey } from './crypto/fernet.js';
import { isRegularFile, readExactly, scanTarFile, TarParser, type TarEntry } from './crypto/tar.js';
import type { KeyUnwrapper } from './crypto/unwrapper.js';
import { makeSpool, readRange } from './spool.js';

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

const DECRYPT_OPTIONS: { readonly [K in keyof OpenDecryptedOptions]-?: OptionCheck } = {
  unwrapper: isKeyUnwrapper,
  tmpDir: isNonEmptyString,
  chunkSize: isInteger(4096, 64 * 1024 * 1024),
};

function checkOptions(options: OpenDecryptedOptions, where: string): { chunkSize: number; tmpDir: string } {
  checkKnownOptions(where, options, DECRYPT_OPTIONS, ['unwrapper']);
  return { chunkSize: options.chunkSize ?? DEFAULT_CHUNK_SIZE, tmpDir: options.tmpDir ?? os.tmpdir() };
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
