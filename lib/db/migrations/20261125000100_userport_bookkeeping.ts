/**
 * userport's own bookkeeping, beside Sentry's tables:
 * - `userport_import`: one row per import run (id, mode, state, checkpoint, counters, summary);
 * - `userport_pk_map`: source pk -> target id for every row an import wrote or reused, so later
 *   imports (organizations, projects) can remap their foreign keys;
 * - `userport_stage`: the staging table every record is COPYed into before the set-based merge.
 *   Resumable imports use this (logged) table so staged rows survive a crash; atomic imports
 *   create a TEMP table of the same shape and name, which shadows it for their session;
 * - `userport_finding`: every record an import dropped, with its reason and position.
 */
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    CREATE TABLE IF NOT EXISTS userport_import (
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

    CREATE TABLE IF NOT EXISTS userport_pk_map (
      run bigint NOT NULL REFERENCES userport_import (run) ON DELETE CASCADE,
      model text NOT NULL,
      source_pk bigint NOT NULL,
      target_id bigint NOT NULL,
      kind text NOT NULL CHECK (kind IN ('inserted', 'existing', 'merged')),
      PRIMARY KEY (run, model, source_pk)
    );

    CREATE TABLE IF NOT EXISTS userport_stage (
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
      user_pk bigint, project_id bigint, organization_id bigint,
      opt_key text, opt_value text
    );
    CREATE INDEX IF NOT EXISTS userport_stage_run_idx ON userport_stage (run, model);

    CREATE TABLE IF NOT EXISTS userport_finding (
      run bigint NOT NULL REFERENCES userport_import (run) ON DELETE CASCADE,
      kind text NOT NULL,
      model text NOT NULL,
      source_pk bigint NULL,
      ordinal bigint NULL,
      byte_offset bigint NULL,
      reason text NOT NULL
    );
    CREATE INDEX IF NOT EXISTS userport_finding_run_idx ON userport_finding (run);

    -- Random tails for renamed usernames (Sentry's schedule and alphabet, with the 8 it forgot).
    CREATE OR REPLACE FUNCTION userport_random_string(len integer) RETURNS text
      LANGUAGE sql VOLATILE PARALLEL SAFE AS $fn$
        SELECT string_agg(substr('abcdefghijklmnopqrstuvwxyz0123456789', 1 + floor(random() * 36)::int, 1), '')
        FROM generate_series(1, len)
      $fn$;
  `);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(`
    DROP FUNCTION IF EXISTS userport_random_string(integer);
    DROP TABLE IF EXISTS userport_finding;
    DROP TABLE IF EXISTS userport_stage;
    DROP TABLE IF EXISTS userport_pk_map;
    DROP TABLE IF EXISTS userport_import;
  `);
}
