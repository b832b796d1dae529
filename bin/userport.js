#!/bin/sh
":" //; while read -r k v; do [ "$k" = SigIgn: ] && USERPORT_LAUNCH_SIGIGN=$v && export USERPORT_LAUNCH_SIGIGN; done 2>/dev/null </proc/self/status; { true 3>&1; } 2>/dev/null || { USERPORT_LAUNCH_STDOUT=closed; export USERPORT_LAUNCH_STDOUT; exec 1>/dev/null; }; exec node --max-semi-space-size=4 --max-old-space-size=96 "$0" "$@"
// The line above is both shell and JavaScript: /bin/sh runs it (JavaScript sees a string and a
// comment). Before node starts, the shell records what node cannot see once it runs:
// - the signals ignored at launch (`nohup` ignores SIGHUP): node resets them to their default
//   action at startup, so the mask is read from /proc/self/status (Linux; elsewhere none is
//   known) and passed in USERPORT_LAUNCH_SIGIGN, and the CLI keeps them ignored;
// - a closed standard output (`>&-`): node would silently reopen it on /dev/null, and an export to
//   `-` would "succeed" writing nothing; USERPORT_LAUNCH_STDOUT=closed makes it fail instead.
// The V8 flags keep peak RSS flat and low: an import keeps ~15 MB of live heap, but with
// default settings V8 lets garbage grow the heap to ~150 MB before collecting it. Smaller
// young-generation spaces and an old-space limit (a guard far above the live size) make it
// collect sooner, at a few percent of speed. Running `node bin/userport.js` skips all of this.
// Thin launcher: the CLI is compiled TypeScript in dist/ (built by `npm run build`, `npm test` or `npm pack`).
// Errors on stdout (a closed pipe, `export users -` failing mid-stream) reach the command through
// its writes and are reported there in one line; an 'error' event thrown from here would crash
// the process with a stack trace.
process.stdout.on('error', () => undefined);
// Node 21 and later define `navigator` ({ userAgent: 'Node.js/22', ... }); Node 20 does not, and
// pg, seeing none, asks whether it runs on Cloudflare Workers by making a `Response`, which loads
// undici: 30-45 ms of every command's start. This process is the CLI's own, so it gets what newer
// Nodes give (pg is the only package here that reads it). The library sets no global.
if (typeof globalThis.navigator === 'undefined') {
  Object.defineProperty(globalThis, 'navigator', { value: { userAgent: `Node.js/${process.versions.node.split('.')[0]}` }, configurable: true, writable: true });
}
import('../dist/pipelines/cli.js').then((m) => m.main(process.argv.slice(2))).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err); process.exitCode = 1; },
);
