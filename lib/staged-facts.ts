/**
 * Sentry facts about a run's staged rows, noted while the sink stages them: which full scans of
 * the staging table the merge can skip (each takes seconds at a million users), and whether the
 * file is in Sentry's order (every user first), which the early users step needs (db/merge/early.ts).
 */
import type { FilteredMarker, StagedRow } from './map-models.js';
import { modelInfo, REJECTED_USER_CODE, STAGE_INDEX } from './models.js';

/**
 * What the sink saw of the rows it staged. Filled in file order by `createPgSink` (`staged`
 * option); true/false only describe the rows this sink staged, so a resumed import must not use them.
 */
export class StagedFacts {
  /** Within every model, each source pk was greater than the one before it: no pk repeats. */
  pksIncreasing = true;
  /** A rejected user's pk was staged (code 5: its rows must say "user rejected"). */
  rejectedUsers = false;
  /** A user email or option named its user by username (pre-23.9.1 natural key). */
  naturalKeys = false;
  /**
   * Rows of other models were staged, or records of them skipped after the first user, before a
   * user row (Sentry writes every user first).
   */
  usersAfterOthers = false;
  /** Only users (kept, filtered or rejected) were staged so far, and no record was skipped after the first of them. */
  usersOnly = true;
  /** User rows staged before the first row of another model. */
  leadingUsers = 0;
  private readonly last = new Map<number, number>();
  private readonly userCode = modelInfo('sentry.user')!.mapping.code;

  /**
   * Notes a record that was skipped, not staged (out of scope, or of a model the target skips).
   * After the first user it ends the users' run as a row of another model does: a user after it
   * is out of Sentry's order (the early users step, started at it, is undone). Before any user it
   * changes nothing.
   */
  skipped(): void {
    if (this.leadingUsers > 0) this.usersOnly = false;
  }

  /** Notes one staged row. */
  note(row: StagedRow | FilteredMarker): void {
    // A rejected user's pk row is a user's too.
    const user = row.code === this.userCode || row.code === REJECTED_USER_CODE;
    if (!user) this.usersOnly = false;
    else if (this.usersOnly) this.leadingUsers++;
    else this.usersAfterOthers = true;
    if (row.code === REJECTED_USER_CODE) { this.rejectedUsers = true; return; }
    if (this.pksIncreasing) {
      const before = this.last.get(row.code);
      if (before !== undefined && !(row.pk > before)) this.pksIncreasing = false;
      this.last.set(row.code, row.pk);
    }
    if (row.kind === 'row' && row.code !== this.userCode && row.values[STAGE_INDEX.user_pk] === null && row.values[STAGE_INDEX.username] != null) {
      this.naturalKeys = true;
    }
  }
}
