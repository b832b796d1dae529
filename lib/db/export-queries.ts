/**
 * The export's SQL: one `REPEATABLE READ READ ONLY` snapshot on its own `pg` client, the catalog
 * read, and per model a server-side cursor whose `WHERE` says which rows belong to the export
 * (the username filter, the config scope's privileged users, Sentry's per-row scope rules),
 * fetched a page at a time. PostgreSQL prints every value as the text lib/export-format.ts
 * encodes; nothing here formats JSON.
 */
import pg from 'pg';
import type { Encoding } from '../export-format.js';
import type { ImportScope } from '../models.js';
import { readTarget, type Target } from './target.js';
import { connectError } from '../errors.js';
import { applySessionSettings } from './knex.js';

/** Whether the database has a table's column (`has(table, column)`). */
export type Has = (t: string, c: string) => boolean;

/** What a model's `WHERE` depends on: its table and the foreign keys the scope filters on. */
export interface ScopedTable {
  table: string;
  /** Column of the `user` foreign key: the model's rows belong to the users exported. */
  userColumn: string | undefined;
  /** Column of the `application` foreign key (Sentry's per-row scope: Global when set). */
  applicationColumn: string | undefined;
}

/** A column the cursor selects, with the encoding its text is printed for and its base type. */
export interface SelectedColumn {
  column: string;
  encoding: Encoding;
  /** The column's base type (`TargetColumn.udt`): an `inet` is printed without its netmask. */
  udt: string;
}

/** The one cursor an export has open at a time (one model after the other). */
const CURSOR = 'userport_export';

/**
 * The users an export in `scope` writes, as a condition on `auth_user` (`$1`: usernames, or NULL
 * for all). Config: only the globally privileged, as Sentry's
 * `get_all_globally_privileged_users()`: staff, superusers, and every user holding a permission
 * or a role (the tables a generation lacks count no one).
 */
function usersWhere(scope: ImportScope, has: Has): string {
  const named = '($1::text[] IS NULL OR auth_user.username = ANY($1::text[]))';
  if (scope !== 'config') return named;
  const privileged = [
    ...['is_staff', 'is_superuser'].filter((c) => has('auth_user', c)).map((c) => `auth_user.${c}`),
    ...['sentry_userpermission', 'sentry_userrole_users'].filter((t) => has(t, 'user_id'))
      .map((t) => `auth_user.id IN (SELECT p.user_id FROM ${t} p)`),
  ];
  return `${named} AND (${privileged.join(' OR ') || 'false'})`;
}

/**
 * The rows of `m` an export in `scope` writes: those of the exported users (Sentry's exporter
 * drops a row whose foreign key points at a row it did not export), application-bound ones only
 * in global scope; roles have no user and are all written, in config as in global.
 */
export function scopeWhere(m: ScopedTable, scope: ImportScope, filtered: boolean, has: Has): string {
  const users = `SELECT auth_user.id FROM auth_user WHERE ${usersWhere(scope, has)}`;
  if (m.table === 'auth_user') return usersWhere(scope, has);
  if (m.table === 'sentry_email') {
    // A global export filters no query (exports.py: "we want absolutely every relocatable model").
    if (scope === 'global' && !filtered) return 'true';
    // Sentry's Email.query_for_relocation_export: addresses some exported user's UserEmail holds,
    // compared case-insensitively (the column is citext in Sentry).
    return has('sentry_useremail', 'id')
      ? `lower(email) IN (SELECT lower(ue.email) FROM sentry_useremail ue WHERE ue.user_id IN (${users}))`
      : 'false';
  }
  const where = m.userColumn ? [`"${m.userColumn}" IN (${users})`] : ['true'];
  if (m.applicationColumn && scope !== 'global') where.push(`"${m.applicationColumn}" IS NULL`);
  return where.join(' AND ');
}

/** SQL that prints a column (of base type `udt`) as the text its encoding expects. */
function selectExpr(column: string, encoding: Encoding, udt: string): string {
  const c = `"${column}"`;
  switch (encoding) {
    // to_char's MS truncates, as Python's strftime('%f')[:-3] does.
    case 'date': return `to_char(${c} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
    case 'bool': return `CASE WHEN ${c} THEN 't' WHEN NOT ${c} THEN 'f' END`;
    case 'text-array': return `array_to_json(${c})::text`;
    // inet's output function, as psycopg hands it to Django ('127.0.0.2'); its cast to text adds
    // the netmask ('127.0.0.2/32').
    default: return udt === 'inet' ? `format('%s', ${c})` : `${c}::text`;
  }
}

/**
 * One export's connection and snapshot. Rows come back as arrays of text (`rowMode: 'array'`):
 * the first element is the row's id, then one per selected column.
 */
export class ExportSnapshot {
  private connected = false;
  /** Rejected by {@link end} (never resolves): what a connect in progress races. */
  private readonly ending: Promise<never>;
  private endNow: (err: Error) => void = () => undefined;

  private constructor(private readonly client: pg.Client) {
    this.ending = new Promise<never>((_resolve, reject) => { this.endNow = reject; });
    this.ending.catch(() => undefined);
  }

  /** A snapshot not yet connected: {@link end} may be called while {@link open} connects. */
  static make(databaseUrl: string): ExportSnapshot {
    const client = new pg.Client({ connectionString: databaseUrl, application_name: 'userport export' });
    // A connection error after connect() (server shutdown) is reported by the next query; without
    // a listener it would crash the process instead.
    client.on('error', () => undefined);
    return new ExportSnapshot(client);
  }

  /** Connects (not yet in a transaction). */
  async open(): Promise<void> {
    try {
      // pg's connect() never settles when end() is called while it runs: the end decides.
      await Promise.race([this.client.connect(), this.ending]);
      this.connected = true;
    } catch (err) {
      await this.end();
      throw connectError(err, this.client);
    }
    // PostgreSQL 14+ then notices within a second that the exporter let go of its connection (a
    // destroyed exporter ends it), even while a query waits for a lock, and drops the session.
    await applySessionSettings(this.client).catch(async (err: unknown) => {
      await this.end();
      throw err;
    });
  }

  private async query(sql: string, params: unknown[] = []): Promise<(string | null)[][]> {
    const r = await this.client.query({ text: sql, values: params, rowMode: 'array' });
    return r.rows as (string | null)[][];
  }

  /** Every model read from now on sees the same committed data. */
  async begin(): Promise<void> {
    await this.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  }

  /** The catalog of `tables` (columns and their types, how option values are stored). */
  catalog(tables: readonly string[]): Promise<Target> {
    return readTarget(this.client, tables);
  }

  /**
   * Opens the cursor over `m`'s rows in scope, ordered by id: the id as text, then `columns`
   * printed for their encodings. `usernames` binds `$1` when the `WHERE` names users.
   */
  async declare(m: ScopedTable, columns: readonly SelectedColumn[], where: string, usernames: string[] | null): Promise<void> {
    const select = columns.map((c) => `, ${selectExpr(c.column, c.encoding, c.udt)}`).join('');
    // Qualified: the output column `id::text` is also named id, and would sort as text. Roles and
    // a global export's addresses name no user: no $1 to bind.
    await this.query(`DECLARE ${CURSOR} NO SCROLL CURSOR FOR
      SELECT id::text${select} FROM ${m.table} WHERE ${where} ORDER BY ${m.table}.id`, where.includes('$1') ? [usernames] : []);
  }

  /** The next `rows` rows of the open cursor; fewer (or none) at its end. */
  fetch(rows: number): Promise<(string | null)[][]> {
    return this.query(`FETCH ${rows} FROM ${CURSOR}`);
  }

  async close(): Promise<void> {
    await this.query(`CLOSE ${CURSOR}`);
  }

  /** Rows `table` holds in the snapshot, exported or not. */
  async count(table: string): Promise<number> {
    const [[n]] = await this.query(`SELECT count(*)::text FROM ${table}`) as [[string]];
    return Number(n);
  }

  /** Which of `usernames` name a user in the snapshot. */
  async existingUsernames(usernames: readonly string[]): Promise<Set<string>> {
    return new Set((await this.query('SELECT username FROM auth_user WHERE username = ANY($1::text[])', [usernames])).map((r) => r[0]!));
  }

  async commit(): Promise<void> {
    await this.query('COMMIT');
  }

  /** Ends the connection, and with it the read-only transaction if it is still open. */
  async end(): Promise<void> {
    // Still connecting, pg's end() says goodbye and waits for the server's answer, which a server
    // that has not answered the connection may never send: the socket is dropped instead (pg's
    // own way with a hung query), and open() fails now.
    if (!this.connected) {
      this.endNow(new Error('the connection was ended before it was made'));
      (this.client as unknown as { connection?: { stream?: { destroy?: () => void } } }).connection?.stream?.destroy?.();
    }
    await this.client.end().catch(() => undefined);
  }
}
