/**
 * together (lib/db/merge/run.ts): statements sent in one round trip, as the users step and the
 * bulk path's index builds send them while Node reads the export. Each statement's result comes
 * back in order; the first that fails stops the rest and is the error; under `explain` each is
 * planned, one by one. sqlLiteral writes the values those statements carry as literals.
 */
import { expect } from 'chai';
import { runner, sqlLiteral, together, togetherWithSettings } from '../../../lib/db/merge/run.js';
import { STATEMENTS_APART, type TraceEvent } from '../../../lib/trace.js';
import { withDbClient } from '../../helpers/db.js';

describe('together: statements in one round trip', function () {
  this.timeout(60000);

  it('runs them in order, one round trip, and resolves to each result', async () => {
    await withDbClient(async (_db, client) => {
      await client.query('BEGIN');
      const events: TraceEvent[] = [];
      const q = runner(client, { onTrace: (e) => events.push(e) });
      const results = await together(q, [
        'CREATE TEMP TABLE t_together (k int) ON COMMIT DROP',
        'INSERT INTO t_together SELECT generate_series(1, 5)',
        'UPDATE t_together SET k = k * 10 WHERE k > 2',
        'SELECT array_agg(k ORDER BY k)::text AS ks FROM t_together',
      ]);
      expect(results.map((r) => r.command)).to.deep.equal(['CREATE', 'INSERT', 'UPDATE', 'SELECT']);
      expect(results[1]!.rowCount).to.equal(5);
      expect(results[2]!.rowCount).to.equal(3);
      expect(results[3]!.rows[0].ks).to.equal('{1,2,30,40,50}');
      // One statement for the server, one event for the subscriber, the texts apart.
      const sql = events.filter((e) => e.kind === 'sql');
      expect(sql).to.have.length(1);
      expect((sql[0] as { sql: string }).sql.split(STATEMENTS_APART)).to.have.length(4);
      await client.query('ROLLBACK');
    });
  });

  it('stops at the first statement that fails: its error rejects, the statements after it never run', async () => {
    await withDbClient(async (_db, client) => {
      await client.query('CREATE TABLE t_stop (k int UNIQUE)');
      await client.query('BEGIN');
      await client.query('SAVEPOINT s');
      const q = runner(client);
      const err = await together(q, [
        'INSERT INTO t_stop VALUES (1)',
        'INSERT INTO t_stop VALUES (1)',
        'INSERT INTO t_stop VALUES (2)',
      ]).then(() => undefined, (e: unknown) => e) as { code?: string; table?: string } | undefined;
      expect(err?.code).to.equal('23505');
      expect(err?.table).to.equal('t_stop');
      await client.query('ROLLBACK TO SAVEPOINT s');
      // A statement that ends in a comment does not swallow the next one.
      const [, n] = await together(q, ['INSERT INTO t_stop VALUES (3) -- a comment at the end', 'SELECT count(*)::int AS n FROM t_stop']);
      expect(n!.rows[0].n).to.equal(1);
      await client.query('COMMIT');
      expect((await client.query('SELECT array_agg(k)::text AS ks FROM t_stop')).rows[0].ks).to.equal('{3}');
    });
  });

  it('togetherWithSettings: the statements run under the settings, in the round trip that changes them; the caller\'s values come back in a second', async () => {
    await withDbClient(async (_db, client) => {
      await client.query('BEGIN');
      // The caller's own values, for this transaction.
      await client.query(`SET LOCAL default_statistics_target = 37`);
      await client.query(`SET LOCAL max_parallel_maintenance_workers = 1`);
      const events: TraceEvent[] = [];
      const q = runner(client, { onTrace: (e) => events.push(e) });
      const results = await togetherWithSettings(q, { default_statistics_target: '10', max_parallel_maintenance_workers: '0' }, [
        `SELECT current_setting('default_statistics_target') AS v`,
        `SELECT current_setting('max_parallel_maintenance_workers') AS v`,
      ]);
      expect(results.map((r) => r.rows[0].v), 'the statements\' own results, under the settings').to.deep.equal(['10', '0']);
      const after = (await client.query(`SELECT current_setting('default_statistics_target') AS a, current_setting('max_parallel_maintenance_workers') AS b`)).rows[0];
      expect(after).to.deep.equal({ a: '37', b: '1' });
      expect(events.filter((e) => e.kind === 'sql'), 'two round trips').to.have.length(2);
      await client.query('ROLLBACK');
    });
  });

  it('under explain, sends them one by one, each planned after the ones before it ran', async () => {
    await withDbClient(async (_db, client) => {
      await client.query('BEGIN');
      const events: TraceEvent[] = [];
      const q = runner(client, { onTrace: (e) => events.push(e), explain: true });
      const results = await together(q, [
        'CREATE TEMP TABLE t_planned ON COMMIT DROP AS SELECT generate_series(1, 3) AS k',
        'SELECT count(*)::int AS n FROM t_planned',
      ]);
      expect(results[1]!.rows[0].n).to.equal(3);
      expect(events.filter((e) => e.kind === 'sql')).to.have.length(2);
      expect(events.filter((e) => e.kind === 'plan').map((e) => (e as { sql: string }).sql)).to.deep.equal([
        'CREATE TEMP TABLE t_planned ON COMMIT DROP AS SELECT generate_series(1, 3) AS k',
        'SELECT count(*)::int AS n FROM t_planned',
      ]);
      await client.query('ROLLBACK');
    });
  });
});

describe('sqlLiteral: a value written into a statement', () => {
  it('reads back as the same text, with quotes and backslashes, whatever standard_conforming_strings says', async () => {
    await withDbClient(async (_db, client) => {
      const values = ["it's", 'back\\slash', "both \\' mixed''", 'public."odd seq"', ''];
      for (const conforming of ['on', 'off']) {
        await client.query(`SET standard_conforming_strings = ${conforming}`);
        for (const v of values) {
          expect((await client.query(`SELECT ${sqlLiteral(v)}::text AS v`)).rows[0].v, `${v} (${conforming})`).to.equal(v);
        }
      }
      await client.query('RESET standard_conforming_strings');
    });
  });
});
