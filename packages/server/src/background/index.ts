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
