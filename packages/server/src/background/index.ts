export { startPeriodicTask, type PeriodicTask } from './periodic-task.js';
export {
  DEFAULT_LEASE_MS,
  leaseExpiredBefore,
  leaseRenewalIntervalMs,
  newClaimToken,
  renewLease,
  type LeaseRenewal,
} from './lease.js';
export { armDeadline, type Deadline } from './deadline.js';
export {
  REPEATED_FAILURE_LOG_INTERVAL_MS,
  RepeatedFailureLog,
  type RepeatedFailureLogOptions,
} from './repeated-failure-log.js';
