/**
 * What every `userport` command shares: argument parsing with Sentry's spellings and "did you
 * mean", the one error format, and exit codes (2 for usage, as click-based `sentry` does; 1 for
 * data and runtime errors).
 */
import { parseArgs } from 'node:util';
import type { Writable } from 'node:stream';
import { formatPosition, OptionError, UserportError } from '../lib/errors.js';

export interface FlagSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** Other spellings accepted for the same flag (Sentry's `--merge_users`). */
  aliases?: readonly string[];
}
export type FlagSpecs = Readonly<Record<string, FlagSpec>>;
/** The values `parseCommand` returns for `S` (declared `as const satisfies FlagSpecs`), typed per flag. */
export type FlagValues<S extends FlagSpecs> = { [K in keyof S]?: S[K]['type'] extends 'string' ? string : boolean } & { help?: boolean; debug?: boolean };

/**
 * The exit code when the reader of standard output went away (`export users - | head`): 141,
 * 128 + SIGPIPE, what a process killed by SIGPIPE reports (Node ignores SIGPIPE, so userport
 * returns it itself), without a message: the reader chose to stop, as with any Unix filter. A
 * script with `set -o pipefail` still sees that the output was not all taken.
 */
export const BROKEN_PIPE_EXIT = 141;

/** A write that failed with EPIPE (directly, or as the cause of an I/O error), not a database socket's. */
export function isBrokenPipe(err: unknown): boolean {
  for (let e = err, depth = 0; e !== null && typeof e === 'object' && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof UserportError && e.code.startsWith('USERPORT_DB')) return false;
    const x = e as NodeJS.ErrnoException;
    if (x.code === 'EPIPE' && (x.syscall === undefined || x.syscall === 'write')) return true;
  }
  return false;
}

/** Errors that are the command line's fault: exit code 2. */
const usageErrors = new WeakSet<object>();

/** Marks `err` as a usage error (exit 2) and returns it. */
export function usage<E extends Error>(err: E): E {
  usageErrors.add(err);
  return err;
}

/** A usage error about the command line itself. */
export function usageError(message: string): OptionError {
  return usage(new OptionError(message));
}

export function exitCodeFor(err: unknown): number {
  return err instanceof OptionError || (typeof err === 'object' && err !== null && usageErrors.has(err)) ? 2 : 1;
}

/**
 * Library option names as the CLI spells them: the library's errors name `databaseUrl`, a
 * person typed `--database-url`.
 */
const LIBRARY_TO_FLAG: Readonly<Record<string, string>> = {
  databaseUrl: '--database-url',
  mergeUsers: '--merge-users',
  filterUsernames: '--filter-usernames',
  dryRun: '--dry-run',
  allowReimport: '--allow-reimport',
  bulkLoad: '--bulk-load',
  resumable: '--resumable',
  importId: '--import-id',
  batchRows: '--batch-rows',
  rejectsFile: '--rejects-file',
  maxRejects: '--max-rejects',
  findingsFile: '--findings-file',
  maxRecordBytes: '--max-record-bytes',
  maxDepth: '--max-depth',
  source: 'SRC',
  publicKeyPem: '--encrypt-with',
  tmpDir: '--tmp-dir',
};

/** The message of `err` with a library option name replaced by the CLI flag. */
export function cliMessage(err: UserportError): string {
  const option = err instanceof OptionError ? err.option : undefined;
  const flag = option !== undefined ? LIBRARY_TO_FLAG[option] : undefined;
  if (!option || !flag) return err.message;
  // `createEncryptor: publicKeyPem ...`: the function name means nothing on the command line.
  return err.message.replace(/^[A-Za-z]+: (?=.*\b[A-Za-z]+\b)/, (m) => (m.slice(0, -2) === option ? m : '')).split(option).join(flag);
}

/** The one error line every command prints: `userport: what (where) [CODE]`. */
export function formatError(err: unknown): string {
  if (err instanceof UserportError) {
    const where = formatPosition(err.position);
    let line = `userport: ${cliMessage(err)}${where ? ` (${where})` : ''} [${err.code}]`;
    const cause = err.cause as { message?: string } | undefined;
    if (cause?.message && !err.message.includes(cause.message) && err.code.startsWith('USERPORT_DB')) {
      line += `\n  caused by: ${cause.message}`;
    }
    return line;
  }
  return `userport: unexpected error: ${(err as Error)?.message ?? String(err)}`;
}

/** Prints `err` in the one format (the stack with --debug) and returns the exit code. */
export function reportError(err: unknown, debug: boolean, stderr: Writable = process.stderr): number {
  if (isBrokenPipe(err)) return BROKEN_PIPE_EXIT;
  stderr.write(`${formatError(err)}\n`);
  if (debug && err instanceof Error && err.stack) stderr.write(`${err.stack}\n`);
  return exitCodeFor(err);
}

function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}

/** The known flag closest to `typed`, if close enough to be a typo. */
export function suggestFlag(typed: string, known: readonly string[]): string | undefined {
  const bare = typed.replace(/^-+/, '').split('=')[0]!.replace(/_/g, '-');
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = k.startsWith(bare) || bare.startsWith(k) ? Math.min(1, distance(bare, k)) : distance(bare, k);
    if (d < bestD) { bestD = d; best = k; }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(bare.length / 4)) ? `--${best}` : undefined;
}

export interface Parsed {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/**
 * `parseArgs` with aliases, `--help` and `--debug` on every command, and its errors turned into
 * one-line usage errors in the CLI's own words. `command` names the command in hints.
 */
export function parseCommand(args: readonly string[], specs: FlagSpecs, command: string, allowPositionals = true): Parsed {
  const all: Record<string, FlagSpec> = { ...specs, help: { type: 'boolean', short: 'h' }, debug: { type: 'boolean' } };
  const alias = new Map<string, string>();
  for (const [name, spec] of Object.entries(all)) for (const a of spec.aliases ?? []) alias.set(a, name);
  const rewritten: string[] = [];
  let done = false;
  for (const arg of args) {
    if (!done && arg === '--') done = true;
    const m = !done ? /^--([^=]+)(=.*)?$/s.exec(arg) : null;
    const target = m ? alias.get(m[1]!) : undefined;
    rewritten.push(target ? `--${target}${m![2] ?? ''}` : arg);
  }
  const options = Object.fromEntries(Object.entries(all).map(([k, v]) => [k, v.short ? { type: v.type, short: v.short } : { type: v.type }]));
  try {
    const r = parseArgs({ args: rewritten, options, allowPositionals, strict: true });
    return { values: r.values as Parsed['values'], positionals: r.positionals };
  } catch (err) {
    const e = err as { code?: string; message: string };
    const quoted = /'([^']+)'/.exec(e.message)?.[1];
    let message = e.message.split('\n')[0]!;
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && quoted) {
      const hint = suggestFlag(quoted, Object.keys(all));
      message = `unknown option ${quoted}${hint ? `: did you mean ${hint}?` : ` (see userport ${command} --help)`}`;
    } else if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && quoted) {
      const flag = quoted.split(' ')[0]!;
      message = /does not take an argument/.test(e.message) ? `${flag} takes no value` : `${flag} needs a value`;
    } else if (e.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      message = `unexpected argument ${quoted ?? ''} (see userport ${command} --help)`.replace('  ', ' ');
    }
    throw usageError(message);
  }
}

/** Binary units throughout (1 MiB = 1,048,576 bytes), said so. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}
