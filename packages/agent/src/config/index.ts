export { ConfigError } from './errors.js';
export {
  parseCommandLine,
  CommandLineOptionsSchema,
  DEFAULT_MAX_MESSAGE_BYTES,
  MAX_UNIX_SOCKET_PATH_BYTES,
  type CommandLineOptions,
  type CommandLineResult,
} from './command-line.js';
export { AgentConfigSchema, type AgentConfig } from './agent-config.js';
export {
  parseAgentConfig,
  defaultRestSocketPath,
  CONFIG_KEYS,
  DEFAULTS as CONFIG_DEFAULTS,
  type ConfigKey,
  type ConfigContext,
  type ParsedConfig,
} from './config-file.js';
export { loadAgentConfig, checkPaths } from './load.js';
export { parseBackendOptions, mapBackendOptions } from './backend-options.js';
export {
  AutoCaptureRuleSchema,
  DEFAULT_CAPTURE_DISK_QUOTA_BYTES,
  DEFAULT_CAPTURE_MIN_FREE_BYTES,
  DEFAULT_SPOOL_QUOTA_BYTES,
  type AutoCaptureRule,
} from './capture-rules.js';
export { DynamicBatchingRuleSchema, type DynamicBatchingRule } from './batching-rules.js';
