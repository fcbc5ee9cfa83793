import { describe, expect, it } from 'vitest';
import { notLoadedLine } from '../../src/device/device-command.js';

describe('device describe: a deployed model not loaded', () => {
  it('names the handle, its model when another, version and deployment, and why', () => {
    expect(
      notLoadedLine({
        modelHandle: 'front',
        deploymentName: 'rollout-3',
        modelName: 'detector',
        modelVersion: '2.1',
        unloadedByApplication: false,
        reason:
          'not loaded since the agent started: still loading, or its load failed (the agent log says why)',
      }),
    ).toBe(
      '  front (model detector) 2.1 (deployment rollout-3) is not loaded: not loaded since the agent started: still loading, or its load failed (the agent log says why)',
    );
    expect(
      notLoadedLine({
        modelHandle: 'detector',
        deploymentName: 'rollout-3',
        unloadedByApplication: true,
        reason: 'unloaded by an application (UnLoadModel or the REST unload)',
      }),
    ).toBe(
      '  detector (deployment rollout-3) is not loaded: unloaded by an application; it stays unloaded until it is loaded or deployed again',
    );
  });
});
