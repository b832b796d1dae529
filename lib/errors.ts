/**
 * Errors. Every failure userport raises is a {@link UserportError} with a stable `code`
 * (`USERPORT_*`); data errors also carry a {@link Position} so the CLI can say what and where.
 * Causes are kept (`cause`), never flattened: a pg error stays reachable with its SQLSTATE.
 */

/** Where in the export a problem is. Every field is optional: say what is known. */
export interface Position {
  /** 1-based index of the record in the top-level array. */
  ordinal?: number;
  /** 0-based byte offset in the (decrypted) JSON text. */
  offset?: number;
  /** 1-based line. */
  line?: number;
  /** 1-based column, counted in bytes. */
  column?: number;
  /** Model name of the record (`sentry.user`). */
  model?: string;
  /** Source primary key of the record. */
  pk?: unknown;
  /** Field inside `fields`, dotted for nested values. */
  field?: string;
}

/** Stable error codes. Tests and callers match on these, never on message text. */
export const ErrorCodes = {
  OPTION_INVALID: 'USERPORT_OPTION_INVALID',
  INPUT_EMPTY: 'USERPORT_INPUT_EMPTY',
  INPUT_NOT_ARRAY: 'USERPORT_INPUT_NOT_ARRAY',
  INPUT_TRAILING: 'USERPORT_INPUT_TRAILING',
  INPUT_TRUNCATED: 'USERPORT_INPUT_TRUNCATED',
  INPUT_UTF8: 'USERPORT_INPUT_UTF8',
  PARSE_JSON: 'USERPORT_PARSE_JSON',
  LIMIT_RECORD_SIZE: 'USERPORT_LIMIT_RECORD_SIZE',
  LIMIT_DEPTH: 'USERPORT_LIMIT_DEPTH',
  RECORD_NOT_OBJECT: 'USERPORT_RECORD_NOT_OBJECT',
  RECORD_ENVELOPE: 'USERPORT_RECORD_ENVELOPE',
  RECORD_SCHEMA: 'USERPORT_RECORD_SCHEMA',
  RECORD_DUPLICATE_PK: 'USERPORT_RECORD_DUPLICATE_PK',
  MAX_REJECTS: 'USERPORT_MAX_REJECTS',
  DB_CONNECT: 'USERPORT_DB_CONNECT',
  DB_QUERY: 'USERPORT_DB_QUERY',
  DB_EMBEDDED: 'USERPORT_DB_EMBEDDED',
  IMPORT_MISMATCH: 'USERPORT_IMPORT_MISMATCH',
  IMPORT_BUSY: 'USERPORT_IMPORT_BUSY',
  IO: 'USERPORT_IO',
  EXPORT_SCHEMA: 'USERPORT_EXPORT_SCHEMA',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes] | `USERPORT_${string}`;

export interface UserportErrorOptions {
  cause?: unknown;
  position?: Position;
}

/** Base class of every error userport raises on purpose. */
export class UserportError extends Error {
  override name = 'UserportError';
  readonly code: ErrorCode;
  readonly position: Position | undefined;

  constructor(code: ErrorCode, message: string, options: UserportErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.position = options.position;
  }

  /** One line: message, then where. The CLI prints this. */
  describe(): string {
    const where = formatPosition(this.position);
    return where ? `${this.message} (${where})` : this.message;
  }
}

/** A bad option or argument: thrown synchronously by factories, names the option. */
export class OptionError extends UserportError {
  override name = 'OptionError';
  constructor(message: string) {
    super(ErrorCodes.OPTION_INVALID, message);
  }
}

/** The bytes are not a well-formed export: JSON syntax, encoding, limits, top-level shape. */
export class ParseError extends UserportError {
  override name = 'ParseError';
}

/** A well-formed record that breaks the envelope or its model's JSON Schema. */
export class RecordError extends UserportError {
  override name = 'RecordError';
}

/** The source database cannot be exported: a user-scope table or a column it needs is missing. */
export class ExportError extends UserportError {
  override name = 'ExportError';
}

/** A database failure. The pg error is the `cause`; SQLSTATE, table and constraint surface here. */
export class DatabaseError extends UserportError {
  override name = 'DatabaseError';
  readonly sqlState: string | undefined;
  readonly table: string | undefined;
  readonly constraint: string | undefined;

  constructor(code: ErrorCode, message: string, options: UserportErrorOptions = {}) {
    super(code, message, options);
    const pgErr = options.cause as { code?: unknown; table?: unknown; constraint?: unknown } | undefined;
    this.sqlState = typeof pgErr?.code === 'string' ? pgErr.code : undefined;
    this.table = typeof pgErr?.table === 'string' ? pgErr.table : undefined;
    this.constraint = typeof pgErr?.constraint === 'string' ? pgErr.constraint : undefined;
  }
}

/**
 * `s` with control characters (C0, DEL, C1), line and paragraph separators and bidi overrides
 * written as `\uXXXX`: export data shown on a terminal must not move the cursor, recolour it, set
 * its title, or start a new line that looks like another message.
 */
export function printable(s: string): string {
  return s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Renders a position as `record 12 (sentry.user pk 4), field username, byte 1234, line 40, column 5`. */
export function formatPosition(p: Position | undefined): string {
  if (!p) return '';
  const parts: string[] = [];
  if (p.ordinal !== undefined) {
    let rec = `record ${p.ordinal}`;
    if (p.model !== undefined) rec += ` (${printable(p.model)}${p.pk !== undefined ? ` pk ${printable(String(p.pk))}` : ''})`;
    parts.push(rec);
  } else if (p.model !== undefined) {
    parts.push(`${printable(p.model)}${p.pk !== undefined ? ` pk ${printable(String(p.pk))}` : ''}`);
  }
  if (p.field !== undefined) parts.push(`field ${printable(p.field)}`);
  if (p.offset !== undefined) parts.push(`byte ${p.offset}`);
  if (p.line !== undefined) parts.push(`line ${p.line}`);
  if (p.column !== undefined) parts.push(`column ${p.column}`);
  return parts.join(', ');
}

const FS_SYSCALLS = new Set(['open', 'read', 'write', 'close', 'stat', 'fstat', 'lstat', 'ftruncate', 'fsync', 'mkdir', 'rename', 'unlink', 'scandir', 'access', 'copyfile']);

/**
 * Wraps a pg error into a {@link DatabaseError} unless it is already a UserportError; a Node
 * file-system error becomes USERPORT_IO.
 */
export function wrapDbError(err: unknown, what: string): UserportError {
  if (err instanceof UserportError) return err;
  const e = err as { code?: string; message?: string; errno?: string };
  const lost =
    e?.code === '57P01' || e?.code === '57P02' || e?.code === '57P03' || e?.code === 'ECONNRESET' ||
    e?.code === 'ECONNREFUSED' || e?.code === 'EPIPE' ||
    /Connection terminated|connection ended|not queryable|Client has encountered a connection error/i.test(e?.message ?? '');
  if (lost) {
    return new DatabaseError(ErrorCodes.DB_CONNECT, `${what}: lost the connection to PostgreSQL (${e?.message ?? e?.code})`, { cause: err });
  }
  // A file-system failure (the source, the rejects or the findings file) is not a database error.
  if (typeof (err as { syscall?: unknown })?.syscall === 'string' && FS_SYSCALLS.has((err as { syscall: string }).syscall)) {
    return new UserportError(ErrorCodes.IO, `${what} failed: ${e.message ?? e.code}`, { cause: err });
  }
  const detail = e?.message ? `: ${e.message}` : '';
  return new DatabaseError(ErrorCodes.DB_QUERY, `${what} failed${detail}`, { cause: err });
}
