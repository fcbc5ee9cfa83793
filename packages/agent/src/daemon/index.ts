// The agent process: start-up (config, the data root's lock, socket, workers, preloaded models, listeners),
// logging, graceful shutdown.
export {
  DEFAULT_SHUTDOWN_GRACE_MS,
  startAgentDaemon,
  type AgentDaemon,
  type AgentDaemonOptions,
} from './agent-daemon.js';
export { EXIT_CODES, StartupError, type ExitCode } from './exit-codes.js';
export { createAgentLogger, registryLogger, type AgentLoggerOptions } from './logger.js';
export { agentVersion, runAgent, type RunAgentOptions } from './run-agent.js';
export { prepareSocketPath } from './socket-path.js';
