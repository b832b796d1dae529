/**
 * Just enough tar for Sentry's encrypted exports: a push parser for streams, a header scanner
 * for seekable files (it seeks over member data, so a 10 GB `export.json` costs three header
 * reads), a writer of ustar headers, and the export's three members: their names, the checks as
 * they come, and the readers that find them in a file ({@link readExportFile}) or a stream
 * ({@link readExportStream}).
 *
 * Reading understands ustar (with `prefix`), PAX extended headers (`x` local, `g` global: `path`
 * and `size`), GNU long names (`L`) and GNU base-256 sizes, because Python's `tarfile` (what
 * Sentry writes with) emits PAX by default and other tools emit GNU. Everything here is pure
 * except the readers of a file or stream ({@link scanTarFile}, {@link readExactly},
 * {@link readRange} and the export's two readers).
 */
import type { FileHandle } from 'node:fs/promises';
import { DecryptError, DecryptErrorCodes, ioError } from './errors.js';

export const BLOCK = 512;
/** GNU tar and Python's `tarfile` pad the archive to a multiple of 20 blocks. */
export const RECORD = 20 * BLOCK;
/** PAX and GNU long-name members are metadata, buffered whole: refuse absurd ones. */
export const MAX_META_SIZE = 1024 * 1024;

/** One member of the archive, after PAX / GNU metadata was applied. */
export interface TarEntry {
  name: string;
  /** Size of the member's data in bytes. */
  size: number;
  /** Type flag: `'0'` regular file, `'5'` directory, ... (`'\0'` and `'7'` also mean a file). */
  type: string;
  /** Byte offset of the data in the archive. */
  dataOffset: number;
}

/** A header block, decoded but before metadata from preceding PAX / GNU members is applied. */
export interface RawHeader {
  name: string;
  size: number;
  type: string;
}

export function isRegularFile(type: string): boolean {
  return type === '0' || type === '\0' || type === '7';
}

/** Bytes of padding after `size` bytes of member data. */
export function paddingAfter(size: number): number {
  const r = size % BLOCK;
  return r === 0 ? 0 : BLOCK - r;
}

function tarError(message: string): DecryptError {
  return new DecryptError(DecryptErrorCodes.TAR, `not a valid tar archive: ${message}`);
}

/** True when the bytes start (after a BOM and whitespace) like JSON, not like an encrypted tarball. */
export function looksLikePlainJson(head: Buffer): boolean {
  return /^(\xef\xbb\xbf)?\s*[[{]/.test(head.toString('latin1'));
}

/**
 * What is wrong with an input whose first header does not decode: the export itself (plain JSON)
 * given where its encrypted tarball is expected, said so, rather than a tar checksum.
 */
function firstHeaderError(head: Buffer, err: unknown): unknown {
  return looksLikePlainJson(head)
    ? new DecryptError(DecryptErrorCodes.TAR, 'the input is plain JSON, not an encrypted export (the tar archive sentry export --encrypt-with writes)')
    : err;
}

function readString(block: Buffer, start: number, length: number): string {
  const end = block.indexOf(0, start);
  return block.toString('utf8', start, end === -1 || end > start + length ? start + length : end);
}

function readNumber(block: Buffer, start: number, length: number, field: string): number {
  // GNU base-256: high bit of the first byte set, big-endian two's complement in the rest.
  if (block[start]! & 0x80) {
    if (block[start] === 0xff) throw tarError(`negative ${field}`);
    let n = block[start]! & 0x7f;
    for (let i = start + 1; i < start + length; i++) n = n * 256 + block[i]!;
    if (!Number.isSafeInteger(n)) throw tarError(`${field} too large`);
    return n;
  }
  const text = block.toString('latin1', start, start + length).replace(/[\0 ]+$/, '').replace(/^ +/, '');
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw tarError(`${field} is not an octal number`);
  return parseInt(text, 8);
}

/** Decodes one 512-byte header. Returns null for an all-zero block (end of archive). */
export function decodeHeader(block: Buffer): RawHeader | null {
  if (block.length !== BLOCK) throw new RangeError('a tar header is 512 bytes');
  let sum = 0;
  let signedSum = 0;
  let zero = true;
  for (let i = 0; i < BLOCK; i++) {
    // The checksum is computed with its own field read as eight spaces.
    const b = i >= 148 && i < 156 ? 32 : block[i]!;
    if (block[i] !== 0) zero = false;
    sum += b;
    signedSum += b > 127 ? b - 256 : b;
  }
  if (zero) return null;
  const stored = readNumber(block, 148, 8, 'checksum');
  if (stored !== sum && stored !== signedSum) throw tarError('header checksum mismatch');
  const type = String.fromCharCode(block[156]!);
  let name = readString(block, 0, 100);
  const magic = block.toString('latin1', 257, 263);
  if (magic === 'ustar\0') {
    const prefix = readString(block, 345, 155);
    if (prefix) name = `${prefix}/${name}`;
  }
  return { name, size: readNumber(block, 124, 12, 'size'), type };
}

/** Parses PAX extended header records (`"<len> <key>=<value>\n"`). */
export function parsePax(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break; // some writers pad with NULs
    const space = data.indexOf(0x20, pos);
    if (space === -1) throw tarError('malformed PAX record');
    const len = Number(data.toString('latin1', pos, space));
    if (!Number.isInteger(len) || len <= space - pos + 1 || pos + len > data.length || data[pos + len - 1] !== 0x0a) {
      throw tarError('malformed PAX record');
    }
    const record = data.toString('utf8', space + 1, pos + len - 1);
    const eq = record.indexOf('=');
    if (eq === -1) throw tarError('malformed PAX record');
    out.set(record.slice(0, eq), record.slice(eq + 1));
    pos += len;
  }
  return out;
}

/** Metadata carried from `x`/`g`/`L` members onto the next real member. */
class MetaState {
  private global = new Map<string, string>();
  private local: Map<string, string> | undefined;
  private longName: string | undefined;

  /** True when `type` is a metadata member whose data must be handed to {@link absorb}. */
  static isMeta(type: string): boolean {
    return type === 'x' || type === 'g' || type === 'L' || type === 'K';
  }

  absorb(type: string, data: Buffer): void {
    if (type === 'x') this.local = parsePax(data);
    else if (type === 'g') for (const [k, v] of parsePax(data)) this.global.set(k, v);
    else if (type === 'L') this.longName = readString(data, 0, data.length);
    // 'K' (GNU long link name) does not matter for regular files.
  }

  /** Applies and consumes pending metadata; returns the member's final name and size. */
  apply(raw: RawHeader, dataOffset: number): TarEntry {
    let { name, size } = raw;
    const pax = new Map([...this.global, ...(this.local ?? [])]);
    if (this.longName !== undefined) name = this.longName;
    const paxPath = pax.get('path');
    if (paxPath !== undefined) name = paxPath;
    const paxSize = pax.get('size');
    if (paxSize !== undefined) {
      if (!/^[0-9]+$/.test(paxSize) || !Number.isSafeInteger(Number(paxSize))) throw tarError('bad PAX size');
      size = Number(paxSize);
    }
    this.local = undefined;
    this.longName = undefined;
    return { name, size, type: raw.type, dataOffset };
  }
}

/** What {@link TarParser.push} reports, in archive order. */
export type TarEvent =
  | { kind: 'entry'; entry: TarEntry }
  | { kind: 'data'; chunk: Buffer }
  | { kind: 'entryEnd'; entry: TarEntry };

/**
 * Push parser over tar bytes cut anywhere. `data` events are views into the pushed chunks (no
 * copy), so the hot path for the big member is a subarray per chunk.
 */
export class TarParser {
  private offset = 0;
  private header = Buffer.alloc(BLOCK);
  private headerFill = 0;
  private entry: TarEntry | undefined;
  private remaining = 0;
  private padding = 0;
  private meta = new MetaState();
  private metaType: string | undefined;
  private metaParts: Buffer[] = [];
  private ended = false;

  /** Bytes consumed so far. */
  get position(): number {
    return this.offset;
  }

  push(chunk: Buffer): TarEvent[] {
    const events: TarEvent[] = [];
    let pos = 0;
    while (pos < chunk.length) {
      if (this.ended) {
        // After the end-of-archive marker only padding follows; nothing there is read.
        this.offset += chunk.length - pos;
        break;
      }
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, chunk.length - pos);
        const piece = chunk.subarray(pos, pos + n);
        if (this.metaType !== undefined) this.metaParts.push(Buffer.from(piece));
        else events.push({ kind: 'data', chunk: piece });
        pos += n;
        this.offset += n;
        this.remaining -= n;
        if (this.remaining === 0) this.finishMember(events);
        continue;
      }
      if (this.padding > 0) {
        const n = Math.min(this.padding, chunk.length - pos);
        pos += n;
        this.offset += n;
        this.padding -= n;
        continue;
      }
      const n = Math.min(BLOCK - this.headerFill, chunk.length - pos);
      chunk.copy(this.header, this.headerFill, pos, pos + n);
      this.headerFill += n;
      pos += n;
      this.offset += n;
      if (this.headerFill === BLOCK) {
        this.headerFill = 0;
        this.onHeader(events);
      }
    }
    return events;
  }

  /** Call at end of input. Throws USERPORT_DECRYPT_TRUNCATED when it ends inside a header or member. */
  end(): void {
    if (this.offset === this.headerFill && this.headerFill > 0) throw firstHeaderError(this.header.subarray(0, this.headerFill), this.truncation());
    if (this.remaining > 0 || this.headerFill > 0) throw this.truncation();
    // A missing end-of-archive marker is tolerated, as Python's tarfile does: every member is whole.
  }

  private truncation(): DecryptError {
    return new DecryptError(
      DecryptErrorCodes.TRUNCATED,
      `the tarball is truncated: it ends inside ${this.remaining > 0 ? `member "${this.entry?.name ?? '(metadata)'}"` : 'a header'} at byte ${this.offset}`,
    );
  }

  private onHeader(events: TarEvent[]): void {
    let raw: RawHeader | null;
    try { raw = decodeHeader(this.header); } catch (err) { throw this.offset === BLOCK ? firstHeaderError(this.header, err) : err; }
    if (raw === null) {
      this.ended = true;
      return;
    }
    if (MetaState.isMeta(raw.type)) {
      if (raw.size > MAX_META_SIZE) throw tarError(`metadata member of ${raw.size} bytes`);
      this.metaType = raw.type;
      this.metaParts = [];
      this.remaining = raw.size;
      this.padding = paddingAfter(raw.size);
      if (raw.size === 0) this.finishMember(events);
      return;
    }
    const entry = this.meta.apply(raw, this.offset);
    this.entry = entry;
    events.push({ kind: 'entry', entry });
    this.remaining = entry.size;
    this.padding = paddingAfter(entry.size);
    if (entry.size === 0) this.finishMember(events);
  }

  private finishMember(events: TarEvent[]): void {
    if (this.metaType !== undefined) {
      this.meta.absorb(this.metaType, Buffer.concat(this.metaParts));
      this.metaType = undefined;
      this.metaParts = [];
      return;
    }
    events.push({ kind: 'entryEnd', entry: this.entry! });
    this.entry = undefined;
  }
}

/**
 * Lists the members of a tar file by reading headers only and seeking over data.
 * Stops early when `stop(entry)` returns true (the caller saw enough to reject the archive).
 */
export async function scanTarFile(file: FileHandle, fileSize: number, stop?: (entry: TarEntry) => boolean): Promise<TarEntry[]> {
  const entries: TarEntry[] = [];
  const meta = new MetaState();
  const block = Buffer.alloc(BLOCK);
  let pos = 0;
  const truncated = (where: string) =>
    new DecryptError(DecryptErrorCodes.TRUNCATED, `the tarball is truncated: it ends inside ${where} (file is ${fileSize} bytes)`);
  while (pos < fileSize) {
    if (fileSize - pos < BLOCK) {
      if (pos > 0) throw truncated('a header');
      await readExactly(file, block.subarray(0, fileSize), 0);
      throw firstHeaderError(block.subarray(0, fileSize), truncated('a header'));
    }
    await readExactly(file, block, pos);
    let raw: RawHeader | null;
    try { raw = decodeHeader(block); } catch (err) { throw pos === 0 ? firstHeaderError(block, err) : err; }
    if (raw === null) break;
    pos += BLOCK;
    if (MetaState.isMeta(raw.type)) {
      if (raw.size > MAX_META_SIZE) throw tarError(`metadata member of ${raw.size} bytes`);
      if (pos + raw.size > fileSize) throw truncated('a metadata member');
      const data = Buffer.alloc(raw.size);
      await readExactly(file, data, pos);
      meta.absorb(raw.type, data);
      pos += raw.size + paddingAfter(raw.size);
      continue;
    }
    const entry = meta.apply(raw, pos);
    if (pos + entry.size > fileSize) throw truncated(`member "${entry.name}"`);
    entries.push(entry);
    if (stop?.(entry)) break;
    pos += entry.size + paddingAfter(entry.size);
  }
  return entries;
}

/** Reads exactly `buf.length` bytes at `position`, or throws TRUNCATED. */
export async function readExactly(file: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await file.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) throw new DecryptError(DecryptErrorCodes.TRUNCATED, `the input ended early at byte ${position + done}`);
    done += bytesRead;
  }
}

/**
 * Reads `length` bytes at `start` in chunks. The yielded buffer is reused: consumers copy what
 * they keep (the base64 decoder's `toString` does).
 */
export async function* readRange(file: FileHandle, start: number, length: number, chunkSize: number): AsyncGenerator<Buffer> {
  const buf = Buffer.allocUnsafe(Math.min(chunkSize, Math.max(length, 1)));
  let pos = start;
  const end = start + length;
  while (pos < end) {
    const want = Math.min(buf.length, end - pos);
    const { bytesRead } = await file.read(buf, 0, want, pos);
    if (bytesRead === 0) throw new DecryptError(DecryptErrorCodes.TRUNCATED, `the input ended early at byte ${pos}`);
    pos += bytesRead;
    yield buf.subarray(0, bytesRead);
  }
}

/** Member names. Sentry's code says renaming them breaks its decrypt side. */
export const TOKEN_MEMBER = 'export.json';
export const WRAPPED_KEY_MEMBER = 'data.key';
export const PUBLIC_KEY_MEMBER = 'key.pub';
/** `data.key` and `key.pub` are a few hundred bytes; they are held in memory, so cap them. */
export const MAX_KEY_MEMBER_SIZE = 64 * 1024;

/** An export's members, found: where the token lies, and the two key members' bytes. */
export interface ExportMembers {
  token: TarEntry;
  wrappedKey: Buffer;
  publicKey: Buffer;
}

function exportError(message: string): DecryptError {
  return new DecryptError(DecryptErrorCodes.TAR, `not a Sentry encrypted export: ${message}`);
}

/**
 * Checks members as they come: exactly one each of `export.json`, `data.key`, `key.pub` as
 * regular files, nothing else that is a file (directories and links are ignored, as Sentry does).
 */
class MemberCheck {
  readonly seen = new Map<string, TarEntry>();

  accept(entry: TarEntry): boolean {
    if (!isRegularFile(entry.type)) return false;
    if (entry.name !== TOKEN_MEMBER && entry.name !== WRAPPED_KEY_MEMBER && entry.name !== PUBLIC_KEY_MEMBER) {
      throw exportError(`unexpected member "${entry.name}" (expected only ${TOKEN_MEMBER}, ${WRAPPED_KEY_MEMBER} and ${PUBLIC_KEY_MEMBER})`);
    }
    if (this.seen.has(entry.name)) throw exportError(`member "${entry.name}" appears twice`);
    if (entry.name !== TOKEN_MEMBER && entry.size > MAX_KEY_MEMBER_SIZE) {
      throw exportError(`member "${entry.name}" is ${entry.size} bytes, more than ${MAX_KEY_MEMBER_SIZE}`);
    }
    this.seen.set(entry.name, entry);
    return true;
  }

  complete(): { token: TarEntry; wrappedKey: TarEntry; publicKey: TarEntry } {
    const missing = [TOKEN_MEMBER, WRAPPED_KEY_MEMBER, PUBLIC_KEY_MEMBER].filter((n) => !this.seen.has(n));
    if (missing.length) throw exportError(`missing member${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`);
    return { token: this.seen.get(TOKEN_MEMBER)!, wrappedKey: this.seen.get(WRAPPED_KEY_MEMBER)!, publicKey: this.seen.get(PUBLIC_KEY_MEMBER)! };
  }
}

/** The members of the export in seekable `file`: headers scanned, the two key members read. */
export async function readExportFile(file: FileHandle, fileSize: number): Promise<ExportMembers> {
  const check = new MemberCheck();
  await scanTarFile(file, fileSize, (e) => {
    check.accept(e);
    return false;
  });
  const m = check.complete();
  const wrappedKey = Buffer.alloc(m.wrappedKey.size);
  const publicKey = Buffer.alloc(m.publicKey.size);
  await readExactly(file, wrappedKey, m.wrappedKey.dataOffset);
  await readExactly(file, publicKey, m.publicKey.dataOffset);
  return { token: m.token, wrappedKey, publicKey };
}

/**
 * The members of the export streaming in as `input`: checked as they come, the two key members
 * kept (they are small), and the token written to `spool` from its start as it passes (the key
 * members come after it, so it must wait somewhere).
 */
export async function readExportStream(input: AsyncIterable<Buffer | string>, spool: FileHandle): Promise<ExportMembers> {
  const parser = new TarParser();
  const check = new MemberCheck();
  const small = new Map<string, Buffer[]>();
  let current: TarEntry | undefined;
  let spooled = 0;
  try {
    for await (const chunk of input) {
      for (const ev of parser.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk)) {
        if (ev.kind === 'entry') {
          current = check.accept(ev.entry) ? ev.entry : undefined;
          if (current && current.name !== TOKEN_MEMBER) small.set(current.name, []);
        } else if (ev.kind === 'data') {
          if (current?.name === TOKEN_MEMBER) {
            await spool.write(ev.chunk, 0, ev.chunk.length, spooled);
            spooled += ev.chunk.length;
          } else if (current) {
            small.get(current.name)!.push(Buffer.from(ev.chunk));
          }
        } else {
          current = undefined;
        }
      }
    }
  } catch (err) {
    throw ioError('reading the encrypted input failed', err);
  }
  parser.end();
  const m = check.complete();
  return { token: m.token, wrappedKey: Buffer.concat(small.get(WRAPPED_KEY_MEMBER)!), publicKey: Buffer.concat(small.get(PUBLIC_KEY_MEMBER)!) };
}

function writeOctal(block: Buffer, value: number, start: number, length: number): void {
  block.write(value.toString(8).padStart(length - 1, '0') + '\0', start, length, 'latin1');
}

export interface HeaderOptions {
  name: string;
  size: number;
  /** @default 0o644 */
  mode?: number;
  /** Seconds since the epoch. Sentry leaves it at 0. @default 0 */
  mtime?: number;
}

/** Encodes a ustar header for a regular file. Sizes past 8 GiB use GNU base-256, as GNU tar does. */
export function encodeHeader(options: HeaderOptions): Buffer {
  const block = Buffer.alloc(BLOCK);
  const name = Buffer.from(options.name, 'utf8');
  if (name.length > 100) throw new RangeError(`tar member name longer than 100 bytes: ${options.name}`);
  name.copy(block, 0);
  writeOctal(block, options.mode ?? 0o644, 100, 8);
  writeOctal(block, 0, 108, 8);
  writeOctal(block, 0, 116, 8);
  if (options.size < 0o77777777777) {
    writeOctal(block, options.size, 124, 12);
  } else {
    let n = options.size;
    for (let i = 135; i > 124; i--) {
      block[i] = n % 256;
      n = Math.floor(n / 256);
    }
    block[124] = 0x80;
  }
  writeOctal(block, options.mtime ?? 0, 136, 12);
  block[156] = 0x30; // '0': regular file
  block.write('ustar\x0000', 257, 8, 'latin1');
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += block[i]!;
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return block;
}

/** The end-of-archive marker plus padding to a whole record, given the bytes written so far. */
export function encodeEnd(written: number): Buffer {
  const withMarker = written + 2 * BLOCK;
  const total = Math.ceil(withMarker / RECORD) * RECORD;
  return Buffer.alloc(total - written);
}
