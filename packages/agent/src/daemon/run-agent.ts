import { readFileSync } from 'node:fs';
import { availableParallelism, constants } from 'node:os';
import type { Logger } from 'pino';
import { ConfigError, parseCommandLine } from '../config/index.js';
import { FolderInUseError } from '../state/index.js';
import { startAgentDaemon, type AgentDaemon } from './agent-daemon.js';
import { EXIT_CODES, StartupError } from './exit-codes.js';
import { createAgentLogger } from './logger.js';

export interface RunAgentOptions {
  /** Arguments after the program name. */
  args: readonly string[];
  cwd: string;
  /** Where --help / --version text and plain start-up errors go (default process.stdout / process.stderr). */
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
  logger?: Logger;
}

/** The agent package's version (package.json sits one folder above src/ and dist/). */
export function agentVersion(): string {
  const text = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
  return (JSON.parse(text) as { version: string }).version;
}

/**
 * `edgefleet-agent -a <socket> -c <config.json> [-f] [-m <bytes>]`: starts the agent and runs until SIGTERM or
 * SIGINT, then shuts down gracefully. Resolves with the exit status (see EXIT_CODES); a second SIGINT during
 * shutdown exits at once with 130 (a repeated SIGTERM is ignored).
 */
export async function runAgent(options: RunAgentOptions): Promise<number> {
  const out = options.stdout ?? ((text: string) => void process.stdout.write(text));
  const err = options.stderr ?? ((text: string) => void process.stderr.write(text));
  const version = agentVersion();
  let parsed: ReturnType<typeof parseCommandLine>;
  try {
    parsed = parseCommandLine(options.args, { version, cwd: options.cwd });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    err(`edgefleet-agent: ${error.message}\n`);
    return EXIT_CODES.BAD_CONFIG;
  }
  if (parsed.kind !== 'run') {
    out(parsed.text.endsWith('\n') ? parsed.text : `${parsed.text}\n`);
    return EXIT_CODES.OK;
  }

  const logger = options.logger ?? createAgentLogger();
  let daemon: AgentDaemon;
  try {
    daemon = await startAgentDaemon({
      commandLine: parsed.options,
      cwd: options.cwd,
      logger,
      cpuCount: availableParallelism(),
      version,
    });
  } catch (error) {
    const exitCode =
      error instanceof ConfigError
        ? EXIT_CODES.BAD_CONFIG
        : error instanceof StartupError
          ? error.exitCode
          : EXIT_CODES.FAILURE;
    const message = error instanceof Error ? error.message : String(error);
    logger.fatal(
      {
        event: 'start-failed',
        exitCode,
        ...(error instanceof ConfigError && { key: error.key }),
        ...(error instanceof StartupError &&
          error.cause instanceof FolderInUseError && {
            [error.cause.kind.logField]: error.cause.folder,
            holderPid: error.cause.holderPid,
          }),
        ...(exitCode === EXIT_CODES.FAILURE && { err: error }),
      },
      `cannot start: ${message}`,
    );
    err(`edgefleet-agent: cannot start: ${message}\n`);
    return exitCode;
  }

  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        // Supervisors and process groups may deliver SIGTERM twice; only a person presses Ctrl-C twice.
        if (signal !== 'SIGINT') {
          logger.info({ signal }, `${signal} again: already shutting down`);
          return;
        }
        logger.warn({ signal }, `${signal} again: exiting without finishing the shutdown`);
        resolve(128 + (constants.signals[signal] ?? 0));
        return;
      }
      stopping = true;
      logger.info({ signal }, `${signal}: shutting down`);
      daemon.shutdown().then(
        () => resolve(EXIT_CODES.OK),
        (error: unknown) => {
          logger.error({ err: error }, 'shutdown failed');
          resolve(EXIT_CODES.FAILURE);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
