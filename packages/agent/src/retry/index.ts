// Retry timing shared by the agent's capabilities (capture's spool and disk writes, the fleet client).
export { backoffDelay, type BackoffPolicy } from './backoff.js';
export { sleepUnlessAborted } from './interruptible-sleep.js';
export { settlesWithin } from './settles-within.js';
