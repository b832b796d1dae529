import { expect } from 'chai';
import fs from 'node:fs';
import { createDecryptor, createLocalKeyUnwrapper } from '../../lib/decrypt.js';
import { sameRsaPublicKey, loadPrivateKey, loadPublicKey } from '../../lib/crypto/keys.js';
import { createTokenizer } from '../../lib/tokenize.js';
import { chunked, collect } from '../helpers/streams.js';

describe('samples', () => {
  it('users.tar decrypts with the demo key into a well-formed export', async () => {
    const unwrapper = createLocalKeyUnwrapper({ privateKeyPath: 'samples/demo-key.pem' });
    const records = await collect<{ model?: string }>(chunked(fs.readFileSync('samples/users.tar'), 65536), createDecryptor({ unwrapper }), createTokenizer());
    expect(records.length).to.be.greaterThan(0);
  });

  it('demo-key.pub is the public half of demo-key.pem, and the README says it is for demos only', () => {
    expect(sameRsaPublicKey(loadPrivateKey(fs.readFileSync('samples/demo-key.pem')), loadPublicKey(fs.readFileSync('samples/demo-key.pub')))).to.equal(true);
    expect(fs.readFileSync('samples/README.md', 'utf8')).to.match(/Demo only/);
  });
});
