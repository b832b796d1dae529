/** The CLI's shared pieces: library option names mapped to flags, typo suggestions, exit codes. */
import { expect } from 'chai';
import { OptionError, ParseError, UserportError } from '../lib/errors.js';
import { cliMessage, exitCodeFor, formatError, suggestFlag, usage } from '../pipelines/cli-support.js';

describe('CLI support', () => {
  it('names the CLI flag where a library error names its option (OptionError.option)', () => {
    const err = new OptionError('databaseUrl must be a postgresql:// URL', 'databaseUrl');
    expect(err.option).to.equal('databaseUrl');
    expect(cliMessage(err)).to.equal('--database-url must be a postgresql:// URL');
    expect(formatError(new OptionError('createEncryptor: publicKeyPem is an encrypted private key', 'publicKeyPem')))
      .to.equal('userport: --encrypt-with is an encrypted private key [USERPORT_OPTION_INVALID]');
    // Without a known option, the message is left alone.
    expect(cliMessage(new OptionError('maxDepth must be an integer'))).to.equal('maxDepth must be an integer');
  });

  it('suggests the closest flag for a typo, Sentry underscores included, and nothing for a stranger', () => {
    const known = ['merge-users', 'filter-usernames', 'filter-usernames-file', 'findings-file', 'dry-run'];
    expect(suggestFlag('--merge-user', known)).to.equal('--merge-users');
    expect(suggestFlag('--filter-usernams', known)).to.equal('--filter-usernames');
    expect(suggestFlag('--dryrun', known)).to.equal('--dry-run');
    expect(suggestFlag('--banana', known)).to.equal(undefined);
  });

  it('exits 2 for usage errors, 1 for data and runtime errors', () => {
    expect(exitCodeFor(new OptionError('x'))).to.equal(2);
    expect(exitCodeFor(usage(new UserportError('USERPORT_IO', 'SRC x does not exist')))).to.equal(2);
    expect(exitCodeFor(new UserportError('USERPORT_IO', 'read failed'))).to.equal(1);
    expect(exitCodeFor(new ParseError('USERPORT_PARSE_JSON', 'bad'))).to.equal(1);
    expect(exitCodeFor(new Error('boom'))).to.equal(1);
  });
});
