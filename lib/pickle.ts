/**
 * Python pickles of plain values, both ways, executing nothing.
 *
 * Why: Sentry 9 stores `sentry_useroption.value` and `auth_authenticator.config` as
 * django-picklefield columns: base64 of a Python 2 `cPickle.dumps(deepcopy(value), 2)` (picklefield
 * 0.3, which Sentry of that era pins). Reading such a database needs the values; writing one
 * needs the bytes Sentry itself would have stored.
 *
 * API:
 * - {@link decodePickle}`(bytes, limits?)`: the value of a pickle (protocols 0-5), as JS values.
 * - {@link pickleToJsonText}`(bytes, limits?)`: the same value as JSON text, ints exact, floats
 *   written like Python's `repr` (what `json.dumps` writes).
 * - {@link decodePickledField}`(text, options?)` / {@link pickledFieldToJsonText}: the same for a
 *   picklefield column's text (base64, optionally zlib: pass `inflate`).
 * - {@link encodePickle}`(value, options?)` / {@link encodePickledField}: the bytes (base64 text)
 *   Python 2.7's cPickle writes at protocol 2 for a plain value.
 * - {@link PickleError}: every failure, with a stable `code`, the opcode name and byte offset.
 *
 * Safety: the decoder knows only the opcodes of plain values (None, bools, ints, floats, strings,
 * bytes, lists, tuples, dicts, the memo and framing). GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ,
 * EXT*, PERSID and the rest throw USERPORT_PICKLE_UNSUPPORTED before anything is built: there is
 * nothing to execute, no class is looked up. Input size, nesting depth, the number of values and
 * characters of the result (memo references can repeat a container: the result is a tree, each
 * repetition counted), and the size of integers are bounded ({@link PickleLimits}); the decoder
 * never recurses while reading, so the JS stack depth is bounded by `maxDepth`.
 *
 * Value mapping (decoding):
 * - None → null, bool → boolean, float → number (NaN/±Infinity as numbers in `decodePickle`;
 *   `pickleToJsonText` refuses them: they are not JSON and PostgreSQL's jsonb rejects them).
 * - int/long → number when a safe integer, else bigint (exact); exact decimal in JSON text.
 * - unicode → string. Python 2 `str` (STRING, BINSTRING, SHORT_BINSTRING) → string when its bytes
 *   are UTF-8 (in Sentry they are ASCII: hex salts, base32 secrets), else {@link PickleBytes}.
 *   Python 3 bytes and bytearray → {@link PickleBytes} (not JSON: `pickleToJsonText` refuses them).
 * - list and tuple → array. dict → plain object; keys must be strings or ints (an int key becomes its
 *   decimal text, as `json.dumps` does); any other key, or an int key colliding with a string key
 *   of the same text, is refused. The object has no prototype tricks: `__proto__` is an own key.
 * - Strings must be well-formed UTF-16 (no lone surrogates): jsonb could not store them.
 * - Trailing bytes after STOP, or anything left on the stack, is an error (Python ignores the
 *   former): a column value is one pickle.
 */
import { printable } from './errors.js';

/** Bytes that are not text: Python 3 `bytes`/`bytearray`, or a Python 2 `str` that is not UTF-8. */
export class PickleBytes {
  constructor(readonly bytes: Uint8Array) {}
}

/** Forces {@link encodePickle} to write a float for a number that is an integer (`1.0`). */
export class PickleFloat {
  constructor(readonly value: number) {}
}

/** A decoded plain value. */
export type PickleValue = null | boolean | number | bigint | string | PickleBytes | PickleValue[] | { [key: string]: PickleValue };

/** What {@link encodePickle} accepts: a plain value, optionally with explicit floats. */
export type PickleInput =
  | null | boolean | number | bigint | string | PickleBytes | PickleFloat
  | readonly PickleInput[] | { readonly [key: string]: PickleInput };

export type PickleErrorCode =
  /** An opcode outside plain values (GLOBAL, REDUCE, ...), or a value that cannot be written/represented. */
  | 'USERPORT_PICKLE_UNSUPPORTED'
  /** The input ends before STOP or inside an argument. */
  | 'USERPORT_PICKLE_TRUNCATED'
  /** Malformed input: unknown opcode, stack underflow, missing memo entry, bad text, bad base64, trailing data. */
  | 'USERPORT_PICKLE_INVALID'
  /** A {@link PickleLimits} bound was exceeded. */
  | 'USERPORT_PICKLE_LIMIT';

/** Every failure of this module. `opcode` and `offset` (of the opcode byte) are set when known. */
export class PickleError extends Error {
  override name = 'PickleError';
  readonly code: PickleErrorCode;
  readonly opcode: string | undefined;
  readonly offset: number | undefined;

  constructor(code: PickleErrorCode, message: string, where: { opcode?: string; offset?: number } = {}) {
    const at = where.opcode === undefined ? '' : ` (${where.opcode} at byte ${where.offset})`;
    super(`${message}${at}`);
    this.code = code;
    this.opcode = where.opcode;
    this.offset = where.offset;
  }
}

/** Bounds on hostile input. */
export interface PickleLimits {
  /** Largest pickle, in bytes. */
  maxBytes: number;
  /** Deepest nesting of lists, tuples and dicts in the result. */
  maxDepth: number;
  /** Most values in the result, counting every element of every container, repetitions included. */
  maxValues: number;
  /** Most characters of strings (and bytes of bytes values) in the result, repetitions included. */
  maxTextLength: number;
  /** Largest integer, in decimal digits (Python 3.11's default `int_max_str_digits`). */
  maxIntDigits: number;
}

export const DEFAULT_PICKLE_LIMITS: Readonly<PickleLimits> = Object.freeze({
  maxBytes: 16 * 1024 * 1024,
  maxDepth: 100,
  maxValues: 1_000_000,
  maxTextLength: 64 * 1024 * 1024,
  maxIntDigits: 4300,
});

// ---------------------------------------------------------------------------------------------
// Opcodes

/** Names of every opcode of protocols 0-5 (pickletools), so a refusal names what it saw. */
const OPCODE_NAMES: Record<number, string> = {
  0x28: 'MARK', 0x2e: 'STOP', 0x30: 'POP', 0x31: 'POP_MARK', 0x32: 'DUP', 0x46: 'FLOAT', 0x49: 'INT',
  0x4a: 'BININT', 0x4b: 'BININT1', 0x4c: 'LONG', 0x4d: 'BININT2', 0x4e: 'NONE', 0x50: 'PERSID',
  0x51: 'BINPERSID', 0x52: 'REDUCE', 0x53: 'STRING', 0x54: 'BINSTRING', 0x55: 'SHORT_BINSTRING',
  0x56: 'UNICODE', 0x58: 'BINUNICODE', 0x61: 'APPEND', 0x62: 'BUILD', 0x63: 'GLOBAL', 0x64: 'DICT',
  0x7d: 'EMPTY_DICT', 0x65: 'APPENDS', 0x67: 'GET', 0x68: 'BINGET', 0x69: 'INST', 0x6a: 'LONG_BINGET',
  0x6c: 'LIST', 0x5d: 'EMPTY_LIST', 0x6f: 'OBJ', 0x70: 'PUT', 0x71: 'BINPUT', 0x72: 'LONG_BINPUT',
  0x73: 'SETITEM', 0x74: 'TUPLE', 0x29: 'EMPTY_TUPLE', 0x75: 'SETITEMS', 0x47: 'BINFLOAT',
  0x80: 'PROTO', 0x81: 'NEWOBJ', 0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4', 0x85: 'TUPLE1', 0x86: 'TUPLE2',
  0x87: 'TUPLE3', 0x88: 'NEWTRUE', 0x89: 'NEWFALSE', 0x8a: 'LONG1', 0x8b: 'LONG4',
  0x42: 'BINBYTES', 0x43: 'SHORT_BINBYTES',
  0x8c: 'SHORT_BINUNICODE', 0x8d: 'BINUNICODE8', 0x8e: 'BINBYTES8', 0x8f: 'EMPTY_SET', 0x90: 'ADDITEMS',
  0x91: 'FROZENSET', 0x92: 'NEWOBJ_EX', 0x93: 'STACK_GLOBAL', 0x94: 'MEMOIZE', 0x95: 'FRAME',
  0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER', 0x98: 'READONLY_BUFFER',
};

/** The opcodes this decoder runs. Everything else named above is refused as unsupported. */
const SUPPORTED = new Set([
  'MARK', 'STOP', 'POP', 'POP_MARK', 'DUP', 'FLOAT', 'INT', 'BININT', 'BININT1', 'LONG', 'BININT2', 'NONE',
  'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE', 'APPEND', 'DICT', 'EMPTY_DICT',
  'APPENDS', 'GET', 'BINGET', 'LONG_BINGET', 'LIST', 'EMPTY_LIST', 'PUT', 'BINPUT', 'LONG_BINPUT', 'SETITEM',
  'TUPLE', 'EMPTY_TUPLE', 'SETITEMS', 'BINFLOAT', 'PROTO', 'TUPLE1', 'TUPLE2', 'TUPLE3', 'NEWTRUE',
  'NEWFALSE', 'LONG1', 'LONG4', 'BINBYTES', 'SHORT_BINBYTES', 'SHORT_BINUNICODE', 'BINUNICODE8',
  'BINBYTES8', 'MEMOIZE', 'FRAME', 'BYTEARRAY8',
]);

// ---------------------------------------------------------------------------------------------
// Decoding: a stack machine over internal nodes, then one bounded walk to the result.

/** A Python 2 `str`: bytes that Python 2 code treats as text. */
class Py2Str {
  constructor(readonly bytes: Uint8Array) {}
}
class PyList {
  readonly items: Node[] = [];
}
class PyTuple {
  constructor(readonly items: Node[]) {}
}
interface DictEntry { intKey: boolean; value: Node }
class PyDict {
  /** By JSON key, in insertion order (Python 3's order; a re-set key keeps its place, as in Python). */
  readonly entries = new Map<string, DictEntry>();
}
/** Internal values: ints are always bigint here, so a JS number is always a Python float. */
type Node = null | boolean | bigint | number | string | Py2Str | PickleBytes | PyList | PyTuple | PyDict;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function utf8Text(bytes: Uint8Array): string | undefined {
  try {
    const s = utf8.decode(bytes);
    return s;
  } catch {
    return undefined;
  }
}

/** Runs the pickle machine over `bytes`; returns the STOP value. */
function run(bytes: Uint8Array, limits: PickleLimits): Node {
  if (bytes.length > limits.maxBytes) {
    throw new PickleError('USERPORT_PICKLE_LIMIT', `pickle of ${bytes.length} bytes exceeds the limit of ${limits.maxBytes}`);
  }
  // Binary ints longer than this many bytes have more than maxIntDigits digits (log10(256) > 2.408).
  const maxIntBytes = Math.ceil(limits.maxIntDigits / 2.408) + 1;
  let pos = 0;
  let opOffset = 0;
  let opName = '';
  let stack: Node[] = [];
  const metastack: Node[][] = [];
  const memo = new Map<number, Node>();

  const fail = (code: PickleErrorCode, message: string): never => {
    throw new PickleError(code, message, { opcode: opName, offset: opOffset });
  };
  const take = (n: number): Uint8Array => {
    if (n > bytes.length - pos) fail('USERPORT_PICKLE_TRUNCATED', `pickle ends inside an argument (needs ${n} bytes, ${bytes.length - pos} left)`);
    const out = bytes.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  const u8 = (): number => take(1)[0]!;
  const u16 = (): number => { const b = take(2); return b[0]! | (b[1]! << 8); };
  const u32 = (): number => { const b = take(4); return (b[0]! | (b[1]! << 8) | (b[2]! << 16)) + b[3]! * 0x1000000; };
  const i32 = (): number => { const b = take(4); return b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24); };
  const u64 = (): number => {
    const lo = u32();
    const hi = u32();
    // Anything at or above 2^32 cannot fit in the input (maxBytes is far smaller): report it as such.
    if (hi !== 0) fail('USERPORT_PICKLE_TRUNCATED', 'pickle ends inside an argument (an 8-byte length beyond the input)');
    return lo;
  };
  /** A protocol-0 argument: the bytes up to the next newline, as latin-1 text. */
  const line = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail('USERPORT_PICKLE_TRUNCATED', 'pickle ends inside a text argument (no newline)');
    const b = bytes.subarray(pos, end);
    pos = end + 1;
    let s = '';
    for (let i = 0; i < b.length; i += 4096) s += String.fromCharCode(...b.subarray(i, i + 4096));
    return s;
  };
  const pop = (): Node => {
    if (stack.length === 0) fail('USERPORT_PICKLE_INVALID', 'stack underflow');
    return stack.pop()!;
  };
  const top = (): Node => {
    if (stack.length === 0) fail('USERPORT_PICKLE_INVALID', 'stack underflow');
    return stack[stack.length - 1]!;
  };
  const popMark = (): Node[] => {
    if (metastack.length === 0) fail('USERPORT_PICKLE_INVALID', 'no MARK on the stack');
    const items = stack;
    stack = metastack.pop()!;
    return items;
  };
  const text = (b: Uint8Array): string => {
    const s = utf8Text(b);
    if (s === undefined) fail('USERPORT_PICKLE_INVALID', 'unicode string is not valid UTF-8');
    return wellFormed(s!);
  };
  const wellFormed = (s: string): string => {
    if (!s.isWellFormed()) fail('USERPORT_PICKLE_INVALID', 'string contains an unpaired UTF-16 surrogate');
    return s;
  };
  const length = (n: number): number => {
    if (n < 0) fail('USERPORT_PICKLE_INVALID', 'negative length');
    return n;
  };
  const intBytes = (n: number): bigint => {
    if (n > maxIntBytes) fail('USERPORT_PICKLE_LIMIT', `integer of ${n} bytes exceeds the limit of ${limits.maxIntDigits} digits`);
    return fromTwosComplement(take(n));
  };
  const decimal = (s: string): bigint => {
    if (!/^[+-]?(?:0|[1-9][0-9]*)$/.test(s)) fail('USERPORT_PICKLE_INVALID', `not a decimal integer: ${printable(JSON.stringify(s.slice(0, 40)))}`);
    if (s.replace(/^[+-]/, '').length > limits.maxIntDigits) fail('USERPORT_PICKLE_LIMIT', `integer exceeds the limit of ${limits.maxIntDigits} digits`);
    return BigInt(s);
  };
  const list = (node: Node): PyList => {
    if (!(node instanceof PyList)) fail('USERPORT_PICKLE_INVALID', 'append to something that is not a list');
    return node as PyList;
  };
  const dict = (node: Node): PyDict => {
    if (!(node instanceof PyDict)) fail('USERPORT_PICKLE_INVALID', 'set an item of something that is not a dict');
    return node as PyDict;
  };
  const setItem = (d: PyDict, key: Node, value: Node): void => {
    let k: string;
    let intKey = false;
    if (typeof key === 'string') k = key;
    else if (key instanceof Py2Str) {
      const s = utf8Text(key.bytes);
      if (s === undefined) fail('USERPORT_PICKLE_UNSUPPORTED', 'dict key is a byte string that is not UTF-8');
      k = wellFormed(s!);
    } else if (typeof key === 'bigint') {
      k = key.toString();
      intKey = true;
    } else {
      return fail('USERPORT_PICKLE_UNSUPPORTED', `dict key of type ${describe(key)}: only string and int keys map to JSON`);
    }
    const prior = d.entries.get(k);
    if (prior !== undefined && prior.intKey !== intKey) fail('USERPORT_PICKLE_INVALID', `dict has both the int key ${k} and the string key "${k}"`);
    d.entries.set(k, { intKey, value });
  };
  const memoGet = (i: number): Node => {
    if (!memo.has(i)) fail('USERPORT_PICKLE_INVALID', `memo has no entry ${i}`);
    return memo.get(i)!;
  };

  for (;;) {
    opOffset = pos;
    if (pos >= bytes.length) {
      opName = '';
      throw new PickleError('USERPORT_PICKLE_TRUNCATED', `pickle ends at byte ${pos} without STOP`, { offset: pos });
    }
    const op = bytes[pos++]!;
    const name = OPCODE_NAMES[op];
    if (name === undefined) {
      throw new PickleError('USERPORT_PICKLE_INVALID', `unknown opcode 0x${op.toString(16).padStart(2, '0')} at byte ${opOffset}`, { offset: opOffset });
    }
    opName = name;
    if (!SUPPORTED.has(name)) {
      // Refused before reading its argument: nothing of it is looked at, let alone run.
      fail('USERPORT_PICKLE_UNSUPPORTED', `opcode ${name} builds or calls Python objects; only plain values are decoded`);
    }
    switch (name) {
      case 'PROTO': {
        const p = u8();
        if (p > 5) fail('USERPORT_PICKLE_UNSUPPORTED', `protocol ${p}`);
        break;
      }
      case 'FRAME': u64(); break; // framing only groups opcodes; the content is read as usual
      case 'STOP': {
        if (metastack.length !== 0) fail('USERPORT_PICKLE_INVALID', 'STOP with an open MARK');
        if (stack.length !== 1) fail('USERPORT_PICKLE_INVALID', `STOP with ${stack.length} values on the stack`);
        if (pos !== bytes.length) fail('USERPORT_PICKLE_INVALID', `${bytes.length - pos} bytes after STOP`);
        return stack[0]!;
      }
      case 'MARK': metastack.push(stack); stack = []; break;
      case 'POP':
        // As Python's: an empty frame pops the MARK itself.
        if (stack.length > 0) stack.pop(); else popMark();
        break;
      case 'POP_MARK': popMark(); break;
      case 'DUP': stack.push(top()); break;
      case 'NONE': stack.push(null); break;
      case 'NEWTRUE': stack.push(true); break;
      case 'NEWFALSE': stack.push(false); break;
      case 'INT': {
        const s = line();
        // Protocols 0 and 1 write bools as INT 01 / INT 00.
        if (s === '01') stack.push(true);
        else if (s === '00') stack.push(false);
        else stack.push(decimal(s));
        break;
      }
      case 'BININT': stack.push(BigInt(i32())); break;
      case 'BININT1': stack.push(BigInt(u8())); break;
      case 'BININT2': stack.push(BigInt(u16())); break;
      case 'LONG': {
        const s = line();
        stack.push(decimal(s.endsWith('L') ? s.slice(0, -1) : s));
        break;
      }
      case 'LONG1': stack.push(intBytes(u8())); break;
      case 'LONG4': stack.push(intBytes(length(i32()))); break;
      case 'FLOAT': stack.push(parsePyFloat(line()) ?? fail('USERPORT_PICKLE_INVALID', 'not a float')); break;
      case 'BINFLOAT': { const b = take(8); stack.push(new DataView(b.buffer, b.byteOffset, 8).getFloat64(0, false)); break; }
      case 'STRING': {
        const s = line();
        const q = s[0];
        if (s.length < 2 || (q !== "'" && q !== '"') || s[s.length - 1] !== q) fail('USERPORT_PICKLE_INVALID', 'STRING argument is not quoted');
        stack.push(new Py2Str(escapeDecode(s.slice(1, -1)) ?? fail('USERPORT_PICKLE_INVALID', 'bad escape in STRING')));
        break;
      }
      case 'BINSTRING': stack.push(new Py2Str(take(length(i32())))); break;
      case 'SHORT_BINSTRING': stack.push(new Py2Str(take(u8()))); break;
      case 'UNICODE': stack.push(wellFormed(rawUnicodeEscapeDecode(line()) ?? fail('USERPORT_PICKLE_INVALID', 'bad escape in UNICODE'))); break;
      case 'BINUNICODE': stack.push(text(take(u32()))); break;
      case 'SHORT_BINUNICODE': stack.push(text(take(u8()))); break;
      case 'BINUNICODE8': stack.push(text(take(u64()))); break;
      case 'BINBYTES': stack.push(new PickleBytes(take(u32()))); break;
      case 'SHORT_BINBYTES': stack.push(new PickleBytes(take(u8()))); break;
      case 'BINBYTES8': case 'BYTEARRAY8': stack.push(new PickleBytes(take(u64()))); break;
      case 'EMPTY_LIST': stack.push(new PyList()); break;
      case 'LIST': {
        const items = popMark(); // replaces `stack`
        const l = new PyList();
        for (const v of items) l.items.push(v);
        stack.push(l);
        break;
      }
      case 'APPEND': { const v = pop(); list(top()).items.push(v); break; }
      case 'APPENDS': {
        const items = popMark();
        const l = list(top());
        for (const v of items) l.items.push(v);
        break;
      }
      case 'EMPTY_TUPLE': stack.push(new PyTuple([])); break;
      case 'TUPLE': { const items = popMark(); stack.push(new PyTuple(items)); break; } // popMark replaces `stack`
      case 'TUPLE1': case 'TUPLE2': case 'TUPLE3': {
        const n = Number(name[5]);
        if (stack.length < n) fail('USERPORT_PICKLE_INVALID', 'stack underflow');
        stack.push(new PyTuple(stack.splice(stack.length - n, n)));
        break;
      }
      case 'EMPTY_DICT': stack.push(new PyDict()); break;
      case 'DICT': case 'SETITEMS': {
        const items = popMark();
        if (items.length % 2 !== 0) fail('USERPORT_PICKLE_INVALID', 'odd number of items for a dict');
        const d = name === 'DICT' ? new PyDict() : dict(top());
        for (let i = 0; i < items.length; i += 2) setItem(d, items[i]!, items[i + 1]!);
        if (name === 'DICT') stack.push(d);
        break;
      }
      case 'SETITEM': { const v = pop(); const k = pop(); setItem(dict(top()), k, v); break; }
      case 'PUT': memo.set(Number(decimal(line())), top()); break;
      case 'BINPUT': memo.set(u8(), top()); break;
      case 'LONG_BINPUT': memo.set(u32(), top()); break;
      case 'MEMOIZE': memo.set(memo.size, top()); break;
      case 'GET': stack.push(memoGet(Number(decimal(line())))); break;
      case 'BINGET': stack.push(memoGet(u8())); break;
      case 'LONG_BINGET': stack.push(memoGet(u32())); break;
      default: fail('USERPORT_PICKLE_UNSUPPORTED', `opcode ${name}`);
    }
  }
}

function describe(node: Node): string {
  if (node === null) return 'None';
  if (typeof node === 'boolean') return 'bool';
  if (typeof node === 'number') return 'float';
  if (node instanceof PickleBytes) return 'bytes';
  if (node instanceof PyList) return 'list';
  if (node instanceof PyTuple) return 'tuple';
  if (node instanceof PyDict) return 'dict';
  return typeof node;
}

/** Little-endian two's complement (LONG1/LONG4) to a bigint. */
function fromTwosComplement(b: Uint8Array): bigint {
  if (b.length === 0) return 0n;
  let hex = '';
  for (let i = b.length - 1; i >= 0; i--) hex += b[i]!.toString(16).padStart(2, '0');
  const v = BigInt(`0x${hex}`);
  return b[b.length - 1]! & 0x80 ? v - (1n << BigInt(8 * b.length)) : v;
}

/** Python's float() of a protocol-0 FLOAT argument; undefined when it is not a float. */
function parsePyFloat(s: string): number | undefined {
  const t = s.trim();
  if (/^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/.test(t)) return Number(t);
  const m = /^([+-]?)(inf|infinity|nan)$/i.exec(t);
  if (m === null) return undefined;
  if (m[2]!.toLowerCase() === 'nan') return NaN;
  return m[1] === '-' ? -Infinity : Infinity;
}

const SIMPLE_ESCAPES: Record<string, number> = { '\\': 0x5c, "'": 0x27, '"': 0x22, a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11 };

/** Python's `string-escape` (the repr inside a STRING argument), latin-1 in, bytes out. */
function escapeDecode(s: string): Uint8Array | undefined {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c !== 0x5c) { out.push(c & 0xff); continue; }
    const e = s[++i];
    if (e === undefined) return undefined; // a trailing lone backslash
    if (e === '\n') continue; // line continuation
    if (e in SIMPLE_ESCAPES) { out.push(SIMPLE_ESCAPES[e]!); continue; }
    if (e >= '0' && e <= '7') {
      const m = /^[0-7]{1,3}/.exec(s.slice(i, i + 3))![0];
      out.push(parseInt(m, 8) & 0xff);
      i += m.length - 1;
      continue;
    }
    if (e === 'x') {
      const h = s.slice(i + 1, i + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(h)) return undefined;
      out.push(parseInt(h, 16));
      i += 2;
      continue;
    }
    out.push(0x5c, e.charCodeAt(0) & 0xff); // unknown escapes stay as written
  }
  return Uint8Array.from(out);
}

/** Python's `raw-unicode-escape`: latin-1 text where only \uXXXX / \UXXXXXXXX after an odd run of backslashes are escapes. */
function rawUnicodeEscapeDecode(s: string): string | undefined {
  let out = '';
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (c !== '\\') { out += c; i++; continue; }
    let j = i;
    while (j < s.length && s[j] === '\\') j++;
    const run = j - i;
    out += '\\'.repeat(run);
    i = j;
    if (run % 2 === 0 || (s[i] !== 'u' && s[i] !== 'U')) continue;
    const n = s[i] === 'u' ? 4 : 8;
    const h = s.slice(i + 1, i + 1 + n);
    if (h.length !== n || !/^[0-9a-fA-F]+$/.test(h)) return undefined;
    const cp = parseInt(h, 16);
    if (cp > 0x10ffff) return undefined;
    out = out.slice(0, -1) + String.fromCodePoint(cp);
    i += 1 + n;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// From internal nodes to results, with the result-size bounds.

/** A walk of the node graph as a tree: repetitions are counted, cycles refused. */
class Walk {
  private values = 0;
  private text = 0;
  private readonly open = new Set<object>();

  constructor(private readonly limits: PickleLimits) {}

  count(textLength: number): void {
    if (++this.values > this.limits.maxValues) {
      throw new PickleError('USERPORT_PICKLE_LIMIT', `result has more than ${this.limits.maxValues} values`);
    }
    this.text += textLength;
    if (this.text > this.limits.maxTextLength) {
      throw new PickleError('USERPORT_PICKLE_LIMIT', `result has more than ${this.limits.maxTextLength} characters of text`);
    }
  }

  enter(node: object, depth: number): void {
    if (depth > this.limits.maxDepth) {
      throw new PickleError('USERPORT_PICKLE_LIMIT', `result nests deeper than ${this.limits.maxDepth}`);
    }
    if (this.open.has(node)) throw new PickleError('USERPORT_PICKLE_INVALID', 'a container contains itself');
    this.open.add(node);
  }

  leave(node: object): void {
    this.open.delete(node);
  }
}

function toValue(node: Node, walk: Walk, depth: number): PickleValue {
  if (node === null || typeof node === 'boolean' || typeof node === 'number') { walk.count(0); return node; }
  if (typeof node === 'bigint') {
    walk.count(0);
    return node >= BigInt(Number.MIN_SAFE_INTEGER) && node <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(node) : node;
  }
  if (typeof node === 'string') { walk.count(node.length); return node; }
  if (node instanceof Py2Str) {
    walk.count(node.bytes.length);
    const s = utf8Text(node.bytes);
    return s !== undefined && s.isWellFormed() ? s : new PickleBytes(node.bytes.slice());
  }
  // Copies: the nodes view the caller's input, which it may reuse; a repeated reference is a copy too.
  if (node instanceof PickleBytes) { walk.count(node.bytes.length); return new PickleBytes(node.bytes.slice()); }
  walk.count(0);
  walk.enter(node, depth + 1);
  let out: PickleValue;
  if (node instanceof PyDict) {
    const obj: { [key: string]: PickleValue } = {};
    for (const [k, e] of node.entries) {
      walk.count(k.length);
      // defineProperty, not assignment: a "__proto__" key must be data, never the prototype.
      Object.defineProperty(obj, k, { value: toValue(e.value, walk, depth + 1), enumerable: true, writable: true, configurable: true });
    }
    out = obj;
  } else {
    out = node.items.map((item) => toValue(item, walk, depth + 1));
  }
  walk.leave(node);
  return out;
}

function toJson(node: Node, walk: Walk, depth: number, parts: string[]): void {
  if (node === null) { walk.count(0); parts.push('null'); return; }
  if (typeof node === 'boolean') { walk.count(0); parts.push(node ? 'true' : 'false'); return; }
  if (typeof node === 'bigint') { walk.count(0); parts.push(node.toString()); return; }
  if (typeof node === 'number') {
    walk.count(0);
    if (!Number.isFinite(node)) throw new PickleError('USERPORT_PICKLE_UNSUPPORTED', `float ${node} has no JSON form`);
    parts.push(pyFloatRepr(node));
    return;
  }
  if (typeof node === 'string') { walk.count(node.length); parts.push(JSON.stringify(node)); return; }
  if (node instanceof Py2Str) {
    walk.count(node.bytes.length);
    const s = utf8Text(node.bytes);
    if (s === undefined || !s.isWellFormed()) throw new PickleError('USERPORT_PICKLE_UNSUPPORTED', 'a byte string that is not UTF-8 has no JSON form');
    parts.push(JSON.stringify(s));
    return;
  }
  if (node instanceof PickleBytes) throw new PickleError('USERPORT_PICKLE_UNSUPPORTED', 'bytes have no JSON form');
  walk.count(0);
  walk.enter(node, depth + 1);
  if (node instanceof PyDict) {
    parts.push('{');
    let first = true;
    for (const [k, e] of node.entries) {
      walk.count(k.length);
      parts.push(first ? '' : ',', JSON.stringify(k), ':');
      first = false;
      toJson(e.value, walk, depth + 1, parts);
    }
    parts.push('}');
  } else {
    parts.push('[');
    node.items.forEach((item, i) => {
      if (i > 0) parts.push(',');
      toJson(item, walk, depth + 1, parts);
    });
    parts.push(']');
  }
  walk.leave(node);
}

/**
 * A finite float as Python's `repr` (and so `json.dumps`) writes it: the shortest digits that read
 * back to the same double (JS's `toExponential()` picks the same ones), fixed notation for decimal
 * exponents -4..15 with at least one fractional digit (`1.0`), else `1e+16` / `1.5e-07`.
 */
export function pyFloatRepr(x: number): string {
  if (!Number.isFinite(x)) throw new PickleError('USERPORT_PICKLE_UNSUPPORTED', `float ${x} has no JSON form`);
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  const [mantissa, expText] = Math.abs(x).toExponential().split('e') as [string, string];
  const digits = mantissa.replace('.', '');
  const exp = Number(expText);
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  if (exp >= digits.length - 1) return `${sign}${digits}${'0'.repeat(exp - digits.length + 1)}.0`;
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

function limitsOf(limits: Partial<PickleLimits> | undefined): PickleLimits {
  return { ...DEFAULT_PICKLE_LIMITS, ...limits };
}

/**
 * The value of a pickle (protocols 0-5) of plain values. Never executes anything: an opcode that
 * would import, call or build an object throws {@link PickleError} `USERPORT_PICKLE_UNSUPPORTED`.
 * Ints beyond ±(2^53 - 1) are bigint. Memo references are copied: the result is a tree.
 */
export function decodePickle(bytes: Uint8Array, limits?: Partial<PickleLimits>): PickleValue {
  const l = limitsOf(limits);
  return toValue(run(bytes, l), new Walk(l), 0);
}

/**
 * The value of a pickle as compact JSON text (`json.dumps(v, separators=(',', ':'),
 * ensure_ascii=False)` for the same value in Python 3): ints exact, floats as Python's repr, dict
 * keys in pickle order. Throws USERPORT_PICKLE_UNSUPPORTED for NaN, infinities and bytes.
 */
export function pickleToJsonText(bytes: Uint8Array, limits?: Partial<PickleLimits>): string {
  const l = limitsOf(limits);
  const parts: string[] = [];
  toJson(run(bytes, l), new Walk(l), 0, parts);
  return parts.join('');
}

// ---------------------------------------------------------------------------------------------
// django-picklefield's column text

/** Options for reading a picklefield column's text. */
export interface PickledFieldOptions {
  limits?: Partial<PickleLimits>;
  /**
   * zlib inflate, for fields declared `compress=True` (Sentry's are not). Called only when the
   * decoded bytes start with a zlib header (0x78, never a pickle opcode). Pass a bounded one, e.g.
   * `(b) => zlib.inflateSync(b, { maxOutputLength: limit })`: this module imports nothing.
   */
  inflate?: (bytes: Uint8Array) => Uint8Array;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function fieldBytes(text: string, options: PickledFieldOptions): Uint8Array {
  const limits = limitsOf(options.limits);
  // Python's b64decode skips stray characters; picklefield never writes any, so one is corruption.
  if (!BASE64.test(text)) throw new PickleError('USERPORT_PICKLE_INVALID', 'field text is not base64');
  if ((text.length / 4) * 3 > limits.maxBytes + 3) {
    throw new PickleError('USERPORT_PICKLE_LIMIT', `field text decodes to more than ${limits.maxBytes} bytes`);
  }
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  if (bytes[0] !== 0x78) return bytes;
  if (options.inflate === undefined) throw new PickleError('USERPORT_PICKLE_UNSUPPORTED', 'field is zlib-compressed and no inflate was given');
  return options.inflate(bytes);
}

/**
 * picklefield's `dbsafe_decode`: base64, then zlib when compressed, then the pickle. Throws on
 * anything else; picklefield itself falls back to the raw text when decoding fails (its
 * `to_python`), which is the caller's decision to copy or not.
 */
export function decodePickledField(text: string, options: PickledFieldOptions = {}): PickleValue {
  return decodePickle(fieldBytes(text, options), options.limits);
}

/** {@link decodePickledField}, as JSON text ({@link pickleToJsonText}). */
export function pickledFieldToJsonText(text: string, options: PickledFieldOptions = {}): string {
  return pickleToJsonText(fieldBytes(text, options), options.limits);
}

// ---------------------------------------------------------------------------------------------
// Encoding: Python 2.7 cPickle, protocol 2.

/** Options of {@link encodePickle}. */
export interface EncodeOptions {
  /**
   * How JS strings are written: `unicode` (BINUNICODE, Python 2 `unicode`: what Django hands over
   * for form and JSON input, e.g. useroption values) or `str` (SHORT_BINSTRING/BINSTRING of the
   * UTF-8 bytes, Python 2 `str`: what Sentry 9's authenticators put in `config`, literal keys and
   * hex/base32 secrets). Default `unicode`.
   */
  strings?: 'unicode' | 'str';
  /** Deepest nesting accepted; default {@link DEFAULT_PICKLE_LIMITS}.maxDepth. */
  maxDepth?: number;
}

/** Python 2's cPickle BATCHSIZE: APPENDS/SETITEMS carry at most this many items. */
const BATCH = 1000;
const INT32_MIN = -(2n ** 31n);
const INT32_END = 2n ** 31n;
/** A Python 2 `int` is a C long: 64 bits on the 64-bit Linux Sentry ran on. Beyond, it is a `long`. */
const CLONG_MIN = -(2n ** 63n);
const CLONG_END = 2n ** 63n;

class ByteWriter {
  private buf = new Uint8Array(256);
  private len = 0;

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  byte(...bs: number[]): void {
    this.room(bs.length);
    for (const b of bs) this.buf[this.len++] = b;
  }

  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  u32(n: number): void {
    this.byte(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
  }

  result(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

const utf8Encoder = new TextEncoder();

/**
 * Who holds a value while cPickle saves it, which decides whether cPickle memoizes it: its `put()`
 * skips objects whose refcount is below 2. Under picklefield's `dumps(deepcopy(value), 2)`:
 * - `top`: the deepcopy itself, held only by the call's argument tuple (refcount 1);
 * - `list`: a list element, also held by the list iterator batch_list uses (refcount >= 2);
 * - `dict`: a dict key or value, borrowed by batch_dict_exact's PyDict_Next (refcount 1 for a
 *   container deepcopy made; strings are shared with the original value, so >= 2).
 */
type Holder = 'top' | 'list' | 'dict';

class Encoder {
  private memo = 0;
  private readonly w = new ByteWriter();

  constructor(private readonly strings: 'unicode' | 'str', private readonly maxDepth: number) {}

  run(value: PickleInput): Uint8Array {
    this.w.byte(0x80, 2); // PROTO 2
    this.save(value, 'top', 0);
    this.w.byte(0x2e); // STOP
    return this.w.result();
  }

  /** cPickle's put2: memo ids start at 1 (it adds 1 to the memo's size), BINPUT below 256. */
  private put(): void {
    const id = ++this.memo;
    if (id < 256) this.w.byte(0x71, id);
    else { this.w.byte(0x72); this.w.u32(id); }
  }

  private save(value: PickleInput, holder: Holder, depth: number): void {
    if (value === null) { this.w.byte(0x4e); return; }
    if (typeof value === 'boolean') { this.w.byte(value ? 0x88 : 0x89); return; }
    if (typeof value === 'bigint') { this.int(value); return; }
    if (typeof value === 'number') {
      // JSON does not tell 1 from 1.0: safe integers are ints, anything else a float.
      if (Number.isSafeInteger(value)) this.int(BigInt(value));
      else this.float(value);
      return;
    }
    if (value instanceof PickleFloat) { this.float(value.value); return; }
    if (typeof value === 'string') { this.string(value); return; }
    if (value instanceof PickleBytes) { this.str(value.bytes); return; }
    if (depth >= this.maxDepth) throw new PickleError('USERPORT_PICKLE_LIMIT', `value nests deeper than ${this.maxDepth}`);
    if (Array.isArray(value)) { this.list(value as readonly PickleInput[], holder, depth + 1); return; }
    if (typeof value === 'object' && isPlainObject(value)) { this.dict(value as { readonly [key: string]: PickleInput }, holder, depth + 1); return; }
    throw new PickleError('USERPORT_PICKLE_UNSUPPORTED', `cannot pickle a value of type ${typeof value}`);
  }

  /** save_int for a C long (BININT1/BININT2/BININT, else the text INT), save_long (LONG1/LONG4) beyond. */
  private int(v: bigint): void {
    if (v >= INT32_MIN && v < INT32_END) {
      const n = Number(v);
      if (n >= 0 && n <= 0xff) this.w.byte(0x4b, n);
      else if (n >= 0 && n <= 0xffff) this.w.byte(0x4d, n & 0xff, n >> 8);
      else { this.w.byte(0x4a); this.w.u32(n); }
      return;
    }
    if (v >= CLONG_MIN && v < CLONG_END) {
      // cPickle writes a 64-bit int that does not fit BININT as text: "I%ld\n".
      this.w.byte(0x49);
      this.w.bytes(utf8Encoder.encode(`${v}\n`));
      return;
    }
    const b = toTwosComplement(v);
    if (b.length < 256) this.w.byte(0x8a, b.length);
    else { this.w.byte(0x8b); this.w.u32(b.length); }
    this.w.bytes(b);
  }

  private float(x: number): void {
    if (!Number.isFinite(x)) throw new PickleError('USERPORT_PICKLE_UNSUPPORTED', `float ${x}: its bytes depend on the platform that made it`);
    const b = new Uint8Array(9);
    b[0] = 0x47; // BINFLOAT, big-endian IEEE 754 (_PyFloat_Pack8 with le=0)
    new DataView(b.buffer).setFloat64(1, x, false);
    this.w.bytes(b);
  }

  private string(s: string): void {
    if (!s.isWellFormed()) throw new PickleError('USERPORT_PICKLE_UNSUPPORTED', 'string contains an unpaired UTF-16 surrogate');
    if (this.strings === 'str') { this.str(utf8Encoder.encode(s)); return; }
    const b = utf8Encoder.encode(s);
    this.w.byte(0x58); // BINUNICODE: cPickle 2.7 never writes SHORT_BINUNICODE (protocol 4)
    this.w.u32(b.length);
    this.w.bytes(b);
    // save() passes doput=0 for unicode of length < 2 (code points: a UCS-4 build, as Linux
    // distributions built Python 2); longer ones are shared with the original value, so memoized.
    if (codePoints(s) >= 2) this.put();
  }

  /** save_string: a Python 2 `str`. */
  private str(b: Uint8Array): void {
    if (b.length < 256) this.w.byte(0x55, b.length);
    else { this.w.byte(0x54); this.w.u32(b.length); }
    this.w.bytes(b);
    if (b.length >= 2) this.put();
  }

  /** save_list + batch_list: empty lists are memoized only when referenced twice, others always. */
  private list(items: readonly PickleInput[], holder: Holder, depth: number): void {
    this.w.byte(0x5d); // EMPTY_LIST
    if (items.length === 0) {
      if (holder === 'list') this.put();
      return;
    }
    this.put();
    for (let start = 0; start < items.length; start += BATCH) {
      const batch = items.slice(start, start + BATCH);
      if (batch.length === 1) {
        this.save(batch[0]!, 'list', depth);
        this.w.byte(0x61); // APPEND
      } else {
        this.w.byte(0x28); // MARK
        for (const item of batch) this.save(item, 'list', depth);
        this.w.byte(0x65); // APPENDS
      }
    }
  }

  /**
   * save_dict + batch_dict_exact: one item is SETITEM; otherwise MARK ... SETITEMS per 1000 items,
   * and a dict whose size is a multiple of 1000 ends with an empty MARK SETITEMS (its loop writes
   * the next batch before knowing it is empty). Keys in the value's order (see the module notes).
   */
  private dict(obj: { readonly [key: string]: PickleInput }, holder: Holder, depth: number): void {
    const keys = Object.keys(obj);
    this.w.byte(0x7d); // EMPTY_DICT
    if (keys.length === 0) {
      if (holder === 'list') this.put();
      return;
    }
    this.put();
    if (keys.length === 1) {
      this.string(keys[0]!);
      this.save(obj[keys[0]!]!, 'dict', depth);
      this.w.byte(0x73); // SETITEM
      return;
    }
    let i = 0;
    let n: number;
    do {
      this.w.byte(0x28); // MARK
      n = 0;
      while (i < keys.length) {
        const k = keys[i++]!;
        this.string(k);
        this.save(obj[k]!, 'dict', depth);
        if (++n === BATCH) break;
      }
      this.w.byte(0x75); // SETITEMS
    } while (n === BATCH);
  }
}

function isPlainObject(v: object): boolean {
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function codePoints(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/** cPickle's save_long at protocol 2: little-endian two's complement, shortest with a sign bit. */
function toTwosComplement(v: bigint): Uint8Array {
  const bits = (v < 0n ? -v : v).toString(2).length;
  let n = (bits >> 3) + 1;
  const out = new Uint8Array(n);
  let u = BigInt.asUintN(n * 8, v);
  for (let i = 0; i < n; i++) { out[i] = Number(u & 0xffn); u >>= 8n; }
  // -(2**(8*j-1)) is its own complement: the extra byte is only sign, drop it as cPickle does.
  if (v < 0n && n > 1 && out[n - 1] === 0xff && (out[n - 2]! & 0x80) !== 0) n--;
  return out.subarray(0, n);
}

/**
 * The pickle Python 2.7's `cPickle.dumps(copy.deepcopy(value), 2)` writes (django-picklefield 0.3's
 * `dbsafe_encode`, which Sentry 9 runs), for a plain value. Byte-exact for scalars, strings, lists
 * and dicts of one key, nested freely. Not reproducible in general, and so documented:
 * - dict key order: Python 2 iterates a dict in hash-table order; this writes the object's own
 *   key order. Dicts of two or more keys may differ from Sentry's bytes (same value on reading).
 * - sharing: cPickle writes a second reference to the same Python object as BINGET; JS values
 *   from JSON have no identity, so every occurrence is written in full (same value on reading).
 * - memoization follows refcounts (see {@link Holder}); a value built differently in Python
 *   (without deepcopy, or held elsewhere) can differ by a BINPUT.
 * Numbers: safe integers are ints, other numbers floats ({@link PickleFloat} forces a float);
 * NaN and infinities are refused.
 */
export function encodePickle(value: PickleInput, options: EncodeOptions = {}): Uint8Array {
  return new Encoder(options.strings ?? 'unicode', options.maxDepth ?? DEFAULT_PICKLE_LIMITS.maxDepth).run(value);
}

/** {@link encodePickle}, as picklefield stores it: base64 text. */
export function encodePickledField(value: PickleInput, options: EncodeOptions = {}): string {
  const b = encodePickle(value, options);
  let binary = '';
  for (let i = 0; i < b.length; i += 4096) binary += String.fromCharCode(...b.subarray(i, i + 4096));
  return btoa(binary);
}
