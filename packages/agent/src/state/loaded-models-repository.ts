import type { Database } from 'better-sqlite3';
import { z } from 'zod';
import type { CallerIdentity } from '../models/index.js';

export interface LoadedModelRow {
  /** The name (SageMaker handle) it was loaded under. */
  name: string;
  /** The url as given to LoadModel. */
  url: string;
  loadedAt: number;
  /**
   * Who it was loaded for, where the agent checked that caller's rights: loaded again only for them. Absent: the
   * agent's own load (or root's, or one recorded before callers were kept), loaded again with the agent's rights.
   */
  caller?: CallerIdentity;
}

/** A row whose caller column cannot be read (written by hand, or damaged): never loaded with the agent's rights. */
export interface UnreadableCallerRow {
  name: string;
  url: string;
  loadedAt: number;
  /** What is wrong with the stored caller. */
  unreadableCaller: string;
}

const CallerColumnSchema = z
  .object({
    uid: z.number().int().nonnegative(),
    gid: z.number().int().nonnegative(),
    groups: z.array(z.number().int().nonnegative()).max(65_536),
  })
  .strict();

/** The models to load again after a restart. The caller records a model once its load succeeded. */
export class LoadedModelsRepository {
  readonly #db: Database;

  constructor(db: Database) {
    this.#db = db;
  }

  /** Records a loaded model (replacing any record of the same name); it goes last in load order. */
  record(model: LoadedModelRow): void {
    const caller = model.caller
      ? JSON.stringify({ uid: model.caller.uid, gid: model.caller.gid, groups: [...model.caller.groups] })
      : null;
    this.#db
      .prepare(
        `INSERT OR REPLACE INTO loaded_models (name, url, loaded_at, ordinal, caller)
         VALUES (?, ?, ?, (SELECT coalesce(max(ordinal), 0) + 1 FROM loaded_models), ?)`,
      )
      .run(model.name, model.url, model.loadedAt, caller);
  }

  /** Forgets a model (it was unloaded); returns whether it was recorded. */
  remove(name: string): boolean {
    return this.#db.prepare('DELETE FROM loaded_models WHERE name = ?').run(name).changes > 0;
  }

  /** In the order they were loaded. */
  list(): (LoadedModelRow | UnreadableCallerRow)[] {
    return (
      this.#db.prepare('SELECT name, url, loaded_at, caller FROM loaded_models ORDER BY ordinal').all() as {
        name: string;
        url: string;
        loaded_at: number;
        caller: string | null;
      }[]
    ).map((r) => {
      const row = { name: r.name, url: r.url, loadedAt: r.loaded_at };
      if (r.caller === null) return row;
      let json: unknown;
      try {
        json = JSON.parse(r.caller);
      } catch {
        return { ...row, unreadableCaller: 'it is not JSON' };
      }
      const parsed = CallerColumnSchema.safeParse(json);
      return parsed.success
        ? { ...row, caller: parsed.data }
        : {
            ...row,
            unreadableCaller: `it is not {"uid","gid","groups"} of non-negative integers (${parsed.error.issues[0]?.message ?? 'invalid'})`,
          };
    });
  }
}
