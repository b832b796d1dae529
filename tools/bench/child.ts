/**
 * Runs a command as a separate process and measures it: wall time and the peak resident set
 * size of that process alone (never the benchmark's own memory).
 *
 * Peak RSS and CPU time come from `/usr/bin/time -f '%M %U %S'` when present (the kernel's
 * `ru_maxrss` and `ru_utime`/`ru_stime` of the child, exact); otherwise `/proc/<pid>/status` VmHWM
 * and `/proc/<pid>/stat` are polled every 20 ms: a high-water mark and a running total, so only
 * the last few milliseconds before exit can be missed.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { processCpuSeconds } from './cpu.js';

export interface MeasuredRun {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall-clock seconds from spawn to exit. */
  seconds: number;
  /** Peak resident set size of the process in bytes, when it could be measured. */
  peakRssBytes: number | null;
  /** CPU seconds (user + system) of the process, when it could be measured. */
  cpuSeconds: number | null;
  /** How the peak RSS was read. */
  rssSource: 'time' | 'proc' | 'none';
  /** With `killOn`: seconds from spawn until the pattern showed on stderr and the process group was killed. */
  killedAfter?: number;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Kill the process (and its process group) after this many ms. @default no limit */
  timeoutMs?: number;
  /** SIGKILL the process group as soon as its stderr matches this (a line written by the child, e.g. a trace). */
  killOn?: RegExp;
}

const TIME = '/usr/bin/time';

/** Spawns `command args`, resolves when it exits (whatever the exit code). */
export async function runMeasured(command: string, args: string[], options: RunOptions = {}): Promise<MeasuredRun> {
  const useTime = fs.existsSync(TIME);
  const timeFile = useTime ? path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'userport-time-')), 'rss') : '';
  const [cmd, argv] = useTime ? [TIME, ['-f', '%M %U %S', '-o', timeFile, command, ...args]] : [command, args];
  const started = process.hrtime.bigint();
  // Its own process group, so a timeout kills the measured process and not only /usr/bin/time.
  const child = spawn(cmd, argv, { env: options.env ?? process.env, cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  let killedAfter: number | undefined;
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    // Keep the tail only: a chatty child must not grow the benchmark's memory.
    stderr = (stderr + d).slice(-64 * 1024);
    // The new text and what came just before it: a line may arrive in two pieces.
    if (options.killOn && killedAfter === undefined && options.killOn.test(stderr.slice(-(d.length + 4096)))) {
      killedAfter = Number(process.hrtime.bigint() - started) / 1e9;
      try { process.kill(-child.pid!, 'SIGKILL'); } catch { child.kill('SIGKILL'); }
    }
  });
  let polled = 0;
  let polledCpu: number | null = null;
  const poll = useTime ? undefined : setInterval(() => {
    try {
      const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const m = /VmHWM:\s+(\d+) kB/.exec(status);
      if (m) polled = Math.max(polled, Number(m[1]) * 1024);
      polledCpu = processCpuSeconds(child.pid!);
    } catch { /* exited between polls */ }
  }, 20);
  const timer = options.timeoutMs ? setTimeout(() => {
    try { process.kill(-child.pid!, 'SIGKILL'); } catch { child.kill('SIGKILL'); }
  }, options.timeoutMs) : undefined;
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c, s) => resolve([c, s]));
  }).finally(() => {
    if (poll) clearInterval(poll);
    if (timer) clearTimeout(timer);
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  let peakRssBytes: number | null = polled || null;
  let rssSource: MeasuredRun['rssSource'] = polled ? 'proc' : 'none';
  let cpuSeconds: number | null = polledCpu as number | null;
  if (useTime) {
    try {
      // GNU time writes "Command exited with non-zero status N" before the figures on failure.
      const lines = fs.readFileSync(timeFile, 'utf8').trim().split('\n');
      const [kb, user, sys] = lines[lines.length - 1]!.trim().split(/\s+/).map(Number);
      if (Number.isFinite(kb) && kb! > 0) { peakRssBytes = kb! * 1024; rssSource = 'time'; }
      if (Number.isFinite(user) && Number.isFinite(sys)) cpuSeconds = user! + sys!;
    } catch { /* no figure */ }
    fs.rmSync(path.dirname(timeFile), { recursive: true, force: true });
  }
  return { code, signal, stdout, stderr, seconds, peakRssBytes, cpuSeconds, rssSource, ...(killedAfter === undefined ? {} : { killedAfter }) };
}
