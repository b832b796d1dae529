/**
 * Process-wide handlers of the command-line program. The library installs none (it is embedded in
 * other people's processes); the CLI owns its process. On SIGINT, SIGTERM or SIGHUP, or when the
 * process that started it goes away, it lets the running command wind down (an atomic import
 * stops and rolls back, taking away a schema it made: `setInterruptWork`, at most 5 s), removes
 * what it was writing to disk (decryption and stage spools, the temporary file of an output), says
 * in one line what the interruption left, then dies of the signal as it would have (exit 130,
 * 143, 129): the database session closes with the process, so the server rolls back whatever
 * transaction was still open.
 */
import fs from 'node:fs';
import { removeLiveTempFilesSync } from '../lib/atomic-file.js';
import { ErrorCodes, UserportError } from '../lib/errors.js';
import { removeLiveSpoolsSync } from '../lib/spool.js';

export const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type HandledSignal = (typeof SIGNALS)[number];
const NUMBERS: Record<HandledSignal, number> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

/** How often the CLI checks that its parent is still there. */
const PARENT_POLL_MS = 200;

let installed = false;
let parentTimer: NodeJS.Timeout | undefined;
let stopping = false;
let note: ((signal: HandledSignal) => string) | undefined;
let windDown: (() => Promise<void>) | undefined;

/**
 * The signals that were ignored when the launcher started (`nohup` ignores SIGHUP; a script's
 * `cmd &` ignores SIGINT). Node resets every ignored signal to its default action at startup, so
 * the launcher (bin/userport.js, run by /bin/sh first) reads the mask from /proc/self/status
 * before it execs node and passes it in USERPORT_LAUNCH_SIGIGN (hex, as /proc prints it).
 * Without it (`node bin/userport.js`, or no /proc) none is known to be ignored.
 */
export function ignoredAtLaunch(mask = process.env.USERPORT_LAUNCH_SIGIGN): Set<HandledSignal> {
  if (!mask || !/^[0-9a-f]{1,32}$/i.test(mask)) return new Set();
  const bits = BigInt(`0x${mask}`);
  return new Set(SIGNALS.filter((s) => ((bits >> BigInt(NUMBERS[s] - 1)) & 1n) === 1n));
}

/**
 * What the running command leaves if it is interrupted now, for the line printed then (the
 * import says whether it was rolled back or can be continued). `undefined` clears it.
 */
export function setInterruptNote(describe: ((signal: HandledSignal) => string) | undefined): void {
  note = describe;
}

function ignore(): void {
  // A signal that was ignored when userport started stays ignored.
}

/**
 * Work the running command finishes before the process dies of a signal, for at most
 * {@link WIND_DOWN_MS}: an atomic import is stopped through its AbortSignal, so it rolls back and
 * takes away the schema its migration made in a database that had none (a process that just died
 * would leave those tables, empty). A second signal meanwhile ends the process at once.
 * `undefined` clears it.
 */
export function setInterruptWork(work: (() => Promise<void>) | undefined): void {
  windDown = work;
}

/** Whether a signal (or the parent going away) is stopping the process. */
export function interrupted(): boolean {
  return stopping;
}

/** How long a signal waits for the running command's wind-down before the process dies. */
const WIND_DOWN_MS = 5000;

function stop(signal: HandledSignal, cause: string): void {
  if (stopping) return;
  stopping = true;
  if (parentTimer) clearInterval(parentTimer);
  // From here a second signal has its default action: it ends the process at once.
  for (const sig of SIGNALS) { process.off(sig, onSignal); process.off(sig, ignore); }
  let done = false;
  const die = () => {
    if (done) return;
    done = true;
    clearTimeout(deadline);
    removeLiveSpoolsSync();
    removeLiveTempFilesSync();
    const what = note?.(signal);
    // Synchronous: the process dies right after. On a terminal, first erase the progress line.
    try {
      fs.writeSync(2, `${process.stderr.isTTY ? '\r\x1b[K' : ''}userport: ${cause}${what ? `: ${what}` : ''}\n`);
    } catch { /* stderr is gone: nothing to tell */ }
    // Nobody else listens: re-raise, so the exit status says which signal ended the process.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  };
  const work = windDown;
  const deadline = work ? setTimeout(die, WIND_DOWN_MS) : undefined;
  if (work) work().then(die, die);
  else die();
}

function onSignal(signal: NodeJS.Signals): void {
  stop(signal as HandledSignal, `interrupted by ${signal} (exit ${128 + NUMBERS[signal as HandledSignal]})`);
}

/**
 * Installs the handlers (idempotent): temporary files removed on exit and on SIGINT, SIGTERM and
 * SIGHUP, except a signal ignored at launch, which stays ignored; and, unless SIGHUP was ignored
 * at launch (`nohup`: the user asked the command to outlive its terminal), a watch on the parent
 * process: when it goes away (`npx` under a supervisor's SIGTERM exits at once, leaving its child
 * running) the command stops as on SIGTERM.
 */
export function installSpoolCleanup(): void {
  if (installed) return;
  installed = true;
  process.on('exit', () => { removeLiveSpoolsSync(); removeLiveTempFilesSync(); });
  const ignored = ignoredAtLaunch();
  for (const sig of SIGNALS) process.on(sig, ignored.has(sig) ? ignore : onSignal);
  const parent = process.ppid;
  if (!ignored.has('SIGHUP') && parent > 1) {
    parentTimer = setInterval(() => {
      if (process.ppid !== parent) stop('SIGTERM', `the process that started userport (pid ${parent}) went away: stopping as on SIGTERM (exit 143)`);
    }, PARENT_POLL_MS);
    parentTimer.unref();
  }
}

/** Whether standard output was closed when userport started (`>&-`; see bin/userport.js). */
export function stdoutClosedAtLaunch(): boolean {
  return process.env.USERPORT_LAUNCH_STDOUT === 'closed';
}

/** The error of a command asked to write DEST `-` to a standard output that was closed at launch. */
export function closedStdout(): UserportError {
  return new UserportError(ErrorCodes.IO, 'standard output is closed (>&-): DEST - has nowhere to go; give a file, or redirect standard output');
}
