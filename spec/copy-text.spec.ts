/** The staging table's COPY text (lib/copy-text.ts): the encoder against the string oracle (spec/helpers/copy-oracle.ts). */
import { expect } from 'chai';
import { mapRecord, type FilteredMarker, type StagedRow } from '../lib/map-models.js';
import { STAGE_COLUMNS } from '../lib/models.js';
import { CopyText } from '../lib/copy-text.js';
import { copyLine, copyValue } from './helpers/copy-oracle.js';
import { user } from './helpers/exports.js';

const pos = { offset: 10, line: 2, column: 3, length: 50 };
/** The item as a staged row; fails the test when it is anything else. */
function asRow(item: StagedRow | FilteredMarker): StagedRow {
  if (item.kind !== 'row') throw new Error(`expected a row, got ${item.kind}`);
  return item;
}

describe('COPY encoding (the oracle)', () => {
  it('escapes backslash, tab, newline and carriage return, and writes NULL as \\N', () => {
    expect(copyValue('a\\b\tc\nd\re')).to.equal('a\\\\b\\tc\\nd\\re');
    expect(copyValue('\\.')).to.equal('\\\\.');
    expect(copyValue(null)).to.equal('\\N');
    expect(copyValue(true)).to.equal('t');
    expect(copyValue(12)).to.equal('12');
    const row = asRow(mapRecord({ kind: 'record', ordinal: 1, ...pos, model: 'sentry.user', pk: 1, fields: user(1, 'a').fields, filtered: false }));
    expect(copyLine(5, row).split('\t')).to.have.length(8 + STAGE_COLUMNS.length + 1);
  });
});

describe('CopyText', () => {
  it('gathers exactly the UTF-8 bytes of the oracle\'s copyLine for every row, across Buffers, however long a row is', () => {
    const width = STAGE_COLUMNS.length;
    const values = (...vs: (string | number | boolean | null)[]) => [...vs, ...new Array(width - vs.length).fill(null)];
    const row = (pk: number, vals: (string | number | boolean | null)[]): StagedRow => ({
      kind: 'row', ordinal: 12345, offset: 9007199254740991, line: 1, column: 10, length: 5, model: 'sentry.user', code: 1, pk, values: vals });
    const filtered = (pk: number, username?: string): FilteredMarker => ({
      kind: 'filtered', ordinal: 3, offset: 0, line: 7, column: 1, length: 2, model: 'sentry.user', code: 5, pk, ...(username === undefined ? {} : { username }) });
    const rows: (StagedRow | FilteredMarker)[] = [
      row(1, values('alice', 'Zoë Smith', 'a@b.c', true, false, '2021-07-17T21:08:52.713Z', null, null, 0, null, 1, null, 42)),
      row(-9007199254740991, values('tab\there', 'new\nline', 'cr\rback\\slash', '\\.', '日本語\t😀\\', 'é\n')),
      row(0, values(-0, 1.5, 1e21, -12, 9007199254740991, 2 ** 53 + 2, '{"a":"x\\\\y"}')),
      row(9, values(...[1, 2, 3, 4, 5, 6, 7, 8].flatMap((e) => [10 ** e - 1, 10 ** e]))),
      row(2147483647, values(999999999, 1000000000, 2147483647, 2147483648, -2147483648, -2147483649, 4294967296, 10 ** 15, 10 ** 15 - 1)),
      row(7, values('x'.repeat(300000), 'é'.repeat(100000) + '\t', '\ud800 lone')),
      filtered(8), filtered(9, 'bob\tby'), filtered(10, 'ünï\\'),
      ...Array.from({ length: 3000 }, (_, i) => row(100 + i, values(`user${i}`, `Name ${i}`, `u${i}@example.com`, i % 2 === 0, null, null, null, null, i))),
      // Another model's row: its line ends with NULL where a user's has its password.
      { ...row(5, values('x', 'y')), model: 'sentry.useroption', code: 4 },
    ];
    // Random bytes 0xab each: every user's password is ! and "ab" twenty times.
    const text = new CopyText((into) => into.fill(0xab));
    for (const r of rows) text.row(5, r);
    const expected = Buffer.from(rows.map((r) => copyLine(5, r)).join(''));
    expect(text.size).to.equal(expected.length);
    const chunks = text.take();
    expect(chunks.length).to.be.above(1);
    expect(Buffer.concat(chunks).equals(expected)).to.equal(true);
    expect(text.size).to.equal(0);
    expect(text.take()).to.deep.equal([]);
  });

  it('gives each user\'s row a new unusable password, ! and 40 hex digits of fresh random bytes, and no other line one', () => {
    const user = (pk: number): StagedRow => ({
      kind: 'row', ordinal: pk, offset: 0, line: 1, column: 1, length: 1, model: 'sentry.user', code: 1, pk, values: STAGE_COLUMNS.map(() => null) });
    const option: StagedRow = { ...user(1), model: 'sentry.useroption', code: 4 };
    const filtered: FilteredMarker = { kind: 'filtered', ordinal: 3, offset: 0, line: 7, column: 1, length: 2, model: 'sentry.user', code: 5, pk: 3 };
    const text = new CopyText();
    // More users than one draw of random bytes holds (4,096), so the pool is drawn again.
    const n = 10_000;
    for (let pk = 1; pk <= n; pk++) text.row(1, user(pk));
    text.row(1, option);
    text.row(1, filtered);
    const lines = Buffer.concat(text.take()).toString().split('\n').slice(0, -1);
    const last = (l: string) => l.split('\t').at(-1)!;
    const passwords = lines.slice(0, n).map(last);
    for (const p of passwords) expect(p).to.match(/^![0-9a-f]{40}$/);
    expect(new Set(passwords).size).to.equal(n);
    expect(lines.slice(n).map(last)).to.deep.equal(['\\N', '\\N']);
    for (const l of lines) expect(l.split('\t')).to.have.length(8 + STAGE_COLUMNS.length + 1);
  });
});
