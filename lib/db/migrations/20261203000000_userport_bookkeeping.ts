/**
 * userport's own bookkeeping, in a schema of its own (`userport`), so that nothing is added to
 * the schema that holds Sentry's tables:
 * - `userport.imports`: one row per import run (id, mode, state, checkpoint, counters, summary);
 * - `userport.pk_ranges`: source pk -> target id for every user and email an import wrote or
 *   reused, so later imports (organizations, projects) can remap their foreign keys; one row per
 *   run of consecutive source pks mapped to consecutive ids (`span` of them), as new ids are drawn
 *   in source order: a handful of rows for 100k users instead of 100k rows and their index
 *   entries. `userport.pk_map` is the view that spells it out, one row per source pk;
 * - `userport.stage`: where every record is COPYed before the set-based merge. Resumable imports
 *   use this (logged) table so staged rows survive a crash; atomic imports stage into a TEMP table
 *   of the same shape, never WAL-logged and gone with their transaction;
 * - `userport.findings`: every record an import dropped, filtered, merged or renamed, with its
 *   reason and position;
 * - `userport.random_string(len)`: the random tails of renamed usernames.
 *
 * The pk map and the findings carry the import's `run` without a foreign key to
 * `userport.imports`: a foreign key is a trigger per inserted row, and on the pk map it cost more
 * than the inserts themselves (0.6 s of 1.0 s per 100k rows, when it held a row per pk). The merge
 * checks once that its run is registered instead (see lib/db/merge).
 */
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    CREATE SCHEMA IF NOT EXISTS userport;

    CREATE TABLE userport.imports (
      run bigserial PRIMARY KEY,
      id text NOT NULL UNIQUE,
      mode text NOT NULL CHECK (mode IN ('atomic', 'resumable', 'dry-run')),
      state text NOT NULL CHECK (state IN ('running', 'done', 'failed')),
      source text NOT NULL,
      source_size bigint NULL,
      source_fingerprint text NULL,
      options jsonb NOT NULL DEFAULT '{}',
      started_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now(),
      finished_at timestamptz NULL,
      checkpoint_ordinal bigint NOT NULL DEFAULT 0,
      checkpoint_offset bigint NOT NULL DEFAULT 0,
      counters jsonb NULL,
      summary jsonb NULL,
      error text NULL
    );

    CREATE TABLE userport.pk_ranges (
      run bigint NOT NULL,
      model text NOT NULL,
      source_pk bigint NOT NULL,
      target_id bigint NOT NULL,
      span integer NOT NULL DEFAULT 1 CHECK (span > 0),
      kind text NOT NULL CHECK (kind IN ('inserted', 'existing', 'merged')),
      PRIMARY KEY (run, model, source_pk)
    );
    CREATE VIEW userport.pk_map AS
      SELECT r.run, r.model, r.source_pk + i AS source_pk, r.target_id + i AS target_id, r.kind
      FROM userport.pk_ranges r CROSS JOIN LATERAL generate_series(0, r.span - 1) AS i;

    CREATE TABLE userport.stage (
      run bigint NOT NULL,
      model smallint NOT NULL,
      ord bigint NOT NULL,
      off bigint NOT NULL,
      line integer NOT NULL,
      col integer NOT NULL,
      src_pk bigint NOT NULL,
      keep boolean NOT NULL DEFAULT true,
      username text, first_name text, email text,
      is_active boolean, is_sentry_app boolean,
      last_login timestamptz, date_joined timestamptz, last_active timestamptz,
      flags bigint, session_nonce text, avatar_type integer, avatar_url text,
      email_unique text, is_suspended boolean,
      user_pk bigint, project_id bigint, organization_id bigint,
      opt_key text, opt_value text
    );
    CREATE INDEX stage_run_idx ON userport.stage (run, model);

    CREATE TABLE userport.findings (
      run bigint NOT NULL,
      kind text NOT NULL,
      model text NOT NULL,
      source_pk bigint NULL,
      ordinal bigint NULL,
      byte_offset bigint NULL,
      reason text NOT NULL
    );
    CREATE INDEX findings_run_idx ON userport.findings (run);

    -- Sentry's suffix alphabet is 'abcdefghijklmnopqrstuvwxyz0123456790' (no 8, a typo); ours has the 8.
    CREATE FUNCTION userport.random_string(len integer) RETURNS text
      LANGUAGE sql VOLATILE PARALLEL SAFE AS $fn$
        SELECT string_agg(substr('abcdefghijklmnopqrstuvwxyz0123456789', 1 + floor(random() * 36)::int, 1), '')
        FROM generate_series(1, len)
      $fn$;
  `);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(`
    DROP FUNCTION IF EXISTS userport.random_string(integer);
    DROP TABLE IF EXISTS userport.findings;
    DROP TABLE IF EXISTS userport.stage;
    DROP VIEW IF EXISTS userport.pk_map;
    DROP TABLE IF EXISTS userport.pk_ranges;
    DROP TABLE IF EXISTS userport.imports;
  `);
}
