/** The CLI's shared pieces: library option names mapped to flags, typo suggestions, exit codes. */
import { expect } from 'chai';
import { ErrorCodes, opt, OptionError, ParseError, RecordError, UserportError, wording } from '../../lib/errors.js';
import { cliMessage, didYouMean, exitCodeFor, formatCount, formatError, suggestFlag, suggestWord, usage } from '../../pipelines/cli-support.js';

describe('CLI support', () => {
  it('groups a count\'s thousands as toLocaleString(\'en-US\') does, for every length of integer and what is not one', () => {
    const values = [0, 7, -7, 999, 1000, -1000, 12345, 999999, 1000000, -1234567, 2 ** 31, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER,
      1.5, 1234.5678, 2 ** 60, -0, NaN, Infinity];
    for (let d = 1, x = 1; d <= 16; d++, x = x * 10 + (d % 10)) values.push(x, -x);
    for (const v of values) expect(formatCount(v), String(v)).to.equal(v.toLocaleString('en-US'));
  });

  it('names the CLI flag where a library error names its option in parts (wording)', () => {
    const err = new OptionError(wording`${opt('databaseUrl')} must be a postgresql:// URL`);
    expect(err.option).to.equal('databaseUrl');
    expect(err.message).to.equal('databaseUrl must be a postgresql:// URL');
    expect(cliMessage(err)).to.equal('--database-url must be a postgresql:// URL');
    // The function a library message starts with means nothing on the command line.
    const scoped = new OptionError(wording`${opt('publicKeyPem')} is an encrypted private key`, undefined, 'createEncryptor');
    expect(scoped.message).to.equal('createEncryptor: publicKeyPem is an encrypted private key');
    expect(formatError(scoped)).to.equal('userport: --encrypt-with is an encrypted private key [USERPORT_OPTION_INVALID]');
    // Every option named, not only the first; a runtime error's too.
    expect(cliMessage(new UserportError('USERPORT_MAX_REJECTS', wording`more than 3 records rejected (${opt('maxRejects')})`)))
      .to.equal('more than 3 records rejected (--max-rejects)');
    expect(cliMessage(new OptionError(wording`${opt('maxRejects')} needs ${opt('rejectsFile')}`))).to.equal('--max-rejects needs --rejects-file');
    // A message in one piece is the library's own: nothing is rewritten.
    expect(cliMessage(new OptionError('maxDepth must be an integer', 'maxDepth'))).to.equal('maxDepth must be an integer');
  });

  it('prints a record whose pk is an object or array (a hostile export) as JSON, where String() of it throws', () => {
    // JSON.parse gives plain objects: {"toString": 1} has no callable toString, so String() and
    // templates throw a TypeError, which crashed the CLI instead of naming the record.
    for (const [pk, shown] of [[{ toString: 1 }, '{"toString":1}'], [[{ valueOf: {} }], '[{"valueOf":{}}]'], [7, '7']] as const) {
      const err = new RecordError(ErrorCodes.RECORD_ENVELOPE, 'record 3: pk must be integer',
        { position: { ordinal: 3, model: 'sentry.user', pk, field: 'pk', offset: 10, line: 2, column: 3 } });
      expect(formatError(err)).to.equal(`userport: record 3: pk must be integer (record 3 (sentry.user pk ${shown}), field pk, byte 10, line 2, column 3) [USERPORT_RECORD_ENVELOPE]`);
    }
  });

  it('suggests the closest flag for a typo, Sentry underscores included, and nothing for a stranger', () => {
    const known = ['merge-users', 'filter-usernames', 'filter-usernames-file', 'findings-file', 'dry-run'];
    expect(suggestFlag('--merge-user', known)).to.equal('--merge-users');
    expect(suggestFlag('--filter-usernams', known)).to.equal('--filter-usernames');
    expect(suggestFlag('--dryrun', known)).to.equal('--dry-run');
    expect(suggestFlag('--banana', known)).to.equal(undefined);
    expect(suggestFlag('--', known)).to.equal(undefined);
  });

  it('suggests a command or scope for a typo, and nothing for an empty word or a word that is already right', () => {
    const commands = ['import', 'export', 'imports', 'db', 'target'];
    expect(suggestWord('imprt', commands)).to.equal('import');
    expect(suggestWord('', commands)).to.equal(undefined);
    expect(didYouMean('strat', ['url', 'psql', 'start', 'stop'])).to.equal(': did you mean start?');
    expect(didYouMean('', ['url', 'psql', 'start', 'stop'])).to.equal('');
    expect(didYouMean('users', ['users', 'config', 'global'])).to.equal('');
  });

  it('exits 2 for usage errors, 1 for data and runtime errors', () => {
    expect(exitCodeFor(new OptionError('x'))).to.equal(2);
    expect(exitCodeFor(usage(new UserportError('USERPORT_IO', 'SRC x does not exist')))).to.equal(2);
    expect(exitCodeFor(new UserportError('USERPORT_IO', 'read failed'))).to.equal(1);
    expect(exitCodeFor(new ParseError('USERPORT_PARSE_JSON', 'bad'))).to.equal(1);
    expect(exitCodeFor(new Error('boom'))).to.equal(1);
  });
});
