/**
 * The `userport` command line. Wiring only: parse and check every argument (before any database
 * is touched), pick the database (given, or the embedded one), call the library, print.
 * Exit codes: 0 done, 1 a data or runtime error, 2 a usage error (as click-based `sentry`).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { defaultEmbeddedDir, startEmbedded, stopEmbedded } from '../lib/db/embedded.js';
import { createKnex, migrate, waitForDatabase } from '../lib/db/knex.js';
import { checkDatabaseUrl } from '../lib/options.js';
import { ErrorCodes, OptionError, ParseError, printable, UserportError } from '../lib/errors.js';
import { IMPORT_SCOPES, NOT_USER_DATA, scopeModels, type ImportScope } from '../lib/models.js';
import { checkKeyForSource, keyUnwrapperFromOptions } from './key-options.js';
import { checkImportOptions, importUsers, type ImportOptions, type Progress } from '../lib/import.js';
import { dropImport, listImports, type ImportListing } from '../lib/db/imports.js';
import type { ImportSummary } from '../lib/stats.js';
import { runDecryptCommand, runEncryptCommand } from './crypto-commands.js';
import { checkOptionFile, cliWording, didYouMean, formatBytes, formatCount, helpText, parseCommand, reportError, usernameFilter, withHint, TEXT_WIDTH, usage, usageError, wrapList, wrapText, type FlagSpecs } from './cli-support.js';
import { installSpoolCleanup, interrupted, setInterruptNote, setInterruptWork } from './signals.js';
import { runExportCommand } from './export-command.js';
import { runTargetCommand } from './target-command.js';
import { traceFromEnv } from './trace.js';
import { checkImportFiles } from '../lib/source.js';

const HELP = `userport: import Sentry user exports into PostgreSQL, streaming, in constant memory.

Usage:
  userport import users SRC     import an export (SRC is a file, a pipe, or - for stdin)
  userport import config SRC    also keep admin privileges: staff, permissions, roles, tokens
  userport import global SRC    also keep passwords, 2FA, email verification, user IPs
                                (never deletes anything: unlike Sentry's, into a live database)
  userport export users DEST    export the user scope like 'sentry export users'
  userport export config|global DEST
                                the same with admin privileges, or with every credential
  userport imports              list past imports with their state and counts
  userport imports drop ID      remove an interrupted or failed import and its staged rows
  userport target               what an import would write into the database, and what not
  userport migrate              create userport's schema (and Sentry's tables in an empty
                                database), nothing else
  userport encrypt SRC DEST     encrypt an export like 'sentry backup encrypt'
  userport decrypt SRC DEST     decrypt an export like 'sentry backup decrypt'
  userport db url|psql|start|stop
                                the embedded database: its URL, a psql shell, start, stop

Every command has --help. Exit codes: 0 done, 1 a data or runtime error, 2 a usage error.

Database: --database-url URL, else $DATABASE_URL, else an embedded PostgreSQL kept in
.userport/pgdata under the current directory (started on demand, left running).

Example:
  npx userport import users samples/users.json
`;

const IMPORT_HELP = `Usage: userport import users|config|global SRC [options]

Import a Sentry export with the rules of 'sentry import users|config|global' for the user
models. SRC is a file, a pipe, or - for standard input. Every option is checked before any
database is touched.

Scopes:
  users    users, emails, user emails, options; privileges cleared, passwords replaced (each
           user gets a lost-password hash), email verification reset
  config   as users, and keeps staff/superuser/managed; brings permissions, roles and their
           users, personal API tokens and authorizations
  global   as config, and keeps password hashes (unless the user was unclaimed), two-factor
           authenticators, email verification and user IPs. Unlike Sentry's, it deletes
           nothing: existing users stay, collisions are renamed or merged

Options:
  --database-url URL              target database (default: $DATABASE_URL, else the embedded one)
  --merge-users                   reuse an existing user with the same username (case-insensitive)
                                  instead of importing it as <username>-<random>; the imported
                                  user's rows (emails, tokens, 2FA, roles...) are not imported
  --overwrite-configs             config, global: a role whose name exists takes the imported
                                  permissions (default: the existing role is kept)
  --filter-usernames A,B          import only these users and what belongs to them
                                  (empty: no filter, as in Sentry)
  --filter-usernames-file F       the same, names separated by commas or newlines
  --dry-run                       do everything, report, then roll back
  --allow-reimport                import SRC although it was imported before (same file and
                                  options): every user gets a second, renamed copy
  --bulk-load auto|off            auto (default): into target tables that are empty or hold at
                                  most 1,000 rows (a new Sentry), load the rows first and build
                                  their indexes and constraints after (locks those tables until
                                  the import ends); off: insert into the indexed tables, as into
                                  a target holding more
  --resumable                     commit in batches; the same command again continues an
                                  interrupted import of the same file and options
  --import-id ID                  with --resumable: name the import (letters, digits, . _ -)
  --batch-rows N                  rows per commit with --resumable (default 20000)
  --rejects-file F                write records that fail validation to F (JSON lines), go on
  --max-rejects N                 with --rejects-file: abort after N rejects
  --findings-file F               write every finding (dropped, renamed, merged rows) as JSON
  --max-record-bytes N            refuse records larger than N bytes (default 1048576)
  --max-depth N                   refuse nesting deeper than N (default 64)
  --decrypt-with KEY.pem          SRC is an encrypted export; decrypt with this RSA private key
  --decrypt-passphrase-file F     passphrase of an encrypted private key
  --decrypt-with-gcp-kms CFG      unwrap the export's key with Google Cloud KMS (config JSON)
  --skip-leading-text             skip lines of text before the JSON array (log lines printed into
                                  the export) and say how many; without it, such input fails
  --json                          print the summary as JSON on stdout
  --no-progress                   no progress on stderr
  -q, --silent                    print nothing but errors (and --json output)
  --no-prompt                     accepted for Sentry compatibility (userport never prompts here)
  --debug                         print stack traces with errors
  -h, --help                      this help

Sentry's spellings --merge_users, --filter_usernames and --decrypt_with are accepted too.

Examples:
  userport import users export.json --merge-users
  userport import users users.tar --decrypt-with key.pem --resumable --findings-file findings.json
  userport import global backup.tar --decrypt-with key.pem --merge-users
`;

const IMPORTS_HELP = `Usage: userport imports [--json] [--database-url URL]
       userport imports drop ID [--database-url URL]

List past imports: id, mode, state (running, interrupted, failed, done), start and finish time,
records, source. An import whose process or server died shows as interrupted: run the same
command again to continue it.

drop ID removes an interrupted or failed import and its staged rows (a resumable import that
will not be continued, say one started with other options). It refuses a running import (stop
it first) and a done one (its rows are in Sentry's tables).

Options:
  --database-url URL              the database (default: $DATABASE_URL, else the embedded one)
  --json                          print the list (or what drop removed) as JSON
  --debug                         print stack traces with errors
  -h, --help                      this help

Examples:
  userport imports --json
  userport imports drop 3f2a9c1e-5b7d-4e21-9a0b-6c8d7e6f5a41
`;

const MIGRATE_HELP = `Usage: userport migrate [--database-url URL]

Create or upgrade userport's own schema, and Sentry's user tables in a database that holds none
of them (a database that has any is Sentry's, and is never changed); nothing else.

Options:
  --database-url URL              the database (default: $DATABASE_URL, else the embedded one)
  --debug                         print stack traces with errors
  -h, --help                      this help

Example:
  userport migrate --database-url postgresql://user@localhost/sentry
`;

const DB_HELP = `Usage: userport db url|psql|start|stop

The embedded PostgreSQL (its data in .userport/pgdata under the current directory, or
$USERPORT_HOME).

  url      start it if needed, print its URL
  psql     start it if needed, open psql on it; arguments after psql go to psql
           (userport db psql -c 'select count(*) from auth_user')
  start    start it if needed, print its URL
  stop     stop it

Example:
  userport db psql
`;

const COMMON: FlagSpecs = { 'database-url': { type: 'string' } };

const IMPORT_FLAGS = {
  ...COMMON,
  'merge-users': { type: 'boolean', aliases: ['merge_users'] },
  'overwrite-configs': { type: 'boolean', aliases: ['overwrite_configs'] },
  'filter-usernames': { type: 'string', aliases: ['filter_usernames'] },
  'filter-usernames-file': { type: 'string', aliases: ['filter_usernames_file'] },
  'dry-run': { type: 'boolean' },
  'allow-reimport': { type: 'boolean' },
  'bulk-load': { type: 'string' },
  resumable: { type: 'boolean' },
  'import-id': { type: 'string' },
  'batch-rows': { type: 'string' },
  'rejects-file': { type: 'string' },
  'max-rejects': { type: 'string' },
  'findings-file': { type: 'string' },
  'max-record-bytes': { type: 'string' },
  'max-depth': { type: 'string' },
  'decrypt-with': { type: 'string', aliases: ['decrypt_with'] },
  'decrypt-passphrase-file': { type: 'string' },
  'decrypt-with-gcp-kms': { type: 'string' },
  'skip-leading-text': { type: 'boolean' },
  json: { type: 'boolean' },
  'no-progress': { type: 'boolean' },
  silent: { type: 'boolean', short: 'q' },
  'no-prompt': { type: 'boolean' },
} as const satisfies FlagSpecs;

/** A number flag's text as the number the library option takes (which checks its range). */
function intOption(name: string, v: string | boolean | undefined): number | undefined {
  if (typeof v !== 'string') return undefined;
  const n = Number(v);
  if (!/^-?\d+$/.test(v) || !Number.isSafeInteger(n)) throw usageError(`--${name} must be an integer, got "${printable(v)}"`);
  return n;
}

const str = (v: string | boolean | undefined): string | undefined => (typeof v === 'string' ? v : undefined);

interface Db { url: string; embedded: boolean }

/** The target database: --database-url, $DATABASE_URL, or the embedded one (started on demand). */
async function database(url: string | undefined, quiet: boolean): Promise<Db> {
  const given = url ?? process.env.DATABASE_URL;
  if (given) return { url: given, embedded: false };
  if (!quiet) process.stderr.write(`Using the embedded PostgreSQL in ${path.relative(process.cwd(), defaultEmbeddedDir()) || '.'}/pgdata...\n`);
  const server = await startEmbedded();
  return { url: server.url, embedded: true };
}

/** Checks a `--database-url` (or $DATABASE_URL) before anything connects. */
function checkUrl(url: string | undefined): void {
  const given = url ?? (process.env.DATABASE_URL || undefined);
  if (given === undefined) return;
  try { checkDatabaseUrl(given); } catch (err) { throw usage(err as Error); }
}

/** `7s`, `2m05s`, `1h02m`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

const n = formatCount;

/**
 * How long the merge takes after the input ends, relative to the reading phase (which includes
 * startup and staging), measured on generated exports (`npm run generate`, 10k and 50k users, on
 * the 2-core machine of the benchmark; merge / reading seconds per run):
 * - into an empty target, atomic (the default): 1.2, 1.24, 1.75, 1.9, and 2.9 while four other
 *   test suites loaded the machine's PostgreSQL. The users' step runs while the rest is read (the
 *   early users step) and the rows go into bare tables;
 * - into a target that holds users, or with --bulk-load off: 1.8 (10k), 4.1 and 4.9 (50k): every
 *   insert maintains the indexes, and nothing starts early.
 * The old single factor of 3 overestimated the default path's time left two- to threefold while
 * reading. A resumable import into an empty target bulk-loads but does not start early: between.
 */
export const MERGE_PER_READ = { emptyTarget: 1.8, emptyTargetResumable: 2.5, holdsData: 4 } as const;

/** Tracks the phases of an import from its progress reports, for the ETA and the summary. */
export class PhaseClock {
  readSeconds: number | undefined;
  private last: Progress | undefined;

  constructor(private readonly opts: { resumable?: boolean } = {}) {}

  update(p: Progress): void {
    if (p.phase === 'merging' && this.readSeconds === undefined) this.readSeconds = p.seconds;
    this.last = p;
  }

  /** The merge's expected length relative to reading, for this import's path. */
  private ratio(p: Progress): number {
    if (p.emptyTarget === false) return MERGE_PER_READ.holdsData;
    return this.opts.resumable ? MERGE_PER_READ.emptyTargetResumable : MERGE_PER_READ.emptyTarget;
  }

  /** Seconds left in the whole import, or undefined when it cannot be told honestly. */
  eta(p: Progress): number | undefined {
    if (p.phase === 'reading') {
      if (!p.totalBytes || p.bytesRead <= 0 || p.seconds <= 0) return undefined;
      const readTotal = (p.seconds * p.totalBytes) / p.bytesRead;
      return Math.max(0, readTotal - p.seconds) + readTotal * this.ratio(p);
    }
    const left = (this.readSeconds ?? p.seconds) * (1 + this.ratio(p)) - p.seconds;
    return left > 0 ? left : undefined;
  }

  phases(total: number): { reading: number; merging: number } | undefined {
    if (this.readSeconds === undefined) return this.last ? { reading: total, merging: 0 } : undefined;
    return { reading: this.readSeconds, merging: Math.max(0, total - this.readSeconds) };
  }
}

/** The merge's steps in order, for `users (1/6)`. */
const STEPS = ['users', 'emails', 'user emails', 'options', 'privileges', 'indexes', 'findings'] as const;

/**
 * The progress line, fitted to `columns` (a line that wraps cannot be erased with `\r` and leaves
 * debris). The moving parts (elapsed time, record count, the merge's step) are kept the longest:
 * words are shortened first (`12s elapsed` to `12s`), then the rate goes, then the ETA.
 */
export function progressLine(p: Progress, clock: PhaseClock, columns: number): string {
  const eta = clock.eta(p);
  const etaText = eta !== undefined ? `ETA ~${formatDuration(eta)}` : p.phase === 'merging' ? 'ETA unknown' : 'ETA --';
  const elapsed = formatDuration(p.seconds);
  const pct = p.totalBytes ? `${Math.min(100, (100 * p.bytesRead) / p.totalBytes).toFixed(0)}%` : undefined;
  // The privileges step is the config and global scopes' only.
  const steps: readonly string[] = p.scope && p.scope !== 'users' ? STEPS : STEPS.filter((s) => s !== 'privileges');
  const step = p.step ? `${p.step} (${steps.indexOf(p.step) + 1}/${steps.length})` : 'staging';
  // Each candidate, most complete first; the first that fits is shown.
  const candidates: string[][] = p.phase === 'reading'
    ? [
      [p.totalBytes ? `reading ${formatBytes(p.bytesRead)} of ${formatBytes(p.totalBytes)} (${pct})` : `reading ${formatBytes(p.bytesRead)}`,
        `${elapsed} elapsed`, etaText, `${n(p.records)} records`, `${n(Math.round(p.seconds > 0 ? p.records / p.seconds : 0))} rec/s`],
      [`reading ${pct ?? formatBytes(p.bytesRead)}`, `${elapsed} elapsed`, etaText, `${n(p.records)} records`],
      [`reading ${pct ?? formatBytes(p.bytesRead)}`, elapsed, etaText, `${n(p.records)} rec`],
      [`reading ${pct ?? formatBytes(p.bytesRead)}`, elapsed, `${n(p.records)} rec`],
      [`${pct ?? formatBytes(p.bytesRead)}`, elapsed, `${n(p.records)}`],
    ]
    : [
      [`merging ${n(p.records)} records into Sentry's tables: ${step}`, `${elapsed} elapsed`, etaText],
      [`merging ${n(p.records)} records: ${step}`, `${elapsed} elapsed`, etaText],
      [`merge: ${step}`, `${elapsed} elapsed`, etaText],
      [`merge: ${p.step ?? 'staging'}`, elapsed, etaText],
      [`merge: ${p.step ?? 'staging'}`, elapsed],
    ];
  const max = Math.max(20, columns - 1);
  for (const parts of candidates) {
    const line = parts.join(' · ');
    if (line.length <= max) return line;
  }
  const last = candidates[candidates.length - 1]!.join(' · ');
  return last.slice(0, max);
}

const MODEL_ORDER = ['sentry.user', 'sentry.email', 'sentry.useremail', 'sentry.useroption'];
const COLUMNS = ['read', 'inserted', 'renamed', 'existing', 'merged', 'filtered', 'dropped', 'rejected'] as const;
const LABELS: Record<(typeof COLUMNS)[number], string> = {
  read: 'read', inserted: 'inserted', renamed: '  of them renamed', existing: 'existing', merged: 'merged',
  filtered: 'filtered', dropped: 'dropped', rejected: 'rejected',
};



/** The outcomes shown for the config and global scopes' models, one row per model (80 columns). */
const PRIVILEGE_COLUMNS = ['read', 'inserted', 'existing', 'merged', 'filtered', 'dropped', 'rejected'] as const;

/** The config and global scopes' models, one row each, or nothing in user scope. */
function privilegeTable(s: ImportSummary): string[] {
  // The config and global scopes' models in the registry's order (read here, not at start-up).
  const order = scopeModels('global').filter((m) => m.mapping.scope !== 'user').map((m) => m.name);
  const rank = (m: string) => { const i = order.indexOf(m); return i < 0 ? order.length : i; };
  const models = Object.keys(s.models).filter((m) => !MODEL_ORDER.includes(m)).sort((a, b) => rank(a) - rank(b));
  if (!models.length) return [];
  const table = [['', ...PRIVILEGE_COLUMNS], ...models.map((m) => {
    const c = s.models[m]!;
    return [m.replace(/^sentry\./, ''), ...PRIVILEGE_COLUMNS.map((k) => n(k === 'dropped' ? Object.values(c.dropped).reduce((a, b) => a + b, 0) : c[k]))];
  })];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  const lines = table.map((r) => r.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  return lines;
}

/** Extra facts the CLI knows beside the summary. */
export interface SummaryContext {
  phases?: { reading: number; merging: number };
  /** `--filter-usernames ""`: no filter, as in Sentry. */
  emptyFilter?: boolean;
}

/**
 * The summary as a person reads it: one column per model and a total, one row per outcome, so it
 * fits 80 columns. Renamed users are a part of inserted users, and shown under them.
 */
export function formatSummary(s: ImportSummary, ctx: SummaryContext = {}): string {
  const order = (m: string) => { const i = MODEL_ORDER.indexOf(m); return i < 0 ? MODEL_ORDER.length : i; };
  const models = Object.keys(s.models).filter((m) => MODEL_ORDER.includes(m)).sort((a, b) => order(a) - order(b));
  const value = (m: string, k: (typeof COLUMNS)[number]): number => {
    const c = s.models[m]!;
    return k === 'dropped' ? Object.values(c.dropped).reduce((a, b) => a + b, 0) : c[k];
  };
  const header = ['', ...models.map((m) => m.replace(/^sentry\./, '')), 'total'];
  const rows = COLUMNS.map((k) => {
    const vals = models.map((m) => value(m, k));
    return [LABELS[k], ...vals.map(n), n(vals.reduce((a, b) => a + b, 0))];
  });
  const table = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  const lines = table.map((r) => r.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));

  const what = `${n(s.records)} ${s.records === 1 ? 'record' : 'records'} (${formatBytes(s.bytes)}) in ${s.seconds.toFixed(1)}s`;
  const head = s.state === 'already-done' ? `Already imported, nothing changed: import ${s.importId} finished earlier`
    : s.mode === 'dry-run' ? `Dry run: ${what}; everything was rolled back, nothing was written`
      : `Imported ${what}`;
  const out = [head];
  if (s.state !== 'already-done') out.push(`Import id: ${s.importId}`);
  if (ctx.phases && s.state !== 'already-done') {
    out.push(`Time: reading and staging ${ctx.phases.reading.toFixed(1)}s, merging ${ctx.phases.merging.toFixed(1)}s`);
  }
  if (s.bulkLoad && s.state !== 'already-done') out.push('Bulk path: rows loaded first, indexes and constraints built after');
  if (s.gzip) out.push('The input was gzip-compressed: read through gunzip');
  if (s.leadingText) {
    const t = s.leadingText;
    out.push(`Skipped ${n(t.lines)} ${t.lines === 1 ? 'line' : 'lines'} (${formatBytes(t.bytes)}) of text before the JSON array ` +
      `(--skip-leading-text), the first: "${t.firstLine}"`);
  }
  // A dry run shows what the import would write into this database (as `userport target` does);
  // any import says what it could not write there.
  const plan = s.target ?? [];
  // Any other import names only the tables it could not write (no sentry_email on Sentry 2026);
  // the columns a generation lacks are in `userport target` and a dry run.
  const shown = s.mode === 'dry-run' ? plan : plan.filter((l) => /^Not written: [a-z_]+:/.test(l));
  if (shown.length && s.state !== 'already-done') out.push('', 'Target database:', ...shown.map((l) => wrapText(`  ${l}`, TEXT_WIDTH, '    ')));
  out.push('', ...lines);
  const privileged = privilegeTable(s);
  if (privileged.length) out.push('', ...privileged);
  for (const [model, c] of Object.entries(s.models)) {
    for (const [reason, k] of Object.entries(c.dropped)) out.push(`  dropped ${n(k)} ${model}: ${reason}`);
    if (c.overwritten) out.push(`  overwritten ${n(c.overwritten)} ${model} of an existing name (--overwrite-configs)`);
  }
  if (s.adjacent.tokensRegenerated) {
    out.push(`  ${n(s.adjacent.tokensRegenerated)} API tokens collided with existing ones: imported with new token values (see the findings)`);
  }
  const why = s.skippedReasons ?? {};
  const skipped = Object.entries(s.skipped).filter(([m]) => why[m] === undefined);
  if (skipped.length) out.push('', wrapList(`Skipped (${NOT_USER_DATA})`, skipped.map(([m, k]) => `${m} ${n(k)}`)));
  for (const [m, reason] of Object.entries(why)) out.push(`Skipped ${n(s.skipped[m] ?? 0)} ${m}: ${reason}`);
  const unknown = Object.entries(s.unknownFields).flatMap(([m, f]) => Object.entries(f).map(([k, c]) => `${m}.${printable(k)} ${n(c)}`));
  if (unknown.length) out.push(wrapList('Unknown fields (ignored)', unknown));
  out.push(`Also written: ${n(s.adjacent.lostPasswordHashes)} lost-password hashes, ${n(s.adjacent.primaryEmails)} primary user emails,`);
  out.push(`  ${n(s.adjacent.userEmailAddresses ?? 0)} email rows for user-email addresses (as Sentry's receivers add)`);
  if (ctx.emptyFilter) out.push('--filter-usernames was empty: no filter (as in Sentry), every user taken');
  if (s.unmatchedUsernames.length) out.push(wrapList('No user matched these --filter-usernames', s.unmatchedUsernames.map(printable)));
  // Every line a person reads fits 80 columns (lists above hang under their first item).
  return out.map((l) => wrapText(l, TEXT_WIDTH, '    ')).join('\n');
}

interface ImportPlan {
  options: Omit<ImportOptions, 'databaseUrl'>;
  databaseUrl: string | undefined;
  json: boolean;
  silent: boolean;
  progress: boolean;
  resumable: boolean;
  emptyFilter: boolean;
}

/** Every check that needs no database: options, combinations, input and output paths, keys. */
async function planImport(args: string[]): Promise<ImportPlan | 'help'> {
  const { values: o, positionals } = parseCommand(args, IMPORT_FLAGS, 'import');
  if (o.help) return 'help';
  const scope = positionals[0] as ImportScope | undefined;
  if (scope === undefined || !IMPORT_SCOPES.includes(scope)) {
    throw usageError(positionals.length
      ? `unknown import scope "${printable(positionals[0]!)}"${didYouMean(positionals[0]!, IMPORT_SCOPES)} (users, config or global: userport import users SRC)`
      : 'missing the scope and SRC (userport import users|config|global SRC)');
  }
  if (positionals.length !== 2) throw usageError(positionals.length < 2 ? 'missing SRC: a file, or - for standard input' : `one SRC only, got ${positionals.length - 1}`);
  const source = positionals[1]!;
  // What only the command line has: two spellings of one option (usernameFilter), and `-` for standard output.
  for (const flag of ['findings-file', 'rejects-file'] as const) {
    if (o[flag] === '-') throw usageError(`--${flag} -: standard output is not supported (it carries the summary); give a file path`);
  }
  checkUrl(str(o['database-url']));
  const { names: filterUsernames, emptyFilter } = usernameFilter(str(o['filter-usernames']), str(o['filter-usernames-file']));
  for (const flag of ['decrypt-with', 'decrypt-passphrase-file', 'decrypt-with-gcp-kms'] as const) checkOptionFile(`--${flag}`, str(o[flag]));
  const options: Omit<ImportOptions, 'databaseUrl'> = {
    batchRows: intOption('batch-rows', o['batch-rows']),
    maxRejects: intOption('max-rejects', o['max-rejects']),
    maxRecordBytes: intOption('max-record-bytes', o['max-record-bytes']),
    maxDepth: intOption('max-depth', o['max-depth']),
    source,
    mergeUsers: !!o['merge-users'],
    ...(scope !== 'users' ? { scope } : {}),
    ...(o['overwrite-configs'] ? { overwriteConfigs: true } : {}),
    filterUsernames,
    dryRun: !!o['dry-run'],
    ...(o['allow-reimport'] ? { allowReimport: true } : {}),
    bulkLoad: str(o['bulk-load']) as ImportOptions['bulkLoad'],
    resumable: !!o.resumable,
    importId: str(o['import-id']),
    rejectsFile: str(o['rejects-file']),
    findingsFile: str(o['findings-file']),
    skipLeadingText: !!o['skip-leading-text'],
  };
  // The library's rules, stated there once: the CLI only says the options as its flags.
  const decrypting = o['decrypt-with'] !== undefined || o['decrypt-with-gcp-kms'] !== undefined;
  try {
    checkImportOptions({ ...options, databaseUrl: undefined });
    checkImportFiles({ ...options, decrypt: decrypting });
  } catch (err) {
    // What the file holds (UTF-16, text before the array) is the data's fault, not the command's: exit 1.
    throw err instanceof ParseError ? err : usage(err as Error);
  }
  const quiet = !!o.silent || !!o.json;
  // The key last: opening it may ask for its passphrase, which a wrong SRC should not cost.
  const decrypt = await keyUnwrapperFromOptions({
    decryptWith: str(o['decrypt-with']), passphraseFile: str(o['decrypt-passphrase-file']), gcpKmsConfig: str(o['decrypt-with-gcp-kms']),
  }).catch((err: unknown) => { throw usage(err as Error); });
  if (decrypt && typeof options.source === 'string') await checkKeyForSource(options.source, decrypt);
  return {
    options: { ...options, decrypt },
    databaseUrl: str(o['database-url']),
    json: !!o.json,
    silent: !!o.silent,
    progress: !o['no-progress'] && !quiet,
    resumable: !!o.resumable,
    emptyFilter,
  };
}

/**
 * Seconds between progress lines when stderr is a log, not a terminal: an import shorter than
 * that prints none. `USERPORT_PROGRESS_SECONDS` changes it.
 */
function logProgressSeconds(): number {
  const v = Number(process.env.USERPORT_PROGRESS_SECONDS);
  return process.env.USERPORT_PROGRESS_SECONDS && Number.isFinite(v) && v >= 0 ? v : 10;
}

async function importCommand(args: string[]): Promise<number> {
  const plan = await planImport(args);
  if (plan === 'help') { process.stdout.write(helpText(IMPORT_HELP)); return 0; }
  const db = await database(plan.databaseUrl, plan.silent || plan.json);
  const tty = !!process.stderr.isTTY;
  const clock = new PhaseClock({ resumable: plan.resumable });
  const every = logProgressSeconds();
  let lastLogged = 0;
  let logged = false;
  let lastPhase: Progress['phase'] | undefined;
  const onProgress = (p: Progress) => {
    clock.update(p);
    if (!plan.progress) return;
    const columns = process.stderr.columns || 80;
    if (tty) {
      process.stderr.write(`\r\x1b[K${progressLine(p, clock, columns)}`);
    } else if (p.seconds - lastLogged >= every || (logged && p.phase !== lastPhase)) {
      // A CI log: a short line now and then (Sentry prints "still importing" for the same reason).
      process.stderr.write(`userport: ${progressLine(p, clock, 200)}\n`);
      lastLogged = p.seconds;
      logged = true;
    }
    lastPhase = p.phase;
  };
  let summary: ImportSummary;
  // What a SIGINT/SIGTERM/SIGHUP leaves, said in the line the signal handler prints: an atomic
  // import (or a dry run) is stopped first and rolls back, taking away the schema it made in a
  // database that had none; then the process dies, its session closes, and PostgreSQL rolls back
  // whatever transaction is still open (a resumable import's current batch).
  let startedId: string | undefined;
  let committedAnyway = false;
  setInterruptNote(() => {
    if (committedAnyway) return 'the import had already committed: its users are in the database';
    if (plan.options.dryRun) return 'the dry run was rolled back, nothing was written';
    if (!plan.resumable) return 'the import was rolled back, nothing of it was written';
    return startedId === undefined ? 'nothing was committed; run the same command again to import the file'
      : `import ${startedId} keeps what its last checkpoint committed; run the same command again to continue it`;
  });
  const stopper = new AbortController();
  const running = importUsers({
    ...plan.options,
    databaseUrl: db.url,
    ...(plan.resumable ? {} : { signal: stopper.signal }),
    onStart: ({ importId, resumed, fromOrdinal, found, others }) => {
      startedId = importId;
      if (plan.silent) return;
      for (const o of others ?? []) {
        process.stderr.write(`${wrapText(`Note: import ${o.importId} of this file is ${o.state}, and this is a new import` +
          `${o.differences.length ? ` (${o.differences.map(cliWording).join('; ')})` : ''}. To continue it, run it with its options; to remove it and ` +
          `its staged rows: userport imports drop ${o.importId}`, TEXT_WIDTH, '  ')}\n`);
      }
      if (!plan.resumable) return;
      const say = (line: string) => process.stderr.write(`${wrapText(line, TEXT_WIDTH, '  ')}\n`);
      if (found) {
        say(resumed
          ? `Found unfinished import ${importId} of this file with these options: continuing it after record ${n(fromOrdinal)}`
          : `Found import ${importId} of this file with these options: continuing it`);
      } else {
        say(resumed ? `Resuming import ${importId} after record ${n(fromOrdinal)}`
          : `Import id: ${importId} (if interrupted, run the same command again to continue it)`);
      }
    },
    onProgress,
    ...traceFromEnv(),
  });
  if (!plan.resumable) {
    setInterruptWork(async () => {
      stopper.abort();
      await running.then(() => { committedAnyway = true; }, () => undefined);
    });
  }
  try {
    summary = await running;
  } catch (err) {
    // Stopped by a signal: its handler says what was left, and ends the process.
    if (interrupted()) return new Promise<number>(() => undefined);
    throw hintFor(err, plan);
  } finally {
    // Once a signal is stopping the import, its handler still needs the note.
    if (!interrupted()) {
      setInterruptWork(undefined);
      setInterruptNote(undefined);
    }
    if (plan.progress && tty) process.stderr.write('\r\x1b[K');
  }
  if (plan.json) process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
  else if (!plan.silent) {
    process.stdout.write(formatSummary(summary, { phases: clock.phases(summary.seconds), emptyFilter: plan.emptyFilter }) + '\n');
    if (summary.state === 'already-done') {
      process.stdout.write(plan.resumable ? 'To import this file again as a new import, give --import-id with a new id.\n'
        : 'To import it again anyway (every user a second, renamed copy), add --allow-reimport.\n');
    }
    const renamed = summary.models['sentry.user']?.renamed ?? 0;
    if (renamed > 0 && !plan.options.mergeUsers) {
      // The usual cause is a second import of the same export: say what the flag would have done.
      process.stdout.write(`\n${wrapText(`${n(renamed)} ${renamed === 1 ? 'user was' : 'users were'} renamed because the username already exists ` +
        '(in the database or earlier in the file). To reuse the existing users instead, import with --merge-users.', TEXT_WIDTH, '')}\n`);
    }
    if (db.embedded && summary.mode !== 'dry-run') {
      // Each line within 80 columns; the URL (longer) on a line of its own, to copy.
      process.stdout.write(`\nThe data is in the embedded PostgreSQL:\n  ${db.url}\n` +
        'Look at it with `npx userport db psql`;\nstop the server with `npx userport db stop`.\n');
    }
  }
  return 0;
}

/** Codes of records `--rejects-file` sets aside instead of failing the import. */
const REJECTABLE = new Set<string>([ErrorCodes.RECORD_NOT_OBJECT, ErrorCodes.RECORD_ENVELOPE, ErrorCodes.RECORD_SCHEMA, ErrorCodes.RECORD_OPTION_VALUE]);

/** An import's error with what to try next: the flag that would have helped, or what is left. */
function hintFor(err: unknown, plan: ImportPlan): unknown {
  if (!(err instanceof UserportError)) return err;
  const rejects = plan.options.rejectsFile;
  if (REJECTABLE.has(err.code) && rejects === undefined) {
    return withHint(err, 'hint: with --rejects-file F, records that fail validation are written to F and the import goes on');
  }
  if (rejects !== undefined && !plan.resumable && fs.existsSync(rejects) && fs.statSync(rejects).size > 0) {
    // Kept on purpose: the rejects explain the failure (USERPORT_MAX_REJECTS above all).
    return withHint(err, `nothing was imported (rolled back); ${rejects} keeps the records rejected before the error`);
  }
  return err;
}

const when = (d: Date | null) => (d ? d.toISOString().replace('T', ' ').slice(0, 19) : '-');

/**
 * The listing as a table with a header. When a row is wider than `width` (a UUID id, a long
 * path), each import takes two lines: id, mode, state and records, then its times and source
 * indented under it, so nothing wraps on an 80-column terminal.
 */
export function formatImports(rows: ImportListing[], width = TEXT_WIDTH): string {
  const header = ['ID', 'MODE', 'STATE', 'STARTED (UTC)', 'FINISHED (UTC)', 'RECORDS', 'SOURCE'];
  const body = rows.map((r) => [
    r.id, r.mode, r.state, when(r.startedAt), when(r.finishedAt),
    r.records !== null ? (r.state === 'done' ? n(r.records) : `${n(r.records)} so far`) : r.state === 'done' ? '-' : `${n(r.checkpointOrdinal)} so far`,
    printable(r.source) + (r.error ? `  (${printable(r.error)})` : ''),
  ]);
  const layout = (cols: number[], rightAligned: number) => {
    const table = [cols.map((i) => header[i]!), ...body.map((r) => cols.map((i) => r[i]!))];
    const widths = cols.map((_, j) => (j === cols.length - 1 ? 0 : Math.max(...table.map((r) => r[j]!.length))));
    return table.map((r) => r.map((v, j) => (cols[j] === rightAligned ? v.padStart(widths[j]!) : v.padEnd(widths[j]!))).join('  ').trimEnd());
  };
  const one = layout([0, 1, 2, 3, 4, 5, 6], 5);
  if (one.every((l) => l.length <= width)) return one.join('\n');
  const first = layout([0, 1, 2, 5], 5);
  // The times keep their columns; a source too long for the line goes under them, whole unless
  // it is wider than the terminal itself.
  const times = layout([3, 4], -1);
  const timesWidth = Math.max(...times.map((t) => t.length));
  const second = times.map((t, i) => {
    const source = i === 0 ? header[6]! : body[i - 1]![6]!;
    const line = `  ${t.padEnd(timesWidth)}  ${source}`;
    return line.length <= width ? line : `  ${t}\n${wrapText(`    ${source}`, width, '    ')}`;
  });
  return first.flatMap((l, i) => [l, second[i]!]).join('\n');
}

const IMPORTS_DROP_HELP_LINE = 'userport imports drop ID [--database-url URL]';

async function importsCommand(args: string[]): Promise<number> {
  const { values: o, positionals } = parseCommand(args, { ...COMMON, json: { type: 'boolean' } }, 'imports');
  if (o.help) { process.stdout.write(helpText(IMPORTS_HELP)); return 0; }
  const [sub, id, ...extra] = positionals;
  if (sub !== undefined && sub !== 'drop') {
    throw usageError(`unknown imports command "${printable(sub)}": userport imports lists them, ${IMPORTS_DROP_HELP_LINE} removes one`);
  }
  if (sub === 'drop' && id === undefined) throw usageError(`missing ID: ${IMPORTS_DROP_HELP_LINE} (userport imports lists the ids)`);
  if (extra.length) throw usageError(`unexpected argument ${printable(extra[0]!)}: one ID at a time`);
  checkUrl(str(o['database-url']));
  const db = await database(str(o['database-url']), true);
  if (sub === 'drop') {
    const dropped = await dropImport(db.url, id!).catch((err: unknown) => { throw err instanceof OptionError ? usage(err) : err; });
    if (o.json) process.stdout.write(JSON.stringify(dropped, null, 2) + '\n');
    else process.stdout.write(`Dropped ${dropped.state} import ${dropped.id} and its ${n(dropped.stagedRows)} staged rows.\n`);
    return 0;
  }
  const rows = await listImports(db.url);
  if (o.json) { process.stdout.write(JSON.stringify(rows, null, 2) + '\n'); return 0; }
  process.stdout.write(rows.length ? `${formatImports(rows)}\n` : 'No imports yet.\n');
  return 0;
}

async function migrateCommand(args: string[]): Promise<number> {
  const { values: o } = parseCommand(args, COMMON, 'migrate', false);
  if (o.help) { process.stdout.write(helpText(MIGRATE_HELP)); return 0; }
  checkUrl(str(o['database-url']));
  const db = await database(str(o['database-url']), false);
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

const DB_SUBCOMMANDS = ['url', 'psql', 'start', 'stop'] as const;

async function dbCommand(args: string[]): Promise<number> {
  // `userport db psql -c 'select 1'`: everything after psql is psql's own (its -c, -f, -A ...).
  if (args[0] === 'psql' && !args.slice(1).some((a) => a === '--help' || a === '-h')) {
    const server = await startEmbedded();
    const res = spawnSync('psql', [...args.slice(1), server.url], { stdio: 'inherit' });
    if (res.error) {
      // The URL holds the password: print it only when psql is missing and the user asked for a shell.
      throw new UserportError(ErrorCodes.IO, `psql is not installed; connect with any client to the URL \`userport db url\` prints`, { cause: res.error });
    }
    return res.status ?? 1;
  }
  const { values: o, positionals } = parseCommand(args, {}, 'db');
  if (o.help) { process.stdout.write(helpText(DB_HELP)); return 0; }
  const [sub, ...extra] = positionals;
  if (extra.length) throw usageError(`unexpected argument ${printable(extra[0]!)} (see userport db --help)`);
  if (sub === 'stop') {
    const stopped = await stopEmbedded();
    process.stdout.write(stopped ? 'Stopped the embedded PostgreSQL.\n' : 'The embedded PostgreSQL is not running.\n');
    return 0;
  }
  if (sub === 'url' || sub === 'start') {
    const server = await startEmbedded();
    process.stdout.write(`${server.url}\n`);
    return 0;
  }
  // A typo is a usage error like any other: it names the closest subcommand and never prints the
  // URL (it holds the password, and `db strat` in a shared terminal or CI log must not leak it).
  if (sub === undefined) throw usageError('missing db command: url, psql, start or stop (see userport db --help)');
  throw usageError(`unknown db command "${printable(sub)}"${didYouMean(sub, DB_SUBCOMMANDS)} (url, psql, start or stop)`);
}

/** The commands. A new one is one line here (and its help in HELP). */
const COMMANDS: Readonly<Record<string, { run: (args: string[]) => Promise<number> }>> = {
  import: { run: importCommand },
  imports: { run: importsCommand },
  migrate: { run: migrateCommand },
  db: { run: dbCommand },
  encrypt: { run: (args) => runEncryptCommand(args) },
  decrypt: { run: (args) => runDecryptCommand(args) },
  export: { run: (args) => runExportCommand(args) },
  target: { run: (args) => runTargetCommand(args) },
};

/** Runs the CLI with `argv` (without node and script); resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  installSpoolCleanup();
  const debug = argv.includes('--debug');
  try {
    const [command, ...rest] = argv;
    if (command === undefined) {
      process.stderr.write(helpText(HELP));
      return 2;
    }
    if (command === 'help' || command === '--help' || command === '-h') {
      const topic = rest[0] !== undefined ? COMMANDS[rest[0]] : undefined;
      if (topic) return await topic.run(['--help']);
      process.stdout.write(helpText(HELP));
      return 0;
    }
    if (command === '--version' || command === '-v') {
      const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
      process.stdout.write(`${pkg.version}\n`);
      return 0;
    }
    const cmd = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
    if (!cmd) {
      const near = command.startsWith('-') ? '' : didYouMean(command, Object.keys(COMMANDS));
      throw usageError(`unknown command "${printable(command)}"${near} (see userport --help)`);
    }
    return await cmd.run(rest);
  } catch (err) {
    return reportError(err, debug);
  }
}
