/**
 * Issue #4 requirement 7: fuzzing. Random mutations of valid exports (byte flips, bit flips,
 * truncations, splices, structural changes), with a fixed seed so a CI failure replays. Any outcome
 * other than success or a clean USERPORT_* error fails. A few thousand cases run through the
 * in-memory stages; a few dozen through the whole importUsers into a real PostgreSQL, where a
 * failed import must leave every table empty. `npm run fuzz` runs the long version.
 */
import { expect } from 'chai';
import { freshDatabase } from '../helpers/db.js';
import { fuzzImports, fuzzStages } from './fuzz-core.js';

const SEED = 20261125;

describe('fuzz', () => {
  it('mutated exports through tokenizer -> filter -> mapper: success or a clean coded error, 3000 cases @soak', async () => {
    const report = await fuzzStages(SEED, 3000);
    expect(report.failures, JSON.stringify(report.failures, null, 2)).to.deep.equal([]);
    expect(report.runs).to.equal(3000);
    // The mutations reach every layer: syntax, limits, envelope, schema; and some inputs still pass.
    expect(report.successes).to.be.above(100);
    for (const code of ['USERPORT_PARSE_JSON', 'USERPORT_INPUT_TRUNCATED', 'USERPORT_INPUT_UTF8', 'USERPORT_RECORD_NOT_OBJECT',
      'USERPORT_RECORD_ENVELOPE', 'USERPORT_RECORD_SCHEMA', 'USERPORT_LIMIT_DEPTH']) {
      expect(report.codes[code] ?? 0, code).to.be.above(0);
    }
  });

  it('mutated exports through importUsers into PostgreSQL: a failed import leaves every table empty, 60 cases @soak', async () => {
    const db = await freshDatabase();
    try {
      const report = await fuzzImports(SEED + 1, 60, db.url);
      expect(report.failures, JSON.stringify(report.failures, null, 2)).to.deep.equal([]);
      expect(report.successes).to.be.above(3);
      expect(report.runs - report.successes).to.be.above(10);
    } finally {
      await db.close();
    }
  });
});
