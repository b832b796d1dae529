/**
 * The peer: Django's `loaddata`, what Sentry's importer is built on, loading the same export into
 * the same PostgreSQL server (the minimal Django project in /work/shared/peers/django-loaddata).
 *
 * Its `run-loaddata.sh` is followed step by step (recreate the database with psql, create the
 * tables with `migrate --run-syncdb`, then `loaddata`), with one difference: `loaddata` gets
 * `--ignorenonexistent`. Real late-2024 exports carry `is_unclaimed`, which the peer's User model
 * lacks, and Sentry's own deserializer runs with `ignorenonexistent=True` since Feb 2025. Only the
 * `loaddata` step is timed.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { runMeasured, type MeasuredRun } from './child.js';

/** Where the peer project lives. @default $USERPORT_DJANGO_PEER or /work/shared/peers/django-loaddata */
export function defaultPeerDir(): string {
  return process.env.USERPORT_DJANGO_PEER ?? '/work/shared/peers/django-loaddata';
}

const PYTHON = '/usr/bin/python3';

/** Why the peer cannot run here, or undefined when it can. */
export function djangoUnavailable(peerDir = defaultPeerDir()): string | undefined {
  if (!fs.existsSync(path.join(peerDir, 'settings.py'))) return `no Django peer project at ${peerDir}`;
  if (!fs.existsSync(PYTHON)) return `${PYTHON} is not installed`;
  const py = spawnSync(PYTHON, ['-c', 'import django, psycopg2; print(django.get_version())'], { encoding: 'utf8' });
  if (py.status !== 0) return 'python3-django or python3-psycopg2 is not installed (apt-get install -y python3-django python3-psycopg2)';
  const psql = spawnSync('psql', ['--version'], { encoding: 'utf8' });
  if (psql.status !== 0) return 'psql is not installed (postgresql-client)';
  return undefined;
}

export interface DjangoResult {
  djangoVersion: string;
  /** Objects `loaddata` reports it installed. */
  objects: number;
  run: MeasuredRun;
}

/** Recreates database `database` on the server of `serverUrl` and `loaddata`s `file` into it. */
export async function runDjangoLoaddata(file: string, serverUrl: string, database: string, peerDir = defaultPeerDir()): Promise<DjangoResult> {
  const u = new URL(serverUrl);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PGHOST: u.hostname,
    PGPORT: u.port || '5432',
    PGUSER: decodeURIComponent(u.username),
    PGPASSWORD: decodeURIComponent(u.password),
    PGDATABASE: database,
    DJANGO_SETTINGS_MODULE: 'settings',
    PYTHONPATH: '.',
  };
  const step = (cmd: string, args: string[], what: string) => {
    const r = spawnSync(cmd, args, { cwd: peerDir, env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`Django peer: ${what} failed: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' ')}`);
    return r.stdout;
  };
  const version = step(PYTHON, ['-c', 'import django; print(django.get_version())'], 'python').trim();
  step('psql', ['-q', '-d', 'postgres', '-h', env.PGHOST!, '-p', env.PGPORT!, '-U', env.PGUSER!,
    '-c', `drop database if exists ${database}`, '-c', `create database ${database}`], 'psql');
  step(PYTHON, ['-m', 'django', 'migrate', '--run-syncdb', '-v', '0'], 'migrate');
  const run = await runMeasured(PYTHON, ['-m', 'django', 'loaddata', '-v', '1', '--ignorenonexistent', path.resolve(file)], { cwd: peerDir, env });
  if (run.code !== 0) throw new Error(`Django peer: loaddata failed: ${run.stderr.trim().split('\n').slice(-2).join(' ')}`);
  const m = /Installed (\d+) object/.exec(run.stdout);
  return { djangoVersion: version, objects: m ? Number(m[1]) : 0, run };
}
