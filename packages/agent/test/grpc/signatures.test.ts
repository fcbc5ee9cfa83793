import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  createRootCa,
  issueCodeSigningCertificate,
  loadTrustFolder,
  signPackage,
  type TrustPolicy,
} from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import {
  callError,
  referenceBytes,
  useAgentTestBed,
  wireInputs,
  type Scratch,
  type TestAgent,
} from './helpers.js';

let files: Scratch;
let agent: TestAgent;
let trust: TrustPolicy;
let signer: { method: 'certificate'; privateKeyPem: string; certificateChainPem: string[] };
let strangerSigner: typeof signer;

/** A development PKI: a root the agent trusts and a publisher certificate under it; and an untrusted one. */
function devPki(name: string) {
  const root = createRootCa({ commonName: `${name} Root`, validityDays: 2, keyType: 'ecdsa-p256' });
  const leaf = issueCodeSigningCertificate({
    issuer: root,
    commonName: `${name} Publisher`,
    validityDays: 1,
    keyType: 'ecdsa-p256',
  });
  return {
    root,
    signer: {
      method: 'certificate' as const,
      privateKeyPem: leaf.privateKeyPem,
      certificateChainPem: [leaf.certificatePem],
    },
  };
}

useAgentTestBed({
  prefix: 'agent-grpc-sig-',
  workers: 1,
  async agent(scratchFiles) {
    const trusted = devPki('EdgeFleet Test');
    signer = trusted.signer;
    strangerSigner = devPki('Stranger').signer;
    const certs = join(scratchFiles.root, 'certs');
    await mkdir(certs);
    await writeFile(join(certs, 'root.pem'), trusted.root.certificatePem);
    trust = await loadTrustFolder(certs);
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
