/**
 * A fresh clone has nothing beside it: the specs that read the real Sentry fixtures in
 * `../shared` must skip with a printed reason, not fail before a single test runs.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { serverUrl } from '../helpers/db.js';
import { tmpFolder } from '../helpers/setup.js';

const ROOT = path.resolve('.');
/** Every spec that reads ../shared (the skip helper's users). */
const SHARED_SPECS = ['tokenize', 'sentry/fixtures-import', 'process-records', 'hostile/fuzz'];

describe('a clone with nothing beside it', function () {
  this.timeout(300000);

  it('runs the specs that read ../shared: they skip, saying why, and the run passes @soak', async () => {
    const outer = tmpFolder('userport-clone-');
    const clone = path.join(outer, 'userport');
    fs.mkdirSync(clone);
    try {
      for (const entry of ['dist', 'node_modules', 'samples', 'schemas']) fs.symlinkSync(path.join(ROOT, entry), path.join(clone, entry));
      fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(clone, 'package.json'));
      expect(fs.existsSync(path.join(outer, 'shared'))).to.equal(false);
      const files = SHARED_SPECS.map((s) => `dist/spec/${s}.spec.js`);
      // The running test server stands in for the one the root hook would start.
      const res = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(process.execPath, [path.join(ROOT, 'node_modules/mocha/bin/mocha.js'), '--no-config', '--require', 'dist/spec/helpers/setup.js',
          '--timeout', '120000', '--reporter', 'spec', ...files], { cwd: clone, env: { ...process.env, USERPORT_TEST_DATABASE_URL: serverUrl() } });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d));
        child.stderr.on('data', (d: Buffer) => (out += d));
        child.on('close', (code) => resolve({ code, out }));
      });
      expect(res.code, res.out).to.equal(0);
      expect(res.out).not.to.include('ENOENT');
      expect(res.out).to.include('skipped: ../shared/fixtures/sentry is absent');
      expect(res.out).to.match(/\d+ passing/).and.match(/[1-9]\d* pending/);
      expect(res.out).not.to.match(/\d+ failing/);
    } finally {
      fs.rmSync(outer, { recursive: true, force: true });
    }
  });
});
