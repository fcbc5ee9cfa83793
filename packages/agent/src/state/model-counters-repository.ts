import type { Database } from 'better-sqlite3';

/** A model's activity as the heartbeat reports it. Times are epoch milliseconds; null = never. */
export interface ModelCounters {
  model: string;
  inferences: number;
  samples: number;
  lastInferenceAt: number | null;
  lastSampleAt: number | null;
}

/** Per-model counters, added to in increments (see ModelActivity, which batches them). */
export class ModelCountersRepository {
  readonly #db: Database;

  constructor(db: Database) {
    this.#db = db;
  }

  /** Adds the increments' counts and keeps the later of each time. One transaction. */
  add(increments: readonly ModelCounters[]): void {
    const upsert = this.#db.prepare(
      `INSERT INTO model_counters (model, inferences, samples, last_inference_at, last_sample_at)
       VALUES (@model, @inferences, @samples, @lastInferenceAt, @lastSampleAt)
       ON CONFLICT (model) DO UPDATE SET
         inferences = inferences + excluded.inferences,
         samples = samples + excluded.samples,
         last_inference_at = max(coalesce(last_inference_at, 0), coalesce(excluded.last_inference_at, 0)),
         last_sample_at = max(coalesce(last_sample_at, 0), coalesce(excluded.last_sample_at, 0))`,
    );
    this.#db.transaction(() => {
      for (const increment of increments) upsert.run(increment);
    })();
  }

  list(): ModelCounters[] {
    return (
      this.#db.prepare('SELECT * FROM model_counters ORDER BY model').all() as {
        model: string;
        inferences: number;
        samples: number;
        last_inference_at: number | null;
        last_sample_at: number | null;
      }[]
    ).map((r) => ({
      model: r.model,
      inferences: r.inferences,
      samples: r.samples,
      // 0 stands for "never" after max(coalesce(…)); report it as null.
      lastInferenceAt: r.last_inference_at || null,
      lastSampleAt: r.last_sample_at || null,
    }));
  }
}
