/**
 * Process-wide handlers of the command-line program. The library installs none (it is embedded in
 * other people's processes); the CLI owns its process, so it removes decryption spools (still
 * encrypted, but large) when it exits or is interrupted, then dies of the signal as it would have.
 */
import { removeLiveSpoolsSync } from '../lib/spool.js';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
let installed = false;

function onSignal(signal: NodeJS.Signals): void {
  removeLiveSpoolsSync();
  for (const sig of SIGNALS) process.off(sig, onSignal);
  // Nobody else listens: re-raise, so the exit status says which signal ended the process.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

/** Removes decryption spools on exit, SIGINT, SIGTERM and SIGHUP. Idempotent. */
export function installSpoolCleanup(): void {
  if (installed) return;
  installed = true;
  process.on('exit', removeLiveSpoolsSync);
  for (const sig of SIGNALS) process.on(sig, onSignal);
}
