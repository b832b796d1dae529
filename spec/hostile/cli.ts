/**
 * Running the real CLI binary from tests: exit code, output, peak RSS; reading its one-line error
 * (`userport: <message> (<position>) [<CODE>]`) back into fields; counting what an import left.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { TestDb } from '../helpers/db.js';
import { BOOKKEEPING_TABLES, TARGET_TABLES } from './fuzz-core.js';
import { tmpPath } from '../helpers/setup.js';

export const BIN = path.resolve('bin/userport.js');
const TIME = '/usr/bin/time';

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Peak resident set size of the node process, in bytes. */
  peakRss: number;
}

/** Reads VmHWM (peak RSS) of a live process from /proc, in bytes; 0 when it is gone. */
function vmHwm(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * Runs `node bin/userport.js ...args`. Peak RSS comes from GNU time (`%M`, from the kernel's
 * rusage of the exited child) when /usr/bin/time exists, else from polling /proc/<pid>/status.
 */
let gnuTime: boolean | undefined;

/** True when /usr/bin/time is GNU time (BusyBox's has no -f/-o). */
function hasGnuTime(): boolean {
  if (gnuTime !== undefined) return gnuTime;
  if (process.env.USERPORT_TEST_RSS === 'proc') return (gnuTime = false); // force the /proc fallback
  const out = tmpPath('userport-time-probe');
  try {
    const r = spawnSync(TIME, ['-f', '%M', '-o', out, process.execPath, '-e', '0']);
    gnuTime = r.status === 0 && /^\d+\s*$/.test(fs.readFileSync(out, 'utf8'));
  } catch {
    gnuTime = false;
  } finally {
    fs.rmSync(out, { force: true });
  }
  return gnuTime;
}

export function runCli(args: string[], options: { input?: Buffer; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  const useTime = hasGnuTime();
  const rssFile = tmpPath(`userport-rss-${Math.random().toString(36).slice(2)}`);
  const [cmd, argv] = useTime ? [TIME, ['-f', '%M', '-o', rssFile, process.execPath, BIN, ...args]] : [process.execPath, [BIN, ...args]];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...options.env } });
    let stdout = '';
    let stderr = '';
    let peak = 0;
    const poll = useTime ? undefined : setInterval(() => { peak = Math.max(peak, vmHwm(child.pid!)); }, 5);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (poll) clearInterval(poll);
      if (useTime) {
        try {
          // GNU time writes "Command exited with non-zero status N" before the number.
          const lines = fs.readFileSync(rssFile, 'utf8').trim().split('\n');
          peak = Number(lines[lines.length - 1]) * 1024;
        } finally {
          fs.rmSync(rssFile, { force: true });
        }
      }
      resolve({ code, stdout, stderr, peakRss: peak });
    });
    child.stdin.end(options.input ?? Buffer.alloc(0));
  });
}

/** An error line of the CLI, taken apart. Position keys are present only when printed. */
export interface CliError {
  code: string;
  message: string;
  position: { record?: number; model?: string; pk?: string; field?: string; byte?: number; line?: number; column?: number };
}

/** Parses the CLI's error line (the one line starting with `userport: `). Throws if there is none. */
export function parseCliError(stderr: string): CliError {
  const lines = stderr.split('\n').filter((l) => l.startsWith('userport: '));
  if (lines.length !== 1) throw new Error(`expected one error line on stderr, got ${lines.length}:\n${stderr}`);
  const m = /^userport: (.*) \[(USERPORT_[A-Z0-9_]+)\]$/.exec(lines[0]!);
  if (!m) throw new Error(`not a coded error line: ${lines[0]}`);
  let body = m[1]!;
  const position: CliError['position'] = {};
  if (body.endsWith(')')) {
    // The position is the last parenthesised group; it may hold one nested group (model, pk).
    let depth = 0;
    let i = body.length - 1;
    for (; i >= 0; i--) {
      if (body[i] === ')') depth++;
      else if (body[i] === '(' && --depth === 0) break;
    }
    const where = body.slice(i + 1, -1);
    body = body.slice(0, i).trimEnd();
    for (const part of where.split(', ')) {
      let p: RegExpExecArray | null;
      if ((p = /^record (\d+)(?: \((.+?)(?: pk (.+))?\))?$/.exec(part))) {
        position.record = Number(p[1]);
        if (p[2] !== undefined) position.model = p[2];
        if (p[3] !== undefined) position.pk = p[3];
      } else if ((p = /^field (.+)$/.exec(part))) position.field = p[1]!;
      else if ((p = /^byte (\d+)$/.exec(part))) position.byte = Number(p[1]);
      else if ((p = /^line (\d+)$/.exec(part))) position.line = Number(p[1]);
      else if ((p = /^column (\d+)$/.exec(part))) position.column = Number(p[1]);
      else throw new Error(`unknown position part "${part}" in: ${lines[0]}`);
    }
  }
  return { code: m[2]!, message: body, position };
}

/** Row counts of every table an import writes (Sentry's and userport's own). */
export async function tableCounts(db: TestDb): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const t of [...TARGET_TABLES, ...BOOKKEEPING_TABLES]) out[t] = await db.count(t);
  return out;
}

/** The same tables, all at zero: what a failed atomic import must leave. */
export function emptyCounts(): Record<string, number> {
  return Object.fromEntries([...TARGET_TABLES, ...BOOKKEEPING_TABLES].map((t) => [t, 0]));
}
