/** A dependency `/readyz` verifies: `check` throws, saying why, when it cannot be used. */
export interface ReadinessCheck {
  name: string;
  check(): Promise<void>;
}

/**
 * How long one readiness check may take before it counts as failing (a hung statfs on a dead network mount, a
 * query waiting for a connection or behind a lock): well under a balancer's probe timeout (commonly 5 s), so the
 * probe answers "not ready" with the reason rather than not at all.
 */
const DEFAULT_READINESS_CHECK_TIMEOUT_MS = 2_000;

/** A readiness check that did not answer within its deadline. */
export class ReadinessCheckTimeoutError extends Error {
  override readonly name = 'ReadinessCheckTimeoutError';
  constructor(check: string, timeoutMs: number, runningMs: number) {
    super(
      `the ${check} check did not answer within ${timeoutMs} ms (running for ${runningMs} ms: a hung disk or file ` +
        'system, or a query waiting for a connection or behind a lock); it is not started again until it answers',
    );
  }
}

/** What one evaluation found: each check's name, and the error of each that failed. */
interface ReadinessResult {
  passed: string[];
  failed: { name: string; error: unknown }[];
}

/**
 * Runs a server's readiness checks for `/readyz`, shared by its listeners. Probes that arrive while an evaluation
 * runs share it: a flood of probes (every balancer, every replica's monitor) costs one database query and one
 * statfs per evaluation, not one per probe. Each check has a deadline; one still running past it fails as not
 * answering, and is not started again while it runs (a hung statfs holds one of libuv's few threads: starting it
 * at every probe would take them all), later evaluations waiting on that same run, again for one deadline.
 */
export class Readiness {
  readonly #checks: readonly ReadinessCheck[];
  readonly #timeoutMs: number;
  readonly #now: () => number;
  #evaluation: Promise<ReadinessResult> | undefined;
  /** Each check's run in progress (one that outlived its deadline stays here until it settles). */
  readonly #running = new Map<string, { settled: Promise<unknown>; startedAt: number }>();

  constructor(checks: readonly ReadinessCheck[], options: { timeoutMs?: number; now?: () => number } = {}) {
    this.#checks = checks;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_READINESS_CHECK_TIMEOUT_MS;
    this.#now = options.now ?? Date.now;
  }

  /** Every check's outcome; the evaluation in progress when there is one. */
  evaluate(): Promise<ReadinessResult> {
    this.#evaluation ??= this.#evaluate().finally(() => {
      this.#evaluation = undefined;
    });
    return this.#evaluation;
  }

  async #evaluate(): Promise<ReadinessResult> {
    const outcomes = await Promise.all(
      this.#checks.map(async ({ name, check }) => ({ name, error: await this.#outcomeOf(name, check) })),
    );
    return {
      passed: outcomes.filter((o) => o.error === undefined).map((o) => o.name),
      failed: outcomes.filter((o) => o.error !== undefined) as ReadinessResult['failed'],
    };
  }

  /** Undefined when the check passed within the deadline; otherwise why not. */
  async #outcomeOf(name: string, check: () => Promise<void>): Promise<unknown> {
    let run = this.#running.get(name);
    if (run === undefined) {
      // The outcome as a value (undefined: passed), so that a run nobody awaits any more rejects nothing.
      const settled = Promise.resolve()
        .then(check)
        .then(
          () => undefined,
          (error: unknown) => error ?? new Error(`the ${name} check failed`),
        );
      run = { settled, startedAt: this.#now() };
      this.#running.set(name, run);
      const started = run;
      void settled.then(() => {
        if (this.#running.get(name) === started) this.#running.delete(name);
      });
    }
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.#timeoutMs);
    });
    try {
      const outcome = await Promise.race([run.settled, deadline]);
      if (outcome !== 'timeout') return outcome;
      return new ReadinessCheckTimeoutError(name, this.#timeoutMs, this.#now() - run.startedAt);
    } finally {
      clearTimeout(timer);
    }
  }
}
