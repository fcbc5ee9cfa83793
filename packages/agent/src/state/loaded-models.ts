import type { CallerIdentity, ModelDescription, RegistryObserver } from '../models/index.js';
import { settlesWithin } from '../retry/index.js';
import { LineLimiter } from '@edgefleet/core';
import type { LoadedModelsRepository } from './loaded-models-repository.js';
import { isStorageFull } from './storage-full.js';

/** What restoring needs of the registry (ModelRegistry fits). */
export interface RestorableRegistry {
  load(request: { url: string; name: string; caller?: CallerIdentity }): Promise<ModelDescription>;
  has(name: string): boolean;
}

export interface RestoreLogger {
  info(details: Record<string, unknown>, message: string): void;
  warn(details: Record<string, unknown>, message: string): void;
}

/**
 * Keeps the set of loaded models in the local database: a model is recorded when a load succeeds, with the caller
 * it was loaded for where the agent checked one's rights (so that restoring checks them again), and forgotten
 * when it is unloaded (not when the agent stops: those are loaded again at the next start). A write that fails
 * (a full disk) fails neither the load nor the unload: it is logged, at most once a minute with a count, since
 * the next start then loads a different set of models.
 */
export function recordLoadedModels(
  repository: LoadedModelsRepository,
  now: () => number = Date.now,
  logger?: Pick<RestoreLogger, 'warn'>,
): RegistryObserver {
  const failureLines = new LineLimiter({ now });
  const recording = (what: string, write: () => void): void => {
    try {
      write();
    } catch (error) {
      const admitted = failureLines.admit('record');
      if (admitted === undefined) return;
      const message = (error as Error).message;
      logger?.warn(
        {
          event: 'loaded-models-unwritable',
          reason: message,
          ...(admitted.leftOut > 0 && { failuresNotLogged: admitted.leftOut }),
          ...(!isStorageFull(error) && { err: error }),
        },
        `cannot record ${what} in the local database (${message}): the next start may load a different set of models` +
          (admitted.leftOut > 0 ? ` (${admitted.leftOut} more such failure(s) since the last line)` : ''),
      );
    }
  };
  return {
    onLoaded: (model, loadedFor) =>
      recording(`that model ${JSON.stringify(model.name)} is loaded`, () =>
        repository.record({
          name: model.name,
          url: model.url,
          loadedAt: now(),
          ...(loadedFor && { caller: loadedFor }),
        }),
      ),
    onUnloaded: (name) =>
      recording(`that model ${JSON.stringify(name)} was unloaded`, () => void repository.remove(name)),
  };
}

/** How long start-up waits for one restored load by default (`edgefleet_startup_load_timeout_seconds`). */
export const DEFAULT_STARTUP_LOAD_TIMEOUT_MS = 60_000;

/**
 * Loads again, in their original order, the models that were loaded when the agent last stopped (or crashed).
 * A model already loaded or still loading (preloaded from the config) is skipped; one whose package is gone
 * (NOT_FOUND) is forgotten; one loaded for a caller is loaded for that caller again, through the same check of
 * its rights as LoadModel (a refusal is NOT_FOUND, so forgotten too: the caller is told nothing more, and may
 * load it again once it can read it); a record whose caller cannot be read is not loaded (never with the agent's
 * own rights) and is kept; any other failure is logged and kept for the next start. Each load is waited for at
 * most `deadlineMs`: one still going then is logged, handed to `onStillLoading`, and left to finish in the
 * background, and start-up goes on, so no package folder (a hung mount or so) can keep the agent from serving;
 * its record stays, so a crash meanwhile loses nothing. Returns the names loaded in time.
 */
export async function restoreLoadedModels(
  registry: RestorableRegistry,
  repository: LoadedModelsRepository,
  logger?: RestoreLogger,
  options: {
    deadlineMs?: number;
    /** Told of each load still going at its deadline (the daemon is not ready until they settle). */
    onStillLoading?: (name: string, loading: Promise<unknown>) => void;
    /** Told of each load that failed (LoadFailures keeps why, for status and heartbeats). */
    onFailed?: (name: string, error: unknown) => void;
  } = {},
): Promise<string[]> {
  const deadlineMs = options.deadlineMs ?? DEFAULT_STARTUP_LOAD_TIMEOUT_MS;
  const restored: string[] = [];
  for (const row of repository.list()) {
    const { name, url } = row;
    if (registry.has(name)) continue;
    if ('unreadableCaller' in row) {
      const error = new Error(
        `the caller it was loaded for, as recorded in the local database, cannot be read: ${row.unreadableCaller}; it is not loaded with the agent's own rights (unload it, or load it again)`,
      );
      options.onFailed?.(name, error);
      logger?.warn(
        { model: name, url, event: 'loaded-model-caller-unreadable' },
        `could not load model ${JSON.stringify(name)} again after the restart (from ${url}): ${error.message}`,
      );
      continue;
    }
    const caller = row.caller;
    const failed = (error: unknown): void => {
      const code = (error as { code?: string }).code;
      if (code === 'ALREADY_EXISTS') {
        // A preloaded model of that name still loading in the background: not a failure, nothing to retry.
        logger?.info(
          { model: name, url },
          `model ${JSON.stringify(name)} is already being loaded (edgefleet_preload_models); not loaded again from ${url}`,
        );
        return;
      }
      options.onFailed?.(name, error);
      let forgotten = false;
      if (code === 'NOT_FOUND') {
        try {
          repository.remove(name);
          forgotten = true;
        } catch (removeError) {
          // A late failure (a load finished in the background) may come after shutdown closed the database.
          logger?.warn(
            { err: removeError, model: name },
            `could not forget model ${JSON.stringify(name)} in the local database: ${(removeError as Error).message}`,
          );
        }
      }
      logger?.warn(
        { err: error, model: name, url, code, ...(caller && { callerUid: caller.uid }) },
        `could not load model ${JSON.stringify(name)} again after the restart (from ${url}${caller ? ` for uid ${caller.uid}` : ''})${forgotten ? (caller ? '; its package is gone, or that caller may no longer read it, so it is forgotten' : '; its package is gone, so it is forgotten') : '; will try again at the next start'}`,
      );
    };
    // Loaded for a caller: for that caller again, so that a folder swapped since is checked as LoadModel checks it.
    const loading = registry.load({ url, name, ...(caller && { caller }) });
    try {
      if (await settlesWithin(loading, deadlineMs)) {
        restored.push(name);
        continue;
      }
    } catch (error) {
      failed(error);
      continue;
    }
    logger?.warn(
      { model: name, url, deadlineMs },
      `model ${JSON.stringify(name)} (from ${url}) is still loading after ${deadlineMs / 1000} s; start-up goes on without it, and it keeps loading in the background (edgefleet_startup_load_timeout_seconds)`,
    );
    options.onStillLoading?.(name, loading);
    loading.then(
      () => logger?.info({ model: name }, `loaded model ${JSON.stringify(name)} again after the restart`),
      failed,
    );
  }
  if (restored.length > 0)
    logger?.info(
      { models: restored },
      `loaded ${restored.length} model(s) again that were loaded before the restart`,
    );
  return restored;
}
