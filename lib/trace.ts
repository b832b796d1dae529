/**
 * What the library tells a subscriber about how it works (`onTrace` of importUsers, mergeStaged
 * and createPgSink): each statement of the merge with its time, a statement's plan on request, and
 * the moments that explain where an import's time went. Tests and tools subscribe to these events
 * instead of parsing text; the library itself prints nothing. The CLI prints them to stderr when
 * USERPORT_TRACE_SQL=1 or USERPORT_EXPLAIN_SQL=1 is set (pipelines/trace.ts).
 */

/** What joins the texts of statements sent together in one `sql` event (each on its own line: a text may end in a comment). */
export const STATEMENTS_APART = '\n;\n';

/**
 * One event of the trace, by `kind`:
 * - `sql`: a statement of the merge ran; `ms` its time, `sql` its text. Statements sent together
 *   in one round trip are one event: their texts joined by {@link STATEMENTS_APART}, `ms` theirs in all.
 * - `plan`: the plan (`EXPLAIN`, one line per element) of a statement of the merge, before it
 *   runs; only with `explain: true`.
 * - `retry`: a step is decided again because another session took one of its unique values
 *   meanwhile (the users' step: a name or `email_unique` address; the emails' step: an address);
 *   `attempt` is the attempt that starts (2 at the first retry).
 * - `bulk-load`: the empty-target path dropped these unique constraints, indexes and foreign keys
 *   (`table.name`), to build them again after the load.
 * - `early-undone`: a user row came after other models, so the early users step is undone.
 * - `row-checks`: whether the per-row foreign-key checks of the rows written for the new users are
 *   `off` for the import's transaction (they cannot fail: `lib/db/merge/row-checks.ts`), or not,
 *   and `why` (on the bulk path, only when off: else it dropped the foreign keys).
 * - `direct-rows`: at the end of the input, `written` rows of new users went straight into
 *   `table`, `filtered` rows of users a username filter removed were dropped with their findings
 *   written straight in, and `staged` of its model were staged for the merge; `repeated`: a (user, key) came
 *   twice, so none went straight in (all staged); `checked`: whether the client's hashes of the
 *   (user, key) pairs or the database made sure none came twice.
 * - `direct-emails`: at the end of the input, `written` Email rows went straight into `table`
 *   and `existing` records reused an address it held (`keyOrder`: written in the order of its
 *   unique key, which the bulk path then builds without sorting); or all `staged`, for the reason `why`; or,
 *   with a username filter, `filtered` records that no kept user's address keeps were dropped with their
 *   findings and `staged` were staged. Each says how long that took (`ms`).
 * - `direct-findings`: at the end of the input, `dropped` records of `model` that belong to new
 *   users were dropped for `reason` (an option scoped to an organization or project), their
 *   findings written straight in, and `staged` records of other users staged for the merge.
 * - `early-rows`: the early users step was done while the input was still read, so the rows of the
 *   models already over went into `tables` then (under a savepoint, kept or undone at the end), in `ms`.
 *   The `direct-*` events of those models say `early`.
 * - `early-rows-undone`: what `early-rows` wrote is undone, `why`; the end writes those models as ever.
 * - `sink`: a moment of the sink, `ms` after it was created: `overlap started` (the early users
 *   step runs, rows go to the spool), `overlap done`, `rows sent` (the input has ended),
 *   `copy confirmed` (the server confirmed the COPY), `spool copied` (the spool is COPYed).
 */
export type TraceEvent =
  | { kind: 'sql'; ms: number; sql: string }
  | { kind: 'plan'; sql: string; plan: string[] }
  | { kind: 'retry'; step: 'users' | 'emails'; attempt: number }
  | { kind: 'bulk-load'; dropped: string[] }
  | { kind: 'early-undone' }
  | { kind: 'row-checks'; off: boolean; why?: string }
  | { kind: 'direct-rows'; table: string; written: number; filtered?: number; staged: number; repeated: boolean; checked?: 'client' | 'database'; ms?: number; early?: boolean }
  | { kind: 'direct-emails'; table: string; written: number; existing: number; staged: number; why?: string; filtered?: number; keyOrder?: boolean; ms?: number }
  | { kind: 'direct-findings'; model: string; reason: string; dropped: number; staged: number; ms?: number; early?: boolean }
  | { kind: 'early-rows'; tables: string[]; ms: number }
  | { kind: 'early-rows-undone'; why: string }
  | { kind: 'sink'; moment: 'overlap started' | 'overlap done' | 'rows sent' | 'copy confirmed' | 'spool copied'; ms: number };

/** The trace options that importUsers and mergeStaged share. */
export interface TraceOptions {
  /** Told each {@link TraceEvent} as it happens; a subscriber that throws fails the work. */
  onTrace?: (e: TraceEvent) => void;
  /** Also tell `plan` events: each statement of the merge is EXPLAINed first (slower). Only with `onTrace`. @default false */
  explain?: boolean;
}
