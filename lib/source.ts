/**
 * The import's input: a file (its size known, for progress), a FIFO, standard input or a
 * stream, decrypted first when a key unwrapper is given; and the fingerprint that ties a
 * resumable import to its file.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { openDecryptedSource, type KeyUnwrapper } from './decrypt.js';
import { ErrorCodes, UserportError } from './errors.js';

/**
 * Bytes per read from a plain file. Each chunk becomes a burst of records pushed at once (a
 * stream's highWaterMark cannot split a chunk), so big reads mean many records alive at once:
 * 1 MiB reads held ~3,000 parsed records in the tokenizer's buffer and raised peak RSS by ~20 MB
 * for no speed gain.
 */
const READ_CHUNK = 128 * 1024;

/** What {@link openSource} needs of the import's options. */
export interface SourceOptions {
  /** A file path, `-` for standard input, or a byte stream. */
  source: string | Readable;
  /** When set, `source` is an encrypted export tarball and this unwraps its key. */
  decrypt?: KeyUnwrapper;
  /** Folder of the decryption spool. @default os.tmpdir() */
  tmpDir?: string;
}

/** Whether `p` is a regular file (true when it cannot be stat'ed: the open reports that). */
export function isRegularFile(p: string): boolean {
  try { return fs.statSync(p).isFile(); } catch { return true; /* let the open report it */ }
}

/** Size and SHA-256 of the first MiB: enough to refuse resuming with another file. */
export function fingerprint(path: string): { size: number; hash: string } {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (err) {
    throw new UserportError(ErrorCodes.IO, `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(Math.min(size, 1 << 20));
    fs.readSync(fd, buf, 0, buf.length, 0);
    return { size, hash: createHash('sha256').update(buf).digest('hex') };
  } finally {
    fs.closeSync(fd);
  }
}

export async function openSource(o: SourceOptions): Promise<{ stream: Readable; size: number | undefined }> {
  if (o.decrypt) {
    const input = typeof o.source === 'string' && o.source !== '-' && isRegularFile(o.source) ? { path: o.source }
      : typeof o.source === 'string' && o.source !== '-' ? { stream: fs.createReadStream(o.source) as Readable }
      : { stream: o.source === '-' ? process.stdin : (o.source as Readable) };
    const { stream, size } = await openDecryptedSource(input, { unwrapper: o.decrypt, ...(o.tmpDir ? { tmpDir: o.tmpDir } : {}) });
    return { stream, size };
  }
  if (o.source instanceof Readable) return { stream: o.source, size: undefined };
  if (o.source === '-') return { stream: process.stdin, size: undefined };
  let size: number;
  try {
    const st = fs.statSync(o.source);
    if (st.isDirectory()) throw new UserportError(ErrorCodes.IO, `${o.source} is a directory, not an export file`);
    // A FIFO or process substitution (`<(cat f)`) is streamed like standard input.
    if (!st.isFile()) return { stream: fs.createReadStream(o.source, { highWaterMark: READ_CHUNK }), size: undefined };
    size = st.size;
  } catch (err) {
    if (err instanceof UserportError) throw err;
    throw new UserportError(ErrorCodes.IO, `cannot read ${o.source}: ${(err as Error).message}`, { cause: err });
  }
  return { stream: fs.createReadStream(o.source, { highWaterMark: READ_CHUNK }), size };
}
