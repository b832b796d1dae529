/**
 * Mocha's global fixtures and root hooks: one run folder under the system temp directory holds
 * everything a test run writes (exports, findings, rejects, spools, the embedded PostgreSQL of the
 * run and any server a test starts), and goes away at the end. One real embedded PostgreSQL serves
 * the whole run, on a free port; tests get their own database from `freshDatabase`. Set
 * USERPORT_TEST_DATABASE_URL to run against another server instead.
 *
 * `npm test` runs the spec files in two mocha workers (--parallel): the server and the run folder
 * are made once, in mocha's main process, before the workers start (they inherit its environment:
 * the server's URL, and TMPDIR, so each worker's own folder nests in the run's).
 *
 * Why so strict: the servers run as `nobody` in process groups of their own (pg_ctl detaches
 * them), so a Ctrl-C of `npm test` never reaches them, and they and their data folders outlived
 * every interrupted run. SIGINT and SIGTERM now stop every cluster under the run folder and
 * remove it; a run killed outright (SIGKILL) leaves its folder with the owner's pid in it, and the
 * next run stops that folder's servers and removes it.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startEmbedded, stopEmbedded } from '../../lib/db/embedded.js';
import { processAlive } from '../../lib/spool.js';
import { dropTemplates } from './db.js';

const RUN_PREFIX = 'userport-test-run-';
const OWNER_FILE = 'owner.pid';
/** The system temp directory before this run points TMPDIR at its run folder. */
const systemTmp = os.tmpdir();

let run: string | undefined;
let fileSeq = 0;

/**
 * The folder of this test run (made on first use). Also this process's and its children's TMPDIR,
 * so library spools and CLI children land in it too.
 */
export function runDir(): string {
  if (run) return run;
  cleanStaleRuns();
  run = fs.mkdtempSync(path.join(systemTmp, RUN_PREFIX));
  // 0755: the embedded server runs as `nobody` when we are root and must reach its data folder.
  fs.chmodSync(run, 0o755);
  fs.writeFileSync(path.join(run, OWNER_FILE), `${process.pid}\n`);
  process.env.TMPDIR = run;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void interrupted(signal));
  return run;
}

/** A path in the run folder; `name` is made unique by a sequence number. Nothing is created. */
export function tmpPath(name: string): string {
  return path.join(runDir(), `${++fileSeq}-${name}`);
}

/** A new empty folder in the run folder. */
export function tmpFolder(prefix: string): string {
  return fs.mkdtempSync(path.join(runDir(), prefix));
}

/** Every embedded cluster folder (one holding `pgdata/PG_VERSION`) under `dir`, a few levels deep. */
function clusters(dir: string, depth = 4): string[] {
  if (fs.existsSync(path.join(dir, 'pgdata', 'PG_VERSION'))) return [dir];
  if (depth === 0) return [];
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.filter((e) => e.isDirectory() && e.name !== 'pgdata').flatMap((e) => clusters(path.join(dir, e.name), depth - 1));
}

/** Stops every server whose cluster lies under `dir`, then removes `dir`. */
async function removeRun(dir: string): Promise<void> {
  for (const cluster of clusters(dir)) await stopEmbedded(cluster, 'immediate').catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
}

export { processAlive };

/**
 * The file descriptors this process holds (Linux: /proc/self/fd), each as `N -> what it points
 * at`: what a spec checks is left open, compared as sets ({@link fdsOpenedSince}), not counted: a
 * descriptor of an earlier spec (a socket, a file) that closes meanwhile must neither fail the
 * check nor hide one that the code under test left open.
 */
export function openFds(): Set<string> {
  const open = new Set<string>();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    // The listing's own descriptor is closed by now.
    try { open.add(`${fd} -> ${fs.readlinkSync(`/proc/self/fd/${fd}`)}`); } catch { /* closed */ }
  }
  return open;
}

/** The descriptors open now that were not in `before` (a number now given to another file counts). */
export function fdsOpenedSince(before: ReadonlySet<string>): string[] {
  return [...openFds()].filter((fd) => !before.has(fd));
}

/** Run folders whose owner is gone (a SIGKILLed run): stop their servers and remove them. */
function cleanStaleRuns(): void {
  for (const name of fs.readdirSync(systemTmp)) {
    if (!name.startsWith(RUN_PREFIX)) continue;
    const dir = path.join(systemTmp, name);
    let owner: number;
    try {
      owner = Number(fs.readFileSync(path.join(dir, OWNER_FILE), 'utf8'));
    } catch {
      continue; // still being made by another run, or not ours
    }
    if (!Number.isInteger(owner) || owner <= 0 || processAlive(owner)) continue;
    // Synchronous callers: the stop runs pg_ctl synchronously up to its first await, which is
    // enough to start an immediate shutdown; the folder goes once the promise settles.
    void removeRun(dir);
  }
}

let stopping = false;
async function interrupted(signal: NodeJS.Signals): Promise<void> {
  if (stopping) return;
  stopping = true;
  if (run) await removeRun(run);
  // Die of the same signal, as the default handler would have, so the shell sees an interrupt;
  // exit with its status if some other listener keeps the process alive.
  process.kill(process.pid, signal);
  setTimeout(() => process.exit(128 + os.constants.signals[signal]), 1000);
}

/**
 * Before any spec file, once, in mocha's main process (also with --parallel, before its workers
 * start): the run folder and the run's server, whose URL the workers inherit.
 */
export async function mochaGlobalSetup(): Promise<void> {
  runDir();
  process.env.USERPORT_TEST_RUN_OWNER = String(process.pid);
  if (process.env.USERPORT_TEST_DATABASE_URL) return;
  const dir = path.join(runDir(), 'pg');
  const server = await startEmbedded({ dir });
  process.env.USERPORT_TEST_DATABASE_URL = server.url;
  process.env.USERPORT_TEST_EMBEDDED_DIR = dir;
}

/**
 * After every spec file, once, in mocha's main process: the templates of the run's processes go
 * (on a server of the caller's, USERPORT_TEST_DATABASE_URL, they would stay), then the servers
 * under the run folder and the folder itself. Removing a data folder that holds every test
 * database (GBs after the whole suite) took over a minute on a loaded shared machine: global
 * fixtures have no timeout.
 */
export async function mochaGlobalTeardown(): Promise<void> {
  await dropTemplates().catch(() => undefined);
  if (run) await removeRun(run);
}

export const mochaHooks = {
  /** A worker's own folder, nested in the run's (TMPDIR); in the main process, the run's. */
  beforeAll() {
    runDir();
  },
};
