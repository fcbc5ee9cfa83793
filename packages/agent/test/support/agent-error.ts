import { expect } from 'vitest';
import { AgentError } from '../../src/models/index.js';

/**
 * The AgentError that `attempt` (a promise, or a call that returns or throws) fails with; fails the test when it
 * succeeds or fails with anything else.
 */
export async function agentErrorOf(attempt: Promise<unknown> | (() => unknown)): Promise<AgentError> {
  try {
    await (typeof attempt === 'function' ? attempt() : attempt);
  } catch (error) {
    expect(error).toBeInstanceOf(AgentError);
    return error as AgentError;
  }
  throw new Error('expected an AgentError');
}
