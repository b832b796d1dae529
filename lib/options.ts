/**
 * Option checking shared by every public factory: unknown keys and wrong types are refused with an
 * {@link OptionError} naming the option, what it expected and what arrived. A JavaScript caller
 * gets no help from the types, and a misspelled option silently falling back to its default is
 * the worst kind of surprise in someone else's ETL job.
 */
import { Readable } from 'node:stream';
import { opt, OptionError, wording } from './errors.js';

/** How a value arrived, for messages: `a string ("alice")`, `3`, `an array`. */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  switch (typeof v) {
    case 'string': return `a string (${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)})`;
    // Bare, as a boolean: a message ending in parentheses would read as the CLI's position.
    case 'number': return `${v}`;
    case 'bigint': return `a bigint (${v})`;
    case 'boolean': return `${v}`;
    case 'undefined': return 'undefined';
    case 'function': return 'a function';
    case 'symbol': return 'a symbol';
    default: return v instanceof Readable ? 'a Readable stream' : 'an object';
  }
}

/** Throws the standard message: `<scope>: option <name> must be <expected>, got <arrived>`. */
export function badOption(scope: string, name: string, expected: string, got: unknown): never {
  throw new OptionError(wording`option ${opt(name)} must be ${expected}, got ${describeValue(got)}`, name, scope);
}

/** One option's check: returns the expectation it failed, or undefined when the value is fine. */
export type OptionCheck = (v: unknown) => string | undefined;

export const isBoolean: OptionCheck = (v) => (typeof v === 'boolean' ? undefined : 'true or false');
export const isFunction: OptionCheck = (v) => (typeof v === 'function' ? undefined : 'a function');
export const isNonEmptyString: OptionCheck = (v) => (typeof v === 'string' && v !== '' ? undefined : 'a non-empty string');
export const isObject: OptionCheck = (v) => (v !== null && typeof v === 'object' ? undefined : 'an object');

export const isStringOrBuffer: OptionCheck = (v) => (typeof v === 'string' || Buffer.isBuffer(v) ? undefined : 'a string or a Buffer');
export const isKeyUnwrapper: OptionCheck = (v) => (v !== null && typeof v === 'object' && typeof (v as { unwrap?: unknown }).unwrap === 'function'
  ? undefined
  : 'a KeyUnwrapper (createLocalKeyUnwrapper or createGcpKmsUnwrapper)');

/** Any of the checks passes; the expectation says them all. */
export function isEither(...checks: OptionCheck[]): OptionCheck {
  return (v) => {
    const failed = checks.map((c) => c(v));
    return failed.includes(undefined) ? undefined : failed.join(', or ');
  };
}

/** An integer in [min, max]. */
export function isInteger(min: number, max = Number.MAX_SAFE_INTEGER): OptionCheck {
  return (v) => (Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max
    ? undefined
    : max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer from ${min} to ${max}`);
}

/** One of the listed strings. */
export function isOneOf(...allowed: string[]): OptionCheck {
  return (v) => (typeof v === 'string' && allowed.includes(v) ? undefined : allowed.map((a) => JSON.stringify(a)).join(' or '));
}

/**
 * An iterable of strings that is not itself a string: a string is iterable, and `'alice'` would
 * otherwise become the set of its characters. Elements of a one-shot iterator cannot be looked at
 * here without consuming it: {@link toStringSet} checks them as it reads them.
 */
export const isStringIterable: OptionCheck = (v) => {
  const expected = 'an array (or other iterable) of strings';
  if (typeof v === 'string' || v === null || typeof v !== 'object') return expected;
  if (typeof (v as Iterable<unknown>)[Symbol.iterator] !== 'function') return expected;
  if (Array.isArray(v) || v instanceof Set) for (const x of v as Iterable<unknown>) if (typeof x !== 'string') return expected;
  return undefined;
};

/** The strings of an option checked by {@link isStringIterable}, as a set; refuses a non-string element. */
export function toStringSet(scope: string, name: string, values: Iterable<string>): Set<string> {
  const set = new Set<string>();
  for (const x of values) {
    if (typeof x !== 'string') badOption(scope, name, 'an array (or other iterable) of strings, every element a string', x);
    set.add(x);
  }
  return set;
}

/**
 * Checks `options` against `spec` (option name -> check). `undefined` values are allowed (they
 * mean "the default") except for the `required` keys; any key not in `spec` is refused. Returns
 * the options, typed.
 */
export function checkOptions<T extends object>(
  scope: string, options: T | undefined, spec: { readonly [K in keyof T]-?: OptionCheck }, required: readonly (keyof T & string)[] = [],
): T {
  if (options === undefined && required.length === 0) return {} as T;
  if (options === null || typeof options !== 'object' || Array.isArray(options)) badOption(scope, 'options', 'an object', options);
  for (const key of required) {
    // A check refuses undefined, and its expectation is what the message asks for.
    if ((options as Record<string, unknown>)[key] === undefined) badOption(scope, key, spec[key](undefined) ?? 'given', undefined);
  }
  for (const key of Object.keys(options)) {
    const check = (spec as Record<string, OptionCheck | undefined>)[key];
    if (!check) {
      const known = Object.keys(spec).join(', ');
      throw new OptionError(wording`unknown option ${opt(key)} (known: ${known})`, key, scope);
    }
    const value = (options as Record<string, unknown>)[key];
    if (value === undefined) continue;
    const expected = check(value);
    if (expected !== undefined) badOption(scope, key, expected, value);
  }
  return options;
}

/** Checks a connection string up front so a typo is an option error, not a network timeout. */
export function checkDatabaseUrl(url: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new OptionError(wording`${opt('databaseUrl')} must be a postgresql:// URL, got "${url}"`);
  }
  if (u.protocol !== 'postgresql:' && u.protocol !== 'postgres:') {
    throw new OptionError(wording`${opt('databaseUrl')} must start with postgresql://, got "${u.protocol}//"`);
  }
}
