export { startPeriodicTask, type PeriodicTask } from './periodic-task.js';
export {
  DEFAULT_LEASE_MS,
  leaseExpiredBefore,
  newClaimToken,
  renewLease,
  type LeaseRenewal,
} from './lease.js';
