/**
 * lib/source.ts, the import's input as a library caller gives it: a file, a pipe or a stream,
 * plain, gzip or an encrypted tarball. The checks that need no database (checkImportFiles) and the
 * sniffing of the first bytes (lib/sniff.ts, when the source is opened) must say the same thing for a file and for a stream,
 * and what they let through must be the export's bytes from the array on. The command line's view
 * of the same inputs is spec/pipelines/cli.migration-day.spec.ts, item 4.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import zlib from 'node:zlib';
import { createLocalKeyUnwrapper } from '../lib/decrypt.js';
import { ErrorCodes, OptionError, ParseError, UserportError } from '../lib/errors.js';
import { checkImportFiles, prepareImportSource, type SourceOptions } from '../lib/source.js';
import { encryptBuffer, fixture, flipBase64, pythonMembers, readFixture } from './crypto/helpers.js';
import { fileFingerprint, user, writeExport } from './helpers/exports.js';
import { fdsOpenedSince, openFds, tmpFolder, tmpPath } from './helpers/setup.js';
import { reached } from './helpers/moments.js';
import { chunked } from './helpers/streams.js';

const JSON_TEXT = JSON.stringify([user(1, 'alice'), user(2, 'bob')], null, 2);
const LOG = 'Creating sentry_worker_1 ... done\nWARNING: the docker-compose file is old\n';

function file(name: string, data: string | Buffer): string {
  const p = tmpPath(name);
  fs.writeFileSync(p, data);
  return p;
}

/** What the import's source gives for `o` once opened: the bytes it lets through, and what it said about them. */
async function opened(o: SourceOptions): Promise<{ body: string; size: number | undefined; leading?: { lines: number; firstLine: string }; gzip?: boolean }> {
  const s = await (await prepareImportSource(o)).open();
  const body = await text(s.stream);
  return { body, size: s.size, ...(s.leadingText ? { leading: { lines: s.leadingText.lines, firstLine: s.leadingText.firstLine } } : {}), ...(s.gzip ? { gzip: true } : {}) };
}

async function rejection(p: Promise<unknown> | (() => unknown)): Promise<UserportError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    expect(err).to.be.instanceOf(UserportError);
    return err as UserportError;
  }
  throw new Error('it was accepted');
}

/** The same bytes as a file, as a stream in small chunks (a pipe), and as one chunk. */
function eachForm(data: string | Buffer): { name: string; source: () => string | Readable }[] {
  const f = file('form.json', data);
  return [
    { name: 'a file', source: () => f },
    { name: 'a stream in 7-byte chunks', source: () => chunked(Buffer.from(data), 7) },
    { name: 'a stream in one chunk', source: () => Readable.from([Buffer.from(data)]) },
  ];
}

describe('lib/source: the import\'s input', () => {
  describe('plain JSON', () => {
    for (const form of eachForm(JSON_TEXT)) {
      it(`passes ${form.name} through byte for byte`, async () => {
        const r = await opened({ source: form.source() });
        expect(r.body).to.equal(JSON_TEXT);
        expect(r.leading).to.equal(undefined);
      });
    }

    it('tells a regular file\'s size, and none for a stream', async () => {
      expect((await opened({ source: file('sized.json', JSON_TEXT) })).size).to.equal(Buffer.byteLength(JSON_TEXT));
      expect((await opened({ source: Readable.from([Buffer.from(JSON_TEXT)]) })).size).to.equal(undefined);
    });
  });

  describe('gzip, found by its magic bytes whatever the name', () => {
    const gz = zlib.gzipSync(JSON_TEXT);
    for (const form of eachForm(gz)) {
      it(`gunzips ${form.name}`, async () => {
        const r = await opened({ source: form.source() });
        expect(r.body).to.equal(JSON_TEXT);
        expect(r.gzip).to.equal(true);
      });
    }

    it('a truncated gzip is an error that says so, not a JSON error', async () => {
      const s = await (await prepareImportSource({ source: file('cut.json', gz.subarray(0, gz.length - 12)) })).open();
      const err = await rejection(text(s.stream));
      expect(err.code).to.equal(ErrorCodes.INPUT_TRUNCATED);
      expect(err.message).to.match(/gzip.*cannot be decompressed/);
    });

    it('log lines inside the gzip are found as in a plain file', async () => {
      const err = await rejection(opened({ source: file('logged.json.gz', zlib.gzipSync(LOG + JSON_TEXT)) }));
      expect(err.code).to.equal(ErrorCodes.INPUT_NOT_ARRAY);
      const r = await opened({ source: file('logged2.json.gz', zlib.gzipSync(LOG + JSON_TEXT)), skipLeadingText: true });
      expect(r.body).to.equal(JSON_TEXT);
    });
  });

  describe('text before the array', () => {
    for (const form of eachForm(LOG + JSON_TEXT)) {
      it(`${form.name}: an error naming skipLeadingText, with where the array starts`, async () => {
        const err = await rejection(opened({ source: form.source() }));
        expect(err).to.be.instanceOf(ParseError);
        expect(err.code).to.equal(ErrorCodes.INPUT_NOT_ARRAY);
        expect(err.message).to.include('2 lines of text before the JSON array').and.include('Creating sentry_worker_1 ... done').and.include('skipLeadingText');
        expect(err.position).to.include({ offset: Buffer.byteLength(LOG), line: 3 });
      });

      it(`${form.name}: skipped with skipLeadingText, and reported`, async () => {
        const r = await opened({ source: form.source(), skipLeadingText: true });
        expect(r.body).to.equal(JSON_TEXT);
        expect(r.leading).to.deep.equal({ lines: 2, firstLine: 'Creating sentry_worker_1 ... done' });
      });
    }
  });

  describe('UTF-16', () => {
    const cases: [string, Buffer][] = [
      ['UTF-16LE with a BOM', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(JSON_TEXT, 'utf16le')])],
      ['UTF-16BE without a BOM', Buffer.from(JSON_TEXT, 'utf16le').swap16()],
    ];
    for (const [name, data] of cases) {
      for (const form of eachForm(data)) {
        it(`${name}, as ${form.name}: says which encoding and how to convert it`, async () => {
          const err = await rejection(opened({ source: form.source() }));
          expect(err.code).to.equal(ErrorCodes.INPUT_UTF8);
          const encoding = name.split(' ')[0]!;
          // The encoding by name: iconv's plain UTF-16 reads a file without a byte-order mark in one byte order only.
          expect(err.message).to.include(`is ${encoding}, not UTF-8`).and.include(`iconv -f ${encoding} -t UTF-8`);
        });
      }
    }
  });

  describe('encrypted exports', () => {
    const tar = fixture('python-export.tar');
    const decrypt = createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.pem') });

    it('a tarball without a key, as a file or a stream, is an OptionError naming decrypt', async () => {
      for (const source of [tar, fs.createReadStream(tar)]) {
        const err = await rejection(opened({ source }));
        expect(err).to.be.instanceOf(OptionError);
        expect((err as OptionError).option).to.equal('decrypt');
        expect(err.message).to.match(/looks encrypted/);
      }
    });

    it('plain JSON with a key, as a file or a stream, is an OptionError naming decrypt', async () => {
      for (const source of [file('plain.json', JSON_TEXT), Readable.from([Buffer.from(JSON_TEXT)])]) {
        const err = await rejection(opened({ source, decrypt }));
        expect((err as OptionError).option).to.equal('decrypt');
        expect(err.message).to.match(/plain JSON, not an encrypted export/);
      }
    });

    it('decrypts a tarball from a file and from a stream into the same JSON array', async () => {
      const dir = tmpFolder('source-spool-');
      const fromFile = await opened({ source: tar, decrypt, tmpDir: dir });
      const fromStream = await opened({ source: fs.createReadStream(tar), decrypt, tmpDir: dir });
      expect(fromFile.body).to.equal(fromStream.body);
      expect(JSON.parse(fromFile.body)).to.be.an('array').that.is.not.empty;
      // The spool of the streamed tarball is gone once it was read.
      expect(fs.readdirSync(dir)).to.deep.equal([]);
    });
  });

  describe('checks before any database is touched (checkImportFiles)', () => {
    it('a missing file, a directory: IO errors that name the source', async () => {
      const missing = await rejection(() => checkImportFiles({ source: tmpPath('nothing-here.json') }));
      expect(missing.code).to.equal(ErrorCodes.IO);
      expect(missing.message).to.match(/source .*nothing-here\.json does not exist/);
      const dir = await rejection(() => checkImportFiles({ source: tmpFolder('a-dir-') }));
      expect(dir.message).to.match(/is a directory, not an export file/);
    });

    it('a file\'s first bytes are sniffed now: log lines, UTF-16 and a tarball without a key fail before the database', async () => {
      expect((await rejection(() => checkImportFiles({ source: file('log.json', LOG + JSON_TEXT) }))).code).to.equal(ErrorCodes.INPUT_NOT_ARRAY);
      expect(checkImportFiles({ source: file('log2.json', LOG + JSON_TEXT), skipLeadingText: true })).to.equal('file');
      expect((await rejection(() => checkImportFiles({ source: file('u16.json', Buffer.from(JSON_TEXT, 'utf16le')) }))).code).to.equal(ErrorCodes.INPUT_UTF8);
      expect((await rejection(() => checkImportFiles({ source: fixture('python-export.tar') }))).message).to.match(/looks encrypted/);
      // With a key given (only whether it is, here), the tarball passes and plain JSON does not.
      expect(checkImportFiles({ source: fixture('python-export.tar'), decrypt: true })).to.equal('file');
      expect((await rejection(() => checkImportFiles({ source: file('p.json', JSON_TEXT), decrypt: true }))).message).to.match(/plain JSON/);
    });

    it('a resumable import needs a regular file: a stream and standard input are refused', async () => {
      for (const source of [Readable.from([]), '-'] as const) {
        const err = await rejection(() => checkImportFiles({ source, resumable: true }));
        expect((err as OptionError).option).to.equal('source');
        expect(err.message).to.match(/resumable needs source to be a file/);
      }
    });

    it('the rejects and findings files: not the source, not each other, in a writable folder', async () => {
      const src = writeExport([user(1, 'a')]);
      expect((await rejection(() => checkImportFiles({ source: src, rejectsFile: src }))).message).to.match(/rejectsFile .* is source itself/);
      const out = tmpPath('same.jsonl');
      expect((await rejection(() => checkImportFiles({ source: src, rejectsFile: out, findingsFile: out }))).message).to.match(/findingsFile and rejectsFile are the same file/);
      expect((await rejection(() => checkImportFiles({ source: src, findingsFile: tmpPath('no/such/folder/f.jsonl') }))).message).to.match(/does not exist/);
      expect(checkImportFiles({ source: src, rejectsFile: tmpPath('r.jsonl'), findingsFile: tmpPath('f.jsonl') })).to.equal('file');
    });

    it('the rejects and findings files: not the source, nor each other, through a symbolic or a hard link either (writing them would overwrite the export)', async () => {
      const src = writeExport([user(1, 'a')]);
      const before = fs.readFileSync(src);
      const soft = tmpPath('soft-link.json');
      const hard = tmpPath('hard-link.json');
      fs.symlinkSync(src, soft);
      fs.linkSync(src, hard);
      for (const link of [soft, hard]) {
        for (const name of ['rejectsFile', 'findingsFile'] as const) {
          const err = await rejection(() => checkImportFiles({ source: src, [name]: link }));
          expect(err.message, `${name} ${link}`).to.match(new RegExp(`${name} .* is source itself`));
        }
      }
      const out = tmpPath('one.jsonl');
      fs.writeFileSync(out, '');
      const outLink = tmpPath('one-link.jsonl');
      fs.symlinkSync(out, outLink);
      expect((await rejection(() => checkImportFiles({ source: src, rejectsFile: out, findingsFile: outLink }))).message).to.match(/findingsFile and rejectsFile are the same file/);
      expect(fs.readFileSync(src).equals(before)).to.equal(true);
    });

    it('the spools\' tmpDir: an existing folder', async () => {
      const src = writeExport([user(1, 'a')]);
      const missing = tmpPath('no-such-dir');
      expect((await rejection(() => checkImportFiles({ source: src, tmpDir: missing }))).message).to.equal(`tmpDir ${missing} does not exist`);
      const notDir = file('a-file', 'x');
      expect((await rejection(() => checkImportFiles({ source: src, tmpDir: notDir }))).message).to.equal(`tmpDir ${notDir} does not exist`);
      expect(checkImportFiles({ source: src, tmpDir: tmpFolder('spools-') })).to.equal('file');
    });
  });

  describe('prepareImportSource', () => {

    it('fingerprints a regular file by its size and first MiB, and nothing else', async () => {
      const big = Buffer.alloc(3 << 20, 0x20);
      big.write('[', 0);
      big.write(']', big.length - 1);
      const a = file('big-a.json', big);
      big.write('x', (2 << 20)); // after the first MiB: the same fingerprint
      const b = file('big-b.json', big);
      big.write('y', 100); // inside it: another
      const c = file('big-c.json', big);
      const prepared = await Promise.all([a, b, c].map((p) => prepareImportSource({ source: p })));
      await Promise.all(prepared.map((p) => p.release()));
      const [fa, fb, fc] = prepared.map((p) => p.fingerprint!);
      expect(fa).to.deep.equal(fileFingerprint(a));
      expect(fa!.size).to.equal(3 << 20);
      expect(fb!.hash).to.equal(fa!.hash);
      expect(fc!.hash).to.not.equal(fa!.hash);
      expect(await prepareImportSource({ source: Readable.from([]) })).to.include({ kind: 'stream', name: '(stream)', fingerprint: undefined });
    });

    it('reads the file it fingerprinted, even when another file is renamed over its path before it is opened', async () => {
      const first = JSON.stringify([user(1, 'first')]);
      const src = file('replaced.json', first);
      const prepared = await prepareImportSource({ source: src });
      fs.writeFileSync(`${src}.new`, JSON.stringify([user(2, 'second-export')]));
      fs.renameSync(`${src}.new`, src);
      const s = await prepared.open();
      expect(await text(s.stream)).to.equal(first);
      expect(s.size).to.equal(Buffer.byteLength(first));
    });

    it('refuses to open a file written into after it was prepared (same size or not), and closes it', async () => {
      const before = openFds();
      const text = JSON.stringify([user(1, 'before-aaaa')]);
      for (const [what, next] of [['the same size', text.replace('before-aaaa', 'after--bbbb')], ['another size', JSON.stringify([user(2, 'x')])]]) {
        const src = file(`rewritten-${what.replace(/ /g, '-')}.json`, text);
        const prepared = await prepareImportSource({ source: src });
        // Rewritten in place, as an export command that truncates and writes its file does.
        await new Promise((resolve) => setTimeout(resolve, 20));
        fs.writeFileSync(src, next!);
        const err = await rejection(prepared.open());
        expect(err.code, what).to.equal(ErrorCodes.IO);
        expect(err.message).to.match(/changed after it was checked and fingerprinted \((its size went from \d+ to \d+ bytes|it was written to)\): nothing of it was imported; run the import again$/);
        expect(err.message.startsWith(`source ${src} changed`)).to.equal(true);
      }
      expect(fdsOpenedSince(before), 'every file closed').to.deep.equal([]);
    });

    it('an encrypted file\'s key is checked when it is prepared, and the token read from the same handle when opened', async () => {
      const copy = file('prepared.tar', readFixture('python-export.tar'));
      const other = createLocalKeyUnwrapper({ privateKeyPem: readFixture('other-key.pem') });
      const before = openFds();
      const err = await rejection(prepareImportSource({ source: copy, decrypt: other }));
      expect(err.code).to.equal('USERPORT_DECRYPT_KEY_MISMATCH');
      expect(fdsOpenedSince(before), 'the file is closed after the refusal').to.deep.equal([]);

      const decrypt = createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.pem') });
      const prepared = await prepareImportSource({ source: copy, decrypt });
      fs.unlinkSync(copy); // the handle keeps the bytes
      const s = await prepared.open();
      expect(JSON.parse(await text(s.stream))).to.deep.equal(JSON.parse(readFixture('fixture-export.json').toString()));
      await new Promise((resolve) => setImmediate(resolve));
      expect(fdsOpenedSince(before), 'the file is closed once its plaintext is read').to.deep.equal([]);
    });

    it('a file refused when it is prepared is closed: plain JSON with a key, a tarball without one, UTF-16, another key', async () => {
      const decrypt = createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.pem') });
      const other = createLocalKeyUnwrapper({ privateKeyPem: readFixture('other-key.pem') });
      const before = openFds();
      const refused = [
        { source: file('plain-keyed.json', JSON_TEXT), decrypt },
        { source: fixture('python-export.tar') },
        { source: file('u16-prepared.json', Buffer.from(JSON_TEXT, 'utf16le')) },
        { source: fixture('python-export.tar'), decrypt: other },
      ];
      for (const o of refused) await rejection(prepareImportSource(o));
      expect(fdsOpenedSince(before)).to.deep.equal([]);
    });

    describe('begin(): an encrypted file authenticated while the caller opens its database', () => {
      const decrypt = () => createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.pem') });
      const plain = () => JSON.parse(readFixture('fixture-export.json').toString()) as unknown;

      /** Counts the reads of every FileHandle while `fn` runs (the passes read through FileHandle.read). */
      async function countingReads<T>(fn: (reads: () => number) => Promise<T>): Promise<T> {
        const probe = await fs.promises.open(file('probe.txt', 'x'), 'r');
        const proto = Object.getPrototypeOf(probe) as { read: (...a: unknown[]) => Promise<unknown> };
        await probe.close();
        const read = proto.read;
        let n = 0;
        proto.read = function (this: unknown, ...a: unknown[]) { n++; return read.apply(this, a); };
        try {
          return await fn(() => n);
        } finally {
          proto.read = read;
        }
      }
      const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

      it('begin() starts the authentication pass before open() (a plain file: nothing), and open() after it gives the plaintext, the file closed once read', async () => {
        const before = openFds();
        await countingReads(async (reads) => {
          const prepared = await prepareImportSource({ source: file('begun.tar', readFixture('python-export.tar')), decrypt: decrypt() });
          const atPrepared = reads();
          prepared.begin();
          await settle(200);
          expect(reads() - atPrepared, 'the token read while nobody waits for it').to.be.above(0);
          const s = await prepared.open();
          expect(JSON.parse(await text(s.stream))).to.deep.equal(plain());

          const plainFile = await prepareImportSource({ source: file('begun-plain.json', JSON_TEXT) });
          const atPlain = reads();
          plainFile.begin();
          await settle(100);
          expect(reads() - atPlain, 'a plain file is not read before open()').to.equal(0);
          expect(await text((await plainFile.open()).stream)).to.equal(JSON_TEXT);
        });
        await new Promise((resolve) => setImmediate(resolve));
        expect(fdsOpenedSince(before)).to.deep.equal([]);
      });

      it('begin() twice starts one pass', async () => {
        const passReads = async (times: number) => countingReads(async (reads) => {
          const prepared = await prepareImportSource({ source: file(`begun-${times}.tar`, readFixture('python-export.tar')), decrypt: decrypt() });
          const at = reads();
          for (let i = 0; i < times; i++) prepared.begin();
          await settle(200);
          const n = reads() - at;
          await prepared.release();
          return n;
        });
        const once = await passReads(1);
        expect(once).to.be.above(0);
        expect(await passReads(2)).to.equal(once);
      });

      it('a changed token: open() after begin() rejects with USERPORT_DECRYPT_TAMPERED, and release() after it, or instead of it, closes the file without an unhandled rejection', async () => {
        const { tokenOffset, token } = pythonMembers();
        const tampered = file('begun-tampered.tar', flipBase64(readFixture('python-export.tar'), tokenOffset + (token.length >> 1)));
        const before = openFds();
        const unhandled: unknown[] = [];
        const onUnhandled = (reason: unknown) => unhandled.push(reason);
        process.on('unhandledRejection', onUnhandled);
        try {
          const opened = await prepareImportSource({ source: tampered, decrypt: decrypt() });
          opened.begin();
          expect((await rejection(opened.open())).code).to.equal('USERPORT_DECRYPT_TAMPERED');
          await opened.release();
          const released = await prepareImportSource({ source: tampered, decrypt: decrypt() });
          released.begin();
          // The pass fails while nobody waits for it.
          await new Promise((resolve) => setTimeout(resolve, 100));
          await released.release();
        } finally {
          process.off('unhandledRejection', onUnhandled);
        }
        expect(fdsOpenedSince(before)).to.deep.equal([]);
        expect(unhandled, 'rejections nobody handled').to.deep.equal([]);
      });

      it('release() after begin() stops the pass at its next read and closes the file; after the pass is done, closes it too; open() after it is refused', async () => {
        const big = file('begun-big.tar', await encryptBuffer(Buffer.from(JSON.stringify(Array.from({ length: 20000 }, (_, i) => user(i + 1, `user-${i}`))))));
        const before = openFds();
        await countingReads(async (reads) => {
          // The whole pass, for scale: the token's reads of 128 KiB.
          const whole = await prepareImportSource({ source: big, decrypt: decrypt() });
          let at = reads();
          whole.begin();
          const opened = await whole.open();
          opened.stream.destroy();
          await reached('the whole pass\'s file closed', async () => (fdsOpenedSince(before).length === 0 ? true : undefined), { timeoutMs: 3000 });
          const all = reads() - at;
          expect(all, 'a token of several reads').to.be.above(10);

          const stopped = await prepareImportSource({ source: big, decrypt: decrypt() });
          at = reads();
          stopped.begin();
          await stopped.release();
          expect(reads() - at, 'reads after the release was asked for').to.be.below(all / 4);
          expect(fdsOpenedSince(before)).to.deep.equal([]);
          await stopped.open().then(() => { throw new Error('it opened'); }, (e: Error) => expect(e.message).to.match(/opened or released already/));

          const done = await prepareImportSource({ source: big, decrypt: decrypt() });
          done.begin();
          await settle(1500);
          await done.release();
          expect(fdsOpenedSince(before)).to.deep.equal([]);
        });
      });

      it('a file written into before its pass read the change: open() says it changed (not that it was tampered with, nor that it cannot be read), and closes it', async () => {
        const { tokenOffset, token } = pythonMembers();
        const src = file('begun-rewritten.tar', readFixture('python-export.tar'));
        const before = openFds();
        const prepared = await prepareImportSource({ source: src, decrypt: decrypt() });
        await settle(20);
        // One character of the token changed in place (same size): the pass fails on it, the file stays ours.
        const fd = fs.openSync(src, 'r+');
        fs.writeSync(fd, flipBase64(readFixture('python-export.tar'), tokenOffset + (token.length >> 1)).subarray(tokenOffset + (token.length >> 1), tokenOffset + (token.length >> 1) + 1), 0, 1, tokenOffset + (token.length >> 1));
        fs.closeSync(fd);
        prepared.begin();
        await settle(200);
        const err = await rejection(prepared.open());
        expect(err.code).to.equal(ErrorCodes.IO);
        expect(err.message).to.match(/changed after it was checked and fingerprinted \(it was written to\)/);
        expect(fdsOpenedSince(before)).to.deep.equal([]);
      });
    });

    it('the opened stream destroyed before it is read lets go of what is under it: a decrypted export\'s file, a caller\'s stream', async () => {
      const before = openFds();
      const decrypt = createLocalKeyUnwrapper({ privateKeyPem: readFixture('fixture-key.pem') });
      const src = file('destroyed-unread.tar', readFixture('python-export.tar'));
      const encrypted = await (await prepareImportSource({ source: src, decrypt })).open();
      expect(fdsOpenedSince(before), 'the file open under the stream').to.satisfy((fds: string[]) => fds.length === 1 && fds[0]!.endsWith(`/${path.basename(src)}`));
      encrypted.stream.destroy();
      await reached('the file closed', async () => (fdsOpenedSince(before).length === 0 ? true : undefined), { timeoutMs: 3000 });

      const callers = Readable.from([Buffer.from(JSON_TEXT.slice(0, 100)), Buffer.from(JSON_TEXT.slice(100))], { objectMode: false });
      const given = await (await prepareImportSource({ source: callers })).open();
      given.stream.destroy();
      await reached('the caller\'s stream destroyed', async () => (callers.destroyed ? true : undefined), { timeoutMs: 3000 });
    });

    it('release() closes a prepared file that is never opened, and open() after it is refused', async () => {
      const before = openFds();
      const src = file('released.json', JSON_TEXT);
      const prepared = await prepareImportSource({ source: src });
      expect(fdsOpenedSince(before), 'the prepared file open').to.satisfy((fds: string[]) => fds.length === 1 && fds[0]!.endsWith(`/${path.basename(src)}`));
      await prepared.release();
      await prepared.release();
      expect(fdsOpenedSince(before)).to.deep.equal([]);
      await prepared.open().then(() => { throw new Error('it opened'); }, (e: Error) => expect(e.message).to.match(/opened or released already/));
    });
  });
});
