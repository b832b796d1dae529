/**
 * One way to write an output file: a regular file is written under a temporary name beside
 * `dest` and renamed only on success, so a failure leaves no partial output. Anything else that
 * exists (`/dev/null`, a FIFO, a terminal) is written in place: renaming a file over a device
 * would replace the device. Shared by `userport export users` and the encrypt/decrypt commands.
 */
import { createWriteStream, rmSync } from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import crypto from 'node:crypto';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { OptionError } from './errors.js';
import { MAKER_TAG, makerGone } from './spool.js';

/**
 * Temporary files being written. The library installs no process handlers: a program that wants
 * them gone when it is interrupted (the CLI) calls {@link removeLiveTempFilesSync} from its own
 * signal handlers; one killed outright (SIGKILL) leaves its file, which the next write of the same
 * DEST removes (the name carries the writer's pid).
 */
const liveTemps = new Set<string>();

/** Removes every temporary file still being written, synchronously (for a signal handler). */
export function removeLiveTempFilesSync(): void {
  for (const f of liveTemps) rmSync(f, { force: true });
  liveTemps.clear();
}

/**
 * `.DEST.` as the temporary names begin: DEST's name cut to 200 bytes (whole characters), so that
 * with `<pid>.<hex>.partial` it stays within a file name's 255 bytes whenever DEST's name does.
 */
function tempPrefix(dest: string): string {
  let base = path.basename(dest);
  while (Buffer.byteLength(base) > 200) base = Array.from(base).slice(0, -1).join('');
  return `.${base}.`;
}

/** What is wrong with `file`'s name if it is longer than a file name may be (255 bytes: NAME_MAX of Linux's file systems). */
export function fileNameTooLong(file: string): string | undefined {
  const bytes = Buffer.byteLength(path.basename(file));
  return bytes > 255 ? `the file name is ${bytes} bytes long, more than a file system takes (255)` : undefined;
}

/** `.DEST.<pid>-<pid namespace>.<hex>.partial` beside `dest`: hidden, and telling which process writes it. */
function tempName(dest: string): string {
  return path.join(path.dirname(dest), `${tempPrefix(dest)}${MAKER_TAG}.${crypto.randomBytes(6).toString('hex')}.partial`);
}

/** Removes `dest`'s temporary files left by processes that no longer exist. Never throws. */
async function removeStaleTemps(dest: string): Promise<void> {
  const prefix = tempPrefix(dest);
  const names = await fs.readdir(path.dirname(dest)).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.partial')) continue;
    // <pid>-<namespace>, or <pid> alone in names from before namespaces were noted.
    const m = /^(\d+)(?:-(\d+))?\.[0-9a-f]{12}\.partial$/.exec(name.slice(prefix.length));
    if (m && makerGone(Number(m[1]), m[2])) {
      await fs.rm(path.join(path.dirname(dest), name), { force: true }).catch(() => undefined);
    }
  }
}

/**
 * Runs `write` on a stream to `dest` (see the module note); `mode` is a new file's permission.
 * Throws OptionError when `dest` is a directory, an Error with the errno `code` that names DEST's
 * folder when the file cannot be created there; any other failure is rethrown as it came, after
 * the temporary file is removed.
 */
export async function writeFileAtomically(dest: string, mode: number, write: (out: Writable) => Promise<void>): Promise<void> {
  const existing = await fs.stat(dest).catch(() => undefined);
  if (existing?.isDirectory()) throw new OptionError(`DEST ${dest} is a directory`);
  if (existing && !existing.isFile()) {
    const out = createWriteStream(dest, { flags: 'w' });
    try {
      await write(out);
    } catch (err) {
      // A writer that failed before its pipeline took the stream (the database unreachable, a key
      // refused) would leave the device or pipe open. Its own failure to open (EACCES, ENXIO) is
      // not this call's error then, and must not be the process's uncaught exception.
      out.once('error', () => undefined);
      out.destroy();
      throw err;
    }
    return;
  }
  // Said before the work, not by the rename after it.
  const tooLong = fileNameTooLong(dest);
  if (tooLong) throw Object.assign(new Error(tooLong), { code: 'ENAMETOOLONG' });
  await removeStaleTemps(dest);
  const tmp = tempName(dest);
  // Opened before the stream exists: a missing or read-only folder is this call's rejection (a
  // stream that fails to open emits 'error' before the writer may listen), said about DEST.
  let file: FileHandle;
  try {
    file = await fs.open(tmp, 'wx', mode);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const folder = path.dirname(dest);
    const why = e.code === 'ENOENT' ? `the folder ${folder} does not exist`
      : e.code === 'EACCES' || e.code === 'EPERM' ? `the folder ${folder} is not writable`
        : e.code === 'EROFS' ? `the folder ${folder} is on a read-only file system`
          : e.code === 'ENOTDIR' ? `${folder} is not a folder`
            // Anything else as the system said it, about DEST rather than the temporary name.
            : e.message.split(tmp).join(dest);
    throw Object.assign(new Error(why, { cause: err }), { code: e.code });
  }
  liveTemps.add(tmp);
  try {
    await write(file.createWriteStream());
    await fs.rename(tmp, dest);
  } catch (err) {
    await file.close().catch(() => undefined);
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  } finally {
    liveTemps.delete(tmp);
  }
}
