/**
 * Moments the code under test reaches, for specs that inject a fault (a SIGKILL, a server stop, a
 * destroy()). A fault injected after a fixed sleep lands somewhere else on a fast or a loaded
 * machine: too late, and the spec fails as a wrong result (or passes without testing anything).
 * These helpers wait for a moment the database (or the network) can see, and fail with
 * "precondition not met" when the moment never comes, so a fault that cannot be placed is told
 * apart from a fault the code handled wrongly.
 */
import type { ChildProcess } from 'node:child_process';
import net from 'node:net';
import pg from 'pg';
import { ownerName } from '../../lib/db/imports.js';

export { MERGE_LOCK_KEY } from '../../lib/db/merge/index.js';

/**
 * Advisory lock key of the import gate ({@link installImportGate}); spec-only, next to the keys
 * userport uses (7472117101 migrations, 7472117102 merges, 747211 imports).
 */
export const GATE_KEY = 7472117190;

/** How long a spec waits for a moment before it gives up: generous, the machine is shared. */
const DEFAULT_TIMEOUT_MS = 120_000;

export interface PollOptions {
  /** Stop waiting when this process exits first (the moment can no longer come). */
  child?: ChildProcess;
  /** @default 120 s */
  timeoutMs?: number;
  /** @default 50 ms */
  intervalMs?: number;
}

const exited = (child: ChildProcess | undefined) => !!child && (child.exitCode !== null || child.signalCode !== null);

/**
 * The first value `probe` resolves to other than undefined, polled; undefined when `child` exits
 * first or the time runs out. For callers that report the miss themselves.
 */
export async function poll<T>(probe: () => Promise<T | undefined>, opts: PollOptions = {}): Promise<T | undefined> {
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  for (;;) {
    if (exited(opts.child)) return undefined;
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) return undefined;
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}

/** Fails the test: the fault could not be placed where the spec means it. */
export function preconditionNotMet(what: string): Error {
  return new Error(`precondition not met: ${what}`);
}

/** Like {@link poll}, but a moment that never comes fails the test as "precondition not met: `what`". */
export async function reached<T>(what: string, probe: () => Promise<T | undefined>, opts: PollOptions = {}): Promise<T> {
  const v = await poll(probe, opts);
  if (v !== undefined) return v;
  const why = exited(opts.child) ? `the process exited first (code ${opts.child!.exitCode}, signal ${opts.child!.signalCode})` : 'timed out';
  throw preconditionNotMet(`${what} (${why})`);
}

/** A session of its own on `url` that survives (ignores) the server going away under it. */
export async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url, application_name: 'userport-spec' });
  // A spec that stops the server on purpose must not crash on this session's 'error'.
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/** A running import's session as pg_stat_activity shows it. */
export interface Session { pid: number; query: string }

/**
 * The session of the import run by process `child` (its application_name names the pid, see
 * ownerName) while it waits for advisory lock `key`, if it does now.
 */
export async function waitingForLock(c: pg.ClientBase, child: ChildProcess, key: number): Promise<Session | undefined> {
  // A one-key advisory lock shows in pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid 1.
  const r = await c.query<Session>(
    `SELECT a.pid, a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)
     WHERE NOT l.granted AND l.locktype = 'advisory' AND l.objsubid = 1
       AND l.classid = ($2::bigint >> 32)::oid AND l.objid = ($2::bigint & 4294967295)::oid AND a.application_name = $1`,
    [ownerName(child.pid), key]);
  return r.rows[0];
}

/** Holds session advisory lock `key` on its own connection until released (or the server dies). */
export interface HeldLock {
  release(): Promise<void>;
}

export async function holdLock(url: string, key: number): Promise<HeldLock> {
  const c = await connect(url);
  await c.query('SELECT pg_advisory_lock($1)', [key]);
  return {
    async release() {
      await c.query('SELECT pg_advisory_unlock($1)', [key]).catch(() => undefined);
      await c.end().catch(() => undefined);
    },
  };
}

/** Where {@link ImportGate} stops imports. */
export interface GatePosition {
  /**
   * A resumable import whose committed checkpoint is at least this ordinal stops at its next
   * checkpoint: that batch's rows are staged, its transaction is open, nothing of it committed.
   * null: no stop at checkpoints.
   */
  checkpointAfter: number | null;
  /**
   * Any import stops where it marks itself done: every row merged, in its last transaction,
   * before the COMMIT.
   */
  atFinish: boolean;
}

/**
 * A gate in the import's own bookkeeping: a trigger on `userport.imports` makes the import's
 * session wait for {@link GATE_KEY}, held by the spec, at the moment {@link GatePosition} names.
 * The import then sits, provably mid-way and for as long as the spec needs, where the fault is
 * meant to hit. It changes nothing else: once the lock is free, the trigger passes.
 */
export interface ImportGate {
  /** Moves the stop; the import reads it at each checkpoint (READ COMMITTED). */
  set(position: GatePosition): Promise<void>;
  /** The session of `child`'s import while it waits at the gate, if it does now. */
  waiting(child: ChildProcess): Promise<Session | undefined>;
  /** Frees the gate: an import waiting there goes on, later ones pass. */
  open(): Promise<void>;
  /**
   * Frees the gate and drops its table, function and trigger (on a new connection: the server
   * may have been restarted since).
   */
  remove(): Promise<void>;
}

/** Installs (or re-installs) the gate on the migrated database at `url`, closed at `position`. */
export async function installImportGate(url: string, position: GatePosition): Promise<ImportGate> {
  const c = await connect(url);
  let holding = false;
  try {
    await c.query(`
      CREATE TABLE IF NOT EXISTS userport_spec_gate (checkpoint_after bigint, at_finish boolean NOT NULL);
      CREATE OR REPLACE FUNCTION userport_spec_gate() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE g userport_spec_gate;
      BEGIN
        SELECT * INTO g FROM userport_spec_gate LIMIT 1;
        IF (NEW.checkpoint_ordinal > OLD.checkpoint_ordinal AND OLD.checkpoint_ordinal >= g.checkpoint_after)
           OR (g.at_finish AND NEW.state = 'done' AND OLD.state <> 'done') THEN
          PERFORM pg_advisory_xact_lock(${GATE_KEY});
        END IF;
        RETURN NEW;
      END $$;
      CREATE OR REPLACE TRIGGER userport_spec_gate BEFORE UPDATE ON userport.imports FOR EACH ROW EXECUTE FUNCTION userport_spec_gate();`);
    const set = async (p: GatePosition) => {
      await c.query('BEGIN');
      await c.query('DELETE FROM userport_spec_gate');
      await c.query('INSERT INTO userport_spec_gate (checkpoint_after, at_finish) VALUES ($1, $2)', [p.checkpointAfter, p.atFinish]);
      await c.query('COMMIT');
    };
    await set(position);
    await c.query('SELECT pg_advisory_lock($1)', [GATE_KEY]);
    holding = true;
    const open = async () => {
      if (holding) await c.query('SELECT pg_advisory_unlock($1)', [GATE_KEY]).catch(() => undefined);
      holding = false;
    };
    return {
      set,
      waiting: (child) => waitingForLock(c, child, GATE_KEY),
      open,
      async remove() {
        await open();
        await c.end().catch(() => undefined);
        const d = await connect(url);
        try {
          await d.query(`DROP TRIGGER IF EXISTS userport_spec_gate ON userport.imports;
            DROP FUNCTION IF EXISTS userport_spec_gate(); DROP TABLE IF EXISTS userport_spec_gate`);
        } finally {
          await d.end();
        }
      },
    };
  } catch (err) {
    await c.end().catch(() => undefined);
    throw err;
  }
}

/** The committed bookkeeping row of import `id`, as another session sees it. */
export async function committedImport(c: pg.ClientBase, id: string): Promise<{ state: string; checkpoint: number } | undefined> {
  const r = await c.query<{ state: string; checkpoint: string }>('SELECT state, checkpoint_ordinal AS checkpoint FROM userport.imports WHERE id = $1', [id]);
  const row = r.rows[0];
  return row && { state: row.state, checkpoint: Number(row.checkpoint) };
}

/**
 * Listens on the (stopped) server's address in its place, to see a client try to connect while
 * no server is there: each connection is dropped at once, as a server that is not up refuses it.
 */
export interface StandIn {
  /** Resolves once a client has tried to connect; "precondition not met" when `child` exits first or time runs out. */
  tried(what: string, child: ChildProcess, timeoutMs?: number): Promise<void>;
  /** Stops listening, so the real server can take the port. */
  close(): Promise<void>;
}

export async function standInServer(url: string): Promise<StandIn> {
  const u = new URL(url);
  let attempts = 0;
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    attempts++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    s.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(Number(u.port), u.hostname, () => resolve());
  });
  return {
    async tried(what, child, timeoutMs) {
      await reached(what, async () => (attempts > 0 ? true : undefined), { child, timeoutMs });
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => srv.close(() => resolve()));
    },
  };
}
