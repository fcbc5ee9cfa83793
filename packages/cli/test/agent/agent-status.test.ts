import { describe, expect, it } from 'vitest';
import { agentStatusSchema, printAgentStatus } from '../../src/agent/agent-status.js';
import type { Output } from '../../src/cli-io.js';

/** The human text printAgentStatus gives for `status` (as the agent answers it). */
function printed(status: unknown): string {
  let text = '';
  const output = {
    json: false,
    invocation: 'edgefleet',
    say: () => {},
    result: (_value: unknown, human: () => string | string[]) => {
      const lines = human();
      text = Array.isArray(lines) ? lines.join('\n') : lines;
    },
  } as unknown as Output;
  printAgentStatus(agentStatusSchema.parse(status), output);
  return text;
}

const committed = {
  handle: 'detector',
  deployment: 'base',
  state: 'Committed',
  version: '1.0',
  previousVersion: null,
  held: false,
  reason: null,
  updatedAt: '2026-12-07T12:00:00.000Z',
};

describe('edgefleet agent status', () => {
  it('says a full disk that holds a deployment up, and why a deployed model did not load', () => {
    const text = printed({
      version: '1.0.0',
      models: [],
      deployments: {
        enabled: true,
        storageFull: {
          deployment: 'two',
          reason: 'database or disk is full',
          message: "the device's storage is full: database or disk is full; …",
          since: '2026-12-07T12:01:00.000Z',
        },
        models: [
          {
            ...committed,
            loaded: false,
            notLoadedReason: "its load at the agent's start failed, so the handle serves nothing",
            loadFailure: 'file model.onnx was modified',
          },
        ],
      },
    });
    expect(text).toContain(
      "deployments: STORAGE FULL since 2026-12-07T12:01:00.000Z (deployment two): the device's storage is full: database or disk is full",
    );
    expect(text).toMatch(
      /Committed \(NOT LOADED\).*the handle serves nothing: file model\.onnx was modified/,
    );
  });

  it("an older agent's status (neither member) prints as before", () => {
    const text = printed({
      version: '1.0.0',
      models: [],
      deployments: { enabled: true, models: [{ ...committed }] },
    });
    expect(text).not.toContain('STORAGE FULL');
    expect(text).toMatch(/detector .*Committed/);
  });
});
