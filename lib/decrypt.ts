/**
 * Decryption of Sentry's encrypted exports: an uncompressed tar of `export.json` (one Fernet
 * token over the whole JSON), `data.key` (the textual Fernet key, RSA-OAEP-SHA256 wrapped) and
 * `key.pub` (the PEM public key), in that order. The reverse, for `userport encrypt`, is in
 * `encrypt.ts`; the spool file in `spool.ts`. This module opens the input and hands it on, each
 * reader once: the members to `crypto/tar.ts`, the key to `crypto/unwrapper.ts`, the token to
 * `crypto/fernet.ts`.
 *
 * Nothing unauthenticated leaves this module. The key members come after the data and Fernet's
 * HMAC covers the whole token, so: find the members, unwrap the key, verify the HMAC over the
 * whole token, and only then decrypt in a second pass. A file is read twice (headers are found
 * by seeking, so the first read of the token is the verify pass); a stream is first spooled,
 * still encrypted, to a private temporary file (mode 0600 in a 0700 folder), removed when the
 * plaintext stream closes or on any failure. Memory stays at a few chunks whatever the size.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import { Duplex, Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { OptionError } from './errors.js';
import { destroyAndWait } from './stream-writes.js';
import { checkOptions as checkKnownOptions, isInteger, isKeyUnwrapper, isNonEmptyString, type OptionCheck } from './options.js';
import { ioError } from './crypto/errors.js';
import { authenticatedPlaintext } from './crypto/fernet.js';
import { readExportFile, readExportStream, readRange } from './crypto/tar.js';
import { unwrapFernetKey, type KeyUnwrapper } from './crypto/unwrapper.js';
import { spoolsIn, type SpoolMaker } from './spool.js';

export { DecryptError, DecryptErrorCodes, type DecryptErrorCode } from './crypto/errors.js';
export { createLocalKeyUnwrapper, type KeyUnwrapper, type LocalKeyUnwrapperOptions, type PassphraseSource } from './crypto/unwrapper.js';
export {
  createGcpKmsUnwrapper, kmsGetPublicKey, crc32c, readGcpKmsConfig, DEFAULT_KMS_ENDPOINT,
  type GcpKmsConfig, type GcpKmsUnwrapperOptions, type GoogleAccessTokenSource,
} from './crypto/gcp-kms.js';

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

function checkDecryptOptions(options: OpenDecryptedOptions, where: string): { chunkSize: number } {
  checkKnownOptions(where, options, DECRYPT_OPTIONS, ['unwrapper']);
  return { chunkSize: options.chunkSize ?? DEFAULT_CHUNK_SIZE };
}

/** A regular file holding an encrypted export, already open (`name` says it in errors). */
export interface HeldExportFile { file: FileHandle; size: number; name: string }

/**
 * An encrypted input, opened: the file the token is read from (the input itself when it is a
 * regular file, read in place; else the spool of the stream), `release` (close the file, remove
 * the spool; a second call does nothing more) and the words of a failure.
 */
type OpenedInput = { file: FileHandle; release: () => Promise<void>; failure: string }
  & ({ size: number } | { stream: AsyncIterable<Buffer | string> });

/** `f`, run once: later calls get the first call's promise. */
function once(f: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= f());
}

/** Opens `input`: a regular file is read in place; anything else is spooled. */
async function openInput(input: EncryptedInput | HeldExportFile, chunkSize: number, spools: SpoolMaker): Promise<OpenedInput> {
  if ('file' in input) return { file: input.file, size: input.size, release: once(() => input.file.close()), failure: `cannot read ${input.name}` };
  let pipe: FileHandle | undefined;
  if ('path' in input) {
    const { path } = input;
    let fh: FileHandle;
    try {
      fh = await fs.open(path, 'r');
    } catch (err) {
      throw ioError(`cannot open ${path}`, err);
    }
    try {
      const stat = await fh.stat();
      // The same open handle serves both passes, so replacing the file by rename cannot swap in
      // other bytes; writing into it can, and the segment digests catch that before release.
      if (stat.isFile()) return { file: fh, size: stat.size, release: once(() => fh.close()), failure: `cannot read ${path}` };
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw ioError(`cannot read ${path}`, err);
    }
    // A pipe or device cannot be read twice: it is read as a stream, on the handle already open (a
    // FIFO closed and opened again would lose its writer, which then dies of SIGPIPE, and wait
    // for another forever).
    pipe = fh;
  }
  // A stream's token goes to a private spool file (0600 in a 0700 folder) as it arrives. A pipe's
  // handle is closed here if the spool cannot be made.
  const spool = await spools('export.json.fernet').catch(async (err: unknown) => { await pipe?.close().catch(() => undefined); throw err; });
  const stream = 'stream' in input ? input.stream : pipe!.createReadStream({ highWaterMark: chunkSize });
  return { file: spool.file, stream, release: spool.remove, failure: 'spooling the encrypted input failed' };
}

/** An encrypted export whose members were found and whose key was unwrapped: its token is still unread. */
export interface UnlockedExport {
  /**
   * Verifies the whole token, then resolves to a stream of its plaintext, read in `chunkSize`
   * bytes. From this call on the file (or spool) is the stream's: closed (removed) when the
   * stream closes, or here when verifying fails. Called at most once. Begun `early` (before the
   * caller knows it will read the plaintext): `early.stop` aborted ends the verifying once the
   * read in flight returns (so the file may be closed when it has settled), and a failed or
   * stopped verifying leaves the file open, for the caller's checks of it and then {@link release}.
   */
  plaintext(chunkSize: number, early?: { stop: AbortSignal }): Promise<DecryptedSource>;
  /** Closes the file (removes the spool) when the token is not read after all. */
  release(): Promise<void>;
}

/**
 * Finds an encrypted export's members and unwraps its key, without reading its token: a regular
 * file's members by their headers (read in place; `HeldExportFile` is one its caller opened), a
 * stream's once it is spooled to its end. Rejects with the {@link DecryptError} decrypting would
 * meet (`USERPORT_DECRYPT_KEY_MISMATCH` for another key: a local key first checks that it is the
 * one `key.pub` names; a tarball that is no export says so too), having closed the file or removed
 * the spool (made by `spools`). `importUsers` unlocks a file's export before the database is
 * touched and reads its token after, from the same handle.
 */
export async function unlockExport(input: EncryptedInput | HeldExportFile, unwrapper: KeyUnwrapper, chunkSize: number, spools: SpoolMaker): Promise<UnlockedExport> {
  const opened = await openInput(input, chunkSize, spools);
  return unlockOpened(opened, unwrapper);
}

/** {@link unlockExport} of an input already opened. */
async function unlockOpened(opened: OpenedInput, unwrapper: KeyUnwrapper): Promise<UnlockedExport> {
  try {
    const found = 'stream' in opened ? await readExportStream(opened.stream, opened.file) : await readExportFile(opened.file, opened.size);
    // The token is read twice, where it lies in the file or from the start of the spool: to
    // verify it, then to decrypt it.
    const start = 'stream' in opened ? 0 : found.token.dataOffset;
    const read = (size: number) => readRange(opened.file, start, found.token.size, size);
    const key = await unwrapFernetKey(unwrapper, found.wrappedKey, found.publicKey);
    return {
      release: opened.release,
      plaintext: (size, early) => authenticatedPlaintext([until(read(size), early?.stop), read(size)], key, size, opened.release).catch(async (err: unknown) => {
        if (!early) await opened.release().catch(() => undefined);
        throw ioError(opened.failure, err);
      }),
    };
  } catch (err) {
    await opened.release().catch(() => undefined);
    throw ioError(opened.failure, err);
  }
}

/** `chunks`, ending with `stop`'s reason at the first chunk after it is aborted. */
async function* until(chunks: AsyncIterable<Buffer>, stop: AbortSignal | undefined): AsyncGenerator<Buffer> {
  for await (const chunk of chunks) {
    stop?.throwIfAborted();
    yield chunk;
  }
}

/**
 * Checks that `unwrapper` opens the encrypted export in the regular file `path`
 * ({@link unlockExport}), and closes it. The CLI runs it before anything else.
 */
export async function checkKeyOpens(path: string, unwrapper: KeyUnwrapper): Promise<void> {
  const opened = await openInput({ path }, 64 * 1024, spoolsIn(os.tmpdir()));
  if (!('size' in opened)) {
    await opened.release().catch(() => undefined);
    throw new OptionError(`checkKeyOpens: ${path} is not a regular file`);
  }
  await (await unlockOpened(opened, unwrapper)).release();
}

/**
 * Authenticates the whole export, then resolves to a stream of its plaintext. Rejects with a
 * {@link DecryptError} (`USERPORT_DECRYPT_*`) before any plaintext exists when the key does not
 * match, the tar is malformed or truncated, or any byte of the token or key was changed.
 * The caller must consume or destroy `stream`: that closes the file and removes the spool.
 */
export async function openDecryptedSource(input: EncryptedInput, options: OpenDecryptedOptions): Promise<DecryptedSource> {
  const { chunkSize } = checkDecryptOptions(options, 'openDecryptedSource');
  if (typeof input !== 'object' || input === null) throw new OptionError('openDecryptedSource: input must be { path } or { stream }');
  if ('path' in input) {
    if (typeof input.path !== 'string' || input.path === '') throw new OptionError(`openDecryptedSource: input.path must be a non-empty string, got ${JSON.stringify(input.path)}`);
  } else if (!(input.stream instanceof Readable) && typeof (input.stream as { [Symbol.asyncIterator]?: unknown })?.[Symbol.asyncIterator] !== 'function') {
    throw new OptionError('openDecryptedSource: input.stream must be a Readable');
  }
  return decryptedSource(input, options.unwrapper, chunkSize, options.tmpDir);
}

/**
 * {@link openDecryptedSource} over values already checked (the {@link Decryptor} checks its
 * options at construction).
 */
export async function decryptedSource(input: EncryptedInput, unwrapper: KeyUnwrapper, chunkSize: number, tmpDir = os.tmpdir()): Promise<DecryptedSource> {
  return (await unlockExport(input, unwrapper, chunkSize, spoolsIn(tmpDir))).plaintext(chunkSize);
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
  private readonly options: DecryptorOptions & { chunkSize: number };
  /** The decryption, started by the first write (or the end): a Decryptor never written makes no spool. */
  private opening: Promise<void> | undefined;
  private source: Readable | undefined;
  /** Plaintext size, known once authenticated. */
  size: number | undefined;

  constructor(options: DecryptorOptions) {
    const { chunkSize } = checkDecryptOptions(options, 'createDecryptor');
    super({ readableHighWaterMark: chunkSize, writableHighWaterMark: 64 * 1024 });
    this.options = { ...options, chunkSize };
    // The writable side feeds a private Readable that decryptedSource iterates; `_write`
    // calls back only when that Readable wants more, so backpressure reaches the producer.
    this.inbound = new Readable({ highWaterMark: chunkSize, read: () => this.resumeWriter() });
  }

  private start(): void {
    if (this.opening) return;
    const { unwrapper, chunkSize, tmpDir } = this.options;
    this.opening = decryptedSource({ stream: this.inbound }, unwrapper, chunkSize, tmpDir).then(
      (src) => {
        if (this.destroyed) {
          // Destroyed while authenticating: wait for the spool to go before `close`.
          return destroyAndWait(src.stream);
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
    this.start();
    if (this.inbound.push(chunk)) callback();
    else this.pendingWrite = () => callback();
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.start();
    this.inbound.push(null);
    callback();
  }

  override _read(): void {
    this.source?.resume();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    const src = this.source;
    if (!this.inbound.destroyed) this.inbound.destroy();
    const waitSource = src ? destroyAndWait(src) : undefined;
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
