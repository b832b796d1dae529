/**
 * The pk map of a run (`userport.pk_ranges`; the view `userport.pk_map` spells it out): source pk
 * -> target id of every user and Email record the import wrote or matched, as ranges of
 * consecutive pairs. Written by the users' and emails' steps ({@link insertPkRanges}; the Email
 * records written straight in COPY their own, direct-emails.ts), read back by the client for the
 * rows of new users that go straight in ({@link NewUsers}).
 */
import type pg from 'pg';
import type { Q } from './run.js';

/**
 * Records the pk map of `model` for `run`: `pairs` is a query of (src_pk, target_id, kind), one row
 * per source pk. Stored as ranges (`userport.pk_ranges`): a row per run of consecutive source pks
 * that map to consecutive ids of one kind, which is how new ids are drawn (in source order), so
 * 100k users take a few rows instead of 100k rows and their index entries (0.7 s at 100k users).
 * A run breaks wherever either side skips, so every source pk maps exactly as in `pairs`.
 */
export async function insertPkRanges(q: Q, run: number, model: string, pairs: string): Promise<void> {
  // One sort: each row's position and whether it starts a range; a range spans to the next start.
  await q(`
    INSERT INTO userport.pk_ranges (run, model, source_pk, target_id, kind, span)
    SELECT $1, '${model}', src_pk, target_id, kind, (lead(n, 1, total + 1) OVER (ORDER BY n) - n)::int
    FROM (SELECT src_pk, target_id, kind, row_number() OVER w AS n, count(*) OVER () AS total,
            src_pk = lag(src_pk) OVER w + 1 AND target_id = lag(target_id) OVER w + 1 AND kind = lag(kind) OVER w AS continues
          FROM (${pairs}) p
          WINDOW w AS (ORDER BY src_pk)) b
    WHERE continues IS NOT TRUE`, [run]);
}

/** Ranges of new users beyond which the client does not keep them (their rows are staged). */
export const MAX_RANGES = 100_000;

/** This import's new users (pk map kind 'inserted', renamed ones included): source pk -> new id. */
export class NewUsers {
  /** The lowest and highest new id. */
  readonly low: number;
  readonly high: number;

  private constructor(private readonly starts: Float64Array, private readonly targets: Float64Array, private readonly spans: Float64Array) {
    let low = Infinity;
    let high = -Infinity;
    targets.forEach((t, i) => { low = Math.min(low, t); high = Math.max(high, t + spans[i]! - 1); });
    this.low = low;
    this.high = high;
  }

  /** Reads the ranges of `run`; undefined when there are more than {@link MAX_RANGES}. */
  static async read(client: pg.ClientBase, run: number): Promise<NewUsers | undefined> {
    const where = `run = $1 AND model = 'sentry.user' AND kind = 'inserted'`;
    if (Number((await client.query(`SELECT count(*) AS n FROM userport.pk_ranges WHERE ${where}`, [run])).rows[0].n) > MAX_RANGES) return undefined;
    const rows = (await client.query(`SELECT source_pk::float8 AS s, target_id::float8 AS t, span FROM userport.pk_ranges
      WHERE ${where} ORDER BY source_pk`, [run])).rows as { s: number; t: number; span: number }[];
    return new NewUsers(Float64Array.from(rows, (r) => r.s), Float64Array.from(rows, (r) => r.t), Float64Array.from(rows, (r) => r.span));
  }

  /** Every new id, ascending (ids were drawn in file order: the ranges' targets ascend with them, or are sorted here). */
  *ids(): Generator<number> {
    const order = [...this.targets.keys()].sort((a, b) => this.targets[a]! - this.targets[b]!);
    for (const i of order) for (let id = this.targets[i]!, end = id + this.spans[i]!; id < end; id++) yield id;
  }

  /** The new id of the user with source pk `pk`, or -1 when it is not a new user of this import. */
  id(pk: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const start = this.starts[mid]!;
      if (start > pk) hi = mid - 1;
      else if (pk >= start + this.spans[mid]!) lo = mid + 1;
      else return this.targets[mid]! + (pk - start);
    }
    return -1;
  }
}

/**
 * Source pks in the order they came, kept small: a byte for a pk that follows the one before by 1
 * to 254 (most do: a model's pks ascend in an export), else a marker byte and the pk as 8 bytes.
 * The Email records' pks, for their pk map's ranges after the COPY (1.2M records: 1.2 MB; at most
 * MAX_ADDRESSES, 1.4M, go straight in).
 */
export class PkTrail {
  /** Pks pushed. */
  count = 0;
  private buf = new Uint8Array(1 << 12);
  private view = new DataView(this.buf.buffer);
  private at = 0;
  private last = 0;

  push(pk: number): void {
    const step = pk - this.last;
    this.last = pk;
    this.count++;
    if (step >= 1 && step < FAR) {
      this.room(1);
      this.buf[this.at++] = step;
    } else {
      this.room(9);
      this.buf[this.at++] = FAR;
      this.view.setFloat64(this.at, pk);
      this.at += 8;
    }
  }

  *[Symbol.iterator](): Generator<number> {
    let pk = 0;
    for (let i = 0; i < this.at;) {
      const step = this.buf[i++]!;
      if (step === FAR) { pk = this.view.getFloat64(i); i += 8; } else pk += step;
      yield pk;
    }
  }

  /** Bytes the pks take. */
  get bytes(): number {
    return this.at;
  }

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.at + n));
    next.set(this.buf.subarray(0, this.at));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
}

/** The marker of a pk written whole in a {@link PkTrail}: the step from the one before is not 1 to 254. */
const FAR = 255;
