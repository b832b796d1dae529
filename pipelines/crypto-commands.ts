/**
 * `userport encrypt` and `userport decrypt`: Sentry-compatible companions of
 * `sentry backup encrypt` / `decrypt`, streaming in constant memory. `-` means stdin / stdout.
 * Wiring only: the work is in lib/decrypt.ts and lib/encrypt.ts.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { checkInputFile, checkOutputPath, helpText, parseCommand, reportError, usage, usageError } from './cli-support.js';
import { writeFileAtomically } from '../lib/atomic-file.js';
import { decryptExport, type EncryptedInput } from '../lib/decrypt.js';
import { encryptExport, encryptionKey } from '../lib/encrypt.js';
import { checkKeyForSource, keyUnwrapperFromOptions } from './key-options.js';
import { promptPassphraseOnTty } from '../lib/crypto/prompt.js';
import { kmsGetPublicKey, readGcpKmsConfig } from '../lib/crypto/gcp-kms.js';
import { ErrorCodes, printable, UserportError } from '../lib/errors.js';
import { closedStdout, stdoutClosedAtLaunch } from './signals.js';

export { keyUnwrapperFromOptions, type KeyUnwrapperCliOptions } from './key-options.js';

/** The streams a command talks to; tests pass their own. @default the process's */
export interface CommandIo {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
}

export const ENCRYPT_HELP = `Usage: userport encrypt (--encrypt-with PUBLIC.pem | --encrypt-with-gcp-kms CONFIG.json) SRC DEST

Encrypt an export like 'sentry backup encrypt': a tarball of the Fernet-encrypted JSON, its key
wrapped to the RSA public key, and that public key. SRC and DEST may be - (stdin, stdout).

Options:
  --encrypt-with PUBLIC.pem       RSA public key (given a private key, only its public half is used)
  --encrypt-with-gcp-kms CFG      wrap the key with Google Cloud KMS (config JSON)
  --tmp-dir DIR                   where to spool standard input (default: the system temp folder)
  --debug                         print stack traces with errors
  -h, --help                      this help

Example:
  userport encrypt --encrypt-with samples/demo-key.pub samples/users.json users.tar
`;
export const DECRYPT_HELP = `Usage: userport decrypt (--decrypt-with PRIVATE.pem | --decrypt-with-gcp-kms CONFIG.json) SRC DEST

Decrypt an export like 'sentry backup decrypt'. Nothing reaches DEST unless the whole export
authenticates; DEST is created with mode 0600. SRC and DEST may be - (stdin, stdout).

Options:
  --decrypt-with PRIVATE.pem      RSA private key (PKCS#8 or PKCS#1, optionally encrypted)
  --decrypt-passphrase-file F     passphrase of an encrypted private key
  --decrypt-with-gcp-kms CFG      unwrap the key with Google Cloud KMS (config JSON)
  --tmp-dir DIR                   where to spool standard input (default: the system temp folder)
  --debug                         print stack traces with errors
  -h, --help                      this help

Example:
  userport decrypt --decrypt-with samples/demo-key.pem samples/users.tar users.json
`;
const ENCRYPT_USAGE = 'see userport encrypt --help';
const DECRYPT_USAGE = 'see userport decrypt --help';

function io(partial: Partial<CommandIo> | undefined): CommandIo {
  return { stdin: partial?.stdin ?? process.stdin, stdout: partial?.stdout ?? process.stdout, stderr: partial?.stderr ?? process.stderr };
}

function positionals(list: string[], usage: string): [string, string] {
  if (list.length !== 2) throw usageError(`expected SRC and DEST, got ${list.length} argument${list.length === 1 ? '' : 's'} (${usage})`);
  if (list[0] !== '-' && list[1] !== '-' && path.resolve(list[0]!) === path.resolve(list[1]!)) {
    throw usageError('SRC and DEST are the same file');
  }
  // Both files are checked before a key is read or a byte written.
  if (list[0] !== '-') checkInputFile('SRC', list[0]!);
  if (list[1] !== '-') checkOutputPath('DEST', list[1]!);
  return [list[0]!, list[1]!];
}

/** Writes through `write` to DEST: standard output for `-`, else {@link writeFileAtomically}. */
async function toDestination(dest: string, streams: CommandIo, mode: number, write: (out: Writable) => Promise<void>): Promise<void> {
  if (dest === '-' && streams.stdout === process.stdout && stdoutClosedAtLaunch()) throw closedStdout();
  try {
    if (dest === '-') await write(streams.stdout);
    else await writeFileAtomically(dest, mode, write);
  } catch (err) {
    // A full disk or a closed pipe is a runtime failure of DEST (exit 1), said in one line.
    if (err instanceof UserportError || !(err as NodeJS.ErrnoException).code) throw err;
    throw new UserportError(ErrorCodes.IO, `cannot write ${dest === '-' ? 'to standard output' : printable(dest)}: ${(err as Error).message}`, { cause: err });
  }
}

function source(src: string, streams: CommandIo): EncryptedInput {
  return src === '-' ? { stream: streams.stdin } : { path: src };
}

/** `userport encrypt --encrypt-with PUBLIC.pem SRC DEST`. Resolves to the exit code. */
export async function runEncryptCommand(args: string[], streams?: Partial<CommandIo>): Promise<number> {
  const s = io(streams);
  const debug = args.includes('--debug');
  try {
    const { values, positionals: pos } = parseCommand(args, {
      'encrypt-with': { type: 'string' },
      'encrypt-with-gcp-kms': { type: 'string' },
      'tmp-dir': { type: 'string' },
    }, 'encrypt');
    if (values.help) {
      s.stdout.write(helpText(ENCRYPT_HELP));
      return 0;
    }
    const keyPath = values['encrypt-with'];
    const kmsPath = values['encrypt-with-gcp-kms'];
    if ((typeof keyPath === 'string') === (typeof kmsPath === 'string')) {
      throw usageError(`give exactly one of --encrypt-with PUBLIC.pem and --encrypt-with-gcp-kms CONFIG.json (${ENCRYPT_USAGE})`);
    }
    const [src, dest] = positionals(pos, ENCRYPT_USAGE);
    let publicKeyPem: Buffer;
    if (typeof kmsPath === 'string') {
      const endpoint = process.env.USERPORT_GCP_KMS_ENDPOINT || undefined;
      const config = await readGcpKmsConfig(kmsPath).catch((err: unknown) => { throw usage(err as Error); });
      publicKeyPem = await kmsGetPublicKey(config, endpoint ? { endpoint } : {});
    } else {
      try {
        publicKeyPem = await fs.readFile(keyPath as string);
      } catch (err) {
        throw usageError(`--encrypt-with: cannot read ${String(keyPath)}: ${(err as Error).message}`);
      }
      // A file that is no public key is said before DEST is touched, as a usage error.
      try { encryptionKey(publicKeyPem, 'encrypt', 'encryptWith', `--encrypt-with ${printable(keyPath as string)}`); } catch (err) { throw usage(err as Error); }
    }
    const tmpDir = values['tmp-dir'];
    await toDestination(dest, s, 0o644, (out) =>
      encryptExport(source(src, s), out, { publicKeyPem, ...(typeof tmpDir === 'string' ? { tmpDir } : {}) }));
    return 0;
  } catch (err) {
    return reportError(err, debug, s.stderr);
  }
}

/**
 * `userport decrypt --decrypt-with PRIVATE.pem SRC DEST` (or `--decrypt-with-gcp-kms`).
 * Nothing reaches DEST unless the whole export authenticated. A DEST file is created 0600: it
 * holds the plaintext. Resolves to the exit code.
 */
export async function runDecryptCommand(args: string[], streams?: Partial<CommandIo>): Promise<number> {
  const s = io(streams);
  const debug = args.includes('--debug');
  try {
    const { values, positionals: pos } = parseCommand(args, {
      'decrypt-with': { type: 'string', aliases: ['decrypt_with'] },
      'decrypt-passphrase-file': { type: 'string' },
      'decrypt-with-gcp-kms': { type: 'string' },
      'tmp-dir': { type: 'string' },
    }, 'decrypt');
    if (values.help) {
      s.stdout.write(helpText(DECRYPT_HELP));
      return 0;
    }
    const [src, dest] = positionals(pos, DECRYPT_USAGE);
    const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
    const unwrapper = await keyUnwrapperFromOptions({
      decryptWith: str(values['decrypt-with']),
      passphraseFile: str(values['decrypt-passphrase-file']),
      gcpKmsConfig: str(values['decrypt-with-gcp-kms']),
      // Ask on the terminal only when stdin is one and does not carry the export.
      promptPassphrase: src !== '-' && (s.stdin as NodeJS.ReadStream).isTTY
        ? () => promptPassphraseOnTty(`Passphrase for ${str(values['decrypt-with'])}: `, s.stdin as NodeJS.ReadStream, s.stderr as NodeJS.WriteStream)
        : null,
    }).catch((err: unknown) => { throw usage(err as Error); });
    if (!unwrapper) throw usageError(`one of --decrypt-with or --decrypt-with-gcp-kms is required (${DECRYPT_USAGE})`);
    await checkKeyForSource(src, unwrapper);
    const tmpDir = str(values['tmp-dir']);
    await toDestination(dest, s, 0o600, async (out) => {
      await decryptExport(source(src, s), out, { unwrapper, ...(tmpDir ? { tmpDir } : {}) });
    });
    return 0;
  } catch (err) {
    return reportError(err, debug, s.stderr);
  }
}
