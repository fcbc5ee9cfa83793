/**
 * s10 C5: an uploaded package whose signature does not lead to the server's package-signing root (what the
 * devices it enrolls trust) is accepted — an operator may give devices their own root too — with a warning
 * naming the signer and that root. The warning's advice follows why devices will refuse it, and a package
 * altered after it was signed is refused (400). Real HTTP, real packages signed with real certificates.
 */
import { createPublicKey, X509Certificate } from 'node:crypto';
import { appendFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  createModelPackage,
  createRootCa,
  generateKeyPair,
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

/**
 * A package of the tiny model, signed by `signer` (with a certificate chain, leaf first; with a bare key; or not
 * at all), then
 * passed to `alter` (after signing), as a .tar.gz's bytes.
 */
async function packageOf(
  name: string,
  signer?: { privateKeyPem: string; certificatePem?: string | string[] },
  alter?: (dir: string) => Promise<void>,
): Promise<Buffer> {
  const built = await createModelPackage({
    modelPath: onnx,
    name,
    version: '1',
    outDir: path.join(work, name),
  });
  if (signer !== undefined)
    await signPackage(
      built.dir,
      signer.certificatePem === undefined
        ? { method: 'key', privateKeyPem: signer.privateKeyPem }
        : {
            method: 'certificate',
            privateKeyPem: signer.privateKeyPem,
            certificateChainPem: [signer.certificatePem].flat(),
          },
    );
  await alter?.(built.dir);
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
    body: (await response.json()) as { warning?: string; modelName: string; message?: string },
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

  it("refuses a package signed under the server's root and altered afterwards, storing nothing", async () => {
    const serverSigner = {
      privateKeyPem: await readFile(path.join(t.dataDir, 'signing', 'signing.key'), 'utf8'),
      certificatePem: await readFile(path.join(t.dataDir, 'signing', 'signing.crt'), 'utf8'),
    };
    const tampered = await upload(
      'tampered',
      await packageOf('tampered', serverSigner, (dir) => appendFile(path.join(dir, 'model.onnx'), 'x')),
    );
    expect(tampered.status).toBe(400);
    expect(tampered.body.message).toMatch(
      /^package tampered 1 is damaged, or was altered after it was signed, so devices that check signatures \(the default\) will refuse it: file model\.onnx was modified: its SHA-256 is [0-9a-f]{64}, the signature expects [0-9a-f]{64}; pack it again from the signed files, or sign it again$/,
    );
    expect(tampered.body.message).not.toContain('root of its signer');
    expect(tampered.body.message).not.toContain(t.dataDir);
    expect((await t.call('GET', '/api/v1/models/tampered/versions/1', { token: t.readToken })).status).toBe(
      404,
    );
  });

  it('tells a key-signed package to bring its public key, not a root', async () => {
    const key = generateKeyPair('ecdsa-p256');
    const answer = await upload('keyed', await packageOf('keyed', { privateKeyPem: key.privateKeyPem }));
    expect(answer.status).toBe(201);
    expect(answer.body.warning).toMatch(
      /^devices enrolled by this server will refuse package keyed 1: model\.sig is signed with a key \(hint [^)]+\), but the trust policy holds no public keys\. It is signed with a key, and devices trust only the public keys and roots in their root-certs folder \(sagemaker_edge_core_root_certs_path\); to deploy it, add the public key of its signer \(PEM\) there, or sign it under the server's package-signing root/,
    );
    expect(answer.body.warning).not.toContain('root of its signer');
  });

  it("tells a signing certificate under the server's root that is expired, not yet valid or badly chained to sign again with a valid one", async () => {
    const rootKeyPem = await readFile(path.join(t.dataDir, 'signing', 'root.key'), 'utf8');
    const serverRoot = {
      certificatePem: await readFile(path.join(t.dataDir, 'signing', 'root.crt'), 'utf8'),
      privateKeyPem: rootKeyPem,
      publicKeyPem: createPublicKey(rootKeyPem).export({ type: 'spki', format: 'pem' }) as string,
    };
    const day = 86_400_000;
    const expired = issueCodeSigningCertificate({
      issuer: serverRoot,
      commonName: 'Expired signer',
      validityDays: 1,
      keyType: 'ecdsa-p256',
      notBefore: new Date(Date.now() - 3 * day),
      notAfter: new Date(Date.now() - 2 * day),
    });
    const future = issueCodeSigningCertificate({
      issuer: serverRoot,
      commonName: 'Future signer',
      validityDays: 1,
      keyType: 'ecdsa-p256',
      notBefore: new Date(Date.now() + 2 * day),
    });
    const old = await upload('old', await packageOf('old', expired));
    expect(old.status).toBe(201);
    expect(old.body.warning).toMatch(
      /^devices enrolled by this server will refuse package old 1: signing certificate .*CN=Expired signer.* expired at .*\. Devices check the certificates at the time they install the package; sign it again with a signing certificate that is valid now \(renew it if it expired\)$/,
    );
    // A chain that reaches the server's root through a link that is not a CA: no other root would help.
    const notCa = issueCodeSigningCertificate({
      issuer: serverRoot,
      commonName: 'Not a CA',
      validityDays: 1,
      keyType: 'ecdsa-p256',
    });
    const below = issueCodeSigningCertificate({
      issuer: notCa,
      commonName: 'Below a leaf',
      validityDays: 1,
      keyType: 'ecdsa-p256',
    });
    const broken = await upload(
      'broken',
      await packageOf('broken', {
        privateKeyPem: below.privateKeyPem,
        certificatePem: [below.certificatePem, notCa.certificatePem],
      }),
    );
    expect(broken.status).toBe(201);
    expect(broken.body.warning).toMatch(
      /^devices enrolled by this server will refuse package broken 1: .*CN=Not a CA.*\. Its certificate chain leads to the server's package-signing root .* but is not valid; sign it again with the server's signing certificate$/,
    );
    const early = await upload('early', await packageOf('early', future));
    expect(early.status).toBe(201);
    expect(early.body.warning).toMatch(
      /^devices enrolled by this server will refuse package early 1: signing certificate .*CN=Future signer.* is not valid until .*\. Devices check the certificates/,
    );
  });
});

describe('a deployment plan deploying a package the devices will not trust', () => {
  it('is created with a warning for each such package, and none for one signed under the server root', async () => {
    expect((await upload('plan-unsigned', await packageOf('plan-unsigned'))).status).toBe(201);
    const serverSigner = {
      privateKeyPem: await readFile(path.join(t.dataDir, 'signing', 'signing.key'), 'utf8'),
      certificatePem: await readFile(path.join(t.dataDir, 'signing', 'signing.crt'), 'utf8'),
    };
    expect((await upload('plan-own', await packageOf('plan-own', serverSigner))).status).toBe(201);
    const fleet = await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'trust', outputConfig: { s3OutputLocation: 's3://c/trust' } },
    });
    expect(fleet.status).toBe(201);
    const plan = (name: string, models: string[]) =>
      t.call('POST', '/api/v1/deployment-plans', {
        token: t.adminToken,
        body: {
          name,
          fleetName: 'trust',
          modelConfigs: models.map((model) => ({
            // A handle per plan: two unfinished plans may not roll out one handle to a fleet.
            modelHandle: `${name}-${model}`,
            modelName: model,
            modelVersion: '1',
          })),
        },
      });

    const mixed = await plan('mixed', ['plan-unsigned', 'plan-own']);
    expect(mixed.status).toBe(201);
    expect(mixed.body.warnings).toHaveLength(1);
    expect(mixed.body.warnings[0]).toMatch(
      /^model handle mixed-plan-unsigned: package plan-unsigned 1 is not signed: devices enrolled by this server require a signature that leads to the server's package-signing root \(O=EdgeFleet, CN=EdgeFleet package signing root, SHA-256 [0-9a-f]{64}\) and will refuse it/,
    );
    expect(mixed.body.warnings[0]).not.toContain(t.dataDir);
    // Created all the same: an operator may give devices other roots.
    expect((await t.call('GET', '/api/v1/deployment-plans/mixed', { token: t.readToken })).status).toBe(200);

    const trusted = await plan('trusted', ['plan-own']);
    expect(trusted.status).toBe(201);
    expect(trusted.body).not.toHaveProperty('warnings');
  });

  // Review F3/F4: the warning is built from what the upload's check kept; plan create reads no package (a
  // slow or failing read used to turn a created plan into a client timeout, or show the store's error text).
  it("warns from what the upload kept, with the package gone from the blob store, and shows no server's internals", async () => {
    expect((await upload('gone-unsigned', await packageOf('gone-unsigned'))).status).toBe(201);
    const { blob_key: key } = await t.server.database.db
      .selectFrom('model_versions')
      .select('blob_key')
      .where('model_name', '=', 'gone-unsigned')
      .executeTakeFirstOrThrow();
    await t.server.blobs.delete(key);
    const created = await t.call('POST', '/api/v1/deployment-plans', {
      token: t.adminToken,
      body: {
        name: 'gone',
        fleetName: 'trust',
        modelConfigs: [{ modelHandle: 'gone-h', modelName: 'gone-unsigned', modelVersion: '1' }],
      },
    });
    expect(created.status).toBe(201);
    expect(created.body.warnings).toEqual([
      expect.stringMatching(
        /^model handle gone-h: package gone-unsigned 1 is not signed: devices enrolled by this server require a signature/,
      ),
    ]);
    // Neither the store's error text (its key, endpoint or paths) nor the server's work folder.
    expect(JSON.stringify(created.body)).not.toContain(t.dataDir);
    expect(JSON.stringify(created.body)).not.toContain(key);
  });

  it('shows the warning on the versions API too, "not checked" for a version uploaded before the facts were kept', async () => {
    expect((await upload('listed', await packageOf('listed'))).status).toBe(201);
    const described = await t.call('GET', '/api/v1/models/listed/versions/1', { token: t.readToken });
    expect(described.body.warning).toMatch(/^package listed 1 is not signed: /);
    const listed = await t.call('GET', '/api/v1/models/listed/versions', { token: t.readToken });
    expect(listed.body.versions[0].warning).toBe(described.body.warning);
    const own = await t.call('GET', '/api/v1/models/plan-own/versions/1', { token: t.readToken });
    expect(own.status).toBe(200);
    expect(own.body).not.toHaveProperty('warning');

    // As a row from before migration 0015 reads.
    await t.server.database.db
      .updateTable('model_versions')
      .set({ device_trust: null })
      .where('model_name', '=', 'listed')
      .execute();
    expect(
      (await t.call('GET', '/api/v1/models/listed/versions/1', { token: t.readToken })).body.warning,
    ).toMatch(
      /^package listed 1 was uploaded before this server kept what its signature check found, so whether devices enrolled by this server will take it was not checked/,
    );
  });
});
