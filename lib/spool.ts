/**
 * Private spool files: the encrypted-export path writes a stream's (still encrypted) token to one
 * so it can be read twice; the import's sink writes the staging rows that arrive while the early
 * users step holds its connection. Each is a temporary file (mode 0600 in a 0700 folder), removed
 * when its stream closes or on any failure.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import { readlinkSync, rmSync } from 'node:fs';
import path from 'node:path';
import { ioError } from './crypto/errors.js';

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

const SPOOL_PREFIX = 'userport-spool-';

/** Whether process `pid` exists (EPERM: another user's process). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * This process's PID namespace (Linux; "0" elsewhere). Containers that share a /tmp see each
 * other's files but not each other's processes: a pid in a name is judged only in the namespace
 * that gave it.
 */
const PID_NAMESPACE = (() => {
  try { return /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? '0'; } catch { return '0'; }
})();

/** `<pid>-<pid namespace>`: who makes a spool folder or a temporary output file, in its name. */
export const MAKER_TAG = `${process.pid}-${PID_NAMESPACE}`;

/**
 * Whether the maker a name tags (`pid`, and `namespace` as {@link MAKER_TAG} wrote it; undefined
 * in names from before it was written) is gone: a process of this namespace that no longer runs.
 * One of another namespace is never judged gone.
 */
export function makerGone(pid: number, namespace: string | undefined): boolean {
  if (namespace !== undefined && namespace !== PID_NAMESPACE) return false;
  return pid !== process.pid && !processAlive(pid);
}

/**
 * Removes spool folders under `tmpDir` left by a userport process that no longer exists (a
 * SIGKILL runs no handler): the folder name carries its maker's tag. Never throws.
 */
export async function removeStaleSpools(tmpDir: string): Promise<void> {
  const names = await fs.readdir(tmpDir).catch(() => [] as string[]);
  for (const name of names) {
    // userport-spool-<pid>-<namespace>-XXXXXX, or userport-spool-<pid>-XXXXXX before namespaces.
    const m = /^userport-spool-(\d+)-(?:(\d+)-)?[^-]{6}$/.exec(name);
    if (m && makerGone(Number(m[1]), m[2])) {
      await fs.rm(path.join(tmpDir, name), { recursive: true, force: true }).catch(() => undefined);
    }
  }
}

/** A private spool file (0600) in its own new folder (0700); `remove` deletes both, once. */
export interface Spool { dir: string; path: string; file: FileHandle; remove: () => Promise<void> }

/** Makes a private spool file named `name`: see {@link spoolsIn}. */
export type SpoolMaker = (name: string) => Promise<Spool>;

/**
 * The maker of one import's spool files under `tmpDir` (the decryption's, the early users
 * step's), handed to each stage that needs one: the folders that dead processes left there are
 * swept once, before the first.
 */
export function spoolsIn(tmpDir: string): SpoolMaker {
  let swept: Promise<void> | undefined;
  return async (name) => {
    await (swept ??= removeStaleSpools(tmpDir));
    return newSpool(tmpDir, name);
  };
}

/** A private spool file `name` (0600) in a new folder (0700) under `tmpDir`, after a sweep of stale ones. */
export async function makeSpool(tmpDir: string, name = 'export.json.fernet'): Promise<Spool> {
  return spoolsIn(tmpDir)(name);
}

async function newSpool(tmpDir: string, name: string): Promise<Spool> {
  let dir: string;
  try {
    // mkdtemp makes the folder 0700; the file inside is 0600 and created exclusively. The pid in
    // its name lets a later run remove it if this process is SIGKILLed.
    dir = await fs.mkdtemp(path.join(tmpDir, `${SPOOL_PREFIX}${MAKER_TAG}-`));
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
    file = await fs.open(path.join(dir, name), 'wx+', 0o600);
  } catch (err) {
    await remove();
    throw ioError('cannot create the spool file', err);
  }
  return { dir, path: path.join(dir, name), file, remove };
}
