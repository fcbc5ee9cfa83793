/**
 * s10 C5: an uploaded package whose signature does not lead to the server's package-signing root (what the
 * devices it enrolls trust) is accepted — an operator may give devices their own root too — with a warning
 * naming the signer and that root. Real HTTP, real packages signed with real certificates.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  createModelPackage,
  createRootCa,
  issueCodeSigningCertificate,
  packModelPackage,
  signPackage,
  writeTestModel,
} from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../support/server.js';

let t: TestServer;
let work: string;
let onnx: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-package-trust-'));
  onnx = await writeTestModel('tiny', path.join(work, 'src'));
  t = await startTestServer({});
});
afterAll(async () => {
  await t?.stop();
  await rm(work, { recursive: true, force: true });
});

/** A package of the tiny model, signed by `signer` (or not at all), as a .tar.gz's bytes. */
async function packageOf(
  name: string,
  signer?: { privateKeyPem: string; certificatePem: string },
): Promise<Buffer> {
  const built = await createModelPackage({
    modelPath: onnx,
    name,
    version: '1',
    outDir: path.join(work, name),
  });
  if (signer !== undefined)
    await signPackage(built.dir, {
      method: 'certificate',
      privateKeyPem: signer.privateKeyPem,
      certificateChainPem: [signer.certificatePem],
    });
  const archive = path.join(work, `${name}.tar.gz`);
  await packModelPackage(built.dir, archive);
  return readFile(archive);
}

const upload = async (name: string, body: Buffer, type = 'application/gzip') => {
  const response = await fetch(`${t.url}/api/v1/models/${name}/versions/1`, {
    method: 'POST',
    headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': type },
    body,
  });
  return {
    status: response.status,
    body: (await response.json()) as { warning?: string; modelName: string },
  };
};

describe('uploading a package the devices will not trust', () => {
  it('accepts it with a warning naming the signer and the root devices trust', async () => {
    const publisherRoot = createRootCa({
      commonName: 'Acme publisher root',
      validityDays: 2,
      keyType: 'ecdsa-p256',
    });
    const publisher = issueCodeSigningCertificate({
      issuer: publisherRoot,
      commonName: 'Acme publisher',
      validityDays: 1,
      keyType: 'ecdsa-p256',
    });
    const answer = await upload('foreign', await packageOf('foreign', publisher));
    expect(answer.status).toBe(201);
    const root = new X509Certificate(await readFile(path.join(t.dataDir, 'signing', 'root.crt'), 'utf8'));
    const fingerprint = root.fingerprint256.replace(/:/g, '').toLowerCase();
    expect(answer.body.warning).toMatch(/^devices enrolled by this server will refuse package foreign 1: /);
    expect(answer.body.warning).toContain('CN=Acme publisher');
    expect(answer.body.warning).toContain(
      `They trust the server's package-signing root (O=EdgeFleet, CN=EdgeFleet package signing root, SHA-256 ${fingerprint})`,
    );
    // Kept: it is a model version like any other.
    expect((await t.call('GET', '/api/v1/models/foreign/versions/1', { token: t.readToken })).status).toBe(
      200,
    );
  });

  it('warns about an unsigned package, and says nothing for one signed under the server root or an ONNX model', async () => {
    const unsigned = await upload('unsigned', await packageOf('unsigned'));
    expect(unsigned.status).toBe(201);
    expect(unsigned.body.warning).toMatch(
      /^package unsigned 1 is not signed: devices enrolled by this server require a signature that leads to the server's package-signing root \(O=EdgeFleet, CN=EdgeFleet package signing root, SHA-256 [0-9a-f]{64}\) and will refuse it/,
    );
    // The server's scratch folders never reach the client.
    expect(unsigned.body.warning).not.toContain(t.dataDir);

    const serverSigner = {
      privateKeyPem: await readFile(path.join(t.dataDir, 'signing', 'signing.key'), 'utf8'),
      certificatePem: await readFile(path.join(t.dataDir, 'signing', 'signing.crt'), 'utf8'),
    };
    const own = await upload('own', await packageOf('own', serverSigner));
    expect(own.status).toBe(201);
    expect(own.body).not.toHaveProperty('warning');

    const model = await upload('plain', await readFile(onnx), 'application/octet-stream');
    expect(model.status).toBe(201);
    expect(model.body).not.toHaveProperty('warning');
  });
});
