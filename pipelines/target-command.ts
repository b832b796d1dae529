/**
 * `userport target`: what an import would write into a database, read from its catalog, and
 * what it would not, and why. Reads only: creates nothing, not even userport's own tables.
 */
import pg from 'pg';
import { defaultEmbeddedDir, readEmbeddedConfig, startEmbedded } from '../lib/db/embedded.js';
import { applySessionSettings } from '../lib/db/knex.js';
import { checkDatabaseUrl } from '../lib/options.js';
import { describePlan, planFor } from '../lib/db/merge/index.js';
import { ANY_SENTRY_TABLE_SQL, DEFAULT_GENERATION, SENTRY_TABLES_DDL } from '../lib/db/migrations/20261203000100_sentry_user_tables.js';
import { connectError, ErrorCodes, OptionError, UserportError } from '../lib/errors.js';
import { helpText, parseCommand, TEXT_WIDTH, wrapText, type FlagSpecs } from './cli-support.js';

export const TARGET_HELP = `Usage: userport target [--database-url URL] [--json]

Read the target database's catalog and print what an import would write there (tables and
columns, in the types this Sentry generation has) and what it would not, and why. In a database
without Sentry's tables, what an import writes after creating them. Reads only: nothing is
created or changed.

Options:
  --database-url URL   the database (default: $DATABASE_URL, else the embedded one if it
                       exists, started if it is stopped)
  --json               print the plan's lines as a JSON array
  -h, --help           this help

Example:
  userport target --database-url postgresql://sentry@db.internal/sentry
`;

const FLAGS: FlagSpecs = { 'database-url': { type: 'string' }, json: { type: 'boolean' } };

/**
 * The database to read: given, $DATABASE_URL, or the embedded one when it exists (started when it
 * is stopped, as import and export do; never created here).
 */
async function databaseUrl(given: string | undefined): Promise<string> {
  const url = given ?? process.env.DATABASE_URL;
  if (url) {
    checkDatabaseUrl(url);
    return url;
  }
  const cfg = readEmbeddedConfig(defaultEmbeddedDir());
  if (!cfg) throw new OptionError('no database: give --database-url (or $DATABASE_URL); the embedded one does not exist yet', 'databaseUrl');
  return (await startEmbedded()).url;
}

/**
 * The plan's lines for the database on `client`. A database that holds none of Sentry's tables is
 * one an import first creates them in (the migration's DDL): the plan is read from them inside a
 * transaction that is rolled back, so this still changes nothing.
 */
async function describeTarget(client: pg.Client): Promise<string[]> {
  if ((await client.query(ANY_SENTRY_TABLE_SQL)).rows[0].any) return describePlan(await planFor(client));
  await client.query('BEGIN');
  try {
    await client.query('CREATE EXTENSION IF NOT EXISTS citext');
    await client.query(SENTRY_TABLES_DDL);
    return [
      `This database holds none of Sentry's tables: an import (or userport migrate) first creates them, with the DDL of ${DEFAULT_GENERATION}, then writes:`,
      ...describePlan(await planFor(client)),
    ];
  } finally {
    await client.query('ROLLBACK').catch(() => undefined);
  }
}

export async function runTargetCommand(args: string[]): Promise<number> {
  const { values: o } = parseCommand(args, FLAGS, 'target', false);
  if (o.help) { process.stdout.write(helpText(TARGET_HELP)); return 0; }
  const url = await databaseUrl(typeof o['database-url'] === 'string' ? o['database-url'] : undefined);
  const client = new pg.Client({ connectionString: url, application_name: 'userport target' });
  client.on('error', () => undefined);
  try {
    try { await client.connect(); } catch (err) { throw connectError(err, client); }
    await applySessionSettings(client);
    const lines = await describeTarget(client).catch((err: unknown) => {
      throw err instanceof UserportError ? err : new UserportError(ErrorCodes.DB_QUERY, `reading the catalog failed: ${(err as Error).message}`, { cause: err });
    });
    process.stdout.write(o.json ? `${JSON.stringify(lines, null, 2)}\n` : `${lines.map((l) => wrapText(l, TEXT_WIDTH, '    ')).join('\n')}\n`);
    return 0;
  } finally {
    await client.end().catch(() => undefined);
  }
}
