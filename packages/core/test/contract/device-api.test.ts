import { describe, expect, it } from 'vitest';
import {
  deviceRegistrationResultSchema,
  getDeploymentsResultSchema,
  MAX_MODEL_NAME_LENGTH,
  MAX_TENSOR_RANK,
  packageUrlOf,
  parsePackageUrl,
  sendHeartbeatRequestSchema,
  type SendHeartbeatRequest,
} from '../../src/contract/index.js';
import { ModelNameSchema } from '../../src/package/manifest.js';
import { TensorMetadataSchema } from '../../src/tensors/tensor-metadata.js';

const heartbeat: SendHeartbeatRequest = {
  AgentVersion: '0.1.0',
  DeviceName: 'cam_1',
  DeviceFleetName: 'cams',
  AgentMetrics: [{ MetricName: 'AgentStarts', Value: 1, Timestamp: 1_700_000_000.5 }],
  Models: [{ ModelName: 'resnet', ModelVersion: '1.0', LatestInference: 1_700_000_000, ModelMetrics: [] }],
  DeploymentResult: {
    DeploymentName: 'plan-1',
    DeploymentStatus: 'SUCCESS',
    DeploymentStartTime: '2023-11-14T22:13:20Z',
    DeploymentModels: [{ ModelHandle: 'm1', ModelName: 'resnet', State: 'DEPLOY', Status: 'SUCCESS' }],
  },
};

describe('device↔server contract', () => {
  it('reads what a device sends, timestamps as epoch ms', () => {
    const received = sendHeartbeatRequestSchema.parse(heartbeat);
    expect(received.AgentMetrics?.[0]?.Timestamp).toBe(1_700_000_000_500);
    expect(received.Models?.[0]?.LatestInference).toBe(1_700_000_000_000);
    expect(received.DeploymentResult?.DeploymentStartTime).toBe(1_700_000_000_000);
  });

  it('refuses NUL in free text, unknown states and over-long model names, naming the field', () => {
    const withNul = sendHeartbeatRequestSchema.safeParse({
      ...heartbeat,
      DeploymentResult: { DeploymentStatusMessage: 'ok\u0000' },
    });
    expect(withNul.success).toBe(false);
    expect(withNul.error?.issues[0]?.path).toEqual(['DeploymentResult', 'DeploymentStatusMessage']);
    const badState = sendHeartbeatRequestSchema.safeParse({
      ...heartbeat,
      DeploymentResult: { DeploymentModels: [{ Status: 'MAYBE' }] },
    });
    expect(badState.success).toBe(false);
    const longName = 'a'.repeat(MAX_MODEL_NAME_LENGTH + 1);
    expect(
      sendHeartbeatRequestSchema.safeParse({
        ...heartbeat,
        Models: [{ ModelName: longName, ModelVersion: '1' }],
      }).success,
    ).toBe(false);
  });

  it('holds one rule per limit: packaged names are a subset of reported ones, tensors share one rank', () => {
    expect(ModelNameSchema.safeParse('a'.repeat(64)).success).toBe(false);
    const tensor = (rank: number) => ({ name: 'x', dataType: 'FLOAT32', shape: Array<number>(rank).fill(1) });
    expect(TensorMetadataSchema.safeParse(tensor(MAX_TENSOR_RANK)).success).toBe(true);
    expect(TensorMetadataSchema.safeParse(tensor(MAX_TENSOR_RANK + 1)).success).toBe(false);
  });

  it('reads registration and deployment answers as Edge Manager sent them', () => {
    expect(
      deviceRegistrationResultSchema.parse({ DeviceRegistration: 'REGISTERED', CacheTTL: '60' }),
    ).toEqual({
      DeviceRegistration: 'REGISTERED',
      CacheTTL: '60',
    });
    const deployments = getDeploymentsResultSchema.parse({
      Deployments: [
        {
          DeploymentName: 'plan-1',
          Type: 'Model',
          FailureHandlingPolicy: 'ROLLBACK_ON_FAILURE',
          Definitions: [
            {
              ModelHandle: 'm1',
              S3Url: 's3://bucket/m1.tar.gz',
              Checksum: { Type: 'SHA1', Sum: 'da39a3ee5e6b4b0d3255bfef95601890afd80709' },
              State: 'DEPLOY',
            },
          ],
        },
      ],
    });
    expect(deployments.Deployments?.[0]?.Definitions?.[0]?.State).toBe('DEPLOY');
  });

  it('admits a PackageUrl only on the package routes, refusing every way out of them', () => {
    expect(parsePackageUrl('/api/v1/device/packages/pack-1')).toEqual({
      ref: { kind: 'job', job: 'pack-1' },
    });
    const uploaded = packageUrlOf({ kind: 'uploaded', modelName: 'resnet', modelVersion: '1.0 rc_1' });
    expect(uploaded).toBe('/api/v1/device/model-packages/resnet/1.0%20rc_1');
    expect(parsePackageUrl(uploaded)).toEqual({
      ref: { kind: 'uploaded', modelName: 'resnet', modelVersion: '1.0 rc_1' },
    });
    const refused = [
      '/api/v1/device/packages/../../admin',
      '/api/v1/device/packages/..',
      '/api/v1/device/packages/.',
      '/api/v1/device/packages/%2e%2e',
      '/api/v1/device/packages/%2E%2E/x',
      '/api/v1/device/packages/pack-1/..',
      '/api/v1/device/model-packages/resnet/..',
      '/api/v1/device/model-packages/resnet/%2e%2e',
      '/api/v1/device/model-packages/resnet/./1.0',
      '/api/v1/device/model-packages/..%2F..%2Fadmin/1',
      '/api/v1/device/model-packages/resnet%2f1/1',
      '/api/v1/device/packages/..\\..\\admin',
      '/api/v1/device/packages/%5c',
      '/api/v1/device/packages//pack-1',
      '/api/v1/device//packages/pack-1',
      '//evil.example/api/v1/device/packages/pack-1',
      '/api/v1/device/packages/pack-1?x=1',
      '/api/v1/device/packages/pack-1#x',
      '/api/v1/device/packages/%zz',
      '/api/v1/device/deployments',
      '/api/v1/device/packages/',
      `/api/v1/device/packages/${'a'.repeat(64)}`,
    ];
    for (const url of refused) {
      const parsed = parsePackageUrl(url);
      expect(parsed, url).toEqual({
        error: expect.stringMatching(/expected \/api\/v1\/device\/packages\/<job name>/),
      });
      const answer = getDeploymentsResultSchema.safeParse({
        Deployments: [{ DeploymentName: 'p', Definitions: [{ ModelHandle: 'm', PackageUrl: url }] }],
      });
      expect(answer.success, url).toBe(false);
      expect(answer.error?.issues[0]?.path).toEqual(['Deployments', 0, 'Definitions', 0, 'PackageUrl']);
    }
  });
});
