/**
 * The heartbeat's DeployedModelsNotLoaded is input a device (possibly a compromised one) sends the server: every
 * size and text rule holds, as for the Models list.
 */
import { describe, expect, it } from 'vitest';
import { sendHeartbeatRequestSchema } from '../../src/contract/index.js';
import { MAX_MESSAGE_LENGTH, MAX_MODELS_PER_HEARTBEAT } from '../../src/contract/field-rules.js';

const entry = {
  ModelHandle: 'detector',
  DeploymentName: 'rollout-1',
  UnloadedByApplication: true,
  Since: 1_790_000_000,
  Reason: 'unloaded by an application',
};
const heartbeat = (list: unknown[]) => ({
  AgentVersion: '0.1.0',
  DeviceName: 'cam_1',
  DeviceFleetName: 'cams',
  DeployedModelsNotLoaded: list,
});
const refusedAt = (list: unknown[]) => {
  const parsed = sendHeartbeatRequestSchema.safeParse(heartbeat(list));
  return parsed.success ? undefined : parsed.error.issues.map((issue) => issue.path.join('.'));
};

describe('DeployedModelsNotLoaded in a heartbeat', () => {
  it('takes up to the Models list limit, and refuses one more', () => {
    const full = Array.from({ length: MAX_MODELS_PER_HEARTBEAT }, (_, i) => ({
      ...entry,
      ModelHandle: `m${i}`,
    }));
    expect(refusedAt(full)).toBeUndefined();
    expect(refusedAt([...full, entry])).toEqual(['DeployedModelsNotLoaded']);
  });

  it('refuses an over-long or NUL-carrying reason, a bad handle and a missing flag, naming the field', () => {
    expect(refusedAt([{ ...entry, Reason: 'x'.repeat(MAX_MESSAGE_LENGTH + 1) }])).toEqual([
      'DeployedModelsNotLoaded.0.Reason',
    ]);
    expect(refusedAt([{ ...entry, Reason: 'a\0b' }])).toEqual(['DeployedModelsNotLoaded.0.Reason']);
    expect(refusedAt([{ ...entry, ModelHandle: '../etc' }])).toEqual([
      'DeployedModelsNotLoaded.0.ModelHandle',
    ]);
    const { UnloadedByApplication: _flag, ...flagless } = entry;
    expect(refusedAt([flagless])).toEqual(['DeployedModelsNotLoaded.0.UnloadedByApplication']);
  });
});
