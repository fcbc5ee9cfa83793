import pino, { type Logger } from 'pino';

/**
 * JSON lines at the configured level: the server's on stdout (stderr would mix with the CLI's own messages); a
 * command's beside it (init, token) on stderr, as its stdout is the token it prints, written at once (sync) so
 * that nothing is lost when the command exits.
 */
export function createLogger(level: string, to: 'stdout' | 'stderr' = 'stdout'): Logger {
  const options = { level, base: { service: 'edgefleet-server' }, timestamp: pino.stdTimeFunctions.isoTime };
  return to === 'stdout' ? pino(options) : pino(options, pino.destination({ fd: 2, sync: true }));
}
