import pino, { type Logger } from 'pino';

/** JSON lines on stdout (stderr would mix with the CLI's own messages), at the configured level. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { service: 'edgefleet-server' }, timestamp: pino.stdTimeFunctions.isoTime });
}
