/**
 * Reading staging lines in the client (lib/db/merge/staging-lines.ts): the columns of a line the
 * sink's encoder wrote, found by one scan, and their integers.
 */
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { CopyText, TAIL_COLUMNS } from '../../../lib/copy-text.js';
import { columnStart, field, intAt, intField, lineColumn, readLines, scanTabs } from '../../../lib/db/merge/staging-lines.js';
import type { StagedRow } from '../../../lib/map-models.js';
import { STAGE_COLUMNS, STAGE_INDEX } from '../../../lib/models.js';
import { tmpFolder } from '../../helpers/setup.js';

/** One staged option row, encoded by the sink's own encoder: its line without the newline. */
function line(values: Partial<Record<(typeof STAGE_COLUMNS)[number][0], unknown>>, pk = 42): Buffer {
  const row = {
    kind: 'row', ordinal: 7, offset: 1234, line: 3, column: 5, length: 10, model: 'sentry.useroption', code: 4, pk,
    values: STAGE_COLUMNS.map(([c]) => values[c] ?? null),
  } as unknown as StagedRow;
  const text = new CopyText();
  text.row(9, row);
  const [bytes] = text.take();
  return bytes!.subarray(0, bytes!.length - 1);
}

describe('staging lines read in the client', () => {
  const l = line({ user_pk: 17, opt_key: 'tz\tname', opt_value: '"Europe/Berlin"', email: 'a@b.io' });

  it('finds a column by its name, as the COPY statement orders them (src_pk, then STAGE_COLUMNS after the eight leading ones)', () => {
    expect(lineColumn('src_pk')).to.equal(6);
    expect(lineColumn('email')).to.equal(8 + STAGE_INDEX.email);
    const [s, e] = field(l, lineColumn('email'));
    expect(l.toString('utf8', s, e)).to.equal('a@b.io');
    // A tab inside a value is escaped by COPY: it does not end the column.
    const [ks, ke] = field(l, lineColumn('opt_key'));
    expect(l.toString('utf8', ks, ke)).to.equal('tz\\tname');
  });

  it('scanTabs finds every column in one scan, as field does one at a time; past the last column, the line\'s end', () => {
    const n = 8 + STAGE_COLUMNS.length + TAIL_COLUMNS.length;
    const tabs = scanTabs(l, new Int32Array(n + 2));
    for (let c = 0; c < n; c++) expect([columnStart(tabs, c), tabs[c]], `column ${c}`).to.deep.equal(field(l, c));
    expect([tabs[n], tabs[n + 1]]).to.deep.equal([l.length, l.length]);
  });

  it('reads integers: the source pk, a user pk; NaN for NULL (\\N) or text', () => {
    expect(intField(l, lineColumn('src_pk'))).to.equal(42);
    expect(intField(l, lineColumn('user_pk'))).to.equal(17);
    expect(intField(l, lineColumn('project_id'))).to.be.NaN;
    expect(intField(l, lineColumn('opt_key'))).to.be.NaN;
    expect(intField(line({}, -5), lineColumn('src_pk'))).to.equal(-5);
    const b = Buffer.from('12x-3');
    expect([intAt(b, 0, 2), intAt(b, 0, 3), intAt(b, 3, 5), intAt(b, 3, 4)]).to.deep.equal([12, NaN, -3, NaN]);
  });
});

describe('staging lines read back from a file (readLines)', () => {
  /** Every line of `file` as readLines gives them with `chunk` bytes a read, and how many batches. */
  const readAll = async (file: string, chunk: number) => {
    const lines: string[] = [];
    let batches = 0;
    for await (const batch of readLines(file, chunk)) {
      batches++;
      for (const l of batch) lines.push(l.toString('latin1'));
    }
    return { lines, batches };
  };

  it('gives each line once, whole and without its newline, whatever the read size: lines across two and many reads, empty lines, no last newline', async () => {
    const dir = tmpFolder('read-lines');
    // Lines from 0 to 300 bytes, so that some span many reads of a few bytes.
    const lines = Array.from({ length: 120 }, (_, i) => 'x'.repeat((i * 37) % 301).replace(/x/g, (_, j: number) => String.fromCharCode(0x21 + ((i + j) % 90))));
    for (const last of ['\n', '']) {
      const file = path.join(dir, `lines${last ? '' : '-open'}.txt`);
      fs.writeFileSync(file, lines.join('\n') + last);
      for (const chunk of [1, 3, 64, 299, 301, 4096, 1 << 20]) {
        const got = await readAll(file, chunk);
        expect(got.lines, `${chunk} bytes a read${last ? '' : ', no last newline'}`).to.deep.equal(lines);
        // One batch per read that ends a line at most (a read within a line adds none).
        expect(got.batches).to.be.at.most(Math.ceil(fs.statSync(file).size / chunk) + 1);
      }
    }
  });

  it('with a byte count, reads the file as it was that long: lines appended after it are not read', async () => {
    const file = path.join(tmpFolder('read-lines'), 'appended.txt');
    fs.writeFileSync(file, 'a1\na2\n');
    const bytes = fs.statSync(file).size;
    fs.appendFileSync(file, 'a3\npartial');
    for (const chunk of [1, 2, 5, 1 << 20]) {
      const got: string[] = [];
      for await (const batch of readLines(file, chunk, bytes)) got.push(...batch.map((l) => l.toString('latin1')));
      expect(got, `${chunk} bytes a read`).to.deep.equal(['a1', 'a2']);
    }
    const none: Buffer[][] = [];
    for await (const batch of readLines(file, undefined, 0)) none.push(batch);
    expect(none).to.deep.equal([]);
  });
});
