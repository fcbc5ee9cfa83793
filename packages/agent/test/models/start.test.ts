import { mkdir, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { createRootCa, issueCodeSigningCertificate, signPackage } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseAgentConfig } from '../../src/config/index.js';
import { AgentMetrics } from '../../src/metrics/index.js';
import { AgentError, startModelService } from '../../src/models/index.js';
import { predictTensors, recordingLogger, scratch } from './helpers.js';

let files: Awaited<ReturnType<typeof scratch>>;

beforeAll(async () => {
  files = await scratch('agent-start-');
});
afterAll(async () => {
  await files?.cleanup();
});

const configOf = (json: Record<string, unknown>) =>
  parseAgentConfig(
    { edgefleet_inference_workers: 1, ...json },
    { cwd: files.root, cpuCount: 2, grpcSocketPath: join(files.root, 'a.sock') },
  ).config;

describe('startModelService', () => {
  it('wires trust, workers, metrics and the registry from the configuration', async () => {
    const root = createRootCa({ commonName: 'Fleet Root', validityDays: 2, keyType: 'ed25519' });
    const leaf = issueCodeSigningCertificate({
      issuer: root,
      commonName: 'CI',
      validityDays: 1,
      keyType: 'ed25519',
    });
    await mkdir(join(files.root, 'roots'));
    await writeFile(join(files.root, 'roots', 'fleet.pem'), root.certificatePem);
    const signed = await files.catalogue('tiny', 'signed');
    await signPackage(signed, {
      method: 'certificate',
      privateKeyPem: leaf.privateKeyPem,
      certificateChainPem: [leaf.certificatePem],
    });
    const unsigned = await files.catalogue('tiny', 'unsigned');

    const metrics = new AgentMetrics({ defaultMetrics: false });
    const service = await startModelService(configOf({ sagemaker_edge_core_root_certs_path: 'roots' }), {
      cwd: files.root,
      metrics,
    });
    try {
      expect(service.pool.workerCount).toBe(1);
      await service.registry.load({ url: relative(files.root, signed), name: 'signed' });
      expect(service.registry.describe('signed').signature.verified).toBe(true);
      await service.registry.predict('signed', predictTensors('tiny'));
      const refused = await service.registry
        .load({ url: unsigned, name: 'unsigned' })
        .catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(AgentError);
      expect((refused as AgentError).code).toBe('FAILED_PRECONDITION');
      expect(await metrics.registry.metrics()).toMatch(/edgefleet_inference_workers\{state="ready"\} 1/);
    } finally {
      await service.close();
    }
  });

  it('warns when there are no root certificates, and refuses an unusable trust folder naming the key', async () => {
    const { warnings, logger } = recordingLogger();
    const service = await startModelService(configOf({}), { cwd: files.root, logger });
    await service.close();
    expect(warnings).toEqual([
      expect.stringMatching(/root_certs_path is not set: .* without checking their signatures/),
    ]);

    await mkdir(join(files.root, 'empty-roots'));
    const error = await startModelService(configOf({ sagemaker_edge_core_root_certs_path: 'empty-roots' }), {
      cwd: files.root,
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).key).toBe('sagemaker_edge_core_root_certs_path');
    expect((error as ConfigError).message).toMatch(/holds no \*\.pem or \*\.crt files/);
  });
});
