/**
 * The pk map's ranges (issue #23, item 4): `insertPkRanges` stores runs of consecutive source pks
 * mapped to consecutive ids as one row each, and the `userport.pk_map` view spells every pair
 * out again exactly: gaps on either side, a change of kind, or a lone pair each start a range.
 * `NewUsers` reads a run's new users back into the client, exactly.
 */
import { expect } from 'chai';
import { insertPkRanges, NewUsers, PkTrail } from '../../../lib/db/merge/pk-map.js';
import { runner } from '../../../lib/db/merge/run.js';
import { withDbClient } from '../../helpers/db.js';

/** (src_pk, target_id, kind) triples as a VALUES query. */
const values = (pairs: [number, number, string][]) =>
  `SELECT * FROM (VALUES ${pairs.map(([s, t, k]) => `(${s}::bigint, ${t}::bigint, '${k}')`).join(', ')}) v(src_pk, target_id, kind)`;

describe('the pk map as ranges', () => {
  it('stores consecutive pairs as one range, breaks on every gap and change of kind, and the view gives back every pair', async () => {
    await withDbClient(async (_db, client) => {
      const q = runner(client);
      const pairs: [number, number, string][] = [
        // One range of five.
        [1, 101, 'inserted'], [2, 102, 'inserted'], [3, 103, 'inserted'], [4, 104, 'inserted'], [5, 105, 'inserted'],
        // A gap in the source pks, ids go on: a new range.
        [7, 106, 'inserted'], [8, 107, 'inserted'],
        // Source pks go on, a gap in the ids: a new range.
        [9, 200, 'inserted'],
        // Both go on, the kind changes: a new range.
        [10, 201, 'existing'], [11, 202, 'existing'],
        // Ids going down, and two source pks mapped to one id (merged users).
        [12, 50, 'merged'], [13, 49, 'merged'], [14, 49, 'merged'],
      ];
      // Out of order on input: the ranges follow source pk order.
      const shuffled = [...pairs].reverse();
      await client.query(`INSERT INTO userport.imports (id, mode, state, source) VALUES ('ranges', 'atomic', 'running', 'spec')`);
      const run = Number((await client.query(`SELECT run FROM userport.imports WHERE id = 'ranges'`)).rows[0].run);
      await insertPkRanges(q, run, 'sentry.user', values(shuffled));
      const ranges = (await client.query(`SELECT source_pk::int AS s, target_id::int AS t, span, kind FROM userport.pk_ranges WHERE run = $1 ORDER BY source_pk`, [run])).rows;
      expect(ranges).to.deep.equal([
        { s: 1, t: 101, span: 5, kind: 'inserted' },
        { s: 7, t: 106, span: 2, kind: 'inserted' },
        { s: 9, t: 200, span: 1, kind: 'inserted' },
        { s: 10, t: 201, span: 2, kind: 'existing' },
        { s: 12, t: 50, span: 1, kind: 'merged' },
        { s: 13, t: 49, span: 1, kind: 'merged' },
        { s: 14, t: 49, span: 1, kind: 'merged' },
      ]);
      const map = (await client.query(`SELECT source_pk::int AS s, target_id::int AS t, kind FROM userport.pk_map WHERE run = $1 AND model = 'sentry.user' ORDER BY source_pk`, [run])).rows;
      expect(map).to.deep.equal(pairs.map(([s, t, kind]) => ({ s, t, kind })));
    });
  });

  it('NewUsers: every inserted pair and nothing else, by binary search over the ranges; the ids ascending', async () => {
    await withDbClient(async (_db, client) => {
      await client.query(`INSERT INTO userport.imports (id, mode, state, source) VALUES ('new users', 'atomic', 'running', 'spec')`);
      const run = Number((await client.query(`SELECT run FROM userport.imports WHERE id = 'new users'`)).rows[0].run);
      // Ranges of new users with gaps between them, ids not in source order, a merged user between.
      const inserted: [number, number][] = [[3, 40], [4, 41], [5, 42], [9, 10], [10, 11], [20, 60], [100, 5]];
      const merged: [number, number][] = [[6, 40], [7, 999]];
      await insertPkRanges(runner(client), run, 'sentry.user',
        values([...inserted.map(([s, t]): [number, number, string] => [s, t, 'inserted']), ...merged.map(([s, t]): [number, number, string] => [s, t, 'merged'])]));
      const users = await NewUsers.read(client, run);
      expect(users, 'fewer ranges than MAX_RANGES').to.not.equal(undefined);
      for (const [pk, id] of inserted) expect(users!.id(pk), `pk ${pk}`).to.equal(id);
      for (const pk of [1, 2, 6, 7, 8, 11, 19, 21, 99, 101]) expect(users!.id(pk), `pk ${pk}`).to.equal(-1);
      expect([...users!.ids()]).to.deep.equal(inserted.map(([, t]) => t).sort((a, b) => a - b));
      expect([users!.low, users!.high]).to.deep.equal([5, 60]);
    });
  });

  it('PkTrail: gives back every pk in order, a byte for a step of 1 to 254 and the pk whole otherwise, across growths of its buffer', () => {
    const pks = [1, 2, 256, 257, 511, 510, 510, -3, Number.MAX_SAFE_INTEGER, 7];
    for (let pk = 1000, i = 0; i < 20_000; i++) pks.push(pk += 1 + (i % 254));
    const trail = new PkTrail();
    for (const pk of pks) trail.push(pk);
    expect(trail.count).to.equal(pks.length);
    // Steps of 1 to 254 take a byte (5 of the first 10, then 19,999 of the 20,000), the others 9.
    expect(trail.bytes).to.equal(5 + 5 * 9 + 9 + 19_999);
    expect([...trail]).to.deep.equal(pks);
    // Twice: the trail is read, not consumed.
    expect([...trail]).to.deep.equal(pks);
  });
});
