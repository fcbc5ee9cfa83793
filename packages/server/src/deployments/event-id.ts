import { randomBytes } from 'node:crypto';

/** The start of every event id of millisecond `at` and later: ids begin with `at`, zero-padded to sort as text. */
export function eventIdFloor(at: number): string {
  return String(at).padStart(15, '0');
}

/**
 * Event ids sort in time order: the event's millisecond, then the process's monotonic clock (events of one
 * millisecond, e.g. a device's failure and the stage it fails, keep the order they were written in), then
 * random bytes against collisions between replicas.
 */
export function eventId(at: number): string {
  const tick = process.hrtime.bigint().toString().padStart(20, '0');
  return `${eventIdFloor(at)}-${tick}-${randomBytes(4).toString('hex')}`;
}
