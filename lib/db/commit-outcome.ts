/**
 * Whether an import's final COMMIT went through when its answer was lost (the connection failed
 * after COMMIT was sent): asked on a new connection, from the import's row, once the session that
 * sent it is gone. `importUsers` asks; a run of the same command later finds the import done.
 */
import pg from 'pg';
import { ownerName } from './imports.js';

/** How long {@link commitOutcome} waits for the session that sent a COMMIT to end. */
const OUTCOME_WAIT_MS = 30_000;

/**
 * Whether `run`'s final transaction committed, when the connection was lost after its COMMIT was
 * sent (the answer never came). Asked on a new connection, once the session that sent the COMMIT
 * (backend `pid`) is gone, so its transaction has ended one way or the other: `committed` when
 * the import's row says done (the row is written in that transaction), `rolled-back` when not,
 * `unknown` when the database cannot be asked or the session does not end. Never throws.
 */
export async function commitOutcome(databaseUrl: string, run: number, pid: number | undefined): Promise<'committed' | 'rolled-back' | 'unknown'> {
  const client = new pg.Client({ connectionString: databaseUrl, application_name: ownerName(), connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const deadline = Date.now() + OUTCOME_WAIT_MS;
    while (pid !== undefined && (await client.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount) {
      if (Date.now() > deadline) return 'unknown';
      await new Promise((r) => setTimeout(r, 100));
    }
    const r = await client.query<{ state: string }>('SELECT state FROM userport.imports WHERE run = $1', [run]);
    return r.rows[0]?.state === 'done' ? 'committed' : 'rolled-back';
  } catch {
    return 'unknown';
  } finally {
    await client.end().catch(() => undefined);
  }
}
