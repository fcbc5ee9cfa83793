import { diskFaultComponentOf, type StateComponent } from '../errors/dependency-unavailable.js';

/**
 * How long after a write that a full or failing disk refused `/readyz` reports its component not ready. Long
 * enough for a balancer probing every 5-10 s to see it, short enough that a server whose disk was freed (and
 * which gets no requests while it is out of the balancer) is ready again soon.
 */
export const DISK_FAULT_READINESS_WINDOW_MS = 30_000;

/**
 * The writes a full or failing disk refused lately, per component, for `/readyz`: the trivial query it runs
 * (SELECT 1) still succeeds on a full disk, so readiness learns of the disk from the writes that failed.
 * One instance per server, fed by its OutageLog (every listener's and the facade's failed requests).
 */
export class RecentDiskFaults {
  readonly #now: () => number;
  readonly #windowMs: number;
  readonly #last = new Map<StateComponent, { at: number; fault: 'full' | 'io' }>();

  constructor(options: { now?: () => number; windowMs?: number } = {}) {
    this.#now = options.now ?? Date.now;
    this.#windowMs = options.windowMs ?? DISK_FAULT_READINESS_WINDOW_MS;
  }

  /** Notes `error` when it is a disk fault (diskFaultComponentOf); any other error is ignored. */
  record(error: unknown): void {
    const disk = diskFaultComponentOf(error);
    if (disk !== undefined) this.#last.set(disk.component, { at: this.#now(), fault: disk.fault });
  }

  /** Throws, saying why, when a write to `component` failed on its disk within the window. */
  check(component: StateComponent): void {
    const last = this.#last.get(component);
    if (last === undefined) return;
    const ago = this.#now() - last.at;
    if (ago >= this.#windowMs) {
      this.#last.delete(component);
      return;
    }
    throw new Error(
      `a write to the ${component} failed ${Math.round(ago / 1000)} s ago: ` +
        (last.fault === 'full'
          ? 'its disk is full (free space on it)'
          : 'its disk failed it (an I/O error)') +
        `; ready again ${Math.round(this.#windowMs / 1000)} s after the last such failure`,
    );
  }
}
