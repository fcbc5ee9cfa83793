import {
  PackageFileError,
  PackageInvalidError,
  PackageNotFoundError,
  PackageVerificationError,
  UnsupportedFileError,
} from '@edgefleet/core';
import { InferenceError } from '../inference/index.js';
import { AgentError, type AgentErrorCode } from './agent-error.js';
import { agentSideFailure } from './caller-access.js';

// What goes wrong while loading or running a model, translated into the agent's error codes (spec section 4).

export function packageFailure(error: unknown, dir: string): AgentError {
  if (error instanceof AgentError) return error;
  if (error instanceof PackageNotFoundError) {
    return new AgentError(
      'NOT_FOUND',
      `${error.message}; expected the folder of an extracted model package`,
      { cause: error },
    );
  }
  if (error instanceof PackageVerificationError) {
    return new AgentError(
      'FAILED_PRECONDITION',
      `model package ${dir} failed signature verification (${error.reason}): ${error.message}`,
      { cause: error },
    );
  }
  if (error instanceof PackageInvalidError || error instanceof UnsupportedFileError) {
    return new AgentError('FAILED_PRECONDITION', error.message, { cause: error });
  }
  // The agent out of descriptors or memory, or its disk failing, while reading a file: its own trouble, not the
  // package's (nor, for a caller, the caller's rights), so a retry may succeed.
  const failure = error instanceof PackageFileError ? agentSideFailure(error) : undefined;
  if (failure?.code !== undefined)
    return new AgentError(
      failure.code === 'EIO' ? 'UNAVAILABLE' : 'RESOURCE_EXHAUSTED',
      `the agent could not read model package ${dir} (${failure.code}); try again later`,
      { cause: error },
    );
  // A package file gone, unreadable or swapped while being read (its message names it): the package's fault.
  if (error instanceof PackageFileError) {
    return new AgentError('FAILED_PRECONDITION', `model package ${dir} cannot be used: ${error.message}`, {
      cause: error,
    });
  }
  return asAgentError(error, `opening model package ${dir}`);
}

/** A failed load as the AgentError its callers answer (a refused batching rule, 'unbatchable', says so). */
export function loadFailure(error: unknown, name: string, dir: string): AgentError {
  if (error instanceof InferenceError) {
    switch (error.kind) {
      case 'unbatchable':
        return new AgentError(
          'FAILED_PRECONDITION',
          `the model in package ${dir} (for ${JSON.stringify(name)}) cannot be loaded with the dynamic batching edgefleet_dynamic_batching asks for it: ${error.message}; remove its rule to load it unbatched`,
          { cause: error },
        );
      case 'model-rejected':
        return new AgentError(
          'FAILED_PRECONDITION',
          `ONNX Runtime cannot load the model in package ${dir} (for ${JSON.stringify(name)}): ${error.message}`,
          { cause: error },
        );
      case 'out-of-memory':
        return new AgentError(
          'RESOURCE_EXHAUSTED',
          `not enough memory to load model ${JSON.stringify(name)}: ${error.message}`,
          {
            cause: error,
          },
        );
      case 'closed':
        return new AgentError('UNAVAILABLE', 'the agent is shutting down; the load was abandoned', {
          cause: error,
        });
      default:
        return new AgentError('INTERNAL', `loading model ${JSON.stringify(name)} failed: ${error.message}`, {
          cause: error,
        });
    }
  }
  return asAgentError(error, `loading model ${JSON.stringify(name)}`);
}

export function predictFailure(error: unknown, name: string): AgentError {
  if (error instanceof AgentError) return error;
  if (error instanceof InferenceError) {
    const code: Record<typeof error.kind, AgentErrorCode> = {
      'unknown-model': 'NOT_FOUND',
      unloaded: 'NOT_FOUND',
      'queue-full': 'RESOURCE_EXHAUSTED',
      'out-of-memory': 'RESOURCE_EXHAUSTED',
      closed: 'UNAVAILABLE',
      'worker-died': 'INTERNAL',
      'run-failed': 'INTERNAL',
      'segment-unusable': 'INVALID_ARGUMENT',
      'no-instance': 'INTERNAL',
      'model-rejected': 'INTERNAL',
      unbatchable: 'INTERNAL',
    };
    const prefix =
      error.kind === 'run-failed'
        ? `ONNX Runtime failed to run model ${JSON.stringify(name)}: `
        : error.kind === 'unloaded' || error.kind === 'unknown-model'
          ? `model ${JSON.stringify(name)} was unloaded before this request ran: `
          : '';
    return new AgentError(code[error.kind], `${prefix}${error.message}`, { cause: error });
  }
  return asAgentError(error, `predicting with model ${JSON.stringify(name)}`);
}

export function asAgentError(error: unknown, doing: string): AgentError {
  if (error instanceof AgentError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new AgentError('INTERNAL', `unexpected failure ${doing}: ${message}`, { cause: error });
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
  if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} bytes`;
}
