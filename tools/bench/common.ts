/**
 * What the size runs and the scenarios share: how the import is run and measured, the export
 * generation, and the expected rows of a generated export.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createExportGenerator, type GenerateCounts, type GenerateOptions } from '../generate.js';
import { runMeasured, type MeasuredRun } from './child.js';
import { withCpu, type ServerCpuMeter } from './cpu.js';
import { IMPORTED_TABLES } from './copy-floor.js';
import { countRows } from './databases.js';
import type { Check, ImportMeasurement, Skipped } from './results.js';

export const MB = 1e6;

export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function tail(s: string, lines = 3): string {
  return s.trim().split('\n').slice(-lines).join(' | ');
}

/**
 * How the import is run: the CLI (`bin/userport.js import users ...`) when it is built, else the
 * library entry `importUsers` from a one-line script, so figures exist before the CLI lands.
 * Either way it is a separate Node process.
 */
export type ImportRunner = { kind: 'cli'; bin: string } | { kind: 'library'; module: string };

export function importRunner(bin: string | undefined): ImportRunner | Skipped {
  if (bin !== undefined) return fs.existsSync(bin) ? { kind: 'cli', bin } : { skipped: `${bin} does not exist` };
  if (fs.existsSync(path.join(PACKAGE_ROOT, 'dist', 'pipelines', 'cli.js'))) return { kind: 'cli', bin: path.join(PACKAGE_ROOT, 'bin', 'userport.js') };
  const module = path.join(PACKAGE_ROOT, 'dist', 'lib', 'import.js');
  if (fs.existsSync(module)) return { kind: 'library', module };
  return { skipped: 'the import is not built (neither dist/pipelines/cli.js nor dist/lib/import.js exists)' };
}

/**
 * The Node flags in the launcher's shebang (`#!/usr/bin/env -S node --max-old-space-size=192 ...`).
 * Users run the launcher directly and get them; the benchmark runs it with this Node binary and
 * must pass them itself, or it measures a differently tuned process.
 */
export function shebangNodeFlags(bin: string): string[] {
  const [first = '', second = ''] = fs.readFileSync(bin, 'utf8').split('\n', 2);
  if (!first.startsWith('#!')) return [];
  // A /bin/sh launcher (bin/userport.js) names node on its second line: `... exec node FLAGS "$0"`.
  const line = first.trim() === '#!/bin/sh' ? (/\bexec node (.*)$/.exec(second)?.[0] ?? '') : first.slice(2);
  const words = line.trim().split(/\s+/);
  const node = words.findIndex((w) => w === 'node' || w.endsWith('/node'));
  return node < 0 ? [] : words.slice(node + 1).filter((w) => w.startsWith('--'));
}

/** The child's arguments; `extraArgs` (CLI flags such as `--resumable`) need the CLI runner. */
export function importCommand(runner: ImportRunner, file: string, url: string, privateKeyFile: string | undefined, extraArgs: readonly string[] = [],
  scope: 'users' | 'config' | 'global' = 'users'): string[] {
  if (runner.kind === 'cli') {
    return [...shebangNodeFlags(runner.bin), runner.bin, 'import', scope, file, '--database-url', url, '--json', '--no-progress',
      ...(privateKeyFile ? ['--decrypt-with', privateKeyFile] : []), ...extraArgs];
  }
  if (extraArgs.length || scope !== 'users') throw new Error(`import ${scope} ${extraArgs.join(' ')} needs the CLI (dist/pipelines/cli.js)`);
  const imp = pathToFileURL(runner.module).href;
  const dec = pathToFileURL(path.join(PACKAGE_ROOT, 'dist', 'lib', 'decrypt.js')).href;
  const script = `const { importUsers } = await import(${JSON.stringify(imp)});
const [source, databaseUrl, key] = process.argv.slice(1);
const decrypt = key ? (await import(${JSON.stringify(dec)})).createLocalKeyUnwrapper({ privateKeyPath: key }) : undefined;
process.stdout.write(JSON.stringify(await importUsers({ source, databaseUrl, ...(decrypt ? { decrypt } : {}) })));`;
  return ['--input-type=module', '-e', script, file, url, ...(privateKeyFile ? [privateKeyFile] : [])];
}

export function parseSummary(stdout: string): unknown {
  const text = stdout.trim();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    // Some CLIs print one JSON document per line: keep the last one.
    const last = text.split('\n').reverse().find((l) => l.trim().startsWith('{'));
    try { return last ? JSON.parse(last) : text; } catch { return text; }
  }
}

export interface ImportRun {
  /** The export's records and bytes, for the rates. */
  records: number;
  bytes: number;
  privateKeyFile?: string;
  timeoutSeconds?: number;
  /** More CLI flags (`--resumable --import-id X`, `--filter-usernames-file F`, `--bulk-load off`). */
  args?: readonly string[];
  /** Measures the server's CPU seconds during the import too ({@link ImportMeasurement.cpu}). */
  meter?: ServerCpuMeter | Skipped;
  /** The import's scope (`import users|config|global`). @default 'users' */
  scope?: 'users' | 'config' | 'global';
  /** Tables whose rows are counted afterwards. @default IMPORTED_TABLES */
  tables?: readonly string[];
}

/** Runs one import in its own process and measures it; a failed or timed-out import is a {@link Skipped} with the reason. */
export async function runImport(runner: ImportRunner, file: string, url: string, o: ImportRun): Promise<ImportMeasurement | Skipped> {
  const { records, bytes, timeoutSeconds, args = [] } = o;
  // The server's share from the meter; the client's is the child's own (withCpu's is this process).
  const { result: run, cpu: { server } } = await withCpu(o.meter ?? { skipped: 'not asked' }, (): Promise<MeasuredRun> =>
    runMeasured(process.execPath, importCommand(runner, file, url, o.privateKeyFile, args, o.scope), timeoutSeconds ? { timeoutMs: timeoutSeconds * 1000 } : {}));
  if (run.signal === 'SIGKILL' && timeoutSeconds && run.seconds >= timeoutSeconds) {
    return { skipped: `did not finish within ${timeoutSeconds} s (killed; --import-timeout)` };
  }
  if (run.code !== 0) return { skipped: `userport import exited with ${run.code ?? run.signal}: ${tail(run.stderr || run.stdout)}` };
  return {
    seconds: run.seconds,
    recordsPerSec: records / run.seconds,
    mbPerSec: bytes / MB / run.seconds,
    peakRssBytes: run.peakRssBytes,
    rssSource: run.rssSource,
    ...(o.meter ? { cpu: { server, client: run.cpuSeconds } } : {}),
    via: runner.kind === 'cli' ? `node ${[...shebangNodeFlags(runner.bin), 'bin/userport.js'].join(' ')} import ${o.scope ?? 'users'}${args.length ? ` ... ${args.map((a) => path.basename(a)).join(' ')}` : ''}`
      : 'importUsers() in a child process (the CLI is not built yet)',
    rows: await countRows(url, o.tables ?? IMPORTED_TABLES),
    summary: parseSummary(run.stdout),
  };
}

export function countsCheck(name: string, expected: unknown, actual: unknown): Check {
  return { name, ok: JSON.stringify(expected) === JSON.stringify(actual), expected, actual };
}

/**
 * What a user-scope import of a generated export must write, following Sentry's semantics:
 * every user is inserted (case-insensitive username collisions are renamed, not merged), one
 * Email row per distinct address, every UserEmail, global UserOptions only (org-scoped ones have
 * no org to map to), one LostPasswordHash per inserted user.
 */
export function expectedRows(counts: GenerateCounts): Record<string, number> {
  const r = counts.records;
  return {
    auth_user: r['sentry.user'] ?? 0,
    sentry_email: r['sentry.email'] ?? 0,
    sentry_useremail: r['sentry.useremail'] ?? 0,
    sentry_useroption: (r['sentry.useroption'] ?? 0) - counts.orgScopedOptions,
    sentry_lostpasswordhash: r['sentry.user'] ?? 0,
  };
}

/** Writes a generated export to `file`, timed. */
export async function generateExport(file: string, options: GenerateOptions): Promise<{ counts: GenerateCounts; seconds: number; records: number }> {
  const started = process.hrtime.bigint();
  const gen = createExportGenerator(options);
  await pipeline(gen, fs.createWriteStream(file));
  return { counts: gen.counts, seconds: Number(process.hrtime.bigint() - started) / 1e9, records: Object.values(gen.counts.records).reduce((a, b) => a + b, 0) };
}

