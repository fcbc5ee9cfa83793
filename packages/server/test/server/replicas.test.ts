import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceCa } from '../../src/identity/index.js';
import { createCsr, deviceCall, deviceKey } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const postgres = engines.find((e) => e.engine === 'postgres')!;

// Replicas share the database and the key material (here: one data dir, as a shared volume would be).
describe.skipIf(!postgres.available)('two replicas on one PostgreSQL', () => {
  let a: TestServer;
  let b: TestServer;
  let shared: string;
  let url: string;
  beforeAll(async () => {
    shared = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-replicas-'));
    const location = await postgres.createLocation();
    url = location.engine === 'postgres' ? location.url : '';
    [a, b] = await Promise.all([
      startTestServer({ database: location, dataDir: shared, config: { packaging: { pollIntervalMs: 50 } } }),
      startTestServer({ database: location, dataDir: shared, config: { packaging: { pollIntervalMs: 50 } } }),
    ]);
  });
  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await rm(shared, { recursive: true, force: true });
  });

  it('a replica given another blob store is refused, naming both stores, and the set keeps serving', async () => {
    const other = path.join(shared, 'other-blobs');
    await expect(
      startTestServer({ database: { engine: 'postgres', url }, dataDir: shared, blob: other }),
    ).rejects.toThrow(
      `the blob store ${pathToFileURL(other).toString()} is not this database's: the database's blobs are in ${pathToFileURL(path.join(shared, 'blobs')).toString()}`,
    );
    expect((await b.call('GET', '/api/v1/whoami', { token: a.adminToken })).status).toBe(200);
  });

  it('behave as one: what one writes, the other reads, tokens included', async () => {
    // A token made on one works on the other.
    expect((await b.call('GET', '/api/v1/whoami', { token: a.adminToken })).status).toBe(200);
    await a.call('POST', '/api/v1/fleets', {
      token: a.adminToken,
      body: { name: 'shared', outputConfig: { s3OutputLocation: 's3://c/shared' } },
    });
    const devices = Array.from({ length: 5 }, (_, i) => ({ name: `r-${i}` }));
    expect(
      (await b.call('POST', '/api/v1/fleets/shared/devices', { token: b.adminToken, body: { devices } }))
        .status,
    ).toBe(201);
    // A page token from one replica continues on the other.
    const first = await a.call('GET', '/api/v1/devices?limit=2', { token: a.readToken });
    const second = await b.call('GET', `/api/v1/devices?limit=2&nextToken=${first.body.nextToken}`, {
      token: b.readToken,
    });
    expect([...first.body.devices, ...second.body.devices].map((d: { name: string }) => d.name)).toEqual([
      'r-0',
      'r-1',
      'r-2',
      'r-3',
    ]);
  });

  it('share identities: enroll on one, heartbeat to the other, a used token is used everywhere', async () => {
    const token = (
      await a.call('POST', '/api/v1/devices/r-0/enrollment-tokens', { token: a.adminToken, body: {} })
    ).body.token;
    const key = deviceKey();
    const enrolled = await b.call('POST', '/api/v1/enroll', { token, body: { csr: createCsr(key, 'r-0') } });
    expect(enrolled.status).toBe(201);
    expect(
      await a.call('POST', '/api/v1/enroll', { token, body: { csr: createCsr(key, 'r-0') } }),
    ).toMatchObject({
      status: 401,
      body: { code: 'EnrollmentTokenUsed' },
    });
    const tls = {
      ca: enrolled.body.caCertificatePem,
      cert: enrolled.body.certificatePem,
      key: key.privateKeyPem,
    };
    const beat = await deviceCall(a.server.deviceUrl, tls, 'POST', '/api/v1/device/heartbeat', {
      body: { DeviceName: 'r-0', DeviceFleetName: 'shared', AgentVersion: '2.0' },
    });
    expect(beat.status).toBe(200);
    expect((await b.call('GET', '/api/v1/devices/r-0', { token: b.readToken })).body).toMatchObject({
      agentVersion: '2.0',
      status: 'online',
    });
    // Revoked on one replica, refused by both.
    await b.call('POST', '/api/v1/devices/r-0/certificates/revoke', { token: b.adminToken, body: {} });
    for (const server of [a, b]) {
      expect(await deviceCall(server.server.deviceUrl, tls, 'GET', '/api/v1/device/identity')).toMatchObject({
        status: 401,
        body: { code: 'CertificateRevoked' },
      });
    }
  });

  it('share packaging: jobs created on one are run once by some replica, visible on both', async () => {
    const model = await writeTestModel('tiny', path.join(shared, 'model'));
    const uploaded = await fetch(`${a.url}/api/v1/models/tiny/versions/1`, {
      method: 'POST',
      headers: { authorization: `Bearer ${a.adminToken}`, 'content-type': 'application/octet-stream' },
      body: await readFile(model),
    });
    expect(uploaded.status).toBe(201);
    const names = ['job-1', 'job-2', 'job-3', 'job-4'];
    for (const name of names) {
      const created = await b.call('POST', '/api/v1/packaging-jobs', {
        token: b.adminToken,
        body: { name, modelName: 'tiny', modelVersion: '1' },
      });
      expect(created.status).toBe(201);
    }
    for (const name of names) {
      let status = '';
      for (let attempt = 0; attempt < 400 && status !== 'COMPLETED' && status !== 'FAILED'; attempt++) {
        status = (await a.call('GET', `/api/v1/packaging-jobs/${name}`, { token: a.readToken })).body.status;
        if (status !== 'COMPLETED') await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(status, name).toBe('COMPLETED');
      const download = await fetch(`${b.url}/api/v1/packaging-jobs/${name}/artifact`, {
        headers: { authorization: `Bearer ${b.readToken}` },
      });
      expect(download.status).toBe(200);
    }
  });

  it('refuse to run beside a replica that has another device CA', async () => {
    const other = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-other-ca-'));
    try {
      await DeviceCa.open(
        { certFile: path.join(other, 'ca.crt'), keyFile: path.join(other, 'ca.key') },
        { generate: true },
      );
      await expect(
        startTestServer({
          database: { engine: 'postgres', url },
          config: { deviceCa: { certFile: path.join(other, 'ca.crt'), keyFile: path.join(other, 'ca.key') } },
        }),
      ).rejects.toThrow(/different device CA/);
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });
});
