/**
 * The `userport` command line. Wiring only: parse arguments, pick the database (given, or the
 * embedded one), call the library, print. Errors become one line and exit code 1.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { defaultEmbeddedDir, embeddedUrl, readEmbeddedConfig, startEmbedded, stopEmbedded } from '../lib/db/embedded.js';
import { checkDatabaseUrl, createKnex, migrate, waitForDatabase } from '../lib/db/knex.js';
import { formatPosition, OptionError, printable, UserportError } from '../lib/errors.js';
import { parseUsernameList } from '../lib/filter-users.js';
import { keyUnwrapperFromOptions } from '../lib/decrypt.js';
import { importUsers, type Progress } from '../lib/import.js';
import type { ImportSummary } from '../lib/stats.js';
import { runDecryptCommand, runEncryptCommand } from './crypto-commands.js';
import { runExportCommand } from './export-command.js'; // issue #10: `export users` dispatch

const HELP = `userport: import Sentry user exports into PostgreSQL, streaming, in constant memory.

Usage:
  userport import users SRC [options]   import an export (SRC is a file, or - for stdin)
  userport imports [--json]             list past imports with their state and counts
  userport migrate                      create or upgrade the tables, nothing else
  userport encrypt --encrypt-with PUB SRC DEST     encrypt an export like 'sentry backup encrypt'
  userport decrypt --decrypt-with KEY SRC DEST     decrypt an export like 'sentry backup decrypt'
  userport db url|psql|stop             the embedded database: its URL, a psql shell, stop it

Database: --database-url URL, else $DATABASE_URL, else an embedded PostgreSQL kept in
.userport/pgdata under the current directory (started on demand, left running).

Import options:
  --merge-users                   reuse an existing user with the same username (case-insensitive)
                                  instead of importing it as <username>-<random>
  --filter-usernames A,B          import only these users and what belongs to them
  --filter-usernames-file F       the same, names separated by commas or newlines
  --dry-run                       do everything, report, then roll back
  --resumable [--import-id ID]    commit in batches; run again with the same id to resume
  --batch-rows N                  rows per commit in resumable mode (default 20000)
  --rejects-file F                write records that fail validation to F (JSON lines), go on
  --max-rejects N                 with --rejects-file: abort after N rejects
  --findings-file F               write every finding (dropped, renamed, merged rows) as JSON
  --max-record-bytes N            refuse records larger than N bytes (default 1048576)
  --max-depth N                   refuse nesting deeper than N (default 64)
  --decrypt-with KEY.pem          SRC is an encrypted export; decrypt with this RSA private key
  --decrypt-passphrase-file F     passphrase of an encrypted private key
  --decrypt-with-gcp-kms CFG      unwrap the export's key with Google Cloud KMS (config JSON)
  --json                          print the summary as JSON on stdout
  --no-progress                   no progress line on stderr
  --silent                        print nothing but errors (and --json output)
  --debug                         print stack traces with errors
`;

const IMPORT_OPTIONS = {
  'database-url': { type: 'string' },
  'merge-users': { type: 'boolean' },
  'filter-usernames': { type: 'string' },
  'filter-usernames-file': { type: 'string' },
  'dry-run': { type: 'boolean' },
  resumable: { type: 'boolean' },
  'import-id': { type: 'string' },
  'batch-rows': { type: 'string' },
  'rejects-file': { type: 'string' },
  'max-rejects': { type: 'string' },
  'findings-file': { type: 'string' },
  'max-record-bytes': { type: 'string' },
  'max-depth': { type: 'string' },
  'decrypt-with': { type: 'string' },
  'decrypt-passphrase-file': { type: 'string' },
  'decrypt-with-gcp-kms': { type: 'string' },
  json: { type: 'boolean' },
  'no-progress': { type: 'boolean' },
  silent: { type: 'boolean' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

function intOption(name: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min) throw new OptionError(`--${name} must be an integer >= ${min}, got "${v}"`);
  return n;
}

/** Runs parseArgs, turning its errors into option errors. */
function parse<T>(run: () => T): T {
  try {
    return run();
  } catch (err) {
    throw new OptionError((err as Error).message.replace(/^TypeError \[[A-Z_]+\]: /, '').split('\n')[0]!);
  }
}

interface Db { url: string; embedded: boolean }

/** The target database: --database-url, $DATABASE_URL, or the embedded one (started on demand). */
async function database(url: string | undefined, quiet: boolean): Promise<Db> {
  const given = url ?? process.env.DATABASE_URL;
  if (given) return { url: given, embedded: false };
  if (!quiet) process.stderr.write(`Using the embedded PostgreSQL in ${path.relative(process.cwd(), defaultEmbeddedDir()) || '.'}/pgdata...\n`);
  const server = await startEmbedded();
  return { url: server.url, embedded: true };
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

function progressLine(p: Progress): string {
  const rate = p.seconds > 0 ? p.records / p.seconds : 0;
  if (p.phase === 'merging') {
    return `${formatBytes(p.bytesRead)} read · ${p.records.toLocaleString('en-US')} records · ${Math.round(rate).toLocaleString('en-US')} rec/s · merging into Sentry's tables...`;
  }
  let line = `${formatBytes(p.bytesRead)}`;
  if (p.totalBytes) {
    const pct = Math.min(100, (100 * p.bytesRead) / p.totalBytes);
    const bps = p.seconds > 0 ? p.bytesRead / p.seconds : 0;
    const eta = bps > 0 ? Math.max(0, (p.totalBytes - p.bytesRead) / bps) : 0;
    line += ` of ${formatBytes(p.totalBytes)} (${pct.toFixed(0)}%)`;
    line += ` · ${p.records.toLocaleString('en-US')} records · ${Math.round(rate).toLocaleString('en-US')} rec/s · ETA ${bps > 0 ? `${eta.toFixed(0)}s` : '--'}`;
  } else {
    line += ` · ${p.records.toLocaleString('en-US')} records · ${Math.round(rate).toLocaleString('en-US')} rec/s`;
  }
  return line;
}

/** The summary as a table (what a person reads). */
export function formatSummary(s: ImportSummary): string {
  const cols = ['read', 'inserted', 'existing', 'merged', 'renamed', 'filtered', 'dropped', 'rejected'] as const;
  const rows = Object.entries(s.models).map(([model, c]) => [model, ...cols.map((k) =>
    k === 'dropped' ? Object.values(c.dropped).reduce((a, b) => a + b, 0) : c[k])]);
  const header = ['model', ...cols];
  const table = [header, ...rows].map((r) => r.map(String));
  const widths = header.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  const lines = table.map((r) => r.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  '));
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  const out = [`${s.state === 'already-done' ? 'Already imported (nothing changed)' : s.mode === 'dry-run' ? 'Dry run (rolled back)' : 'Imported'}: ` +
    `${s.records.toLocaleString('en-US')} records, ${formatBytes(s.bytes)} in ${s.seconds.toFixed(1)}s (import ${s.importId})`, '', ...lines];
  for (const [model, c] of Object.entries(s.models)) {
    for (const [reason, n] of Object.entries(c.dropped)) out.push(`  dropped ${n} ${model}: ${reason}`);
  }
  const skipped = Object.entries(s.skipped);
  if (skipped.length) out.push('', `Skipped (not user data): ${skipped.map(([m, n]) => `${m} ${n}`).join(', ')}`);
  const unknown = Object.entries(s.unknownFields).flatMap(([m, f]) => Object.entries(f).map(([k, n]) => `${m}.${printable(k)} ${n}`));
  if (unknown.length) out.push(`Unknown fields (ignored): ${unknown.join(', ')}`);
  out.push(`Also written: ${s.adjacent.lostPasswordHashes} lost-password hashes, ${s.adjacent.primaryEmails} primary user emails`);
  if (s.unmatchedUsernames.length) out.push(`No user matched these --filter-usernames: ${s.unmatchedUsernames.map(printable).join(', ')}`);
  return out.join('\n');
}

async function importCommand(args: string[]): Promise<number> {
  const { values: o, positionals } = parse(() => parseArgs({ args, options: IMPORT_OPTIONS, allowPositionals: true, strict: true }));
  if (o.help) { process.stdout.write(HELP); return 0; }
  if (positionals[0] !== 'users' || positionals.length !== 2) {
    throw new OptionError('usage: userport import users SRC [options] (SRC is a file or - for stdin)');
  }
  const source = positionals[1]!;
  if (o['filter-usernames'] !== undefined && o['filter-usernames-file'] !== undefined) {
    throw new OptionError('--filter-usernames and --filter-usernames-file cannot be combined');
  }
  let filterUsernames: string[] | undefined;
  if (o['filter-usernames'] !== undefined) filterUsernames = parseUsernameList(o['filter-usernames']);
  if (o['filter-usernames-file'] !== undefined) {
    try { filterUsernames = parseUsernameList(fs.readFileSync(o['filter-usernames-file'], 'utf8')); } catch (err) {
      throw new OptionError(`--filter-usernames-file: cannot read ${o['filter-usernames-file']}: ${(err as Error).message}`);
    }
  }
  const quiet = !!o.silent || !!o.json;
  const decrypt = await keyUnwrapperFromOptions({
    decryptWith: o['decrypt-with'], passphraseFile: o['decrypt-passphrase-file'], gcpKmsConfig: o['decrypt-with-gcp-kms'],
  });
  // Every option is checked before the database is touched: a typo must not start a server.
  const numbers = {
    batchRows: intOption('batch-rows', o['batch-rows'], 1),
    maxRejects: intOption('max-rejects', o['max-rejects'], 0),
    maxRecordBytes: intOption('max-record-bytes', o['max-record-bytes'], 16),
    maxDepth: intOption('max-depth', o['max-depth'], 2),
  };
  if (o['database-url'] !== undefined) checkDatabaseUrl(o['database-url']);
  const db = await database(o['database-url'], quiet);
  const showProgress = !o['no-progress'] && !quiet && process.stderr.isTTY;
  const summary = await importUsers({
    ...numbers,
    source,
    databaseUrl: db.url,
    mergeUsers: !!o['merge-users'],
    filterUsernames,
    dryRun: !!o['dry-run'],
    resumable: !!o.resumable,
    importId: o['import-id'],
    rejectsFile: o['rejects-file'],
    findingsFile: o['findings-file'],
    decrypt,
    onStart: ({ importId, resumed, fromOrdinal }) => {
      if (o.resumable && !o.silent) {
        process.stderr.write(resumed ? `Resuming import ${importId} after record ${fromOrdinal}\n`
          : `Import id: ${importId} (if interrupted, run the same command with --import-id ${importId} to resume)\n`);
      }
    },
    onProgress: showProgress ? (p) => process.stderr.write(`\r\x1b[K${progressLine(p)}`) : undefined,
  });
  if (showProgress) process.stderr.write('\r\x1b[K');
  if (o.json) process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
  else if (!o.silent) {
    process.stdout.write(formatSummary(summary) + '\n');
    if (db.embedded) {
      process.stdout.write(`\nThe data is in the embedded PostgreSQL: ${db.url}\n` +
        'Look at it with `npx userport db psql`; stop the server with `npx userport db stop`.\n');
    }
  }
  return 0;
}

async function importsCommand(args: string[]): Promise<number> {
  const { values: o } = parse(() => parseArgs({ args, options: { 'database-url': { type: 'string' }, json: { type: 'boolean' }, debug: { type: 'boolean' } }, strict: true }));
  const db = await database(o['database-url'], true);
  const knex = createKnex(db.url, 2);
  try {
    await waitForDatabase(knex);
    await migrate(knex);
    const { rows } = await knex.raw(`SELECT id, mode, state, source, started_at, finished_at, checkpoint_ordinal,
      (summary->>'records')::bigint AS records, error FROM userport_import ORDER BY run`);
    if (o.json) { process.stdout.write(JSON.stringify(rows, null, 2) + '\n'); return 0; }
    if (!rows.length) { process.stdout.write('No imports yet.\n'); return 0; }
    for (const r of rows) {
      const when = new Date(r.started_at).toISOString().replace('T', ' ').slice(0, 19);
      const count = r.state === 'done' ? `${r.records} records` : `checkpoint at record ${r.checkpoint_ordinal}`;
      process.stdout.write(`${r.id}  ${r.mode.padEnd(9)}  ${r.state.padEnd(7)}  ${when}  ${count}  ${r.source}${r.error ? `  (${r.error})` : ''}\n`);
    }
    return 0;
  } finally {
    await knex.destroy();
  }
}

async function migrateCommand(args: string[]): Promise<number> {
  const { values: o } = parse(() => parseArgs({ args, options: { 'database-url': { type: 'string' }, debug: { type: 'boolean' } }, strict: true }));
  const db = await database(o['database-url'], false);
  const knex = createKnex(db.url, 2);
  try {
    await waitForDatabase(knex);
    const applied = await migrate(knex);
    process.stdout.write(applied.length ? `Applied: ${applied.join(', ')}\n` : 'Already up to date.\n');
    return 0;
  } finally {
    await knex.destroy();
  }
}

async function dbCommand(args: string[]): Promise<number> {
  const sub = args[0];
  if (sub === 'stop') {
    const stopped = await stopEmbedded();
    process.stdout.write(stopped ? 'Stopped the embedded PostgreSQL.\n' : 'The embedded PostgreSQL is not running.\n');
    return 0;
  }
  if (sub === 'url' || sub === 'psql' || sub === 'start') {
    const server = await startEmbedded();
    if (sub === 'psql') {
      const res = spawnSync('psql', [server.url], { stdio: 'inherit' });
      if (res.error) {
        process.stderr.write(`psql is not installed; connect with any client to ${server.url}\n`);
        return 1;
      }
      return res.status ?? 1;
    }
    process.stdout.write(`${server.url}\n`);
    return 0;
  }
  const cfg = readEmbeddedConfig(defaultEmbeddedDir());
  throw new OptionError(`usage: userport db url|psql|start|stop${cfg ? ` (embedded database: ${embeddedUrl(cfg)})` : ''}`);
}


/** Runs the CLI with `argv` (without node and script); resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  try {
    const [command, ...rest] = argv;
    switch (command) {
      case 'import': return await importCommand(rest);
      // issue #10: `userport export users DEST`; its options, help and summary live in export-command.ts.
      case 'export': return await runExportCommand(rest);
      case 'imports': return await importsCommand(rest);
      case 'migrate': return await migrateCommand(rest);
      case 'db': return await dbCommand(rest);
      case 'encrypt': return await runEncryptCommand(rest);
      case 'decrypt': return await runDecryptCommand(rest);
      case '--version': case '-v': {
        const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
        process.stdout.write(`${pkg.version}\n`);
        return 0;
      }
      case undefined: case 'help': case '--help': case '-h':
        process.stdout.write(HELP);
        return command === undefined ? 1 : 0;
      default:
        throw new OptionError(`unknown command "${command}" (try userport --help)`);
    }
  } catch (err) {
    printError(err, debug);
    return 1;
  }
}

function printError(err: unknown, debug: boolean): void {
  if (err instanceof UserportError) {
    process.stderr.write(`userport: ${err.message}${err.position ? ` (${formatPosition(err.position)})` : ''} [${err.code}]\n`);
    const cause = err.cause as { message?: string } | undefined;
    if (cause?.message && !err.message.includes(cause.message) && err.code.startsWith('USERPORT_DB')) {
      process.stderr.write(`  caused by: ${cause.message}\n`);
    }
  } else {
    process.stderr.write(`userport: unexpected error: ${(err as Error)?.message ?? String(err)}\n`);
  }
  if (debug && err instanceof Error) process.stderr.write(`${err.stack}\n`);
}
