import type { Command } from 'commander';
import { CommanderError } from 'commander';
import { commandPrefix } from '@edgefleet/core';
import { CliError, EXIT, createOutput, describeFsError, isFsError, type Output } from './cli-io.js';
import { registerPkiCommands } from './pki/pki-command.js';
import { registerPackageCommands } from './package/package-command.js';
import { registerDemoCommand } from './demo/demo-command.js';
import { registerAgentCommands } from './agent/agent-command.js';
import { registerFleetCommands } from './fleet/fleet-command.js';
import { registerDeviceCommands } from './device/device-command.js';
import { registerTokenCommands } from './token/token-command.js';
import { registerModelCommands } from './model/model-command.js';
import { registerPackagingCommands } from './packaging/packaging-command.js';
import { EdgefleetCommand } from './edgefleet-command.js';
import { registerDeploymentCommands } from './deployment/deployment-command.js';

/**
 * What the CLI reads and writes besides its arguments: its output streams, and the environment it was started in
 * (only to tell how it was started, for the hints it prints).
 */
export interface CliIo {
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WriteStream;
  env?: Readonly<Record<string, string | undefined>>;
}

/** Builds the `edgefleet` program. Exported so tests drive it in-process with their own streams. */
export function buildProgram(io: CliIo = {}): Command {
  const program = new EdgefleetCommand('edgefleet')
    .description(
      'EdgeFleet: package and sign ONNX models, manage fleets and devices on a control plane, talk to a local agent',
    )
    .version('0.1.0')
    .option('--json', 'print results as JSON, for scripts')
    // Program options only before the command name, so `package create --version 1.0` is the model's version.
    .enablePositionalOptions()
    .showHelpAfterError()
    .exitOverride();
  if (io.stdout || io.stderr) {
    program.configureOutput({
      writeOut: (s) => (io.stdout ?? process.stdout).write(s),
      writeErr: (s) => (io.stderr ?? process.stderr).write(s),
    });
  }
  let json = false;
  const invocation = commandPrefix('edgefleet', io.env ?? process.env);
  const output = (): Output => createOutput({ json, invocation, ...io });
  registerPkiCommands(program, output);
  registerPackageCommands(program, output);
  registerDemoCommand(program, output);
  registerAgentCommands(program, output);
  registerFleetCommands(program, output);
  registerDeviceCommands(program, output, io.stderr);
  registerTokenCommands(program, output);
  registerModelCommands(program, output);
  registerPackagingCommands(program, output);
  registerDeploymentCommands(program, output, io.stdout, io.stderr);
  // `--json` is accepted after the command name too: every leaf command gets it.
  const leaves = (cmd: Command): Command[] =>
    cmd.commands.length === 0 ? [cmd] : cmd.commands.flatMap(leaves);
  for (const leaf of program.commands.flatMap(leaves))
    leaf.option('--json', 'print results as JSON, for scripts');
  program.hook('preAction', (_program, action) => {
    json = Boolean(program.opts().json || action.opts().json);
  });
  return program;
}

/** Runs the CLI and returns its exit code; every failure becomes one clear line on stderr. */
export async function runCli(argv: string[], io: CliIo = {}): Promise<number> {
  const stderr = io.stderr ?? process.stderr;
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT.ok;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander has already printed its message (and help for usage errors).
      return error.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (error instanceof CliError) {
      stderr.write(`edgefleet: ${error.message}\n`);
      return error.exitCode;
    }
    if (isKnownFailure(error)) {
      stderr.write(`edgefleet: ${(error as Error).message}\n`);
      return (error as Error).name === 'PackageVerificationError' ? EXIT.refused : EXIT.failed;
    }
    if (isFsError(error)) {
      // A path the user gave that cannot be read or written is their input, not a bug in edgefleet.
      stderr.write(`edgefleet: ${error.path}: ${describeFsError(error)} (${error.syscall} ${error.code})\n`);
      return EXIT.failed;
    }
    stderr.write(
      `edgefleet: unexpected error (a bug; please report it):\n${(error as Error)?.stack ?? String(error)}\n`,
    );
    return EXIT.internal;
  }
}

/** Errors from @edgefleet/core whose messages are written for people. */
function isKnownFailure(error: unknown): boolean {
  const known = [
    'PackageVerificationError',
    'PackageArchiveError',
    'PackageInvalidError',
    'PackageNotFoundError',
    'OnnxModelError',
    'SigningError',
  ];
  return error instanceof Error && (known.includes(error.name) || known.includes(error.constructor.name));
}
