import {
  PackageFileError,
  PackageInvalidError,
  PackageNotFoundError,
  PackageVerificationError,
  UnsupportedFileError,
} from '@edgefleet/core';
import { InferenceError } from '../inference/index.js';
import type { RegistryObserver } from '../models/index.js';
import { AgentError } from '../models/agent-error.js';
import { isStorageFull } from './storage-full.js';

/** Models remembered at most: the oldest failure is forgotten first, so memory stays bounded. */
export const MAX_LOAD_FAILURES = 1024;

export interface LoadFailure {
  /** The load's error message (a refused signature names the file that changed): the agent's log and status. */
  reason: string;
  /**
   * What went wrong in words that name no local path (loadFailureCategory): what leaves the device (the
   * heartbeat), where any reader of the device on the server sees it.
   */
  category: string;
  /** When it failed (epoch ms). */
  at: number;
}

/**
 * Why a model the agent loaded again at its start (restoreLoadedModels) did not load: status and heartbeats carry
 * it for a deployed handle that serves nothing, instead of pointing at the log. Forgotten once the name loads.
 * In memory only: the next start tries the load again and finds the reason anew.
 */
export class LoadFailures {
  readonly #failures = new Map<string, LoadFailure>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  record(name: string, error: unknown): void {
    this.#failures.delete(name);
    if (this.#failures.size >= MAX_LOAD_FAILURES) {
      const oldest = this.#failures.keys().next().value;
      if (oldest !== undefined) this.#failures.delete(oldest);
    }
    this.#failures.set(name, {
      reason: (error as Error).message ?? String(error),
      category: loadFailureCategory(error),
      at: this.#now(),
    });
  }

  get(name: string): LoadFailure | undefined {
    return this.#failures.get(name);
  }

  /** The registry's observer: a name that loads (again, or a new deployment of it) has no failure any more. */
  observer(): RegistryObserver {
    return { onLoaded: (model) => void this.#failures.delete(model.name) };
  }
}

const INFERENCE_CATEGORIES: Partial<Record<string, string>> = {
  'model-rejected': 'the runtime refused the model',
  'out-of-memory': 'not enough memory to load the model',
  unbatchable: 'the model cannot be loaded with the dynamic batching its rule asks for',
  'worker-died': 'the inference worker stopped during the load',
  closed: 'the agent was shutting down',
};

/**
 * Why a load failed, as a category without local paths (the package folder, the file a signature no longer
 * covers): the package-relative name of the file at fault is kept, as it names nothing of the device.
 */
export function loadFailureCategory(error: unknown): string {
  if (isStorageFull(error)) return "the device's storage is full";
  for (let e = error, depth = 0; e !== null && typeof e === 'object' && depth < 8; depth++) {
    if (e instanceof PackageVerificationError)
      return `the package failed signature verification (${e.reason}${e.path !== undefined ? `: ${e.path}` : ''})`;
    if (e instanceof PackageNotFoundError) return 'the package is missing from the device';
    if (e instanceof PackageInvalidError || e instanceof UnsupportedFileError)
      return 'the package is invalid';
    // `file` is as the caller named it: kept only when package-relative.
    if (e instanceof PackageFileError)
      return `a file of the package cannot be read (${e.problem}${e.file.startsWith('/') ? '' : `: ${e.file}`})`;
    if (e instanceof InferenceError) return INFERENCE_CATEGORIES[e.kind] ?? `the load failed (${e.kind})`;
    e = (e as { cause?: unknown }).cause;
  }
  return error instanceof AgentError ? `the load failed (${error.code})` : 'the load failed';
}
