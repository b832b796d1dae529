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
  RECORD_OPTION_VALUE: 'USERPORT_RECORD_OPTION_VALUE',
  RECORD_LEGACY_FORMAT: 'USERPORT_RECORD_LEGACY_FORMAT',
  /** A value does not fit the target database's column (an address longer than Sentry 9's 75 characters). */
  RECORD_TARGET: 'USERPORT_RECORD_TARGET',
  MAX_REJECTS: 'USERPORT_MAX_REJECTS',
  DB_CONNECT: 'USERPORT_DB_CONNECT',
  DB_QUERY: 'USERPORT_DB_QUERY',
  DB_EMBEDDED: 'USERPORT_DB_EMBEDDED',
  /** A server or session setting would break a guarantee (the merge's isolation level). */
  DB_SETTING: 'USERPORT_DB_SETTING',
  IMPORT_MISMATCH: 'USERPORT_IMPORT_MISMATCH',
  IMPORT_BUSY: 'USERPORT_IMPORT_BUSY',
  /** The connection was lost after the import's COMMIT was sent, and the database could not be asked whether it committed. */
  IMPORT_OUTCOME_UNKNOWN: 'USERPORT_IMPORT_OUTCOME_UNKNOWN',
  IO: 'USERPORT_IO',
  /** The caller cancelled the work (`signal` aborted); `cause` is the signal's reason. */
  ABORTED: 'USERPORT_ABORTED',
  /** A callback the caller passed (a sink's `checkpoint` or `finalize`) threw something that is not a UserportError; `cause` is what it threw. */
  CALLBACK: 'USERPORT_CALLBACK',
  /** A failure that is none of the above: a bug in userport. `cause` is the original error. */
  INTERNAL: 'USERPORT_INTERNAL',
  /** The source database lacks a table or a key column the export needs. */
  EXPORT_SCHEMA: 'USERPORT_EXPORT_SCHEMA',
  /** The target database lacks what an import needs (no auth_user), or has a column userport cannot fill. */
  TARGET_SCHEMA: 'USERPORT_TARGET_SCHEMA',
  /** The import would need ids beyond what the target's id columns hold (32-bit user ids of Sentry 9). */
  TARGET_LIMIT: 'USERPORT_TARGET_LIMIT',
} as const;

/** Stable codes of `DecryptError` (lib/crypto/errors.ts), the encrypted-export path. */
export const DecryptErrorCodes = {
  /** The private key is a valid RSA key, but not the one the export was encrypted to. */
  KEY_MISMATCH: 'USERPORT_DECRYPT_KEY_MISMATCH',
  /** A key (private key file, `key.pub`, public key to encrypt with) cannot be loaded or is not RSA. */
  KEY_INVALID: 'USERPORT_DECRYPT_KEY_INVALID',
  /** The token or the wrapped key failed authentication: tampered, corrupted or malformed. */
  TAMPERED: 'USERPORT_DECRYPT_TAMPERED',
  /** The tarball ends inside a header or a member. */
  TRUNCATED: 'USERPORT_DECRYPT_TRUNCATED',
  /** The tarball is not a Sentry encrypted export: bad header, missing, extra or duplicate member. */
  TAR: 'USERPORT_DECRYPT_TAR',
  /** The private key is encrypted and no passphrase, or a wrong one, was given. */
  PASSPHRASE: 'USERPORT_DECRYPT_PASSPHRASE',
  /** Cloud KMS failed: config, credentials, HTTP error, or a crc32c integrity mismatch. */
  KMS: 'USERPORT_DECRYPT_KMS',
  /** Reading the input, or writing/reading the private spool file, failed. */
  IO: 'USERPORT_DECRYPT_IO',
} as const;

/** A code of `DecryptError`: one of {@link DecryptErrorCodes}. */
export type DecryptErrorCode = (typeof DecryptErrorCodes)[keyof typeof DecryptErrorCodes];

/**
 * Every code userport raises: {@link ErrorCodes} and the decryption codes of `DecryptErrorCodes`.
 * A closed union, so a `switch` over it is checked for exhaustiveness.
 */
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes] | DecryptErrorCode;

/** A library option named in a message: a front end writes it its own way (the CLI as its flag). */
export interface OptionName { readonly option: string }

/**
 * A message in parts: text, and the library options it names. `message` says them by their
 * library names; a front end renders the same parts with its own names ({@link sayWording}), so
 * no one rewrites a message after the fact.
 */
export type Wording = readonly (string | OptionName)[];

/** Marks `option` as a library option's name in a {@link wording}. */
export const opt = (option: string): OptionName => ({ option });

/** A {@link Wording} from a template: `` wording`${opt('maxRejects')} needs ${opt('rejectsFile')}` ``. */
export function wording(strings: TemplateStringsArray, ...values: (string | number | OptionName | Wording)[]): Wording {
  const parts: (string | OptionName)[] = [];
  strings.forEach((s, i) => {
    if (s) parts.push(s);
    if (i >= values.length) return;
    const v = values[i]!;
    if (Array.isArray(v)) parts.push(...(v as Wording));
    else parts.push(typeof v === 'object' ? v as OptionName : String(v));
  });
  return parts;
}

/** The text of `w`, each option written by `name` (by default its library name). */
export function sayWording(w: Wording, name: (option: string) => string = (o) => o): string {
  return w.map((p) => (typeof p === 'string' ? p : name(p.option))).join('');
}

/** What a {@link UserportError} carries beside its code and message: the error it wraps, and where in the input. */
export interface UserportErrorOptions {
  cause?: unknown;
  position?: Position;
}

/** Base class of every error userport raises on purpose. */
export class UserportError extends Error {
  override name = 'UserportError';
  readonly code: ErrorCode;
  readonly position: Position | undefined;
  /**
   * The message in parts, when it names library options (`maxRejects`): the CLI says it with its
   * flags (`--max-rejects`). Without a scope prefix (`importUsers: `), which names a function.
   */
  readonly wording: Wording | undefined;

  constructor(code: ErrorCode, message: string | Wording, options: UserportErrorOptions = {}) {
    super(typeof message === 'string' ? message : sayWording(message), options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.position = options.position;
    this.wording = typeof message === 'string' ? undefined : message;
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
  /** The library option at fault (`databaseUrl`), when one is: the CLI maps it to its flag. */
  readonly option?: string;
  /**
   * `message` as text, or in parts; `option` defaults to the first option the parts name;
   * `scope` (the function, `importUsers`) prefixes the text, not the parts.
   */
  constructor(message: string | Wording, option?: string, scope?: string) {
    super(ErrorCodes.OPTION_INVALID, message);
    const named = option ?? (typeof message === 'string' ? undefined : (message.find((p) => typeof p !== 'string') as OptionName | undefined)?.option);
    if (named !== undefined) this.option = named;
    if (scope !== undefined) this.message = `${scope}: ${this.message}`;
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

/**
 * A record's pk as a position shows it: as JSON where it is an object or array (String() of the
 * parsed `{"toString": 1}` throws a TypeError, and `[object Object]` says nothing).
 */
export function pkText(pk: unknown): string {
  return printable(typeof pk === 'object' && pk !== null ? JSON.stringify(pk) : String(pk));
}

/** Renders a position as `record 12 (sentry.user pk 4), field username, byte 1234, line 40, column 5`. */
export function formatPosition(p: Position | undefined): string {
  if (!p) return '';
  const parts: string[] = [];
  if (p.ordinal !== undefined) {
    let rec = `record ${p.ordinal}`;
    if (p.model !== undefined) rec += ` (${printable(p.model)}${p.pk !== undefined ? ` pk ${pkText(p.pk)}` : ''})`;
    parts.push(rec);
  } else if (p.model !== undefined) {
    parts.push(`${printable(p.model)}${p.pk !== undefined ? ` pk ${pkText(p.pk)}` : ''}`);
  }
  if (p.field !== undefined) parts.push(`field ${printable(p.field)}`);
  if (p.offset !== undefined) parts.push(`byte ${p.offset}`);
  if (p.line !== undefined) parts.push(`line ${p.line}`);
  if (p.column !== undefined) parts.push(`column ${p.column}`);
  return parts.join(', ');
}

const FS_SYSCALLS = new Set(['open', 'read', 'write', 'close', 'stat', 'fstat', 'lstat', 'ftruncate', 'fsync', 'mkdir', 'rename', 'unlink', 'scandir', 'access', 'copyfile']);

/** True for an error PostgreSQL sent (pg's DatabaseError: a severity and a five-character SQLSTATE). */
export function isPgServerError(err: unknown): boolean {
  const e = err as { severity?: unknown; code?: unknown } | null;
  return typeof e?.severity === 'string' && typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code);
}

function lostConnection(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = e?.code;
  if (code === '57P01' || code === '57P02' || code === '57P03' || code === 'ECONNRESET' || code === 'ECONNREFUSED' || code === 'EPIPE') return true;
  // pg reports a dropped socket as a plain Error with one of these messages, and no code.
  return typeof e?.message === 'string' && /Connection terminated|connection ended|not queryable|Client has encountered a connection error/i.test(e.message);
}

/** Where a connection points, as far as an error may say it: never the user or the password. */
export interface ConnectionFacts {
  host?: string | undefined;
  port?: number | string | undefined;
  database?: string | undefined;
}

/**
 * Where `target` (a connection URL, or what pg resolved: a `pg.Client`, a knex connection object)
 * points, as an error may say it: `host:port/database`, never the user or password. The URL is read
 * the way pg reads it: `?host=` and `?port=` win over the authority, and an empty host before the
 * path (`postgresql://u@/db?host=/tmp`) is allowed. Undefined when nothing can be said.
 */
export function databaseAddress(target: string | ConnectionFacts): string | undefined {
  const f = typeof target === 'string' ? urlFacts(target) : target;
  if (!f || (!f.host && !f.port && !f.database)) return undefined;
  return `${f.host || 'localhost'}:${f.port || 5432}${f.database ? `/${f.database}` : ''}`;
}

function urlFacts(url: string): ConnectionFacts | undefined {
  let u: URL;
  let host: string;
  try {
    u = new URL(url);
    host = u.hostname;
  } catch {
    // WHATWG URLs refuse an empty host after credentials; pg reads it as "no host".
    try { u = new URL(url.replace('@/', '@placeholder/')); } catch { return undefined; }
    host = '';
  }
  if (!/^postgres(ql)?:$/.test(u.protocol)) return undefined;
  const q = u.searchParams;
  let database: string | undefined;
  try { database = decodeURIComponent(u.pathname.slice(1)) || undefined; } catch { database = u.pathname.slice(1) || undefined; }
  return { host: q.get('host') || host || undefined, port: q.get('port') || u.port || undefined, database };
}

/** A connection to `target` that could not be opened: USERPORT_DB_CONNECT, saying where and why. */
export function connectError(err: unknown, target: string | ConnectionFacts): UserportError {
  if (err instanceof UserportError) return err;
  const at = databaseAddress(target);
  return new DatabaseError(ErrorCodes.DB_CONNECT, `cannot connect to PostgreSQL${at ? ` at ${at}` : ''}: ${messageOf(err)}`, { cause: err });
}

function messageOf(err: unknown): string {
  const e = err as { message?: unknown; code?: unknown } | null;
  return typeof e?.message === 'string' ? e.message : String(e?.code ?? err);
}

/**
 * Turns what a database step threw into a {@link UserportError}: a UserportError as it is; a lost
 * connection USERPORT_DB_CONNECT; an error PostgreSQL sent USERPORT_DB_QUERY (SQLSTATE kept); a
 * file-system error USERPORT_IO. Anything else is not a database error and becomes
 * USERPORT_INTERNAL, the original as its `cause`.
 */
export function wrapDbError(err: unknown, what: string): UserportError {
  if (err instanceof UserportError) return err;
  if (lostConnection(err)) {
    return new DatabaseError(ErrorCodes.DB_CONNECT, `${what}: lost the connection to PostgreSQL (${messageOf(err)})`, { cause: err });
  }
  // A file-system failure (the source, the rejects or the findings file) is not a database error.
  const syscall = (err as { syscall?: unknown } | null)?.syscall;
  if (typeof syscall === 'string' && FS_SYSCALLS.has(syscall)) {
    return new UserportError(ErrorCodes.IO, `${what} failed: ${messageOf(err)}`, { cause: err });
  }
  if (isPgServerError(err)) return new DatabaseError(ErrorCodes.DB_QUERY, `${what} failed: ${messageOf(err)}`, { cause: err });
  return new UserportError(ErrorCodes.INTERNAL, `${what} failed unexpectedly: ${messageOf(err)}`, { cause: err });
}

/**
 * Like {@link wrapDbError} for what a caller's callback threw: database and file-system errors
 * keep their codes; anything else (its own bug) is USERPORT_CALLBACK, its error as `cause`.
 */
export function wrapCallbackError(err: unknown, what: string): UserportError {
  const syscall = (err as { syscall?: unknown } | null)?.syscall;
  const fsError = typeof syscall === 'string' && FS_SYSCALLS.has(syscall);
  if (err instanceof UserportError || lostConnection(err) || isPgServerError(err) || fsError) return wrapDbError(err, what);
  return new UserportError(ErrorCodes.CALLBACK, `${what}: the callback threw: ${messageOf(err)}`, { cause: err });
}

/** `fn` (a caller's callback, if given) with what it throws wrapped by {@link wrapCallbackError}, named `what`. */
export function guardCallback<A extends unknown[]>(fn: ((...args: A) => void) | undefined, what: string): ((...args: A) => void) | undefined {
  return fn && ((...args: A) => {
    try { fn(...args); } catch (err) { throw wrapCallbackError(err, what); }
  });
}
