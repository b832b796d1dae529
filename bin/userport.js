#!/usr/bin/env -S node --max-semi-space-size=4 --max-old-space-size=192
// The V8 flags above keep peak RSS flat and low: an import keeps ~15 MB of live heap, but with
// default settings V8 lets garbage grow the heap to ~150 MB before collecting it. Smaller
// young-generation spaces and an old-space limit (a guard far above the live size) make it
// collect sooner, at a few percent of speed. Running `node bin/userport.js` skips them.
// Thin launcher: the CLI is compiled TypeScript in dist/ (built by `npm ci` through `prepare`).
// A closed stdout (`userport ... | head`) is not an error worth a stack trace.
process.stdout.on('error', (err) => { if (err.code !== 'EPIPE') throw err; });
import('../dist/pipelines/cli.js').then((m) => m.main(process.argv.slice(2))).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err); process.exitCode = 1; },
);
