import type { ModelDescription, RegistryObserver } from '../models/index.js';
import type { LoadedModelsRepository } from './loaded-models-repository.js';

/** What restoring needs of the registry (ModelRegistry fits). */
export interface RestorableRegistry {
  load(request: { url: string; name: string }): Promise<ModelDescription>;
  has(name: string): boolean;
}

export interface RestoreLogger {
  info(details: Record<string, unknown>, message: string): void;
  warn(details: Record<string, unknown>, message: string): void;
}

/**
 * Keeps the set of loaded models in the local database: a model is recorded when a load succeeds and forgotten
 * when it is unloaded (not when the agent stops: those are loaded again at the next start).
 */
export function recordLoadedModels(
  repository: LoadedModelsRepository,
  now: () => number = Date.now,
): RegistryObserver {
  return {
    onLoaded: (model) => repository.record({ name: model.name, url: model.url, loadedAt: now() }),
    onUnloaded: (name) => void repository.remove(name),
  };
}

/**
 * Loads again, in their original order, the models that were loaded when the agent last stopped (or crashed).
 * A model already loaded (preloaded from the config) is skipped; one whose package is gone (NOT_FOUND) is
 * forgotten; any other failure is logged and kept for the next start. Returns the names loaded.
 */
export async function restoreLoadedModels(
  registry: RestorableRegistry,
  repository: LoadedModelsRepository,
  logger?: RestoreLogger,
): Promise<string[]> {
  const restored: string[] = [];
  for (const { name, url } of repository.list()) {
    if (registry.has(name)) continue;
    try {
      await registry.load({ url, name });
      restored.push(name);
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === 'NOT_FOUND') repository.remove(name);
      logger?.warn(
        { err: error, model: name, url, code },
        `could not load model ${JSON.stringify(name)} again after the restart (from ${url})${code === 'NOT_FOUND' ? '; its package is gone, so it is forgotten' : '; will try again at the next start'}`,
      );
    }
  }
  if (restored.length > 0)
    logger?.info(
      { models: restored },
      `loaded ${restored.length} model(s) again that were loaded before the restart`,
    );
  return restored;
}
