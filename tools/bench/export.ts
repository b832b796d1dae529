/**
 * The export measurement: `userport export users` run as users run it (the launcher's V8 flags,
 * a separate process, so its peak RSS is its own) on the database an import just wrote, against
 * the `COPY ... TO STDOUT` floor of the same four tables read in one snapshot, which is what
 * PostgreSQL alone needs to hand that data out on this machine.
 */
import fs from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { to as copyTo } from 'pg-copy-streams';
import { runMeasured } from './child.js';
import { inTransaction, withClient } from './databases.js';
import type { ExportMeasurement, Skipped } from './results.js';

/** The tables a user-scope export reads, in the order it reads them. */
export const EXPORTED_TABLES = ['auth_user', 'sentry_email', 'sentry_useroption', 'sentry_useremail'] as const;

const MB = 1e6;

/** Seconds and bytes of `COPY <table> TO STDOUT` for every exported table, in one REPEATABLE READ transaction. */
export async function copyToFloor(url: string): Promise<{ seconds: number; bytes: number; rows: number }> {
  return withClient(url, async (c) => {
    let bytes = 0;
    let rows = 0;
    const started = process.hrtime.bigint();
    await inTransaction(c, async () => {
      for (const table of EXPORTED_TABLES) {
        const q = c.query(copyTo(`COPY ${table} TO STDOUT`));
        // Counted and dropped: the floor is what the server and the socket cost, not a disk.
        await pipeline(q, new Writable({ write(chunk: Buffer, _e, cb) { bytes += chunk.length; cb(); } }));
        rows += q.rowCount;
      }
    }, 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    return { seconds: Number(process.hrtime.bigint() - started) / 1e9, bytes, rows };
  });
}

/**
 * Runs `<node> <flags> <bin> export users <dest> --database-url <url> --json` and the COPY TO
 * floor; `dest` is removed afterwards unless `keep`.
 */
export async function measureExport(nodeArgs: string[], bin: string, url: string, dest: string, keep: boolean): Promise<ExportMeasurement | Skipped> {
  const run = await runMeasured(process.execPath, [...nodeArgs, bin, 'export', 'users', dest, '--database-url', url, '--json', '--no-progress', '--no-prompt']);
  if (run.code !== 0) return { skipped: `userport export exited with ${run.code ?? run.signal}: ${run.stderr.trim().split('\n').slice(-2).join(' | ')}` };
  const summary = JSON.parse(run.stdout) as { records: number; bytes: number };
  const fileBytes = fs.statSync(dest).size;
  if (!keep) fs.rmSync(dest, { force: true });
  const floor = await copyToFloor(url);
  return {
    seconds: run.seconds,
    records: summary.records,
    bytes: fileBytes,
    recordsPerSec: summary.records / run.seconds,
    mbPerSec: fileBytes / MB / run.seconds,
    peakRssBytes: run.peakRssBytes,
    copyToFloor: { seconds: floor.seconds, bytes: floor.bytes, rows: floor.rows, recordsPerSec: floor.rows / floor.seconds, mbPerSec: floor.bytes / MB / floor.seconds },
    ratioToCopyToFloor: run.seconds / floor.seconds,
  };
}
