/**
 * copyInto (lib/db/merge/run.ts), the COPY of the rows written straight in: when the server
 * refuses a row mid-COPY, that refusal is the error, also for a write that comes after it. Under
 * load, a write could follow the server's error: pg-copy-streams, which has let its connection go
 * by then, threw a TypeError of its own, and the import failed with USERPORT_INTERNAL instead of
 * seeing the unique violation it handles (CI caught it once in direct-rows.spec.ts).
 */
import { expect } from 'chai';
import { Writable } from 'node:stream';
import type pg from 'pg';
import { copyInto } from '../../../lib/db/merge/run.js';
import { UserportError } from '../../../lib/errors.js';
import { withDbClient } from '../../helpers/db.js';

describe('copyInto: the server\'s refusal is the error', function () {
  this.timeout(60000);

  it('a row the server refuses fails the COPY with that refusal (23505), also for a write after it, and the client stays usable', async () => {
    await withDbClient(async (_db, client) => {
      await client.query('CREATE TABLE copy_target (k int UNIQUE)');
      const err = await copyInto(client, 'COPY copy_target (k) FROM STDIN', 'copy_target', async (send) => {
        await send(Buffer.from('1\n1\n'));
        // The server refuses the second row as soon as it reads it: the refusal arrives while
        // the client waits, before its next write.
        await new Promise((r) => setTimeout(r, 1000));
        await send(Buffer.from('2\n'));
        return 'ended';
      }).then(() => undefined, (e: unknown) => e);
      expect(err, 'the COPY failed').to.be.instanceOf(UserportError);
      const e = err as UserportError & { cause?: { code?: string } };
      expect(e.code).to.equal('USERPORT_DB_QUERY');
      expect(e.cause?.code).to.equal('23505');
      expect(e.message).to.match(/COPY into copy_target failed: duplicate key value/);
      expect(e.message).to.not.match(/Cannot read properties/);
      // The connection is usable afterwards (the COPY is over).
      expect((await client.query('SELECT count(*)::int AS n FROM copy_target')).rows[0].n).to.equal(0);
    });
  });

  it('the race CI met: the refusal came between two writes, and the next write threw pg-copy-streams\' TypeError', async () => {
    // The COPY stream as pg-copy-streams leaves it once the server's ErrorResponse has come
    // (handleError: the error emitted, its connection let go): the next write throws a TypeError
    // of its own. A Writable that does just that, handed out by a client whose query() returns it.
    const refusal = Object.assign(new Error('duplicate key value violates unique constraint "k"'), { code: '23505', severity: 'ERROR' });
    let gone = false;
    const stream = new Writable({
      write(_chunk, _enc, cb) {
        if (gone) throw new TypeError('Cannot read properties of null (reading \'stream\')');
        cb();
        // The refusal arrives right after this write, before the next one.
        setImmediate(() => { gone = true; stream.emit('error', refusal); });
      },
    });
    const client = { query: () => stream } as unknown as pg.ClientBase;
    const err = await copyInto(client, 'COPY t FROM STDIN', 't', async (send) => {
      await send(Buffer.from('1\n'));
      await new Promise((r) => setTimeout(r, 20));
      await send(Buffer.from('2\n'));
    }).then(() => undefined, (e: unknown) => e);
    const e = err as UserportError & { cause?: { code?: string } };
    expect(e, 'the COPY failed').to.be.instanceOf(UserportError);
    expect({ code: e.code, cause: e.cause?.code }).to.deep.equal({ code: 'USERPORT_DB_QUERY', cause: '23505' });
  });
});
