/**
 * The fused fast path used by `importUsers`: tokenizer, user filter and model mapper in one
 * Transform, emitting one array of items per input chunk (per 128 KiB piece of a larger one).
 * The per-record logic is exactly the public stages' pure functions (`RecordSplitter`,
 * `scopeRecord`, `mapRecord`, and their reject and flush helpers `scopeReject`, `mapReject`,
 * `endSplitter`); only the stream hops are gone. Measured on 100k users: three object-mode hops per record and their
 * intermediate objects cost more CPU than the parsing itself (see bench/NOTES.md).
 * `spec/process-records.spec.ts` proves it equal to the three stages composed.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { RecordError } from './errors.js';
import { DEFAULT_COLLECT_REJECTS, scopeRecord, scopeReject, USER_FILTER_OPTIONS, type UserFilterOptions } from './filter-users.js';
import { checkOptions, toStringSet } from './options.js';
import { isMapTarget, mapRecord, mapReject, targetSkip, type MappedItem, type MapTarget } from './map-models.js';
import type { ImportScope } from './models.js';
import { DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES, endSplitter, PARSE_PIECE, parsePiece, RecordSplitter, TOKENIZER_OPTIONS, type RawRecord, type TokenizerOptions } from './tokenize.js';

/** Options of {@link createRecordProcessor}: the tokenizer's and the user filter's, and the target. */
export interface RecordProcessorOptions extends TokenizerOptions, UserFilterOptions {
  /** What the target database is like ({@link MapTarget}). @default Sentry's current schema */
  target?: MapTarget;
}

/** Turns one parsed record into what the sink takes. Throws a RecordError unless collecting. */
export function processRecord(raw: RawRecord, keep: ReadonlySet<string> | undefined, collect: boolean, target?: MapTarget,
  scope: ImportScope = 'users'): MappedItem {
  let scoped;
  try {
    scoped = scopeRecord(raw, keep, scope);
  } catch (err) {
    if (!collect || !(err instanceof RecordError)) throw err;
    return scopeReject(raw, err);
  }
  if (scoped.kind === 'skip') return scoped;
  const skip = targetSkip(scoped, target);
  if (skip) return skip;
  try {
    return mapRecord(scoped, target, scope);
  } catch (err) {
    if (!collect || !(err instanceof RecordError)) throw err;
    return mapReject(scoped, err);
  }
}

/** What the fused stage runs with, every value already checked and defaulted. */
export interface RecordProcessing {
  maxRecordBytes: number;
  maxDepth: number;
  /** Records through this ordinal are counted, not parsed (resuming). */
  skipThrough: number;
  /** Non-objects flow on as items (`emit`), so every error and reject comes in file order. */
  nonObjects: 'error' | 'emit';
  /** The usernames to keep; undefined: every user. */
  keep: ReadonlySet<string> | undefined;
  /** Pass records that fail validation on as reject markers. */
  collectRejects: boolean;
  scope: ImportScope;
  target: MapTarget | undefined;
}

/**
 * Creates the fused stage: export bytes in, arrays of {@link MappedItem} out (the PostgreSQL sink
 * takes arrays as well as single items). `splitter` exposes progress (bytes and records read).
 */
export function createRecordProcessor(options: RecordProcessorOptions = {}): Transform & { splitter: RecordSplitter } {
  checkOptions('createRecordProcessor', options, { ...TOKENIZER_OPTIONS, ...USER_FILTER_OPTIONS, target: isMapTarget });
  return recordProcessor({
    maxRecordBytes: options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES,
    maxDepth: options.maxDepth ?? DEFAULT_MAX_DEPTH,
    skipThrough: options.skipThrough ?? 0,
    nonObjects: options.nonObjects ?? 'emit',
    keep: options.usernames === undefined ? undefined : toStringSet('createRecordProcessor', 'usernames', options.usernames),
    collectRejects: options.collectRejects ?? DEFAULT_COLLECT_REJECTS,
    scope: options.scope ?? 'users',
    target: options.target,
  });
}

/**
 * The fused stage over values already checked: {@link createRecordProcessor} checks a caller's
 * options; `importUsers` checks its own once and hands these on.
 */
export function recordProcessor(p: RecordProcessing): Transform & { splitter: RecordSplitter } {
  const { keep, collectRejects: collect, scope, target } = p;
  const splitter = new RecordSplitter({ maxRecordBytes: p.maxRecordBytes, maxDepth: p.maxDepth, skipThrough: p.skipThrough, nonObjects: p.nonObjects });
  const stream = new Transform({
    readableObjectMode: true,
    readableHighWaterMark: 4,
    transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback) {
      // A caller's large chunk is parsed a piece at a time, each piece's records mapped and handed
      // on before the next is parsed, as if the caller had sent pieces (PARSE_PIECE says why).
      for (let at = 0; at < chunk.length; at += PARSE_PIECE) {
        const records: RawRecord[] = [];
        let readError: unknown;
        try {
          splitter.write(parsePiece(chunk, at), records);
        } catch (err) {
          // Records before the bad bytes come first: one of them may fail earlier in the file.
          readError = err;
        }
        let out: MappedItem[];
        try {
          out = new Array(records.length);
          for (let i = 0; i < records.length; i++) out[i] = processRecord(records[i]!, keep, collect, target, scope);
        } catch (err) {
          return callback(err as Error);
        }
        if (out.length) this.push(out);
        if (readError) return callback(readError as Error);
        // Destroyed by a consumer of what was just pushed: the rest of the chunk is nobody's.
        if (this.destroyed) return callback();
      }
      callback();
    },
    flush(callback: TransformCallback) {
      endSplitter(splitter, callback);
    },
  });
  return Object.assign(stream, { splitter });
}
