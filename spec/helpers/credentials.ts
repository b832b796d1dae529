/**
 * How Sentry checks credentials, written out as independent oracles for the specs (nothing of
 * userport's code is used): Django's `pbkdf2_sha256` password hasher and RFC 6238 TOTP codes,
 * as Sentry's TOTP authenticator computes them (SHA-1, 6 digits, 30 seconds).
 */
import { createHmac, pbkdf2Sync, timingSafeEqual } from 'node:crypto';
import { spawnSync } from 'node:child_process';

/** Django's `make_password` with `PBKDF2PasswordHasher`: `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`. */
export function djangoPbkdf2(password: string, salt: string, iterations = 600000): string {
  const hash = pbkdf2Sync(password, salt, iterations, 32, 'sha256').toString('base64');
  return `pbkdf2_sha256$${iterations}$${salt}$${hash}`;
}

/** Django's `PBKDF2PasswordHasher.verify`: recompute with the encoded salt and iterations, compare. */
export function djangoCheckPassword(password: string, encoded: string): boolean {
  const [algorithm, iterations, salt, hash] = encoded.split('$');
  if (algorithm !== 'pbkdf2_sha256' || !iterations || salt === undefined || !hash) return false;
  const again = pbkdf2Sync(password, salt, Number(iterations), 32, 'sha256').toString('base64');
  return again.length === hash.length && timingSafeEqual(Buffer.from(again), Buffer.from(hash));
}

/**
 * Django's own `check_password`, when a Python with Django is on this machine (apt's
 * python3-django): undefined otherwise, so a spec can say it was not asked.
 */
export function djangoItselfChecks(password: string, encoded: string): boolean | undefined {
  const script = `
import sys
from django.conf import settings
settings.configure(PASSWORD_HASHERS=['django.contrib.auth.hashers.PBKDF2PasswordHasher'])
from django.contrib.auth.hashers import check_password
print('yes' if check_password(sys.argv[1], sys.argv[2]) else 'no')`;
  for (const python of ['/usr/bin/python3', 'python3']) {
    const r = spawnSync(python, ['-c', script, password, encoded], { encoding: 'utf8' });
    if (r.status === 0 && /^(yes|no)$/m.test(r.stdout)) return r.stdout.trim() === 'yes';
  }
  return undefined;
}

/** RFC 4648 base32 (Sentry's TOTP secrets), padding optional. */
function base32(secret: string): Buffer {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret.replace(/=+$/, '').toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error(`not base32: ${c}`);
    bits += i.toString(2).padStart(5, '0');
  }
  const bytes: number[] = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

/** The TOTP code of `secret` at `unixSeconds` (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits). */
export function totp(secret: string, unixSeconds: number): string {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSeconds / 30)));
  const mac = createHmac('sha1', base32(secret)).update(counter).digest();
  const offset = mac[mac.length - 1]! & 0x0f;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(code).padStart(6, '0');
}
