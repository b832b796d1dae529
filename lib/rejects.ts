/**
 * The rejects file (`--rejects-file`): records that fail their schema are written here, one JSON
 * line each, instead of aborting the import. Secrets in the record (password hashes,
 * authenticator configs, API tokens, validation hashes) are redacted: the file is a report, and
 * its readers need not hold credentials.
 */
import fs from 'node:fs';
import { ErrorCodes, opt, UserportError, wording } from './errors.js';
import { badOption, checkOptions, isInteger } from './options.js';
import { modelSchemas } from './models.js';
import type { RecordPosition } from './tokenize.js';

/** Where rejected records go. */
export interface RejectSink {
  /** Records one rejected record; throws USERPORT_MAX_REJECTS past the limit. */
  reject(err: UserportError, pos: RecordPosition, record: unknown): void;
  /** How many were rejected. */
  readonly count: number;
  /** Bytes written so far. */
  readonly bytes: number;
  close(): Promise<void>;
}

/**
 * Fields never written to the rejects file: the schemas' secrets (`x-userport.secret`: password
 * hashes, authenticator configs, API tokens) and the verification and session hashes, in any
 * model, so a record of an unknown or misspelled model is masked too.
 */
const SECRET_FIELDS = new Set(['password', 'validation_hash', 'hash', 'session_nonce',
  ...[...modelSchemas().values()].flatMap((m) => m.mapping.secret ?? [])]);

/** A copy of `record` with secret fields replaced by "[redacted]". */
export function redact(record: unknown): unknown {
  if (!record || typeof record !== 'object' || Array.isArray(record)) return record;
  const r = record as Record<string, unknown>;
  const fields = r.fields;
  if (!fields || typeof fields !== 'object' || Array.isArray(fields)) return record;
  // fromEntries defines own properties: a "__proto__" key stays a key (an assignment would set
  // the copy's prototype to attacker data and drop the key from the rejects file).
  const copy = Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, SECRET_FIELDS.has(k) && v !== null ? '[redacted]' : v]));
  return { ...r, fields: copy };
}

/** Options of {@link createRejectsFile}. */
export interface RejectsFileOptions {
  /** Abort after this many rejects. @default Infinity */
  maxRejects?: number;
  /** Resume a file written by an interrupted import: keep its first `bytes` (`count` lines). */
  resumeAt?: { bytes: number; count: number };
}

/** Opens `path` (truncating it) as a rejects file. */
export function createRejectsFile(path: string, options: RejectsFileOptions = {}): RejectSink {
  if (typeof path !== 'string' || path === '') badOption('createRejectsFile', 'path', 'a non-empty string', path);
  checkOptions('createRejectsFile', options, {
    maxRejects: isInteger(0),
    resumeAt: (v) => {
      const r = v as { bytes?: unknown; count?: unknown } | null;
      return r !== null && typeof r === 'object' && Number.isSafeInteger(r.bytes) && Number.isSafeInteger(r.count) ? undefined : '{ bytes, count } (integers)';
    },
  });
  return openRejectsFile(path, options.maxRejects ?? Infinity, options.resumeAt);
}

/**
 * {@link createRejectsFile} over values already checked (`importUsers` checks its options once):
 * aborts past `max` rejects; `resumeAt` as in {@link RejectsFileOptions}.
 */
export function openRejectsFile(path: string, max: number, resumeAt: RejectsFileOptions['resumeAt']): RejectSink {
  let count = 0;
  let bytes = 0;
  let fd: number | undefined;
  try {
    if (resumeAt) {
      fd = fs.openSync(path, fs.existsSync(path) ? 'r+' : 'w+', 0o600);
      fs.ftruncateSync(fd, resumeAt.bytes);
      count = resumeAt.count;
      bytes = fs.fstatSync(fd).size;
    } else {
      fd = fs.openSync(path, 'w', 0o600);
    }
  } catch (err) {
    // Opened, then refused (a device cannot be truncated): closed here, nobody else has it.
    if (fd !== undefined) try { fs.closeSync(fd); } catch { /* the refusal is the error to report */ }
    throw new UserportError(ErrorCodes.IO, `cannot open the rejects file ${path}: ${(err as Error).message}`, { cause: err });
  }
  const file = fd;
  return {
    get count() { return count; },
    get bytes() { return bytes; },
    reject(err, pos, record) {
      count++;
      if (count > max) {
        throw new UserportError(ErrorCodes.MAX_REJECTS, wording`more than ${max} ${max === 1 ? 'record' : 'records'} rejected (${opt('maxRejects')})`, {
          cause: err, position: { ...err.position, ordinal: pos.ordinal, offset: pos.offset },
        });
      }
      const p = err.position ?? {};
      const line = JSON.stringify({
        model: p.model ?? null, pk: p.pk ?? null, ordinal: pos.ordinal, offset: pos.offset, line: pos.line, column: pos.column,
        code: err.code, field: p.field ?? null, reason: err.message, record: redact(record),
      });
      bytes += fs.writeSync(file, line + '\n', bytes);
    },
    async close() {
      fs.closeSync(file);
    },
  };
}
