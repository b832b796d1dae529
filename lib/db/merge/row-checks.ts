/**
 * The foreign-key checks of the rows an import writes for the users it creates (issue #23,
 * scenario b: a target that already holds users).
 *
 * Sentry's foreign keys are DEFERRABLE INITIALLY DEFERRED: every row inserted into a table that
 * points at `auth_user` queues a trigger event, and COMMIT then runs one
 * `SELECT 1 FROM auth_user WHERE id = $1 FOR KEY SHARE` per row, which also locks (and writes)
 * each user row it finds: about 3 s at COMMIT for 100k users and their 400k rows. In user scope
 * every such row names a user this transaction created (the rows of merged, filtered, rejected or
 * missing users are dropped, scoped options are written nowhere, nothing is updated or deleted),
 * and no other session can see, let alone delete, that user before COMMIT: those checks cannot
 * fail. So the merge turns the triggers off for its own transaction (`SET LOCAL
 * session_replication_role = replica`, what logical replication does when it applies rows that
 * were checked where they came from) and back on when it ends, only where that switches off
 * nothing but those checks:
 *
 * - user scope (config and global scopes write rows that point at existing roles);
 * - the setting is `origin` (a caller's own choice is left alone) and this role may change it
 *   (a superuser, or PostgreSQL 15+'s `GRANT SET ON PARAMETER`); asking first, so that no import
 *   leaves a "permission denied" in the server's log;
 * - on the tables written, every trigger is a foreign key's (no trigger of their own, no deferred
 *   unique constraint, whose recheck is a trigger too, nothing that fires only on a replica) and
 *   there is no rule; no event trigger is enabled;
 * - every foreign key of those tables points at `auth_user`, or lies on columns the import writes
 *   NULL into in every row (Sentry 9's `sentry_useroption.project_id` and `organization_id`).
 *
 * Anything else keeps the checks, and the trace says why. On the bulk path (bulk-load.ts) the
 * same decision says what becomes of the foreign keys among the tables written: with the checks
 * off they stay in place, unchecked as on the general path (adding one back checked every row
 * with a join: 0.2 s at 100k users for the three that point at `auth_user`); else they are
 * dropped and each is checked once when it is added back. On the bulk path the answer is read
 * again once the tables are locked. `spec/db/merge/row-checks.spec.ts`.
 */
import type pg from 'pg';
import type { Q } from './run.js';
import { enterBulkLoad, type BulkLoad } from './bulk-load.js';
import { writtenTables, type WritePlan } from './plan.js';

/** The checks turned off: `restore()` turns them back on, for whatever the transaction does next. */
export interface RowChecksOff {
  restore(): Promise<void>;
}

/**
 * How the merge writes, decided once, where it starts (the early users step, or the merge after
 * the input): the bulk path where `bulkLoad` allows it and it can be taken (bulk-load.ts), else
 * the general path; on either, the new users' rows go without their per-row checks where those
 * cannot fail. Asked first, since it decides whether the bulk path drops the foreign keys.
 */
export async function enterWritePath(q: Q, client: pg.ClientBase, plan: WritePlan, bulkLoad: boolean):
  Promise<{ bulk: BulkLoad | undefined; rowChecks: RowChecksOff | undefined }> {
  // The catalog queries are not traced or explained: their plans are PostgreSQL's business.
  const catalog = (sql: string, params?: unknown[]) => client.query(sql, params);
  const asked = await whyKept(catalog, plan);
  const bulk = bulkLoad ? await enterBulkLoad(q, catalog, plan, { keepForeignKeys: asked === undefined }) : undefined;
  // On the bulk path the tables are locked now: no other session can add a trigger or a rule to
  // them any more, so the question is asked again, and a trigger added between the first answer
  // and the lock fires (the foreign keys, left in place, then check their rows as anywhere). The
  // general path locks nothing: its answer stands as read.
  const why = bulk && asked === undefined ? await whyKept(catalog, plan) : asked;
  // On the bulk path with the checks kept from the start, the foreign keys were dropped: nothing to say.
  if (!bulk || asked === undefined) q.trace({ kind: 'row-checks', off: why === undefined, ...(why === undefined ? {} : { why }) });
  if (why !== undefined) return { bulk, rowChecks: undefined };
  await q(`SET LOCAL session_replication_role = replica`);
  return { bulk, rowChecks: { restore: async () => { await q(`SET LOCAL session_replication_role = origin`); } } };
}

/** Why the checks stay on, or undefined when nothing but those checks would be turned off. */
async function whyKept(catalog: (sql: string, params?: unknown[]) => Promise<pg.QueryResult>, plan: WritePlan): Promise<string | undefined> {
  if (plan.scope !== 'users') return `the ${plan.scope} scope writes rows that point at existing rows`;
  const who = (await catalog(`SELECT current_setting('session_replication_role') AS role,
      (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS super,
      current_setting('server_version_num')::int >= 150000 AS granted`)).rows[0] as { role: string; super: boolean; granted: boolean };
  if (who.role !== 'origin') return `session_replication_role is already ${who.role} (left as it is)`;
  const may = who.super || (who.granted
    && (await catalog(`SELECT has_parameter_privilege('session_replication_role', 'SET') AS ok`)).rows[0].ok === true);
  if (!may) return 'this role may not set session_replication_role';
  const tables = writtenTables(plan);
  const found = (await catalog(`
    WITH t AS (SELECT unnest($1::text[])::regclass AS oid)
    SELECT
      (SELECT string_agg(DISTINCT g.tgrelid::regclass::text, ', ') FROM pg_trigger g LEFT JOIN pg_constraint c ON c.oid = g.tgconstraint
        WHERE g.tgrelid IN (SELECT oid FROM t) AND (c.contype IS DISTINCT FROM 'f' OR g.tgenabled = 'R')) AS triggers,
      (SELECT string_agg(DISTINCT r.ev_class::regclass::text, ', ') FROM pg_rewrite r WHERE r.ev_class IN (SELECT oid FROM t)) AS rules,
      EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtenabled <> 'D') AS event_triggers,
      (SELECT string_agg(c.conname, ', ') FROM pg_constraint c
        WHERE c.contype = 'f' AND c.conrelid IN (SELECT oid FROM t) AND c.confrelid <> $2::regclass
          AND NOT (c.conrelid = $3::regclass AND c.conkey <@ ARRAY(
            SELECT attnum FROM pg_attribute WHERE attrelid = $3::regclass AND attname IN ('project_id', 'organization_id')))) AS foreign_keys`,
  [tables, plan.user.table, plan.userOption?.table ?? plan.user.table])).rows[0] as
    { triggers: string | null; rules: string | null; event_triggers: boolean; foreign_keys: string | null };
  if (found.triggers) return `triggers other than foreign keys' on ${found.triggers}`;
  if (found.rules) return `rules on ${found.rules}`;
  if (found.event_triggers) return 'event triggers are enabled';
  if (found.foreign_keys) return `foreign keys to other tables: ${found.foreign_keys}`;
  return undefined;
}
