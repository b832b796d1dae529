/**
 * What every `userport` command shares: argument parsing with Sentry's spellings and "did you
 * mean", the one error format, and exit codes (2 for usage, as click-based `sentry` does; 1 for
 * data and runtime errors).
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Writable } from 'node:stream';
import { ErrorCodes, formatPosition, OptionError, pkText, printable, sayWording, UserportError, type Position, type Wording } from '../lib/errors.js';
import { parseUsernameList } from '../lib/filter-users.js';
import { fileNameTooLong } from '../lib/atomic-file.js';

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
const LIBRARY_TO_FLAG: Readonly<Partial<Record<string, string>>> = {
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
  // The scope is the command's first word: `import config`.
  scope: 'import',
  publicKeyPem: '--encrypt-with',
  encryptWith: '--encrypt-with',
  tmpDir: '--tmp-dir',
  skipLeadingText: '--skip-leading-text',
  overwriteConfigs: '--overwrite-configs',
  decrypt: '--decrypt-with (or --decrypt-with-gcp-kms)',
};

/** A library wording said on the command line: each option it names as its flag. */
export function cliWording(w: Wording): string {
  return sayWording(w, (option) => LIBRARY_TO_FLAG[option] ?? option);
}

/**
 * The message of `err` as the command line says it: a library error that names options in parts
 * (`wording`) gets the flags instead of the option names, and loses the function it came from
 * (`importUsers: `); any other message is the library's own.
 */
export function cliMessage(err: UserportError): string {
  return err.wording ? cliWording(err.wording) : err.message;
}

/** What to try next, printed under an error's line (`withHint`). */
const hints = new WeakMap<object, string>();

/** Attaches `hint` to `err` (printed on its own line under the error) and returns it. */
export function withHint<E extends Error>(err: E, hint: string): E {
  hints.set(err, hint);
  return err;
}

/**
 * The message of a data error without the record its position names again: `sentry.user pk 2:
 * field username must be string` at `record 4 (sentry.user pk 2), ...` named the record twice.
 * The position stays whole (scripts parse it).
 */
function dedupe(message: string, position: Position | undefined): { message: string; position: Position | undefined } {
  if (position?.model === undefined || position.ordinal === undefined) return { message, position };
  const prefix = `${printable(position.model)}${position.pk !== undefined ? ` pk ${pkText(position.pk)}` : ''}: `;
  return { message: message.startsWith(prefix) ? message.slice(prefix.length) : message, position };
}

/** The one error line every command prints: `userport: what (where) [CODE]`. */
export function formatError(err: unknown): string {
  if (err instanceof UserportError) {
    const { message, position } = dedupe(cliMessage(err), err.position);
    const where = formatPosition(position);
    let line = `userport: ${message}${where ? ` (${where})` : ''} [${err.code}]`;
    const cause = err.cause as { message?: string } | undefined;
    if (cause?.message && !err.message.includes(cause.message) && err.code.startsWith('USERPORT_DB')) {
      line += `\n  caused by: ${cause.message}`;
    }
    const hint = hints.get(err);
    if (hint) line += `\n${wrapText(`  ${hint}`, TEXT_WIDTH, '  ')}`;
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

/** The known word (a command, a scope) closest to `typed`, if close enough to be a typo; nothing for an empty word. */
export function suggestWord(typed: string, known: readonly string[]): string | undefined {
  if (typed === '') return undefined;
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = k.startsWith(typed) || typed.startsWith(k) ? Math.min(1, distance(typed, k)) : distance(typed, k);
    if (d < bestD) { bestD = d; best = k; }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(typed.length / 4)) ? best : undefined;
}

/** The known flag closest to `typed` (`--flag=value`, `--flag_name`), if close enough to be a typo. */
export function suggestFlag(typed: string, known: readonly string[]): string | undefined {
  const near = suggestWord(typed.replace(/^-+/, '').split('=')[0]!.replace(/_/g, '-'), known);
  return near === undefined ? undefined : `--${near}`;
}

/** `: did you mean X?` for a typo of one of `known`, else nothing. */
export function didYouMean(typed: string, known: readonly string[]): string {
  const near = suggestWord(typed, known);
  return near && near !== typed ? `: did you mean ${near}?` : '';
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
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (!done && arg === '--') done = true;
    const m = !done ? /^--([^=]+)(=.*)?$/s.exec(arg) : null;
    const name = m ? alias.get(m[1]!) ?? m[1]! : undefined;
    // `--max-rejects -3`: parseArgs takes `-3` for an option and says "needs a value"; the value
    // is a number, and the command's own check says what numbers it takes.
    const next = args[i + 1];
    if (m && m[2] === undefined && all[name!]?.type === 'string' && next !== undefined && /^-\d/.test(next)) {
      rewritten.push(`--${name}=${next}`);
      i++;
      continue;
    }
    rewritten.push(m && name !== m[1] ? `--${name}${m[2] ?? ''}` : arg);
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

/**
 * A count with its thousands grouped, as `toLocaleString('en-US')` writes it (1,234,567). For an
 * integer the digits are grouped here: the first `toLocaleString` of a process sets up ICU's
 * number formatting, 12 ms of every command's summary. Anything else goes to it.
 */
export function formatCount(x: number): string {
  if (!Number.isSafeInteger(x)) return x.toLocaleString('en-US');
  const digits = String(Math.abs(x));
  let out = digits.slice(0, digits.length % 3 || 3);
  for (let i = out.length; i < digits.length; i += 3) out += `,${digits.slice(i, i + 3)}`;
  return x < 0 || Object.is(x, -0) ? `-${out}` : out;
}

/** Binary units throughout (1 MiB = 1,048,576 bytes), said so. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** Width every human-facing line fits (the summary, lists, help), whatever the terminal. */
export const TEXT_WIDTH = 80;

/**
 * `text` word-wrapped to `width` columns, each line on its own; continuation lines start with
 * `indent` (a hanging indent: a list's items line up under its first one). A word longer than a
 * line (a path, a URL) is cut where the line ends: nothing is ever wider than `width`.
 */
export function wrapText(text: string, width = TEXT_WIDTH, indent = '  '): string {
  return text.split('\n').map((para) => {
    // A line that fits is left as it is (a table's aligned columns included).
    if ([...para].length <= width) return para;
    const lead = /^ */.exec(para)![0];
    const words = para.slice(lead.length).split(/ +/).filter((w) => w !== '');
    const lines: string[] = [];
    let line = lead;
    let fresh = true;
    const pad = lead + indent;
    for (let word of words) {
      if (!fresh && line.length + 1 + word.length > width) { lines.push(line); line = pad; fresh = true; }
      if (!fresh) line += ' ';
      // A path or URL stays whole, longer than the width if it must: one cut in two cannot be
      // copied (a deep --rejects-file path in an error's hint was).
      while (line.length + word.length > width && !word.includes('/')) {
        const room = Math.max(1, width - line.length);
        lines.push(line + word.slice(0, room));
        word = word.slice(room);
        line = pad;
      }
      line += word;
      fresh = false;
    }
    lines.push(line);
    return lines.map((l) => l.trimEnd()).join('\n');
  }).join('\n');
}

/** `label: a, b, c` wrapped to `width`, the lines after the first indented by two (hanging). */
export function wrapList(label: string, items: readonly string[], width = TEXT_WIDTH): string {
  const hang = '  ';
  // An item (`sentry.actor 3`) stays on one line: its spaces are held by no-break spaces.
  return wrapText(`${label}: ${items.map((i) => i.replace(/ /g, '\u00a0')).join(', ')}`, width, hang).replace(/\u00a0/g, ' ');
}

/**
 * A help text laid out for {@link TEXT_WIDTH} columns, whatever widths it was written at: the
 * lines of a paragraph are joined and wrapped; an option's description (after a gap of two or
 * more spaces, continued on lines indented deeper) wraps under itself; an indented command line
 * (an example) wraps with shell continuations (` \`), so it still runs when pasted.
 */
export function helpText(text: string, width = TEXT_WIDTH): string {
  type Block = { kind: 'para'; text: string } | { kind: 'entry'; term: string; col: number; text: string } | { kind: 'raw'; text: string };
  const blocks: Block[] = [];
  for (const line of text.replace(/\n$/, '').split('\n')) {
    const last = blocks[blocks.length - 1];
    const entry = /^( +)(\S.*?\S|\S)( {2,})(\S.*)$/.exec(line);
    const indent = /^ */.exec(line)![0].length;
    if (line.trim() === '') blocks.push({ kind: 'raw', text: '' });
    else if (!line.startsWith(' ')) {
      // A short line ending in ':' is a heading ("Options:"); a longer paragraph goes on.
      if (last?.kind === 'para' && !/^[A-Z][\w ]{0,30}:$/.test(last.text)) last.text += ` ${line}`;
      else blocks.push({ kind: 'para', text: line });
    } else if (last?.kind === 'entry' && indent >= Math.min(last.col, 20)) last.text += ` ${line.trim()}`;
    else if (entry) blocks.push({ kind: 'entry', term: entry[1]! + entry[2]!, col: entry[1]!.length + entry[2]!.length + entry[3]!.length, text: entry[4]! });
    // A term too long for its column, on a line of its own, then its text indented under it.
    else if (last?.kind === 'raw' && last.text.startsWith(' ') && indent >= 20 && indent > /^ */.exec(last.text)![0].length) {
      blocks[blocks.length - 1] = { kind: 'entry', term: last.text, col: indent, text: line.trim() };
    } else blocks.push({ kind: 'raw', text: line });
  }
  const out: string[] = [];
  for (const b of blocks) {
    if (b.kind === 'para') out.push(wrapText(b.text, width, b.text.startsWith('Usage:') ? '  ' : ''));
    else if (b.kind === 'entry') {
      const col = Math.min(b.col, 34);
      const body = wrapText(b.text, width - col, '').split('\n');
      if (b.term.length + 2 > col) out.push(b.term, ...body.map((l) => ' '.repeat(col) + l));
      else out.push(b.term.padEnd(col) + body[0], ...body.slice(1).map((l) => ' '.repeat(col) + l));
    } else if (b.text.length <= width) out.push(b.text);
    else {
      // A command: break between words, each line but the last ending in ` \`.
      const lead = /^ */.exec(b.text)![0];
      const lines = wrapText(b.text.trimStart(), width - lead.length - 2, '  ').split('\n');
      out.push(...lines.map((l, i) => `${lead}${l}${i < lines.length - 1 ? ' \\' : ''}`));
    }
  }
  return `${out.join('\n')}\n`;
}

/** Refuses, before any work, an output path (option or argument `flag`) whose folder is missing or that is a folder. */
export function checkOutputPath(flag: string, file: string): void {
  const dir = path.dirname(path.resolve(file));
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw usageError(`${flag}: folder ${printable(dir)} does not exist`);
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) throw usageError(`${flag}: ${printable(file)} is a folder`);
  const tooLong = fileNameTooLong(file);
  if (tooLong) throw usageError(`${flag}: ${tooLong}`);
}

/**
 * The username filter of `--filter-usernames A,B` or `--filter-usernames-file F`, for import and
 * export alike. An empty value (or an empty file) is no filter at all, as Sentry's
 * `parse_filter_arg` reads it, and `emptyFilter` says so for the summary. Names are split on commas
 * and newlines and trimmed (Sentry splits on commas only and trims nothing: a file's last newline
 * would make its last name match nobody). A value that is not empty but names nobody (`" "`,
 * `","`, a file of blank lines) is refused: Sentry would take nobody, which no one asks for on
 * purpose, and taking everyone would be worse.
 */
export function usernameFilter(value: string | undefined, file: string | undefined): { names: string[] | undefined; emptyFilter: boolean } {
  if (value !== undefined && file !== undefined) throw usageError('--filter-usernames and --filter-usernames-file cannot be combined');
  const flag = file !== undefined ? `--filter-usernames-file ${printable(file)}` : '--filter-usernames';
  let text = value;
  if (file !== undefined) {
    checkOptionFile('--filter-usernames-file', file);
    try { text = fs.readFileSync(file, 'utf8'); } catch (err) { throw optionFileError('--filter-usernames-file', file, err); }
  }
  if (text === undefined) return { names: undefined, emptyFilter: false };
  if (text === '') return { names: undefined, emptyFilter: true };
  const names = parseUsernameList(text);
  if (!names.length) throw usageError(`${flag} names no user (only blanks and separators): give names, or an empty value for no filter`);
  return { names, emptyFilter: false };
}

/** A file an option names, to be read: it must exist and be readable (USERPORT_IO, as a usage error). */
export function checkOptionFile(flag: string, file: string | undefined): void {
  if (file === undefined) return;
  try {
    if (fs.statSync(file).isDirectory()) throw new Error('it is a directory');
    fs.accessSync(file, fs.constants.R_OK);
  } catch (err) {
    throw optionFileError(flag, file, err);
  }
}

function optionFileError(flag: string, file: string, err: unknown): UserportError {
  const code = (err as NodeJS.ErrnoException).code;
  return usage(new UserportError(ErrorCodes.IO, `${flag} ${file}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}`));
}

/** Refuses, before any work, an input file (option or argument `flag`) that cannot be read. */
export function checkInputFile(flag: string, file: string): void {
  try { fs.accessSync(file, fs.constants.R_OK); } catch { throw usageError(`${flag}: cannot read ${printable(file)}`); }
  if (fs.statSync(file).isDirectory()) throw usageError(`${flag}: ${printable(file)} is a folder`);
}
