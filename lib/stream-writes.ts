/**
 * Writing to a Writable as a promise that honours backpressure: the sink's COPY stream and the
 * overlap's spool file are written the same way. And a stream's destroy as a promise.
 */
import type { Readable, Writable } from 'node:stream';

/**
 * Destroys `s` and resolves at its 'close' (its cleanup done: a file closed, a spool removed, a
 * connection ended). A failure of that cleanup is nobody's to report here: it is listened for,
 * so it is not the process's uncaught exception.
 */
export async function destroyAndWait(s: Readable | Writable): Promise<void> {
  if (s.closed) return;
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
  s.on('error', () => undefined);
  s.destroy();
  await closed;
}

/**
 * Writes `chunks` to `s`, resolving when it can take more (its backpressure reaches the caller);
 * a failure, as an event or in a write's callback, rejects with `wrap(err)`.
 */
export function writeChunks(s: Writable, chunks: Buffer[], wrap: (err: Error) => Error): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(wrap(err));
    s.once('error', onError);
    let ok = true;
    try {
      for (const chunk of chunks) {
        ok = s.write(chunk, (err) => {
          if (err) return onError(err);
        });
      }
    } catch (err) {
      // A write that throws (pg-copy-streams on a connection that is gone) fails like one that errs.
      s.off('error', onError);
      onError(err as Error);
      return;
    }
    const done = () => { s.off('error', onError); resolve(); };
    if (ok) done();
    else s.once('drain', done);
  });
}

/** Ends `s` and waits until everything written is flushed (for COPY: the server confirmed it). */
export function endStream(s: Writable, wrap: (err: Error) => Error): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    s.once('error', (err) => reject(wrap(err)));
    s.once('finish', () => resolve());
    s.end();
  });
}

/**
 * Listens for `s`'s errors (so none is unhandled) and keeps the first: a COPY stream the server
 * fails (a unique violation, say) fails again on the next write, with pg-copy-streams' own
 * TypeError once it has let its connection go, and the first error is the one that says why.
 */
export function firstErrorOf(s: Writable): () => Error | undefined {
  let first: Error | undefined;
  s.on('error', (err: Error) => { first ??= err; });
  return () => first;
}
