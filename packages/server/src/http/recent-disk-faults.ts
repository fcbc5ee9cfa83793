import { diskFaultComponentOf, type StateComponent } from '../errors/dependency-unavailable.js';

/**
 * How long after a write that a failing disk refused (an I/O error) `/readyz` reports its component not ready.
 * Long enough for a balancer probing every 5-10 s to see it, short enough that a server whose disk recovered
 * (and which gets no requests while it is out of the balancer) is ready again soon.
 */
export const DISK_FAULT_READINESS_WINDOW_MS = 30_000;

/**
 * The writes a failing disk (an I/O error) refused lately, per component, for `/readyz`: the probe's own read
 * (SELECT 1) may still succeed on a failing disk. A full disk is not noted here: readiness asks the file system
 * for free space (checkFreeSpace), since one write larger than the space left fails on its own while smaller
 * ones still fit. One instance per server, fed by its OutageLog (every listener's and the facade's failed
 * requests), and told of each write that succeeds after (the SQLite driver's committed writes).
 */
export class RecentDiskFaults {
  readonly #now: () => number;
  readonly #windowMs: number;
  readonly #last = new Map<StateComponent, number>();

  constructor(options: { now?: () => number; windowMs?: number } = {}) {
    this.#now = options.now ?? Date.now;
    this.#windowMs = options.windowMs ?? DISK_FAULT_READINESS_WINDOW_MS;
  }

  /** Notes `error` when it is an I/O error of a disk (diskFaultComponentOf); any other error is ignored. */
  record(error: unknown): void {
    const disk = diskFaultComponentOf(error);
    if (disk?.fault === 'io') this.#last.set(disk.component, this.#now());
  }

  /**
   * A write to `component` reached its disk: a failure noted before no longer makes it unready (a transient I/O
   * error must not keep a server out of its balancer for the whole window once writes succeed again).
   */
  writeSucceeded(component: StateComponent): void {
    this.#last.delete(component);
  }

  /** Throws, saying why, when a write to `component` failed with an I/O error within the window. */
  check(component: StateComponent): void {
    const at = this.#last.get(component);
    if (at === undefined) return;
    const ago = this.#now() - at;
    if (ago >= this.#windowMs) {
      this.#last.delete(component);
      return;
    }
    throw new Error(
      `a write to the ${component} failed ${Math.round(ago / 1000)} s ago: its disk failed it (an I/O error)` +
        `; ready again at the next write that succeeds, or ${Math.round(this.#windowMs / 1000)} s after the last such failure`,
    );
  }
}
