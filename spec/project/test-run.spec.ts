/**
 * The test run itself (spec/helpers/setup.ts): an interrupted run stops the PostgreSQL servers it
 * started and removes its folder, and a run killed outright is cleaned up by the next one.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { processAlive } from '../helpers/setup.js';

const ROOT = path.resolve('.');

interface ChildRun {
  run: string;
  postmaster: number;
  kill(signal: NodeJS.Signals): void;
  /** Resolves to the signal the child died of. */
  done: Promise<NodeJS.Signals | null>;
}

/**
 * Starts a child mocha on wait-for-interrupt.js with its own embedded server; resolves once that
 * server is up (the child prints its run folder then), not after a guessed delay.
 */
function startRun(): Promise<ChildRun> {
  const env = { ...process.env };
  // Its own server, not this run's; TMPDIR (this run's folder) stays, so its folder nests in ours.
  delete env.USERPORT_TEST_DATABASE_URL;
  delete env.USERPORT_TEST_EMBEDDED_DIR;
  const child = spawn(process.execPath, [path.join(ROOT, 'node_modules/mocha/bin/mocha.js'), '--no-config', '--require', 'dist/spec/helpers/setup.js',
    '--reporter', 'spec', 'dist/spec/helpers/wait-for-interrupt.js'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const done = new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, signal) => resolve(signal)));
  let out = '';
  return new Promise((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => (out += d));
    child.stdout.on('data', (d: Buffer) => {
      out += d;
      const m = /USERPORT-TEST-RUN (.*)\n/.exec(out);
      if (!m) return;
      const { run, pg } = JSON.parse(m[1]!) as { run: string; pg: string };
      const postmaster = Number(fs.readFileSync(path.join(pg, 'pgdata', 'postmaster.pid'), 'utf8').split('\n')[0]);
      resolve({ run, postmaster, done, kill: (signal) => child.kill(signal) });
    });
    void done.then(() => reject(new Error(`the child run ended before its server was up:\n${out}`)));
  });
}

/**
 * True once `pid` is gone. pg_ctl stop returns when the server removed its pid file, a moment
 * before the process ends and init reaps it: poll for that moment, up to 10 s.
 */
async function ended(pid: number): Promise<boolean> {
  for (let i = 0; i < 200 && processAlive(pid); i++) await new Promise((r) => setTimeout(r, 50));
  return !processAlive(pid);
}

describe('the test run (spec/helpers/setup.ts)', function () {
  this.timeout(300000);

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    it(`on ${signal}, stops the PostgreSQL server it started and removes its folder`, async () => {
      const child = await startRun();
      expect(processAlive(child.postmaster)).to.equal(true);
      child.kill(signal);
      expect(await child.done).to.equal(signal);
      expect(await ended(child.postmaster), 'postmaster still running').to.equal(true);
      expect(fs.existsSync(child.run), child.run).to.equal(false);
    });
  }

  it('cleans up after a run that was SIGKILLed: the next run stops its server and removes its folder @soak', async () => {
    const killed = await startRun();
    killed.kill('SIGKILL');
    await killed.done;
    expect(processAlive(killed.postmaster)).to.equal(true);
    expect(fs.existsSync(killed.run)).to.equal(true);
    const next = await startRun();
    try {
      expect(await ended(killed.postmaster), 'the dead run\'s postmaster still running').to.equal(true);
      expect(fs.existsSync(killed.run), killed.run).to.equal(false);
    } finally {
      next.kill('SIGINT');
      await next.done;
    }
  });
});
