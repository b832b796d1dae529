/**
 * README.md's library recipe ("To write the stages into PostgreSQL yourself"), run exactly as the
 * README prints it, so the recipe stays true: it migrates, stages, merges, and leaves a run that
 * `userport imports` lists as done with its record count; a failed run leaves nothing.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { listImports } from '../../lib/db/imports.js';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { user, writeExport } from '../helpers/exports.js';

const ROOT = path.resolve('.');

/** The ```js block that follows the recipe's heading sentence in README.md. */
export function readmeRecipe(): string {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const at = readme.indexOf('To write the stages into PostgreSQL yourself');
  expect(at, 'the recipe is in README.md').to.be.above(0);
  const block = /```js\n([\s\S]*?)```/.exec(readme.slice(at));
  expect(block, 'the recipe has a js block').to.not.equal(null);
  return block![1]!;
}

describe('README library recipe', function () {
  this.timeout(120000);
  let db: TestDb;
  let script: string;
  before(async () => {
    // Not migrated: the recipe must create the tables itself. Inside the package folder, so
    // `import ... from 'userport'` resolves to this package (a self-reference through "exports").
    db = await freshDatabase(false);
    script = path.join(ROOT, 'dist', `readme-recipe-${process.pid}.mjs`);
    fs.writeFileSync(script, readmeRecipe());
  });
  after(async () => {
    fs.rmSync(script, { force: true });
    await db.close();
  });

  const runRecipe = (file: string) => spawnSync(process.execPath, [script, file], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, DATABASE_URL: db.url } });

  it('runs as written: migrates, imports, and the run is listed as done with its records', async () => {
    const file = writeExport([user(1, 'recipe-a'), user(2, 'recipe-b')]);
    const res = runRecipe(file);
    expect(res.status, res.stderr).to.equal(0);
    expect(res.stdout).to.include('read 2 records; users: 2 inserted, 0 renamed');
    expect(await db.count('auth_user')).to.equal(2);
    const runs = await listImports(db.url);
    expect(runs).to.have.length(1);
    expect(runs[0]).to.include({ state: 'done', mode: 'atomic', records: 2, source: file });
  });

  it('a failed run leaves no import behind (not one listed as interrupted)', async () => {
    const bad = writeExport('[{"model": "sentry.user", "pk": 1, "fields": {"username": 5}}]');
    const res = runRecipe(bad);
    expect(res.status).to.not.equal(0);
    expect(res.stderr).to.include('USERPORT_RECORD_SCHEMA');
    const runs = await listImports(db.url);
    expect(runs.map((r) => r.state)).to.deep.equal(['done']);
  });
});
