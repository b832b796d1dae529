/** Stream helpers for tests: feed input in chunks of a chosen size, collect objects. */
import { Readable, type Duplex, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** A Readable of `data` cut into chunks of `size` bytes (1 = byte by byte). */
export function chunked(data: Buffer | string, size: number): Readable {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8');
  function* gen() {
    for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, Math.min(i + size, buf.length));
  }
  return Readable.from(gen(), { objectMode: false });
}

/** Pipes `input` through `stage` and collects what comes out. Rejects with the stage's error. */
export async function collect<T>(input: Readable, ...stages: (Transform | Duplex)[]): Promise<T[]> {
  const out: T[] = [];
  await pipeline(input, ...(stages as [Transform]), async function* (source: AsyncIterable<T>) {
    for await (const item of source) out.push(item);
  });
  return out;
}

/** Like {@link collect} but resolves to the error (or throws if there was none). */
export async function collectError(input: Readable, ...stages: (Transform | Duplex)[]): Promise<Error & { code?: string; position?: Record<string, unknown> }> {
  try {
    await collect(input, ...stages);
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected the pipeline to fail, but it succeeded');
}
