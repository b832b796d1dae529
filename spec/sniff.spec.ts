/**
 * lib/sniff.ts on its own: what an input's first bytes say. Through the import's source (a file,
 * a pipe, a stream, a decrypted tarball) the same sniffing is spec/source.spec.ts.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { ErrorCodes, OptionError, ParseError } from '../lib/errors.js';
import { checkHead, encryptedStart, leadingText, openPlainFile } from '../lib/sniff.js';
import { readFixture } from './crypto/helpers.js';
import { tmpPath } from './helpers/setup.js';

describe('lib/sniff: what an input\'s first bytes say', () => {
  describe('leadingText', () => {
    it('a control character or a very long first line is printed safely and cut at 80 columns', () => {
      const found = leadingText(Buffer.from(`\x1b[31m${'x'.repeat(200)}\n[\n]`), true);
      expect(found!.firstLine).to.have.length(80);
      expect(found!.firstLine).to.not.include('\x1b');
      expect(found!.firstLine.endsWith('...')).to.equal(true);
    });

    it('an input that starts with the array, after a byte-order mark and blank lines, has none', () => {
      expect(leadingText(Buffer.from(`\xef\xbb\xbf\n\n  [\n{"a": 1}]`, 'latin1'), false)).to.equal(undefined);
      // The array on the mark's own line, and a later line that looks like an array's start (a
      // nested array of a value, or a broken record's text): still none (found by the long fuzz run).
      expect(leadingText(Buffer.from(`\xef\xbb\xbf  [ {"a":\n  [\n  1]}]`, 'latin1'), false)).to.equal(undefined);
      expect(leadingText(Buffer.from(`\xef\xbb\xbf[{"a":\n[\n1]}]`, 'latin1'), false)).to.equal(undefined);
      // A "[" inside the log text is not the array's start.
      expect(leadingText(Buffer.from(`[INFO] starting\n[\n]`), true)).to.deep.include({ lines: 1, firstLine: '[INFO] starting' });
      // After a mark, the text's lines and the array's position (its line's first column) as without one.
      expect(leadingText(Buffer.from(`\xef\xbb\xbfStarting...\n[\n]`, 'latin1'), true)).to.deep.include({ lines: 1, bytes: 15, firstLine: 'Starting...' });
      let err: ParseError | undefined;
      try { leadingText(Buffer.from(`log\nlog\n[\n]`), false); } catch (e) { err = e as ParseError; }
      expect(err?.position).to.deep.equal({ offset: 8, line: 3, column: 1 });
    });

    it('an array whose first element is not an object starts with the array; log lines that start with "[" do not', () => {
      // Found by the long fuzz run (seed 2101): a record's nested "[" on a later line was taken for
      // the array's start, and the import said "59 lines of text before the JSON array" where the
      // stages said record 1 is not an object.
      for (const first of ['  "0",{"model":', ' 12, {', '-1.5e3]', 'true ,', 'null]', '\n  "x" ,', '[1], {']) {
        expect(leadingText(Buffer.from(`[${first}\n  [\n  1]}]`), false), first).to.equal(undefined);
      }
      for (const line of ['[12:00:01] Creating network', '[2026-12-06 17:00] web', '[INFO] starting', '[ "unclosed', '[1 2]']) {
        expect(leadingText(Buffer.from(`${line}\n[\n]`), true), line).to.deep.include({ lines: 1, firstLine: line });
      }
    });
  });

  describe('checkHead, a regular file\'s first bytes before the database', () => {
    const where = ['source x.json'];
    const fail = (head: Buffer, o: { decrypt?: boolean; skipLeadingText?: boolean }) => {
      try {
        checkHead(head, o, where);
      } catch (err) {
        return err as ParseError | OptionError;
      }
      throw new Error('it was accepted');
    };

    it('refuses what the import would, naming the file (text before the array says its line instead)', () => {
      const log = fail(Buffer.from('starting\n[\n]'), {});
      expect(log.code).to.equal(ErrorCodes.INPUT_NOT_ARRAY);
      expect(log.message).to.match(/^the input has 1 line of text before the JSON array \(line 1: "starting"\)/);
      const u16 = fail(Buffer.from('[]', 'utf16le'), {});
      expect(u16.code).to.equal(ErrorCodes.INPUT_UTF8);
      expect(u16.message).to.match(/^source x\.json is UTF-16LE/);
      const tar = fail(readFixture('python-export.tar'), {});
      expect((tar as OptionError).option).to.equal('decrypt');
      expect(tar.message).to.match(/^source x\.json looks encrypted/);
      const plain = fail(Buffer.from('[\n]'), { decrypt: true });
      expect(plain.message).to.match(/^source x\.json is plain JSON, not an encrypted export/);
    });

    it('leaves to later what is read after decrypting or gunzipping, and passes an export', () => {
      expect(() => checkHead(readFixture('python-export.tar'), { decrypt: true }, where)).to.not.throw();
      expect(() => checkHead(Buffer.from([0x1f, 0x8b, 8, 0]), {}, where)).to.not.throw();
      expect(() => checkHead(Buffer.from('starting\n[\n]'), { skipLeadingText: true }, where)).to.not.throw();
      expect(() => checkHead(Buffer.from('[\n]'), {}, where)).to.not.throw();
    });
  });

  describe('encryptedStart', () => {
    it('gives a tarball from its first byte, and refuses plain JSON naming decrypt', async () => {
      const tar = readFixture('python-export.tar');
      expect((await buffer(await encryptedStart(Readable.from([tar.subarray(0, 100), tar.subarray(100)])))).equals(tar)).to.equal(true);
      const err = await encryptedStart(Readable.from([Buffer.from('[{"model": "sentry.user"}]')])).then(() => undefined, (e: OptionError) => e);
      expect(err).to.be.instanceOf(OptionError);
      expect(err!.option).to.equal('decrypt');
    });
  });

  describe('openPlainFile, a plain file as the import reads it', () => {
    /** A file of `size` bytes (`start`, then each byte its position modulo 251), open, with its reads counted. */
    const counted = async (size: number, start = Buffer.from('[')) => {
      const file = tmpPath(`plain-${size}.json`);
      const bytes = Buffer.from(Array.from({ length: size }, (_, i) => i % 251));
      bytes.set(start, 0);
      fs.writeFileSync(file, bytes);
      const handle = await fs.promises.open(file);
      const reads = { started: 0, closed: false };
      const read = handle.read.bind(handle) as (...args: unknown[]) => ReturnType<FileHandle['read']>;
      const close = handle.close.bind(handle);
      Object.assign(handle, {
        read: (...args: unknown[]) => { reads.started++; return read(...args); },
        close: async () => { reads.closed = true; return close(); },
      });
      return { handle, bytes, reads, head: bytes.subarray(0, 64) };
    };

    it('gives the file\'s bytes a chunk at a time, the next read started before a chunk is handed on, and closes it at the end', async () => {
      const { handle, bytes, reads, head } = await counted(10 * 1024 + 5);
      const { stream, size } = await openPlainFile(handle, bytes.length, head, {}, 1024);
      expect(size).to.equal(bytes.length);
      const chunks: Buffer[] = [];
      const startedAtChunk: number[] = [];
      // As a pipe consumes it (the import's chain): each chunk handled where it is pushed.
      stream.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        startedAtChunk.push(reads.started);
      });
      await new Promise((resolve, reject) => stream.once('end', resolve).once('error', reject));
      expect(Buffer.concat(chunks).equals(bytes)).to.equal(true);
      expect(chunks.map((c) => c.length)).to.deep.equal([...Array(10).fill(1024), 5]);
      // When the nth chunk is handed on, the read of the one after it has started already: n + 1
      // reads, then the last (empty) read that ends the stream.
      expect(startedAtChunk).to.deep.equal([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
      await new Promise((resolve) => setImmediate(resolve));
      expect(reads.closed).to.equal(true);
    });

    it('reads from where the array starts when text comes before it, and closes the file when destroyed part way', async () => {
      const { handle, bytes, reads, head } = await counted(4096, Buffer.from('note\n[\n'));
      const { stream, size, leadingText: text } = await openPlainFile(handle, bytes.length, head, { skipLeadingText: true }, 1000);
      expect(text).to.include({ bytes: 5 });
      expect(size).to.equal(4096 - 5);
      const first = await new Promise<Buffer>((resolve) => stream.once('data', resolve));
      expect(first.equals(bytes.subarray(5, 1005))).to.equal(true);
      stream.destroy();
      await new Promise((resolve) => stream.once('close', resolve));
      expect(reads.closed).to.equal(true);
    });

    it('fails with the read\'s error and closes the file', async () => {
      const { handle, bytes, reads, head } = await counted(8192);
      Object.assign(handle, { read: () => { reads.started++; return Promise.reject(new Error('EIO: i/o error, read')); } });
      const { stream } = await openPlainFile(handle, bytes.length, head, {}, 1024);
      const err = await buffer(stream).then(() => undefined, (e: Error) => e);
      expect(err?.message).to.equal('EIO: i/o error, read');
      expect(reads.closed).to.equal(true);
    });
  });
});
