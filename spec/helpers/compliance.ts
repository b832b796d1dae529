/**
 * The stream-compliance block every stage gets: exactly one 'finish' (and 'end' for a readable
 * side) on success, exactly one 'error' on failure, destroy() mid-way ends it cleanly, and it
 * works under pipeline().
 */
import { expect } from 'chai';
import { Writable, type Duplex, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

interface Counts { finish: number; end: number; error: number; close: number }

function count(stage: Duplex): Counts {
  const c: Counts = { finish: 0, end: 0, error: 0, close: 0 };
  stage.on('finish', () => c.finish++);
  stage.on('end', () => c.end++);
  stage.on('error', () => c.error++);
  stage.on('close', () => c.close++);
  return c;
}

/** An object-mode Writable that takes everything; `onItem` may act after each. */
function consumer(onItem: (n: number) => void = () => undefined): Writable {
  let n = 0;
  return new Writable({ objectMode: true, write(_item, _enc, done) { onItem(++n); done(); } });
}

/**
 * @param make a new stage
 * @param good input on which the stage succeeds (at least two items come out)
 * @param bad input on which it fails with `badCode`
 */
export function streamCompliance(name: string, make: () => Duplex, good: () => Readable, bad: () => Readable, badCode: string): void {
  describe(`${name}: stream compliance`, () => {
    it('emits exactly one finish, one end and one close on success, under pipeline()', async () => {
      const stage = make();
      const c = count(stage);
      await pipeline(good(), stage, consumer());
      await new Promise((r) => setImmediate(r));
      expect(c).to.deep.equal({ finish: 1, end: 1, error: 0, close: 1 });
    });

    it('emits exactly one error (with its code) and no finish on failure; pipeline() rejects with it', async () => {
      const stage = make();
      const c = count(stage);
      const err = await pipeline(bad(), stage, consumer()).then(() => undefined, (e: unknown) => e as { code?: string });
      await new Promise((r) => setImmediate(r));
      expect(err?.code).to.equal(badCode);
      expect(c.error).to.equal(1);
      expect(c.finish + c.end).to.equal(0);
    });

    it('stops cleanly when destroyed mid-way: one close, no error event, pipeline() rejects as closed early', async () => {
      const stage = make();
      const c = count(stage);
      const err = await pipeline(good(), stage, consumer((n) => { if (n === 1) stage.destroy(); }))
        .then(() => undefined, (e: unknown) => e as { code?: string });
      await new Promise((r) => setImmediate(r));
      expect(err?.code).to.equal('ERR_STREAM_PREMATURE_CLOSE');
      expect(stage.destroyed).to.equal(true);
      expect(c).to.include({ error: 0, close: 1, end: 0 });
    });
  });
}
