import { expect } from 'chai';
import { generatedExport } from '../helpers/exports.js';
import { compareParsers, formatParseRates } from '../../tools/bench/parse-compare.js';

describe('compareParsers (bench --parse-compare)', () => {
  it('reads one export with stream-json and with the tokenizer: the same records, a rate for each', async () => {
    const file = await generatedExport({ users: 200, seed: 3, collisionRate: 0 });
    const rates = await compareParsers(file, 1);
    expect(rates.map((r) => r.reader)).to.deep.equal(['stream-json parser + streamArray', 'userport tokenizer (byte splitter + JSON.parse)']);
    expect(rates[0]!.records).to.be.greaterThan(200).and.equal(rates[1]!.records);
    for (const r of rates) expect(r.mbPerSecond).to.be.greaterThan(0);
    expect(formatParseRates(rates).split('\n')).to.have.length(3);
  });
});
