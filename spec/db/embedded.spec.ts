import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { reachableCopy } from '../../lib/db/embedded.js';

describe('reachableCopy (embedded binaries under a private folder, when running as root)', () => {
  it('copies the binaries once to a world-readable folder, keeping symlinks, and reuses the copy', () => {
    const priv = fs.mkdtempSync(path.join(os.tmpdir(), 'userport-private-'));
    fs.chmodSync(priv, 0o700);
    const pkgRoot = path.join(priv, 'pkg');
    const native = path.join(pkgRoot, 'native');
    fs.mkdirSync(path.join(native, 'bin'), { recursive: true });
    fs.mkdirSync(path.join(native, 'lib'), { recursive: true });
    fs.writeFileSync(path.join(native, 'bin', 'postgres'), '#!/bin/sh\n', { mode: 0o700 });
    fs.writeFileSync(path.join(native, 'lib', 'libx.so.1.2'), 'x', { mode: 0o600 });
    fs.symlinkSync('libx.so.1.2', path.join(native, 'lib', 'libx.so'));
    const version = `test-${process.pid}-${Date.now()}`;
    fs.writeFileSync(path.join(pkgRoot, 'package.json'), JSON.stringify({ version }));
    const target = reachableCopy(native, pkgRoot);
    try {
      expect(target.startsWith(os.tmpdir())).to.equal(true);
      expect(target).to.include(version);
      expect(fs.statSync(path.join(target, 'bin', 'postgres')).mode & 0o005).to.equal(0o005);
      expect(fs.statSync(path.join(target, 'lib', 'libx.so.1.2')).mode & 0o004).to.equal(0o004);
      expect(fs.readlinkSync(path.join(target, 'lib', 'libx.so'))).to.equal('libx.so.1.2');
      fs.writeFileSync(path.join(native, 'bin', 'postgres'), 'changed');
      expect(reachableCopy(native, pkgRoot)).to.equal(target);
      expect(fs.readFileSync(path.join(target, 'bin', 'postgres'), 'utf8')).to.equal('#!/bin/sh\n');
    } finally {
      fs.rmSync(target, { recursive: true, force: true });
      fs.rmSync(priv, { recursive: true, force: true });
    }
  });
});
