import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { signPackage, type TrustPolicy } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import {
  callError,
  referenceBytes,
  useAgentTestBed,
  wireInputs,
  type Scratch,
  type TestAgent,
} from './helpers.js';
import { devPki, trustFolder, type CertificateSigner } from '../support/dev-pki.js';

let files: Scratch;
let agent: TestAgent;
let trust: TrustPolicy;
let signer: CertificateSigner;
let strangerSigner: typeof signer;

useAgentTestBed({
  prefix: 'agent-grpc-sig-',
  workers: 1,
  async agent(scratchFiles) {
    // A root the agent trusts with a publisher under it; and an untrusted one.
    const trusted = devPki('EdgeFleet Test Root', 'EdgeFleet Test Publisher');
    signer = trusted.signer;
    strangerSigner = devPki('Stranger Root', 'Stranger Publisher').signer;
    trust = await trustFolder(join(scratchFiles.root, 'certs'), trusted.root);
    return { registry: { trust, requireSignatures: true } };
  },
  ready(bed) {
    ({ files, agent } = bed);
  },
});

describe('LoadModel with signature verification', () => {
  it('loads a package signed under a trusted root and serves it', async () => {
    const dir = await files.catalogue('tiny', 'signed');
    await signPackage(dir, signer);
    await agent.call('LoadModel', { url: dir, handle: 'signed' });
    const response = await agent.call('Predict', { handle: 'signed', tensors: wireInputs('tiny') });
    expect(Buffer.compare(response.tensors[0]!.byteData!, referenceBytes('tiny').get('y')!.bytes)).toBe(0);
  });

  it('FAILED_PRECONDITION with the reason for an unsigned, a tampered and a foreign-signed package', async () => {
    const unsigned = await files.catalogue('tiny', 'unsigned');
    const tampered = await files.catalogue('tiny', 'tampered');
    await signPackage(tampered, signer);
    await writeFile(join(tampered, 'model.onnx'), Buffer.from('not the model that was signed'));
    const foreign = await files.catalogue('tiny', 'foreign');
    await signPackage(foreign, strangerSigner);
    const cases: Array<[string, string, RegExp]> = [
      [unsigned, 'unsigned', /failed signature verification \(bundle-missing\)/],
      [
        tampered,
        'tampered',
        /failed signature verification \(file-modified\): file model\.onnx was modified/,
      ],
      [foreign, 'foreign', /failed signature verification \(untrusted-chain\)/],
    ];
    for (const [url, handle, details] of cases) {
      const error = await callError(agent.call('LoadModel', { url, handle }));
      expect(error.code, handle).toBe(grpc.status.FAILED_PRECONDITION);
      expect(error.details, handle).toMatch(details);
    }
    expect((await agent.call('ListModels', {})).models.map((m) => m.handle)).toEqual(['signed']);
  });
});
