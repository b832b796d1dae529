/**
 * One way to write an output file: a regular file is written under a temporary name beside
 * `dest` and renamed only on success, so a failure leaves no partial output. Anything else that
 * exists (`/dev/null`, a FIFO, a terminal) is written in place: renaming a file over a device
 * would replace the device. Shared by `userport export users` and the encrypt/decrypt commands.
 */
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import crypto from 'node:crypto';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { OptionError } from './errors.js';

/**
 * Runs `write` on a stream to `dest` (see the module note); `mode` is a new file's permission.
 * Throws OptionError when `dest` is a directory; any other failure is rethrown as it came, after
 * the temporary file is removed.
 */
export async function writeFileAtomically(dest: string, mode: number, write: (out: Writable) => Promise<void>): Promise<void> {
  const existing = await fs.stat(dest).catch(() => undefined);
  if (existing?.isDirectory()) throw new OptionError(`DEST ${dest} is a directory`);
  if (existing && !existing.isFile()) {
    await write(createWriteStream(dest, { flags: 'w' }));
    return;
  }
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.${crypto.randomBytes(6).toString('hex')}.partial`);
  try {
    await write(createWriteStream(tmp, { flags: 'wx', mode }));
    await fs.rename(tmp, dest);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}
