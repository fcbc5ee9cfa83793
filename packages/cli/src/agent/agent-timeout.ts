import { CliError } from '../cli-io.js';

/**
 * The refusal when an agent socket took the connection but sent no answer in time, worded once for every agent
 * command (gRPC and REST alike).
 */
export function agentTimedOut(path: string, timeoutSeconds: number): CliError {
  return new CliError(
    `the agent on ${path} accepted the connection but did not answer within ${timeoutSeconds} s (is it stopped or overloaded? --timeout <seconds> waits longer)`,
  );
}
