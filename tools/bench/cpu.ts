/**
 * CPU seconds (user + system) that PostgreSQL spent while a measured run went on: with the
 * client's own CPU seconds beside the wall time, the profile that says which side bounds a run
 * (one backend does all of an import's SQL, so PostgreSQL CPU close to the wall time means the
 * server is the limit, and the client waits).
 *
 * Read from Linux's /proc, so only for a server on this machine: the postmaster's own time plus
 * that of its children, the exited ones (which the postmaster has reaped: `cutime`/`cstime`) and
 * the running ones (backends, autovacuum, checkpointer, WAL writer). Background work that happens
 * to run meanwhile is counted too; it is part of what a load costs the server.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { databaseUrl, withClient } from './databases.js';
import type { CpuSeconds, Skipped } from './results.js';

/** Reads the server's cumulative CPU seconds; the difference of two readings is what it spent in between. */
export interface ServerCpuMeter {
  seconds(): number;
}

let ticks: number | undefined;

/** Clock ticks per second of /proc's times (`getconf CLK_TCK`, 100 on every common Linux). */
function clockTicks(): number {
  if (ticks === undefined) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number(r.stdout?.trim());
    ticks = Number.isInteger(n) && n > 0 ? n : 100;
  }
  return ticks;
}

/** Fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses). */
function statFields(pid: number): string[] {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return s.slice(s.lastIndexOf(')') + 2).split(' ');
}

// Indexes into statFields: ppid is field 4 of stat(5), utime..cstime fields 14..17.
const PPID = 1;
const UTIME = 11;

/** CPU seconds (user + system) a running process has used so far, from /proc/<pid>/stat. */
export function processCpuSeconds(pid: number): number {
  const f = statFields(pid);
  return (Number(f[UTIME]) + Number(f[UTIME + 1])) / clockTicks();
}

/** The server's cumulative CPU ticks: the postmaster (itself and reaped children) and its running children. */
function serverTicks(postmaster: number): number {
  const f = statFields(postmaster);
  let total = Number(f[UTIME]) + Number(f[UTIME + 1]) + Number(f[UTIME + 2]) + Number(f[UTIME + 3]);
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const c = statFields(Number(name));
      if (Number(c[PPID]) === postmaster) total += Number(c[UTIME]) + Number(c[UTIME + 1]);
    } catch { /* exited while listed */ }
  }
  return total;
}

/**
 * A meter for the server at `serverUrl`, or why there is none: the server must run on this
 * machine, visible in /proc, and the role must be allowed to read `data_directory` (superuser or
 * pg_read_all_settings), whose postmaster.pid names the postmaster: a pid number alone could
 * belong to an unrelated local process when the server is elsewhere.
 */
export async function serverCpuMeter(serverUrl: string): Promise<ServerCpuMeter | Skipped> {
  if (!fs.existsSync('/proc/self/stat')) return { skipped: 'no /proc on this machine' };
  return withClient(databaseUrl(serverUrl, 'postgres'), async (c): Promise<ServerCpuMeter | Skipped> => {
    let backend: number;
    let dataDir: string | null;
    try {
      const r = await c.query(`SELECT pg_backend_pid() AS pid, current_setting('data_directory', true) AS dir`);
      backend = Number(r.rows[0].pid);
      dataDir = r.rows[0].dir as string | null;
    } catch (err) {
      return { skipped: `cannot read the server's data_directory: ${(err as Error).message}` };
    }
    if (!dataDir) return { skipped: 'this role cannot read the server\'s data_directory' };
    let postmaster: number;
    try {
      postmaster = Number(fs.readFileSync(`${dataDir}/postmaster.pid`, 'utf8').split('\n', 1)[0]);
    } catch {
      return { skipped: `the server is not on this machine (no readable ${dataDir}/postmaster.pid)` };
    }
    // Checked while this connection's backend still runs.
    try {
      if (Number(statFields(backend)[PPID]) !== postmaster) return { skipped: 'the server is not on this machine (its backend is not a child of the postmaster here)' };
    } catch {
      return { skipped: 'the server is not on this machine (its backend is not in /proc)' };
    }
    const hz = clockTicks();
    return { seconds: () => serverTicks(postmaster) / hz };
  });
}

/** Runs `fn`, measuring the server's CPU seconds (with `meter`) and this process's own. */
export async function withCpu<T>(meter: ServerCpuMeter | Skipped, fn: () => Promise<T>): Promise<{ result: T; cpu: CpuSeconds }> {
  const live = 'seconds' in meter ? meter : undefined;
  const s0 = live?.seconds();
  const c0 = process.cpuUsage();
  const result = await fn();
  const c1 = process.cpuUsage(c0);
  const s1 = live?.seconds();
  return { result, cpu: { server: live ? s1! - s0! : null, client: (c1.user + c1.system) / 1e6 } };
}
