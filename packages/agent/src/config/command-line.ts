import { resolve } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { z } from 'zod';
import { ConfigError } from './errors.js';

/** gRPC's own default receive limit; the published systemd unit raised it with `-m 524288000`. */
export const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
/** gRPC message sizes are int32. */
const MAX_MESSAGE_BYTES_LIMIT = 2 ** 31 - 1;
/** sockaddr_un.sun_path holds 108 bytes including the terminating NUL. */
export const MAX_UNIX_SOCKET_PATH_BYTES = 107;

export const CommandLineOptionsSchema = z.object({
  /** Absolute path of the gRPC Unix socket (`-a`). */
  socketPath: z.string().min(1),
  /** Absolute path of the JSON config file (`-c`). */
  configPath: z.string().min(1),
  /** `-f`: remove a stale socket file before binding. */
  removeStaleSocket: z.boolean(),
  /** `-m`: largest gRPC message accepted or sent, in bytes. */
  maxMessageBytes: z.number().int().min(1).max(MAX_MESSAGE_BYTES_LIMIT),
});
export type CommandLineOptions = z.infer<typeof CommandLineOptionsSchema>;

export type CommandLineResult =
  | { kind: 'run'; options: CommandLineOptions }
  | { kind: 'help'; text: string }
  | { kind: 'version'; text: string };

/**
 * Parses `edgefleet-agent -a <socket> -c <config.json> [-f] [-m <bytes>]` (arguments after the program name).
 * Starts nothing and prints nothing: `--help` and `--version` come back as text for the caller to print.
 * Throws ConfigError naming the option at fault.
 */
export function parseCommandLine(
  args: readonly string[],
  context: { version: string; cwd: string },
): CommandLineResult {
  let written = '';
  const program = new Command('edgefleet-agent')
    .description(
      'EdgeFleet device agent: a drop-in SageMaker Edge Manager agent (gRPC on a Unix socket) plus KServe v2 REST',
    )
    .version(context.version, '-v, --version', 'print the version and exit')
    .helpOption('-h, --help', 'print this help and exit')
    .addOption(new Option('-a, --address <socket>', 'path of the Unix socket to serve gRPC on'))
    .addOption(new Option('-c, --config <file>', 'path of the JSON configuration file'))
    .addOption(new Option('-f, --force', 'remove a stale socket file before binding'))
    .addOption(
      new Option('-m, --max-message-size <bytes>', 'largest gRPC message, in bytes').default(
        String(DEFAULT_MAX_MESSAGE_BYTES),
      ),
    )
    .allowExcessArguments(false)
    .exitOverride()
    .configureOutput({
      writeOut: (text) => {
        written += text;
      },
      writeErr: (text) => {
        written += text;
      },
      outputError: () => {},
    });

  try {
    program.parse(args as string[], { from: 'user' });
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    if (error.code === 'commander.helpDisplayed' || error.code === 'commander.help') {
      return { kind: 'help', text: written };
    }
    if (error.code === 'commander.version') return { kind: 'version', text: written.trim() };
    throw new ConfigError(optionOf(error.message), `${error.message.replace(/^error: /, '')}; see --help`);
  }

  const raw = program.opts<{ address?: string; config?: string; force?: boolean; maxMessageSize: string }>();
  if (!raw.address) throw new ConfigError('-a', '-a <socket> is required: the Unix socket path to serve on');
  if (!raw.config) throw new ConfigError('-c', '-c <config.json> is required: the configuration file');
  const socketPath = resolve(context.cwd, stripUnixScheme(raw.address));
  if (Buffer.byteLength(socketPath) > MAX_UNIX_SOCKET_PATH_BYTES) {
    throw new ConfigError(
      '-a',
      `-a: the socket path ${socketPath} is ${Buffer.byteLength(socketPath)} bytes; a Unix socket path is at most ${MAX_UNIX_SOCKET_PATH_BYTES}`,
    );
  }
  const maxText = raw.maxMessageSize.trim();
  const max = /^\d+$/.test(maxText) ? Number(maxText) : Number.NaN;
  if (!Number.isSafeInteger(max) || max < 1 || max > MAX_MESSAGE_BYTES_LIMIT) {
    throw new ConfigError(
      '-m',
      `-m: expected a whole number of bytes from 1 to ${MAX_MESSAGE_BYTES_LIMIT} (e.g. 524288000), got ${JSON.stringify(raw.maxMessageSize)}`,
    );
  }
  return {
    kind: 'run',
    options: CommandLineOptionsSchema.parse({
      socketPath,
      configPath: resolve(context.cwd, raw.config),
      removeStaleSocket: raw.force === true,
      maxMessageBytes: max,
    }),
  };
}

/** Clients name the socket `unix:///tmp/x.sock`; people sometimes paste that form into `-a`. */
function stripUnixScheme(address: string): string {
  const match = /^unix:(?:\/\/)?(.*)$/.exec(address);
  return match ? match[1]! : address;
}

function optionOf(message: string): string | null {
  const match = /'(-[a-zA-Z]|--[a-z-]+)/.exec(message);
  if (!match) return null;
  const map: Record<string, string> = {
    '--address': '-a',
    '--config': '-c',
    '--force': '-f',
    '--max-message-size': '-m',
  };
  return map[match[1]!] ?? match[1]!;
}
