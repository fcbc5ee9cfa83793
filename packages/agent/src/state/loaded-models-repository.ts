import type { Database } from 'better-sqlite3';

export interface LoadedModelRow {
  /** The name (SageMaker handle) it was loaded under. */
  name: string;
  /** The url as given to LoadModel. */
  url: string;
  loadedAt: number;
}

/** The models to load again after a restart. The caller records a model once its load succeeded. */
export class LoadedModelsRepository {
  readonly #db: Database;

  constructor(db: Database) {
    this.#db = db;
  }

  /** Records a loaded model (replacing any record of the same name); it goes last in load order. */
  record(model: LoadedModelRow): void {
    this.#db
      .prepare(
        `INSERT OR REPLACE INTO loaded_models (name, url, loaded_at, ordinal)
         VALUES (?, ?, ?, (SELECT coalesce(max(ordinal), 0) + 1 FROM loaded_models))`,
      )
      .run(model.name, model.url, model.loadedAt);
  }

  /** Forgets a model (it was unloaded); returns whether it was recorded. */
  remove(name: string): boolean {
    return this.#db.prepare('DELETE FROM loaded_models WHERE name = ?').run(name).changes > 0;
  }

  /** In the order they were loaded. */
  list(): LoadedModelRow[] {
    return (
      this.#db.prepare('SELECT name, url, loaded_at FROM loaded_models ORDER BY ordinal').all() as {
        name: string;
        url: string;
        loaded_at: number;
      }[]
    ).map((r) => ({ name: r.name, url: r.url, loadedAt: r.loaded_at }));
  }
}
