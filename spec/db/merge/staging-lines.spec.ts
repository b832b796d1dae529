/**
 * Reading staging lines in the client (lib/db/merge/staging-lines.ts): the columns of a line the
 * sink's encoder wrote, found by one scan, and their integers.
 */
import { expect } from 'chai';
import { CopyText } from '../../../lib/copy-text.js';
import { columnStart, field, intAt, intField, lineColumn, scanTabs } from '../../../lib/db/merge/staging-lines.js';
import type { StagedRow } from '../../../lib/map-models.js';
import { STAGE_COLUMNS, STAGE_INDEX } from '../../../lib/models.js';

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
    const n = 8 + STAGE_COLUMNS.length;
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
