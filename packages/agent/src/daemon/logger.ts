import { pino, type DestinationStream, type Logger } from 'pino';

export interface AgentLoggerOptions {
  /** Where JSON lines go; default standard output (fd 1), written synchronously so nothing is lost at exit. */
  destination?: DestinationStream;
  /** `sagemaker_edge_log_verbose`: debug level instead of info. */
  verbose?: boolean;
}

/**
 * The agent's logger: JSON lines (one object per event, `msg` for people, fields for programs). Pretty output
 * is left to the reader (`edgefleet-agent … | npx pino-pretty`), so the agent needs no optional dependency.
 */
export function createAgentLogger(options: AgentLoggerOptions = {}): Logger {
  return pino(
    {
      name: 'edgefleet-agent',
      level: options.verbose === true ? 'debug' : 'info',
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}

/** The registry's logger interface over pino (message first there, fields first in pino). */
export function registryLogger(logger: Logger) {
  return {
    warn: (message: string, details?: Record<string, unknown>) => logger.warn(details ?? {}, message),
    info: (message: string, details?: Record<string, unknown>) => logger.info(details ?? {}, message),
  };
}
