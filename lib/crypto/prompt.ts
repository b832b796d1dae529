/**
 * Asking for a private key's passphrase on the terminal, without echo. Used only when standard
 * input is a TTY (when it carries the export, `--decrypt-passphrase-file` is the way).
 */
import { DecryptError, DecryptErrorCodes } from './errors.js';

/** Reads one line from a TTY with echo off. Ctrl-C or Ctrl-D abort with USERPORT_DECRYPT_PASSPHRASE. */
export function promptPassphraseOnTty(question: string, input: NodeJS.ReadStream = process.stdin, output: NodeJS.WriteStream = process.stderr): Promise<string> {
  if (!input.isTTY || typeof input.setRawMode !== 'function') {
    return Promise.reject(new DecryptError(DecryptErrorCodes.PASSPHRASE, 'the private key is encrypted: give its passphrase with --decrypt-passphrase-file'));
  }
  return new Promise((resolve, reject) => {
    let answer = '';
    output.write(question);
    input.setRawMode(true);
    input.resume();
    const done = (err?: Error) => {
      input.off('data', onData);
      input.setRawMode(false);
      input.pause();
      output.write('\n');
      if (err) reject(err);
      else resolve(answer);
    };
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003' || ch === '\u0004') return done(new DecryptError(DecryptErrorCodes.PASSPHRASE, 'no passphrase was given'));
        if (ch === '\u007f' || ch === '\b') answer = answer.slice(0, -1);
        else answer += ch;
      }
      return undefined;
    };
    input.on('data', onData);
  });
}
