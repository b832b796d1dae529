/**
 * Sentry's user-scope tables, with Sentry's table and column names and unique constraints.
 * `IF NOT EXISTS` everywhere: pointed at a database that already has Sentry's own tables, the
 * migration keeps them and adds only what userport itself needs.
 *
 * Case-insensitive uniqueness: Sentry's `sentry_email.email` is citext; a unique index on
 * `lower(email)` gives the same guarantee without needing the citext extension.
 */
import type { Knex } from 'knex';

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    CREATE TABLE IF NOT EXISTS auth_user (
      id bigserial PRIMARY KEY,
      password varchar(128) NOT NULL,
      last_login timestamptz NULL,
      username varchar(128) NOT NULL,
      first_name varchar(200) NOT NULL DEFAULT '',
      email varchar(200) NOT NULL DEFAULT '',
      is_staff boolean NOT NULL DEFAULT false,
      is_active boolean NOT NULL DEFAULT true,
      is_superuser boolean NOT NULL DEFAULT false,
      is_managed boolean NOT NULL DEFAULT false,
      is_sentry_app boolean NULL,
      is_password_expired boolean NOT NULL DEFAULT false,
      is_unclaimed boolean NOT NULL DEFAULT false,
      last_password_change timestamptz NULL,
      flags bigint NOT NULL DEFAULT 0,
      session_nonce varchar(12) NULL,
      date_joined timestamptz NOT NULL DEFAULT now(),
      last_active timestamptz NULL DEFAULT now(),
      avatar_type smallint NOT NULL DEFAULT 0 CHECK (avatar_type >= 0),
      avatar_url varchar(120) NULL,
      CONSTRAINT auth_user_username_key UNIQUE (username)
    );
    CREATE INDEX IF NOT EXISTS auth_user_username_lower_idx ON auth_user (lower(username));

    CREATE TABLE IF NOT EXISTS sentry_email (
      id bigserial PRIMARY KEY,
      email varchar(200) NOT NULL,
      date_added timestamptz NOT NULL DEFAULT now()
    );
    CREATE UNIQUE INDEX IF NOT EXISTS sentry_email_email_lower_key ON sentry_email (lower(email));

    CREATE TABLE IF NOT EXISTS sentry_useremail (
      id bigserial PRIMARY KEY,
      user_id bigint NOT NULL REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED,
      email varchar(200) NOT NULL,
      validation_hash varchar(32) NOT NULL,
      date_hash_added timestamptz NOT NULL DEFAULT now(),
      is_verified boolean NOT NULL DEFAULT false,
      CONSTRAINT sentry_useremail_user_id_email_key UNIQUE (user_id, email)
    );

    CREATE TABLE IF NOT EXISTS sentry_useroption (
      id bigserial PRIMARY KEY,
      user_id bigint NOT NULL REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED,
      project_id bigint NULL,
      organization_id bigint NULL,
      key varchar(64) NOT NULL,
      value jsonb NULL,
      CONSTRAINT sentry_useroption_user_id_project_id_key_key UNIQUE (user_id, project_id, key),
      CONSTRAINT sentry_useroption_user_id_organization_id_key_key UNIQUE (user_id, organization_id, key)
    );
    -- The two constraints above let NULLs through, so they do not protect global options:
    -- Sentry's production database has this extra index, and so do we.
    CREATE UNIQUE INDEX IF NOT EXISTS sentry_useroption_user_id_key_global_key
      ON sentry_useroption (user_id, key) WHERE project_id IS NULL AND organization_id IS NULL;

    CREATE TABLE IF NOT EXISTS sentry_lostpasswordhash (
      id bigserial PRIMARY KEY,
      user_id bigint NOT NULL REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED,
      hash varchar(32) NOT NULL,
      date_added timestamptz NOT NULL DEFAULT now(),
      CONSTRAINT sentry_lostpasswordhash_user_id_key UNIQUE (user_id)
    );
  `);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(`
    DROP TABLE IF EXISTS sentry_lostpasswordhash;
    DROP TABLE IF EXISTS sentry_useroption;
    DROP TABLE IF EXISTS sentry_useremail;
    DROP TABLE IF EXISTS sentry_email;
    DROP TABLE IF EXISTS auth_user;
  `);
}
