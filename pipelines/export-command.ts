/**
 * `userport export users DEST`: the other half of a migration, with `sentry export users`'s
 * options. Wiring only: the work is in lib/export.ts. Errors are thrown for the dispatcher to
 * print; the function resolves to the exit code on success.
 */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline/promises';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { startEmbedded } from '../lib/db/embedded.js';
import { checkDatabaseUrl } from '../lib/db/knex.js';
import { OptionError, printable } from '../lib/errors.js';
import { exportUsers, type ExportFinding, type ExportProgress, type ExportSummary } from '../lib/export.js';
import { parseUsernameList } from '../lib/filter-users.js';
import { kmsGetPublicKey, readGcpKmsConfig } from '../lib/crypto/gcp-kms.js';

export const EXPORT_USAGE = `Usage: userport export users DEST [options]   (DEST is a file, or - for stdout)

Writes the user scope of a Sentry database (users, emails, user emails, options) exactly as
'sentry export users' does, streaming from one consistent snapshot.

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
`;

const OPTIONS = {
  'database-url': { type: 'string' },
  'filter-usernames': { type: 'string' },
  'filter-usernames-file': { type: 'string' },
  'encrypt-with': { type: 'string' },
  'encrypt-with-gcp-kms': { type: 'string' },
  'findings-file': { type: 'string' },
  indent: { type: 'string' },
  'tmp-dir': { type: 'string' },
  'no-prompt': { type: 'boolean' },
  json: { type: 'boolean' },
  'no-progress': { type: 'boolean' },
  // -q as Sentry's --silent.
  silent: { type: 'boolean', short: 'q' },
  debug: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

function progressLine(p: ExportProgress): string {
  const rate = p.seconds > 0 ? Math.round(p.records / p.seconds) : 0;
  return `${formatBytes(p.bytes)} written · ${p.records.toLocaleString('en-US')} records · ${rate.toLocaleString('en-US')} rec/s · ${p.model}`;
}

/** The summary as a person reads it. */
export function formatExportSummary(s: ExportSummary, dest: string): string {
  const rows = Object.entries(s.models).map(([m, n]) => [m, String(n)]);
  const w0 = Math.max(5, ...rows.map((r) => r[0]!.length));
  const w1 = Math.max(8, ...rows.map((r) => r[1]!.length));
  const out = [
    `Exported: ${s.records.toLocaleString('en-US')} records, ${formatBytes(s.bytes)} in ${s.seconds.toFixed(1)}s to ${dest === '-' ? 'stdout' : printable(dest)}`,
    '', `${'model'.padEnd(w0)}  ${'exported'.padStart(w1)}`, `${'-'.repeat(w0)}  ${'-'.repeat(w1)}`,
    ...rows.map(([m, n]) => `${m!.padEnd(w0)}  ${n!.padStart(w1)}`),
  ];
  for (const e of s.excluded) out.push(`  left out ${e.count} ${e.model}: ${e.reason}`);
  for (const [m, f] of Object.entries(s.missingColumns)) out.push(`  ${m}: the database has no column for ${f.join(', ')} (left out of every record)`);
  if (s.unmatchedUsernames.length) out.push(`No user matched these --filter-usernames: ${s.unmatchedUsernames.map(printable).join(', ')}`);
  return out.join('\n');
}

async function confirmOverwrite(dest: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(`${dest} exists. Overwrite it? [y/N] `)).trim());
  } finally {
    rl.close();
  }
}

/** `userport export users DEST [options]` (args start after `export`). Resolves to the exit code. */
export async function runExportCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    throw new OptionError(`${(err as Error).message.split('\n')[0]!} (try userport export --help)`);
  }
  const { values: o, positionals } = parsed;
  if (o.help) { process.stdout.write(EXPORT_USAGE); return 0; }
  if (positionals[0] !== 'users' || positionals.length !== 2) {
    throw new OptionError('usage: userport export users DEST [options] (DEST is a file or - for stdout)');
  }
  const dest = positionals[1]!;
  if (o['filter-usernames'] !== undefined && o['filter-usernames-file'] !== undefined) {
    throw new OptionError('--filter-usernames and --filter-usernames-file cannot be combined');
  }
  if (o['encrypt-with'] !== undefined && o['encrypt-with-gcp-kms'] !== undefined) {
    throw new OptionError('--encrypt-with and --encrypt-with-gcp-kms cannot be combined');
  }
  let filterUsernames: string[] | undefined;
  if (o['filter-usernames'] !== undefined) filterUsernames = parseUsernameList(o['filter-usernames']);
  if (o['filter-usernames-file'] !== undefined) {
    try { filterUsernames = parseUsernameList(fs.readFileSync(o['filter-usernames-file'], 'utf8')); } catch (err) {
      throw new OptionError(`--filter-usernames-file: cannot read ${o['filter-usernames-file']}: ${(err as Error).message}`);
    }
  }
  let indent: number | undefined;
  if (o.indent !== undefined) {
    indent = Number(o.indent);
    if (!/^\d+$/.test(o.indent) || indent > 16) throw new OptionError(`--indent must be an integer from 0 to 16, got "${o.indent}"`);
  }
  let encryptWith: Buffer | undefined;
  if (o['encrypt-with'] !== undefined) {
    try { encryptWith = fs.readFileSync(o['encrypt-with']); } catch (err) {
      throw new OptionError(`--encrypt-with: cannot read ${o['encrypt-with']}: ${(err as Error).message}`);
    }
  }
  if (o['findings-file'] !== undefined && path.resolve(o['findings-file']) === path.resolve(dest)) {
    throw new OptionError('--findings-file and DEST are the same file');
  }
  if (o['database-url'] !== undefined) checkDatabaseUrl(o['database-url']);
  const quiet = !!o.silent;
  if (dest !== '-' && !o['no-prompt'] && process.stdin.isTTY && process.stderr.isTTY && fs.existsSync(dest) && fs.statSync(dest).isFile()) {
    if (!(await confirmOverwrite(dest))) {
      process.stderr.write('Nothing written.\n');
      return 1;
    }
  }
  if (o['encrypt-with-gcp-kms'] !== undefined) {
    const endpoint = process.env.USERPORT_GCP_KMS_ENDPOINT || undefined;
    encryptWith = await kmsGetPublicKey(await readGcpKmsConfig(o['encrypt-with-gcp-kms']), endpoint ? { endpoint } : {});
  }
  let databaseUrl = o['database-url'] ?? (process.env.DATABASE_URL || undefined);
  if (!databaseUrl) databaseUrl = (await startEmbedded()).url;

  const showProgress = !o['no-progress'] && !quiet && !o.json && process.stderr.isTTY;
  let lastDraw = 0;
  const summary = await exportUsers({
    databaseUrl,
    destination: dest,
    ...(filterUsernames ? { filterUsernames } : {}),
    ...(indent !== undefined ? { indent } : {}),
    ...(encryptWith ? { encryptWith } : {}),
    ...(o['tmp-dir'] ? { tmpDir: o['tmp-dir'] } : {}),
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
  if (o['findings-file'] !== undefined) {
    const findings: ExportFinding[] = [
      ...summary.excluded,
      ...summary.unmatchedUsernames.map((username) => ({ kind: 'unmatched-username' as const, model: 'sentry.user' as const, username })),
    ];
    try {
      fs.writeFileSync(o['findings-file'], `${JSON.stringify(findings, null, 2)}\n`);
    } catch (err) {
      throw new OptionError(`--findings-file: cannot write ${o['findings-file']}: ${(err as Error).message}`);
    }
  }
  // With DEST on stdout, stdout carries the export: anything else goes to stderr.
  const report = dest === '-' ? process.stderr : process.stdout;
  if (o.json) report.write(`${JSON.stringify(summary, null, 2)}\n`);
  else if (!quiet) report.write(`${formatExportSummary(summary, dest)}\n`);
  return 0;
}
