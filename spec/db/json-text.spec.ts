/**
 * JSON for the imports table (lib/db/json-text.ts): PostgreSQL's json parser refuses a lone
 * surrogate's escape, which JSON.stringify writes; stored, each is U+FFFD, and a resume compares
 * the options as they were stored (lib/db/imports.ts, optionDifferences).
 */
import { expect } from 'chai';
import { jsonText } from '../../lib/db/json-text.js';
import { optionDifferences } from '../../lib/db/imports.js';
import { freshDatabase } from '../helpers/db.js';

describe('jsonText', () => {
  const value = { filterUsernames: ['alice', 'x\ud800y'], unknownFields: { 'sentry.user': { '\udc00': 1, 'ok\ud83d\ude00': 2 } }, n: 3 };

  it('writes lone surrogates, in keys and values, as U+FFFD; a pair and everything else as JSON.stringify does', () => {
    expect(JSON.parse(jsonText(value))).to.deep.equal({
      filterUsernames: ['alice', 'x\ufffdy'], unknownFields: { 'sentry.user': { '\ufffd': 1, 'ok\ud83d\ude00': 2 } }, n: 3,
    });
    const plain = { a: [1, 'b', null, { c: true }], d: 'e\ud83d\ude00' };
    expect(jsonText(plain)).to.equal(JSON.stringify(plain));
  });

  it('is what PostgreSQL takes, and a resume of the same options finds no difference with the row it stored', async () => {
    const db = await freshDatabase(false);
    try {
      const refused = await db.knex.raw('SELECT ?::jsonb AS v', [JSON.stringify(value)]).then(() => undefined, (err: Error) => err);
      expect(refused?.message).to.match(/invalid input syntax for type json/);
      const stored = (await db.knex.raw('SELECT ?::jsonb AS v', [jsonText(value)])).rows[0].v as Record<string, unknown>;
      expect(optionDifferences(stored, value)).to.deep.equal([]);
      expect(optionDifferences(stored, { ...value, filterUsernames: ['alice'] })).to.have.length(1);
    } finally {
      await db.close();
    }
  });
});
