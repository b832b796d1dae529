/**
 * `userport export users|config|global DEST`: the other half of a migration, with `sentry
 * export`'s options. Wiring only: the work is in lib/export.ts. Errors are thrown for the dispatcher to
 * print; the function resolves to the exit code on success.
 */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline/promises';
import { startEmbedded } from '../lib/db/embedded.js';
import { checkDatabaseUrl } from '../lib/options.js';
import { printable } from '../lib/errors.js';
import { exportUsers, type ExportProgress, type ExportScope, type ExportSummary } from '../lib/export.js';
import { kmsGetPublicKey, readGcpKmsConfig } from '../lib/crypto/gcp-kms.js';
import { encryptionKey } from '../lib/encrypt.js';
import { checkInputFile, checkOutputPath, didYouMean, formatBytes, formatCount, helpText, parseCommand, TEXT_WIDTH, usage, usageError, usernameFilter, wrapList, wrapText, type FlagSpecs } from './cli-support.js';
import { closedStdout, stdoutClosedAtLaunch } from './signals.js';

export const EXPORT_USAGE = `Usage: userport export users|config|global DEST [options]
       (DEST is a file, or - for stdout)

Writes Sentry's user models exactly as 'sentry export users|config|global' does, streaming from
one consistent snapshot:
  users    users, emails, user emails, options
  config   the same for the globally privileged users only (staff, superusers, users with a
           permission or a role), with their permissions, every role, role links, and personal
           API tokens and authorizations
  global   every user with every permission, role, role link, two-factor authenticator, user IP,
           API token and authorization
Password hashes, 2FA secrets and API tokens are written as stored: an unencrypted config or
global export to a file is created 0600 and warned about; prefer --encrypt-with.

Options:
  --database-url URL              the source database (else $DATABASE_URL, else the embedded one)
  --filter-usernames A,B          export only these users and what belongs to them
  --filter-usernames-file F       the same, names separated by commas or newlines
  --encrypt-with PUB.pem          write Sentry's encrypted tarball for this RSA public key
  --encrypt-with-gcp-kms CFG      the same, with the public key of a Google Cloud KMS key (config JSON)
  --findings-file F               write what the export left out, and why, as JSON
  --indent N                      spaces per level (default 2, as Sentry)
  --tmp-dir DIR                   folder for the encrypted spool (default the system's)
  --no-prompt                     do not ask before overwriting DEST
  --json                          print the summary as JSON (on stderr when DEST is -)
  --no-progress                   no progress line on stderr
  --silent, -q                    print nothing but errors
  --debug                         print stack traces with errors
  -h, --help                      this help

Sentry's underscore spellings (--filter_usernames, --encrypt_with, ...) are accepted too.

Examples:
  userport export users old.json --database-url postgresql://old-host/sentry
  userport export global backup.tar --database-url "$OLD" --encrypt-with pub.pem
  userport export users - --database-url "$OLD" --encrypt-with pub.pem | userport import users - --decrypt-with key.pem --database-url "$NEW"
`;

const OPTIONS: FlagSpecs = {
  'database-url': { type: 'string', aliases: ['database_url'] },
  'filter-usernames': { type: 'string', aliases: ['filter_usernames'] },
  'filter-usernames-file': { type: 'string', aliases: ['filter_usernames_file'] },
  'encrypt-with': { type: 'string', aliases: ['encrypt_with'] },
  'encrypt-with-gcp-kms': { type: 'string', aliases: ['encrypt_with_gcp_kms'] },
  'findings-file': { type: 'string', aliases: ['findings_file'] },
  indent: { type: 'string' },
  'tmp-dir': { type: 'string' },
  'no-prompt': { type: 'boolean', aliases: ['no_prompt'] },
  json: { type: 'boolean' },
  'no-progress': { type: 'boolean' },
  // -q as Sentry's --silent.
  silent: { type: 'boolean', short: 'q' },
};

function progressLine(p: ExportProgress): string {
  const rate = p.seconds > 0 ? Math.round(p.records / p.seconds) : 0;
  return `${formatBytes(p.bytes)} written · ${formatCount(p.records)} records · ${formatCount(rate)} rec/s · ${p.model}`;
}

/** The summary as a person reads it; `emptyFilter`: `--filter-usernames ""` was given (no filter, as in Sentry). */
export function formatExportSummary(s: ExportSummary, dest: string, emptyFilter = false): string {
  const rows = Object.entries(s.models).map(([m, n]) => [m, formatCount(n)]);
  const w0 = Math.max(5, ...rows.map((r) => r[0]!.length));
  const w1 = Math.max(8, ...rows.map((r) => r[1]!.length));
  const out = [
    `Exported: ${formatCount(s.records)} records, ${formatBytes(s.bytes)} in ${s.seconds.toFixed(1)}s to ${dest === '-' ? 'stdout' : printable(dest)}`,
    '', `${'model'.padEnd(w0)}  ${'exported'.padStart(w1)}`, `${'-'.repeat(w0)}  ${'-'.repeat(w1)}`,
    ...rows.map(([m, n]) => `${m!.padEnd(w0)}  ${n!.padStart(w1)}`),
  ];
  for (const e of s.excluded) out.push(`  left out ${formatCount(e.count)} ${e.model}: ${e.reason}`);
  for (const [m, f] of Object.entries(s.missingColumns)) out.push(`  ${m}: the database has no column for ${f.join(', ')} (left out of every record)`);
  for (const [m, why] of Object.entries(s.absentModels)) out.push(`  ${m}: none written, ${why}`);
  if (emptyFilter) out.push('--filter-usernames was empty: no filter (as in Sentry), every user exported');
  if (s.unmatchedUsernames.length) out.push(wrapList('No user matched these --filter-usernames', s.unmatchedUsernames.map(printable)));
  // Every line fits 80 columns; a wrapped "left out" reason hangs under its text.
  return out.map((l) => wrapText(l, TEXT_WIDTH, '    ')).join('\n');
}

async function confirmOverwrite(dest: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(`${dest} exists. Overwrite it? [y/N] `)).trim());
  } finally {
    rl.close();
  }
}

const SCOPES: readonly ExportScope[] = ['users', 'config', 'global'];

/**
 * The one warning of an unencrypted config or global export to a file: it holds password hashes
 * and API tokens (global also 2FA secrets). None for stdout: what reads it (an import, an
 * encryption step, a file) is the caller's choice, and the warning would land in every pipe.
 */
export function plaintextWarning(scope: ExportScope, dest: string): string {
  const what = scope === 'global' ? 'password hashes, two-factor secrets and API tokens' : 'password hashes and API tokens';
  return `warning: ${printable(dest)} will hold ${what} unencrypted (created 0600); use --encrypt-with to encrypt it`;
}

/** `userport export users|config|global DEST [options]` (args start after `export`). Resolves to the exit code. */
export async function runExportCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(args, OPTIONS, 'export');
  const o = values as {
    [K in 'database-url' | 'filter-usernames' | 'filter-usernames-file' | 'encrypt-with' | 'encrypt-with-gcp-kms' | 'findings-file' | 'indent' | 'tmp-dir']?: string
  } & { [K in 'no-prompt' | 'json' | 'no-progress' | 'silent' | 'help']?: boolean };
  if (o.help) { process.stdout.write(helpText(EXPORT_USAGE)); return 0; }
  const scope = positionals[0] as ExportScope;
  if (scope !== undefined && !SCOPES.includes(scope)) {
    throw usageError(`unknown export scope "${printable(scope)}"${didYouMean(scope, SCOPES)} (users, config or global: userport export users DEST)`);
  }
  if (positionals.length !== 2) {
    throw usageError('usage: userport export users|config|global DEST [options] (DEST is a file or - for stdout; see userport export --help)');
  }
  const dest = positionals[1]!;
  if (dest !== '-') checkOutputPath('DEST', dest);
  if (o['findings-file'] !== undefined) {
    if (o['findings-file'] === '-') throw usageError('--findings-file - is not supported: standard output carries the summary');
    checkOutputPath('--findings-file', o['findings-file']);
  }
  for (const flag of ['filter-usernames-file', 'encrypt-with', 'encrypt-with-gcp-kms'] as const) {
    const file = o[flag];
    if (file !== undefined) checkInputFile(`--${flag}`, file);
  }
  if (o['tmp-dir'] !== undefined && !(fs.existsSync(o['tmp-dir']) && fs.statSync(o['tmp-dir']).isDirectory())) {
    throw usageError(`--tmp-dir: ${printable(o['tmp-dir'])} is not a folder`);
  }
  if (o['encrypt-with'] !== undefined && o['encrypt-with-gcp-kms'] !== undefined) {
    throw usageError('--encrypt-with and --encrypt-with-gcp-kms cannot be combined');
  }
  const { names: filterUsernames, emptyFilter } = usernameFilter(o['filter-usernames'], o['filter-usernames-file']);
  let indent: number | undefined;
  if (o.indent !== undefined) {
    indent = Number(o.indent);
    if (!/^\d+$/.test(o.indent) || indent > 16) throw usageError(`--indent must be an integer from 0 to 16, got "${printable(o.indent)}"`);
  }
  let encryptWith: Buffer | undefined;
  if (o['encrypt-with'] !== undefined) {
    try { encryptWith = fs.readFileSync(o['encrypt-with']); } catch (err) {
      throw usageError(`--encrypt-with: cannot read ${printable(o['encrypt-with'])}: ${(err as Error).message}`);
    }
  }
  if (o['findings-file'] !== undefined && path.resolve(o['findings-file']) === path.resolve(dest)) {
    throw usageError('--findings-file and DEST are the same file');
  }
  const givenUrl = o['database-url'] ?? (process.env.DATABASE_URL || undefined);
  if (givenUrl !== undefined) {
    try { checkDatabaseUrl(givenUrl); } catch (err) { throw usage(err as Error); }
  }
  const quiet = !!o.silent;
  if (dest !== '-' && !o['no-prompt'] && process.stdin.isTTY && process.stderr.isTTY && fs.existsSync(dest) && fs.statSync(dest).isFile()) {
    if (!(await confirmOverwrite(dest))) {
      process.stderr.write('Nothing written.\n');
      return 1;
    }
  }
  if (o['encrypt-with-gcp-kms'] !== undefined) {
    const endpoint = process.env.USERPORT_GCP_KMS_ENDPOINT || undefined;
    const config = await readGcpKmsConfig(o['encrypt-with-gcp-kms']).catch((err: unknown) => { throw usage(err as Error); });
    encryptWith = await kmsGetPublicKey(config, endpoint ? { endpoint } : {});
  }
  // The key is checked before any database is started or read.
  if (o['encrypt-with'] !== undefined && encryptWith !== undefined) {
    try { encryptionKey(encryptWith, 'export', 'encryptWith', `--encrypt-with ${printable(o['encrypt-with'])}`); } catch (err) { throw usage(err as Error); }
  }
  if (dest === '-' && stdoutClosedAtLaunch()) throw closedStdout();
  let databaseUrl = o['database-url'] ?? (process.env.DATABASE_URL || undefined);
  if (!databaseUrl) databaseUrl = (await startEmbedded()).url;

  const showProgress = !o['no-progress'] && !quiet && !o.json && process.stderr.isTTY;
  let lastDraw = 0;
  if (scope !== 'users' && encryptWith === undefined && dest !== '-' && !quiet) process.stderr.write(`${plaintextWarning(scope, dest)}\n`);
  const summary = await exportUsers({
    databaseUrl,
    scope,
    destination: dest,
    ...(filterUsernames ? { filterUsernames } : {}),
    ...(indent !== undefined ? { indent } : {}),
    ...(encryptWith ? { encryptWith } : {}),
    ...(o['tmp-dir'] ? { tmpDir: o['tmp-dir'] } : {}),
    ...(o['findings-file'] !== undefined ? { findingsFile: o['findings-file'] } : {}),
    ...(showProgress ? {
      onProgress: (p: ExportProgress) => {
        const now = Date.now();
        if (now - lastDraw < 250) return;
        lastDraw = now;
        process.stderr.write(`\r\x1b[K${progressLine(p)}`);
      },
    } : {}),
  });
  if (showProgress) process.stderr.write('\r\x1b[K');
  // With DEST on stdout, stdout carries the export: anything else goes to stderr.
  const report = dest === '-' ? process.stderr : process.stdout;
  if (o.json) report.write(`${JSON.stringify(summary, null, 2)}\n`);
  else if (!quiet) report.write(`${formatExportSummary(summary, dest, emptyFilter)}\n`);
  return 0;
}
