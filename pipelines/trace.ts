/**
 * The CLI's trace switch: USERPORT_TRACE_SQL=1 prints each statement of the merge with its time
 * and the sink's moments, USERPORT_EXPLAIN_SQL=1 each statement's plan, to stderr, one event a
 * line (a plan: between `[plan]` and `[/plan]`). The library only tells events (`onTrace`); these
 * lines are the CLI's output, which the benchmark and the CLI specs read.
 */
import { STATEMENTS_APART, type TraceEvent } from '../lib/trace.js';

/** A statement as the trace shows it: one line, at most 90 characters; statements sent together, each so, apart by ` ; `. */
const short = (sql: string) => sql.split(STATEMENTS_APART).map((one) => one.trim().replace(/\s+/g, ' ').slice(0, 90)).join(' ; ');

const SINK_LINES: Record<Extract<TraceEvent, { kind: 'sink' }>['moment'], string> = {
  'overlap started': 'early users step started after %; rows go to the spool',
  'overlap done': 'early users step done after %',
  'rows sent': 'all rows sent after %',
  'copy confirmed': 'COPY confirmed after %',
  'spool copied': 'spooled rows COPYed after %',
};

/** How long a step took, as a trace line ends: ` (120 ms)`, or nothing. */
const took = (ms: number | undefined) => (ms === undefined ? '' : ` (${ms.toFixed(0)} ms)`);
/** A direct write done before the input ended (the early part of lib/db/merge/early.ts). */
const early = (was: boolean | undefined) => (was ? ', before the input ended' : '');

/** The trace line(s) of one event, without the final newline. */
export function traceLine(e: TraceEvent): string {
  switch (e.kind) {
    case 'sql': return `[sql ${e.ms.toFixed(0)} ms] ${short(e.sql)}`;
    case 'plan': return `[plan] ${short(e.sql)}\n${e.plan.join('\n')}\n[/plan]`;
    case 'retry': return `[${e.step}] another session took ${e.step === 'users' ? 'a name or address' : 'an address'} meanwhile: deciding again (attempt ${e.attempt})`;
    case 'bulk-load': return `[bulk] load first, then build: ${e.dropped.join(', ')}`;
    case 'row-checks': return e.off
      ? '[checks] the new users\' rows: per-row foreign-key checks off for this transaction (they cannot fail)'
      : `[checks] the new users' rows: per-row foreign-key checks not turned off: ${e.why}`;
    case 'early-undone': return '[early] a user came after other models: the early users step is undone';
    case 'early-rows': return `[early] written before the input ended: ${e.tables.join(', ')}${took(e.ms)}`;
    case 'early-rows-undone': return `[early] the rows written before the input ended are undone: ${e.why}`;
    case 'direct-rows': return (e.repeated
      ? `[direct] ${e.table}: a row of a new user came twice: all ${e.staged} staged for the merge`
      : `[direct] ${e.table}: ${e.written} rows of new users written straight in, `
        + `${e.filtered ? `${e.filtered} of filtered users dropped to their findings straight in, ` : ''}${e.staged} staged for the merge`
        + (e.checked === 'client' && e.written > 0 ? ', no pair twice (checked in the client)' : '')) + early(e.early) + took(e.ms);
    case 'direct-emails': return (e.why ? `[direct] ${e.table}: all ${e.staged} staged for the merge: ${e.why}`
        : e.filtered !== undefined ? `[direct] ${e.table}: ${e.filtered} Email records that no kept user's address keeps dropped to their findings straight in, ${e.staged} staged for the merge`
        : `[direct] ${e.table}: ${e.written} rows written straight in${e.keyOrder ? ', in its unique key\'s order' : ''}, ${e.existing} addresses already there`) + took(e.ms);
    case 'direct-findings': return `[direct] ${e.model}: ${e.dropped} records of new users dropped (${e.reason}), their findings written straight in, ${e.staged} staged for the merge${early(e.early)}${took(e.ms)}`;
    case 'sink': return `[sink] ${SINK_LINES[e.moment].replace('%', `${e.ms.toFixed(0)} ms`)}`;
  }
}

/**
 * The importUsers options that print the trace `env` asks for to `out`; none when it asks for
 * nothing. Plans only with USERPORT_EXPLAIN_SQL=1, everything else only with USERPORT_TRACE_SQL=1.
 */
export function traceFromEnv(env: NodeJS.ProcessEnv = process.env, out: NodeJS.WritableStream = process.stderr): { onTrace?: (e: TraceEvent) => void; explain?: boolean } {
  const trace = env.USERPORT_TRACE_SQL === '1';
  const explain = env.USERPORT_EXPLAIN_SQL === '1';
  if (!trace && !explain) return {};
  return {
    onTrace: (e) => { if (e.kind === 'plan' ? explain : trace) out.write(`${traceLine(e)}\n`); },
    ...(explain ? { explain: true } : {}),
  };
}
