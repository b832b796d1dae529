/**
 * The pk map's listed ranges: `userport.pk_ranges.source_pks`, the source pks of a range whose
 * ids are consecutive but whose source pks are not (an Email record's pk skips the pks of other
 * records: 80k ranges of one pair each for 120k records of a generated export). A listed range
 * maps `source_pks[k]` to `target_id + k - 1`; `source_pk` is its first pk and `span` its length,
 * so the primary key, the counts (`sum(span)`) and the view `userport.pk_map` (one row per pair)
 * read it as they read a range. NULL for a range of consecutive pks, as before.
 */
import type { Knex } from 'knex';

const VIEW_BEFORE = `
  CREATE OR REPLACE VIEW userport.pk_map AS
    SELECT r.run, r.model, r.source_pk + i AS source_pk, r.target_id + i AS target_id, r.kind
    FROM userport.pk_ranges r CROSS JOIN LATERAL generate_series(0, r.span - 1) AS i`;

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`
    ALTER TABLE userport.pk_ranges
      ADD COLUMN IF NOT EXISTS source_pks bigint[] NULL,
      ADD CONSTRAINT pk_ranges_source_pks_check CHECK (source_pks IS NULL OR (
        array_ndims(source_pks) = 1 AND array_lower(source_pks, 1) = 1 AND cardinality(source_pks) = span
        AND array_position(source_pks, NULL) IS NULL AND source_pks[1] = source_pk));
    CREATE OR REPLACE VIEW userport.pk_map AS
      SELECT r.run, r.model, coalesce(r.source_pks[i + 1], r.source_pk + i) AS source_pk, r.target_id + i AS target_id, r.kind
      FROM userport.pk_ranges r CROSS JOIN LATERAL generate_series(0, r.span - 1) AS i;
  `);
}

export async function down(knex: Knex): Promise<void> {
  // Each listed range becomes ranges of one pair (what the view spelled out), then the column goes.
  await knex.raw(`
    ${VIEW_BEFORE};
    CREATE TEMP TABLE userport_pairs AS
      SELECT l.run, l.model, p.pk AS source_pk, l.target_id + p.k - 1 AS target_id, l.kind
      FROM userport.pk_ranges l CROSS JOIN LATERAL unnest(l.source_pks) WITH ORDINALITY AS p(pk, k)
      WHERE l.source_pks IS NOT NULL;
    DELETE FROM userport.pk_ranges WHERE source_pks IS NOT NULL;
    INSERT INTO userport.pk_ranges (run, model, source_pk, target_id, kind, span)
      SELECT run, model, source_pk, target_id, kind, 1 FROM userport_pairs;
    DROP TABLE userport_pairs;
    ALTER TABLE userport.pk_ranges DROP CONSTRAINT IF EXISTS pk_ranges_source_pks_check, DROP COLUMN IF EXISTS source_pks;
  `);
}
