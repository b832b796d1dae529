import { expect } from 'chai';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { PassThrough, Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import {
  createDecryptor, createLocalKeyUnwrapper, openDecryptedSource, unlockExport, type EncryptedInput, type KeyUnwrapper,
} from '../lib/decrypt.js';
import { spoolsIn } from '../lib/spool.js';
import { createEncryptor } from '../lib/encrypt.js';
import { createTokenizer } from '../lib/tokenize.js';
import { chunked, collect, collectError } from './helpers/streams.js';
import { reached } from './helpers/moments.js';
import { fdsOpenedSince, openFds } from './helpers/setup.js';
import {
  drain, encryptBuffer, fifoOrSkip, fixture, flipBase64, flipByte, listDir, makeTar, members, PLAINTEXT, PYTHON_TAR, pythonMembers, readFixture, tempDir,
} from './crypto/helpers.js';

const keyUnwrapper = (name = 'fixture-key.pem', passphrase?: string): KeyUnwrapper =>
  createLocalKeyUnwrapper({ privateKeyPem: readFixture(name), ...(passphrase ? { passphrase } : {}) });

/** Runs `tar` through openDecryptedSource both as a file and as a stream cut in `chunk` bytes. */
async function bothWays(tar: Buffer, fn: (input: EncryptedInput, how: string) => Promise<void>, chunk = 4096): Promise<void> {
  const t = tempDir();
  try {
    const file = path.join(t.dir, 'export.tar');
    fs.writeFileSync(file, tar);
    await fn({ path: file }, 'file');
    await fn({ stream: chunked(tar, chunk) }, 'stream');
  } finally {
    t.remove();
  }
}

async function failure(input: EncryptedInput, unwrapper: KeyUnwrapper = keyUnwrapper(), tmpDir?: string): Promise<string | undefined> {
  try {
    const src = await openDecryptedSource(input, { unwrapper, ...(tmpDir ? { tmpDir } : {}) });
    src.stream.destroy();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  throw new Error('expected openDecryptedSource to reject');
}

/** The Python tarball with one byte of the token changed at `at` (relative to the token). */
function tamperedToken(at: (len: number) => number): Buffer {
  const { tokenOffset, token } = pythonMembers();
  return flipBase64(PYTHON_TAR(), tokenOffset + at(token.length));
}

const TAMPER_POINTS: [string, (len: number) => number][] = [
  ['start', () => 2],
  ['middle', (n) => n >> 1],
  ['end', (n) => n - 2],
];

describe('openDecryptedSource', () => {
  describe('on valid exports', () => {
    it('decrypts the tarball Python\'s cryptography + tarfile made, from a file and from a stream', async () => {
      await bothWays(PYTHON_TAR(), async (input) => {
        const src = await openDecryptedSource(input, { unwrapper: keyUnwrapper() });
        expect(src.size).to.equal(PLAINTEXT().length);
        expect((await drain(src.stream)).equals(PLAINTEXT())).to.equal(true);
      }, 1);
    });

    it('accepts a PKCS#1 private key and an encrypted one with its passphrase', async () => {
      for (const u of [keyUnwrapper('fixture-key.pkcs1.pem'), keyUnwrapper('fixture-key.encrypted.pem', 'fixture-passphrase')]) {
        const src = await openDecryptedSource({ path: fixture('python-export.tar') }, { unwrapper: u });
        expect((await drain(src.stream)).equals(PLAINTEXT())).to.equal(true);
      }
    });

    it('matches the key by modulus and exponent: key.pub as PKCS#1 with CRLF still decrypts', async () => {
      const src = await openDecryptedSource({ path: fixture('python-export-pkcs1-pub.tar') }, { unwrapper: keyUnwrapper() });
      expect((await drain(src.stream)).equals(PLAINTEXT())).to.equal(true);
    });

    it('accepts the members in another order', async () => {
      const { token, wrapped, pub } = pythonMembers();
      await bothWays(makeTar([['key.pub', pub], ['data.key', wrapped], ['export.json', token]]), async (input) => {
        const src = await openDecryptedSource(input, { unwrapper: keyUnwrapper() });
        expect((await drain(src.stream)).equals(PLAINTEXT())).to.equal(true);
      });
    });

    it('round-trips a multi-megabyte export made by our encryptor, with small read chunks', async () => {
      const plain = crypto.randomBytes(3 * 1024 * 1024 + 5);
      const tar = await encryptBuffer(plain);
      await bothWays(tar, async (input) => {
        const src = await openDecryptedSource(input, { unwrapper: keyUnwrapper(), chunkSize: 4096 });
        expect(src.size).to.equal(plain.length);
        expect((await drain(src.stream)).equals(plain)).to.equal(true);
      }, 65536);
    });

    it('decrypts an empty plaintext', async () => {
      const src = await openDecryptedSource({ stream: chunked(await encryptBuffer(Buffer.alloc(0)), 100) }, { unwrapper: keyUnwrapper() });
      expect(src.size).to.equal(0);
      expect(await drain(src.stream)).to.have.length(0);
    });
  });

  describe('on tampering', () => {
    for (const [where, at] of TAMPER_POINTS) {
      it(`rejects one changed byte at the ${where} of the token with USERPORT_DECRYPT_TAMPERED, before any plaintext`, async () => {
        await bothWays(tamperedToken(at), async (input) => {
          expect(await failure(input)).to.equal('USERPORT_DECRYPT_TAMPERED');
        });
      });
    }

    it('rejects a changed data.key with USERPORT_DECRYPT_TAMPERED', async () => {
      const m = members(PYTHON_TAR()).find((x) => x.entry.name === 'data.key')!;
      await bothWays(flipByte(PYTHON_TAR(), m.entry.dataOffset + 17), async (input) => {
        expect(await failure(input)).to.equal('USERPORT_DECRYPT_TAMPERED');
      });
    });

    it('rejects a token that is valid Fernet under another data key (swapped export.json)', async () => {
      const other = members(await encryptBuffer(PLAINTEXT())).find((x) => x.entry.name === 'export.json')!.data;
      const { wrapped, pub } = pythonMembers();
      await bothWays(makeTar([['export.json', other], ['data.key', wrapped], ['key.pub', pub]]), async (input) => {
        expect(await failure(input)).to.equal('USERPORT_DECRYPT_TAMPERED');
      });
    });
  });

  describe('on truncation', () => {
    const tar = PYTHON_TAR();
    const m = members(tar);
    const at = (name: string) => m.find((x) => x.entry.name === name)!.entry;
    const cuts: [string, number][] = [
      ['inside the first header', 100],
      ['inside export.json', at('export.json').dataOffset + 1000],
      ['inside the header of data.key', at('data.key').dataOffset - 200],
      ['inside data.key', at('data.key').dataOffset + 10],
      ['inside key.pub', at('key.pub').dataOffset + at('key.pub').size - 1],
    ];
    for (const [where, cut] of cuts) {
      it(`rejects a tarball cut ${where} with USERPORT_DECRYPT_TRUNCATED`, async () => {
        await bothWays(tar.subarray(0, cut), async (input) => {
          expect(await failure(input)).to.equal('USERPORT_DECRYPT_TRUNCATED');
        });
      });
    }

    it('rejects an empty input as not an export (USERPORT_DECRYPT_TAR)', async () => {
      await bothWays(Buffer.alloc(0), async (input) => {
        expect(await failure(input)).to.equal('USERPORT_DECRYPT_TAR');
      });
    });
  });

  describe('on a malformed tarball', () => {
    const { token, wrapped, pub } = pythonMembers();
    const cases: [string, [string, Buffer][]][] = [
      ['a missing data.key', [['export.json', token], ['key.pub', pub]]],
      ['a missing key.pub', [['export.json', token], ['data.key', wrapped]]],
      ['a missing export.json', [['data.key', wrapped], ['key.pub', pub]]],
      ['an extra member', [['export.json', token], ['data.key', wrapped], ['key.pub', pub], ['notes.txt', Buffer.from('hi')]]],
      ['an extra member first', [['README', Buffer.from('hi')], ['export.json', token], ['data.key', wrapped], ['key.pub', pub]]],
      ['a duplicate member', [['export.json', token], ['data.key', wrapped], ['data.key', wrapped], ['key.pub', pub]]],
      ['an oversized data.key', [['export.json', token], ['data.key', Buffer.alloc(70000)], ['key.pub', pub]]],
    ];
    for (const [what, list] of cases) {
      it(`rejects ${what} with USERPORT_DECRYPT_TAR`, async () => {
        await bothWays(makeTar(list), async (input) => {
          expect(await failure(input)).to.equal('USERPORT_DECRYPT_TAR');
        });
      });
    }

    it('rejects a plain JSON export given by mistake with USERPORT_DECRYPT_TAR', async () => {
      await bothWays(Buffer.concat([PLAINTEXT(), Buffer.alloc(600, 0x20)]), async (input) => {
        expect(await failure(input)).to.equal('USERPORT_DECRYPT_TAR');
      });
    });
  });

  describe('on the wrong key', () => {
    it('says USERPORT_DECRYPT_KEY_MISMATCH, from a file and from a stream', async () => {
      await bothWays(PYTHON_TAR(), async (input) => {
        expect(await failure(input, keyUnwrapper('other-key.pem'))).to.equal('USERPORT_DECRYPT_KEY_MISMATCH');
      });
    });

    it('says USERPORT_DECRYPT_PASSPHRASE for an encrypted key without its passphrase', async () => {
      const u = createLocalKeyUnwrapper({ privateKeyPath: fixture('fixture-key.encrypted.pem') });
      expect(await failure({ path: fixture('python-export.tar') }, u)).to.equal('USERPORT_DECRYPT_PASSPHRASE');
    });

    it('wraps a failing custom unwrapper without losing its error', async () => {
      const boom = new Error('boom');
      const u: KeyUnwrapper = { unwrap: async () => { throw boom; } };
      try {
        await openDecryptedSource({ path: fixture('python-export.tar') }, { unwrapper: u });
        expect.fail('should reject');
      } catch (err) {
        expect((err as { code: string }).code).to.equal('USERPORT_DECRYPT_KEY_INVALID');
        expect((err as Error).cause).to.equal(boom);
      }
    });
  });

  describe('the spool file', () => {
    it('a FIFO whose spool cannot be made: the FIFO is closed, so its writer is not left blocked', async function () {
      const t = tempDir();
      try {
        const fifo = fifoOrSkip(this, t.dir, 'in.fifo');
        const writer = spawn('sh', ['-c', 'head -c 2000000 /dev/zero > "$1"', 'sh', fifo], { stdio: 'ignore' });
        const exited = new Promise<string | null>((resolve) => writer.on('exit', (code, signal) => resolve(signal ?? String(code))));
        const err = await openDecryptedSource({ path: fifo }, { unwrapper: keyUnwrapper(), tmpDir: path.join(t.dir, 'no', 'such') })
          .then(() => undefined, (e: unknown) => e as { code: string });
        expect(err?.code).to.equal('USERPORT_DECRYPT_IO');
        // The read end closed: the writer ends (SIGPIPE) instead of waiting for a reader forever.
        const ended = await Promise.race([exited, new Promise((resolve) => setTimeout(() => resolve('still blocked'), 5000))]);
        if (ended === 'still blocked') writer.kill();
        expect(ended).to.not.equal('still blocked');
      } finally {
        t.remove();
      }
    });

    it('is 0600 in a 0700 folder under tmpDir while spooling, and gone after success', async () => {
      const t = tempDir();
      try {
        const input = new PassThrough();
        const tar = PYTHON_TAR();
        input.write(tar.subarray(0, 3000));
        const opening = openDecryptedSource({ stream: input }, { unwrapper: keyUnwrapper(), tmpDir: t.dir });
        // Wait (without a clock) until the spool holds the first bytes of the token.
        let spoolFile: string | undefined;
        while (!spoolFile) {
          await new Promise((r) => setImmediate(r));
          const dirs = listDir(t.dir);
          if (dirs.length === 1) {
            const inner = listDir(path.join(t.dir, dirs[0]!));
            if (inner.length === 1 && fs.statSync(path.join(t.dir, dirs[0]!, inner[0]!)).size > 0) spoolFile = path.join(t.dir, dirs[0]!, inner[0]!);
          }
        }
        expect(fs.statSync(spoolFile).mode & 0o777).to.equal(0o600);
        expect(fs.statSync(path.dirname(spoolFile)).mode & 0o777).to.equal(0o700);
        // Only ciphertext is spooled: the token text, never JSON.
        expect(fs.readFileSync(spoolFile).toString('latin1')).to.match(/^gAAAAA[A-Za-z0-9_-]+$/);
        input.end(tar.subarray(3000));
        const src = await opening;
        expect(listDir(t.dir)).to.have.length(1);
        expect((await drain(src.stream)).equals(PLAINTEXT())).to.equal(true);
        if (!src.stream.closed) await once(src.stream, 'close');
        expect(listDir(t.dir)).to.deep.equal([]);
      } finally {
        t.remove();
      }
    });

    it('is removed after each kind of failure', async () => {
      const t = tempDir();
      try {
        for (const [tar, u] of [
          [tamperedToken((n) => n >> 1), keyUnwrapper()],
          [PYTHON_TAR().subarray(0, 3000), keyUnwrapper()],
          [PYTHON_TAR(), keyUnwrapper('other-key.pem')],
        ] as const) {
          expect(await failure({ stream: chunked(tar, 1000) }, u, t.dir)).to.match(/^USERPORT_DECRYPT_/);
          expect(listDir(t.dir)).to.deep.equal([]);
        }
        const broken = new Readable({ read() { this.destroy(new Error('disk on fire')); } });
        expect(await failure({ stream: broken }, keyUnwrapper(), t.dir)).to.equal('USERPORT_DECRYPT_IO');
        expect(listDir(t.dir)).to.deep.equal([]);
      } finally {
        t.remove();
      }
    });

    it('is removed when the plaintext stream is destroyed before it was read', async () => {
      const t = tempDir();
      try {
        const src = await openDecryptedSource({ stream: chunked(PYTHON_TAR(), 4096) }, { unwrapper: keyUnwrapper(), tmpDir: t.dir });
        expect(listDir(t.dir)).to.have.length(1);
        await new Promise<void>((resolve) => { src.stream.once('close', () => resolve()); src.stream.destroy(); });
        expect(listDir(t.dir)).to.deep.equal([]);
      } finally {
        t.remove();
      }
    });

    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      it(`is removed by the CLI's handlers when the process is killed by ${signal} while spooling, and the process still dies of it`, async () => {
        const t = tempDir();
        try {
          const script = `
            const d = await import(process.argv[1]);
            (await import(process.argv[4])).installSpoolCleanup();
            const unwrapper = d.createLocalKeyUnwrapper({ privateKeyPath: process.argv[2] });
            d.openDecryptedSource({ stream: process.stdin }, { unwrapper, tmpDir: process.argv[3] }).then(() => process.exit(2), () => process.exit(3));
          `;
          const child = spawn(process.execPath, ['--input-type=module', '-e', script, path.resolve('dist/lib/decrypt.js'), fixture('fixture-key.pem'), t.dir,
            path.resolve('dist/pipelines/signals.js')], {
            stdio: ['pipe', 'ignore', 'inherit'],
          });
          const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, sig) => resolve({ code, signal: sig })));
          child.stdin.write(PYTHON_TAR().subarray(0, 3000));
          // Wait (no clock) until the spool holds data, then interrupt.
          await reached('the spool holds data', async () => {
            const dirs = listDir(t.dir);
            return dirs.length === 1 && listDir(path.join(t.dir, dirs[0]!)).some((f) => fs.statSync(path.join(t.dir, dirs[0]!, f)).size > 0) ? true : undefined;
          }, { child, intervalMs: 10 });
          child.kill(signal);
          const { signal: died } = await exited;
          expect(died).to.equal(signal);
          expect(listDir(t.dir)).to.deep.equal([]);
        } finally {
          t.remove();
        }
      });
    }
  });

  describe('options', () => {
    it('are validated up front, naming the option', async () => {
      const bad = async (input: unknown, options: unknown) => {
        try {
          await openDecryptedSource(input as EncryptedInput, options as never);
        } catch (err) {
          return err as { code: string; message: string };
        }
        throw new Error('expected a rejection');
      };
      expect((await bad({ path: 'x' }, {})).message).to.match(/unwrapper/);
      expect((await bad({ path: 'x' }, { unwrapper: keyUnwrapper(), chunkSize: 10 })).message).to.match(/chunkSize/);
      expect((await bad({ path: '' }, { unwrapper: keyUnwrapper() })).message).to.match(/input\.path/);
      expect((await bad({ path: 'x' }, { unwrapper: keyUnwrapper() , tmpDir: '' })).code).to.equal('USERPORT_OPTION_INVALID');
      expect(() => createDecryptor({} as never)).to.throw(/unwrapper/).with.property('code', 'USERPORT_OPTION_INVALID');
      expect(() => createEncryptor({ publicKeyPem: readFixture('fixture-key.pub'), size: -1 })).to.throw(/size/).with.property('code', 'USERPORT_OPTION_INVALID');
    });

    it('reports a missing file as USERPORT_DECRYPT_IO', async () => {
      expect(await failure({ path: fixture('nope.tar') })).to.equal('USERPORT_DECRYPT_IO');
    });
  });

  describe('an unlocked export\'s authentication pass, stopped', () => {

    it('ends at its next read when its signal is aborted (the import released its source): it rejects, the file closed; unstopped, the same file decrypts', async () => {
      const before = openFds();
      const stopped = new AbortController();
      const unlocked = await unlockExport({ path: fixture('python-export.tar') }, keyUnwrapper(), 4096, spoolsIn(os.tmpdir()));
      const pass = unlocked.plaintext(4096, { stop: stopped.signal });
      stopped.abort(new Error('released'));
      const err = await pass.then(() => undefined, (e: Error) => e);
      expect(err, 'the pass was stopped').to.be.instanceOf(Error);
      expect(String((err as Error & { cause?: unknown }).cause ?? err)).to.match(/released/);
      expect(fdsOpenedSince(before), 'begun early, the file stays open for the caller').to.satisfy((fds: string[]) => fds.length === 1 && fds[0]!.endsWith('/python-export.tar'));
      await unlocked.release();
      expect(fdsOpenedSince(before)).to.deep.equal([]);
      const again = await unlockExport({ path: fixture('python-export.tar') }, keyUnwrapper(), 4096, spoolsIn(os.tmpdir()));
      const src = await again.plaintext(4096, { stop: new AbortController().signal });
      expect((await drain(src.stream)).equals(PLAINTEXT())).to.equal(true);
      await new Promise((resolve) => setImmediate(resolve));
      expect(fdsOpenedSince(before)).to.deep.equal([]);
    });
  });
});

describe('createDecryptor', () => {
  describe('on valid exports', () => {
    for (const size of [1, 7, 512, 65536]) {
      it(`turns the Python tarball in ${size}-byte chunks into the plaintext`, async () => {
        const out = await collect<Buffer>(chunked(PYTHON_TAR(), size), createDecryptor({ unwrapper: keyUnwrapper() }));
        expect(Buffer.concat(out).equals(PLAINTEXT())).to.equal(true);
      });
    }

    it('feeds the tokenizer: decrypted records come out whole', async () => {
      const records = await collect<{ model: string }>(chunked(PYTHON_TAR(), 333), createDecryptor({ unwrapper: keyUnwrapper() }), createTokenizer());
      expect(records).to.have.length((JSON.parse(PLAINTEXT().toString()) as unknown[]).length);
    });

    it('emits authenticated with the plaintext size before the first byte', async () => {
      const d = createDecryptor({ unwrapper: keyUnwrapper() });
      const events: string[] = [];
      d.on('authenticated', (info: { size: number }) => events.push(`auth ${info.size}`));
      d.on('data', () => { if (events.at(-1) !== 'data') events.push('data'); });
      await pipeline(chunked(PYTHON_TAR(), 1000), d, async function* (s) { for await (const _ of s) { /* drain */ } yield* []; });
      expect(events).to.deep.equal([`auth ${PLAINTEXT().length}`, 'data']);
    });

    it('keeps memory bounded under backpressure: a slow reader still gets every byte', async () => {
      const plain = crypto.randomBytes(5 * 1024 * 1024);
      const tar = await encryptBuffer(plain);
      const d = createDecryptor({ unwrapper: keyUnwrapper(), chunkSize: 65536 });
      const parts: Buffer[] = [];
      await pipeline(chunked(tar, 65536), d, async function* (s) {
        for await (const c of s) { parts.push(c as Buffer); await new Promise((r) => setImmediate(r)); }
        yield* [];
      });
      expect(Buffer.concat(parts).equals(plain)).to.equal(true);
    });
  });

  describe('on tampering', () => {
    for (const [where, at] of TAMPER_POINTS) {
      it(`fails with USERPORT_DECRYPT_TAMPERED for a byte changed at the ${where}, emitting no data and one error`, async () => {
        const d = createDecryptor({ unwrapper: keyUnwrapper() });
        let data = 0;
        let errors = 0;
        d.on('data', () => { data++; });
        d.on('error', () => { errors++; });
        const err = await collectError(chunked(tamperedToken(at), 7), d);
        expect(err.code).to.equal('USERPORT_DECRYPT_TAMPERED');
        expect(data).to.equal(0);
        expect(errors).to.equal(1);
      });
    }
  });

  describe('stream compliance', () => {
    it('emits exactly one finish, one end and one close on success, and works with finished()', async () => {
      const d = createDecryptor({ unwrapper: keyUnwrapper() });
      const seen = { finish: 0, end: 0, close: 0, error: 0 };
      for (const ev of Object.keys(seen) as (keyof typeof seen)[]) d.on(ev, () => { seen[ev]++; });
      const done = finished(d);
      const out = collect<Buffer>(chunked(PYTHON_TAR(), 4096), d);
      expect(Buffer.concat(await out).equals(PLAINTEXT())).to.equal(true);
      await done;
      if (!d.closed) await once(d, 'close');
      expect(seen).to.deep.equal({ finish: 1, end: 1, close: 1, error: 0 });
    });
  });

  describe('on other failures', () => {
    it('fails with USERPORT_DECRYPT_TRUNCATED on a truncated tarball and USERPORT_DECRYPT_KEY_MISMATCH on the wrong key', async () => {
      expect((await collectError(chunked(PYTHON_TAR().subarray(0, 2000), 100), createDecryptor({ unwrapper: keyUnwrapper() }))).code)
        .to.equal('USERPORT_DECRYPT_TRUNCATED');
      expect((await collectError(chunked(PYTHON_TAR(), 100), createDecryptor({ unwrapper: keyUnwrapper('other-key.pem') }))).code)
        .to.equal('USERPORT_DECRYPT_KEY_MISMATCH');
    });

    it('makes no spool before its first byte: one constructed and left (another stage of the pipeline failed to build), or destroyed unwritten, leaves nothing', async () => {
      const t = tempDir();
      try {
        const fds = openFds();
        const left = createDecryptor({ unwrapper: keyUnwrapper(), tmpDir: t.dir });
        const destroyed = createDecryptor({ unwrapper: keyUnwrapper(), tmpDir: t.dir });
        await new Promise<void>((resolve) => { destroyed.once('close', () => resolve()); destroyed.destroy(); });
        await new Promise((r) => setTimeout(r, 50));
        expect(listDir(t.dir)).to.deep.equal([]);
        expect(fdsOpenedSince(fds)).to.deep.equal([]);
        // Written later, it decrypts as ever.
        const out = await collect<Buffer>(chunked(PYTHON_TAR(), 4096), left);
        expect(Buffer.concat(out).equals(PLAINTEXT())).to.equal(true);
      } finally {
        t.remove();
      }
    });

    it('removes its spool when destroyed halfway through the input, before close', async () => {
      const t = tempDir();
      try {
        const d = createDecryptor({ unwrapper: keyUnwrapper(), tmpDir: t.dir });
        d.on('error', () => undefined);
        await new Promise<void>((resolve) => d.write(PYTHON_TAR().subarray(0, 2000), () => resolve()));
        while (listDir(t.dir).length === 0) await new Promise((r) => setImmediate(r));
        await new Promise<void>((resolve) => { d.once('close', () => resolve()); d.destroy(); });
        expect(listDir(t.dir)).to.deep.equal([]);
      } finally {
        t.remove();
      }
    });

    it('propagates an upstream failure through pipeline() and removes its spool', async () => {
      const t = tempDir();
      try {
        async function* broken() {
          yield PYTHON_TAR().subarray(0, 3000);
          throw new Error('network down');
        }
        const err = await collectError(Readable.from(broken(), { objectMode: false }), createDecryptor({ unwrapper: keyUnwrapper(), tmpDir: t.dir }));
        expect(err.message).to.contain('network down');
        expect(listDir(t.dir)).to.deep.equal([]);
      } finally {
        t.remove();
      }
    });
  });
});

describe('createEncryptor', () => {
  it('writes a tarball that decrypts back, in any input chunking', async () => {
    const plain = crypto.randomBytes(100_001);
    for (const size of [1, 4096, 1 << 20]) {
      const tar = Buffer.concat(await collect<Buffer>(chunked(plain, size), createEncryptor({ publicKeyPem: readFixture('fixture-key.pub'), size: plain.length })));
      expect(tar.length % 10240).to.equal(0);
      expect(members(tar).map((m) => m.entry.name)).to.deep.equal(['export.json', 'data.key', 'key.pub']);
      const src = await openDecryptedSource({ stream: chunked(tar, 8192) }, { unwrapper: keyUnwrapper() });
      expect((await drain(src.stream)).equals(plain)).to.equal(true);
    }
  });

  it('fails with USERPORT_DECRYPT_IO when the input is not the declared size', async () => {
    for (const declared of [99, 101]) {
      const err = await collectError(chunked(Buffer.alloc(100), 7), createEncryptor({ publicKeyPem: readFixture('fixture-key.pub'), size: declared }));
      expect(err.code).to.equal('USERPORT_DECRYPT_IO');
    }
  });

  it('refuses a public key that is not RSA with USERPORT_DECRYPT_KEY_INVALID', () => {
    const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' });
    expect(() => createEncryptor({ publicKeyPem: ec, size: 1 })).to.throw().with.property('code', 'USERPORT_DECRYPT_KEY_INVALID');
  });
});
