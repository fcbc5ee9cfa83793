// Retry timing shared by the agent's capabilities (capture's spool and disk writes, the fleet client).
export { backoffDelay, type BackoffPolicy } from './backoff.js';
export { interruptibleSleep, type InterruptibleSleep } from './interruptible-sleep.js';
