import { Command, type Option } from 'commander';

/**
 * commander's Command, but an unknown option is named even when a required option is missing: commander checks
 * required options first, so `fleet create x --output-location s3://…` said only that `--output` was missing,
 * never that `--output-location` is not an option (the user's actual slip). It overrides and calls commander's
 * private `missingMandatoryOptionValue` and `unknownOption`, which a release may rename without notice (the
 * override would then silently not run): packages/cli/package.json pins commander to ~14.0.x, and
 * test/fleet/fleet-device-cli.test.ts checks the behaviour on each upgrade.
 */
export class EdgefleetCommand extends Command {
  override createCommand(name?: string): EdgefleetCommand {
    return new EdgefleetCommand(name);
  }

  /** Called by commander for a missing required option (not in its typings, hence no `override`). */
  missingMandatoryOptionValue(option: Option): void {
    // What parsing left over: operands, then unknown options; after `--` everything is an operand.
    const separator = this.args.indexOf('--');
    const beforeSeparator = separator < 0 ? this.args : this.args.slice(0, separator);
    const unknown = beforeSeparator.find((arg) => arg.startsWith('-') && arg !== '-');
    if (unknown !== undefined) this.unknownOption(unknown);
    (
      Command.prototype as unknown as { missingMandatoryOptionValue(o: Option): void }
    ).missingMandatoryOptionValue.call(this, option);
  }

  /** commander's, declared for the call above (not in its typings). */
  declare unknownOption: (flag: string) => never;
}
