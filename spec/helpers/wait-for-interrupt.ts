/**
 * Not a spec of its own: spec/project/test-run.spec.ts runs this file in a child mocha. Once the root hook
 * has made the run folder and started its server, it prints both and waits to be interrupted.
 */
import { runDir } from './setup.js';

describe('a run that is interrupted', () => {
  it('waits for a signal', function () {
    this.timeout(0);
    process.stdout.write(`USERPORT-TEST-RUN ${JSON.stringify({ run: runDir(), pg: process.env.USERPORT_TEST_EMBEDDED_DIR })}\n`);
    return new Promise(() => setInterval(() => undefined, 1000));
  });
});
