import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import type { Command } from 'commander';
import {
  archiveFileName,
  createModelPackage,
  createRootCa,
  issueCodeSigningCertificate,
  extractPackageArchive,
  loadSigner,
  loadTrustFolder,
  packModelPackage,
  signPackage,
  verifyPackage,
  writeTestModel,
  type VerifiedSignature,
} from '@edgefleet/core';
import { formatBytes, table, type Output } from '../cli-io.js';

/**
 * The demo's throwaway PKI, made with core's public API (not the pki command's internals): a root CA, a
 * code-signing certificate it issued, and a trust folder holding only the root.
 */
async function createDemoPki(dir: string) {
  const root = createRootCa({
    commonName: 'Demo EdgeFleet Root CA',
    validityDays: 365,
    keyType: 'ecdsa-p256',
  });
  const signing = issueCodeSigningCertificate({
    issuer: root,
    commonName: 'Demo EdgeFleet model signing',
    validityDays: 365,
    keyType: 'ecdsa-p256',
  });
  const files = {
    trustFolder: join(dir, 'trust'),
    signingKey: join(dir, 'signing.key'),
    signingCertificate: join(dir, 'signing.pem'),
  };
  await mkdir(files.trustFolder, { recursive: true });
  await writeFile(join(files.trustFolder, 'root-ca.pem'), root.certificatePem);
  await writeFile(files.signingKey, signing.privateKeyPem, { mode: 0o600 });
  await writeFile(files.signingCertificate, signing.certificatePem);
  return files;
}

function describeSigner({ signer }: VerifiedSignature): string {
  return signer.method === 'key'
    ? `${signer.keyType} key ${signer.fingerprint}`
    : `certificate ${signer.subject} (issued by ${signer.issuer}, valid until ${signer.notAfter})`;
}

export const DEMO_MODEL = { catalogueName: 'mlp', name: 'demo-classifier', version: '1.0' } as const;

/**
 * The whole package life cycle on the bundled demo model, end to end, with nothing to set up: generate the
 * model, create a PKI, package, sign, pack, extract as a device would, verify, and show that a tampered copy
 * is refused. Everything lands under `dir`, which is recreated each run.
 */
export async function runDemo(
  dir: string,
  out: Output,
): Promise<{ archive: string; packageDir: string; trustFolder: string }> {
  const root = resolve(dir);
  const rel = (p: string) => relative(process.cwd(), p) || '.';
  await rm(root, { recursive: true, force: true });
  await mkdir(root, { recursive: true });

  const modelPath = await writeTestModel(DEMO_MODEL.catalogueName, root);
  out.say(`1. Generated the demo ONNX model           ${rel(modelPath)}`);

  const pki = await createDemoPki(join(root, 'pki'));
  out.say(`2. Created a development PKI               ${rel(pki.trustFolder)} (root CA a device trusts)`);

  const packageDir = join(root, `${DEMO_MODEL.name}-${DEMO_MODEL.version}`);
  const { manifest } = await createModelPackage({
    modelPath,
    name: DEMO_MODEL.name,
    version: DEMO_MODEL.version,
    outDir: packageDir,
    description: 'EdgeFleet demo classifier: 4 features in, 3 class scores out',
  });
  out.say(`3. Packaged it, tensors read from the model ${rel(packageDir)}`);
  out.say(
    table(
      ['   ', 'tensor', 'type', 'shape'],
      [
        ...manifest.inputs.map((t) => ['   input', t.name, t.dataType, `[${t.shape.join(', ')}]`]),
        ...manifest.outputs.map((t) => ['   output', t.name, t.dataType, `[${t.shape.join(', ')}]`]),
      ],
    ),
  );

  const signer = await loadSigner({ keyPath: pki.signingKey, certPath: pki.signingCertificate });
  const signed = await signPackage(packageDir, signer, { modelName: manifest.name });
  out.say(`4. Signed ${signed.files.length} files (OpenSSF model signing v1.0, certificate method)`);

  const archive = join(root, archiveFileName(manifest.name, manifest.version));
  const packed = await packModelPackage(packageDir, archive);
  out.say(`5. Packed the distributable archive        ${rel(archive)} (${formatBytes(packed.bytes)})`);

  const deviceCopy = join(root, 'device', 'models', manifest.name);
  await extractPackageArchive(archive, deviceCopy);
  const trust = await loadTrustFolder(pki.trustFolder);
  const verified = await verifyPackage(deviceCopy, trust);
  out.say(`6. Extracted and verified it as a device would: OK, signed by ${describeSigner(verified)}`);

  const tampered = join(root, 'device', 'tampered');
  await cp(deviceCopy, tampered, { recursive: true });
  const modelFile = join(tampered, manifest.model.file);
  const bytes = await readFile(modelFile);
  bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 0xff, bytes.length - 1);
  await writeFile(modelFile, bytes);
  const refusal = await verifyPackage(tampered, trust).then(
    () => 'ACCEPTED (this is a bug)',
    (error: Error) => error.message,
  );
  out.say(`7. Flipped one byte of a copy's model: refused: ${refusal}`);
  return { archive, packageDir, trustFolder: pki.trustFolder };
}

export function registerDemoCommand(program: Command, output: () => Output): void {
  program
    .command('demo')
    .description('run the package life cycle on the bundled demo model (what `npm start` does)')
    .option('--dir <dir>', 'working folder, recreated each run', '.edgefleet/demo')
    .action(async (raw: { dir: string }) => {
      const out = output();
      const result = await runDemo(raw.dir, out);
      out.result(result, () => [
        '',
        `Try: ${out.invocation} package inspect ${relative(process.cwd(), result.archive)}`,
      ]);
    });
}
