/** Option-error assertions: code and option name, never message text. */
import { expect } from 'chai';
import { OptionError } from '../../lib/errors.js';

/**
 * Runs `fn`, expects it to throw an {@link OptionError} (code USERPORT_OPTION_INVALID) and
 * returns the option it names, for the caller to compare.
 */
export function optionErrorOf(fn: () => unknown): string | undefined {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected an OptionError').to.be.instanceOf(OptionError);
  expect((err as OptionError).code).to.equal('USERPORT_OPTION_INVALID');
  return (err as OptionError).option;
}
