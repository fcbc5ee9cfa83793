/**
 * Audit s8 #4: a SigV4 signature covers only the headers it lists. Before the fix a signed
 * DescribeDeviceFleet whose SignedHeaders left out X-Amz-Target was sent again, same body and signature, as
 * DeleteDeviceFleet, and the fleet was deleted. Requests are signed here the way botocore signs them (every
 * header sent but User-Agent, names sorted), over real HTTP against a real server.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  signSageMakerRequest as sign,
  type AccessKey as SigningKey,
  type SignedCall,
} from '../support/sagemaker-call.js';
import { startTestServer, type TestServer } from '../support/server.js';

async function send(call: SignedCall, headerChanges: Record<string, string> = {}) {
  const response = await fetch(call.url, {
    method: 'POST',
    headers: { ...call.headers, ...headerChanges },
    body: call.body,
  });
  return { status: response.status, body: (await response.json()) as { __type?: string; message?: string } };
}

const sha256Hex = (data: string) => createHash('sha256').update(data).digest('hex');
const JSON_TYPE = { 'content-type': 'application/x-amz-json-1.1' };
const target = (operation: string) => ({ 'x-amz-target': `SageMaker.${operation}` });

describe('SigV4 on the SageMaker facade: every header that matters is signed (audit s8 #4)', () => {
  let t: TestServer;
  let admin: SigningKey;
  const fleetExists = async (name: string) =>
    (await t.call('GET', `/api/v1/fleets/${name}`, { token: t.readToken })).status === 200;

  beforeAll(async () => {
    t = await startTestServer();
    const created = await t.call('POST', '/api/v1/access-keys', {
      token: t.adminToken,
      body: { name: 'sigv4 test', scope: 'admin' },
    });
    expect(created.status).toBe(201);
    admin = created.body as SigningKey;
    for (const name of ['fb', 'fc']) {
      const fleet = await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name, outputConfig: { s3OutputLocation: `s3://c/${name}` } },
      });
      expect(fleet.status).toBe(201);
    }
  });
  afterAll(() => t?.stop());

  it("refuses the audit's replay: a Describe signed without X-Amz-Target, sent as a Delete", async () => {
    const describe = sign(t.url, admin, {
      headers: { ...JSON_TYPE, ...target('DescribeDeviceFleet') },
      signed: [], // SignedHeaders=host;x-amz-date, as in the audit
      body: JSON.stringify({ DeviceFleetName: 'fb' }),
    });
    for (const operation of ['DescribeDeviceFleet', 'DeleteDeviceFleet']) {
      const answer = await send(describe, target(operation));
      expect(answer).toEqual({
        status: 403,
        body: {
          __type: 'InvalidSignatureException',
          message: expect.stringMatching(
            /^SignedHeaders must include x-amz-target.*SignedHeaders=host;x-amz-date$/,
          ),
        },
      });
    }
    expect(await fleetExists('fb')).toBe(true);
  });

  it('answers a request signed as botocore signs it, and refuses it with the target changed', async () => {
    const describe = sign(t.url, admin, {
      headers: { ...JSON_TYPE, ...target('DescribeDeviceFleet') },
      signed: ['content-type', 'x-amz-target'],
      body: JSON.stringify({ DeviceFleetName: 'fb' }),
    });
    expect(await send(describe)).toMatchObject({ status: 200, body: { DeviceFleetName: 'fb' } });
    expect(await send(describe, target('DeleteDeviceFleet'))).toMatchObject({
      status: 403,
      body: { __type: 'InvalidSignatureException', message: expect.stringMatching(/does not match/) },
    });
    expect(await fleetExists('fb')).toBe(true);
  });

  it('refuses any x-amz-* header the signature does not cover, but the checked payload hash', async () => {
    const body = JSON.stringify({ DeviceFleetName: 'fb' });
    const extras = { 'x-amz-security-token': 'token', 'x-amz-user-agent': 'aws-sdk-js/3' };
    const unsigned = sign(t.url, admin, {
      headers: { ...JSON_TYPE, ...target('DescribeDeviceFleet'), ...extras },
      signed: ['content-type', 'x-amz-target'],
      body,
    });
    expect(await send(unsigned)).toEqual({
      status: 403,
      body: {
        __type: 'InvalidSignatureException',
        message: expect.stringMatching(
          /^There were headers present in the request which were not signed: x-amz-security-token, x-amz-user-agent;/,
        ),
      },
    });
    // Signed, the same headers pass (the AWS SDKs sign them); X-Amz-Content-SHA256 may go unsigned.
    const covered = sign(t.url, admin, {
      headers: {
        ...JSON_TYPE,
        ...target('DescribeDeviceFleet'),
        ...extras,
        'x-amz-content-sha256': sha256Hex(body),
      },
      signed: ['content-type', 'x-amz-target', ...Object.keys(extras)],
      body,
    });
    expect(await send(covered)).toMatchObject({ status: 200, body: { DeviceFleetName: 'fb' } });
    // Nor may an unsigned x-amz-date stand beside a presigned URL's own.
    const presigned = sign(t.url, admin, {
      headers: { ...JSON_TYPE, ...target('DescribeDeviceFleet') },
      signed: ['content-type', 'x-amz-target'],
      body,
      presignSeconds: 300,
    });
    expect(await send(presigned, { 'x-amz-date': '20200101T000000Z' })).toMatchObject({
      status: 403,
      body: {
        __type: 'InvalidSignatureException',
        message: expect.stringMatching(/not signed: x-amz-date;/),
      },
    });
  });

  it('holds presigned URLs to the same rules', async () => {
    const body = JSON.stringify({ DeviceFleetName: 'fc' });
    // A presigned Describe whose SignedHeaders are host only: refused as it is, and as a Delete.
    const hostOnly = sign(t.url, admin, {
      headers: { ...JSON_TYPE, ...target('DescribeDeviceFleet') },
      signed: [],
      body,
      presignSeconds: 300,
    });
    for (const operation of ['DescribeDeviceFleet', 'DeleteDeviceFleet']) {
      expect(await send(hostOnly, target(operation))).toMatchObject({
        status: 403,
        body: {
          __type: 'InvalidSignatureException',
          message: expect.stringMatching(/must include x-amz-target/),
        },
      });
    }
    expect(await fleetExists('fc')).toBe(true);
    // Presigned as botocore presigns (every header present is signed): answered; with another target: refused.
    const signed = sign(t.url, admin, {
      headers: { ...JSON_TYPE, ...target('DescribeDeviceFleet') },
      signed: ['content-type', 'x-amz-target'],
      body,
      presignSeconds: 300,
    });
    expect(await send(signed)).toMatchObject({ status: 200, body: { DeviceFleetName: 'fc' } });
    expect(await send(signed, target('DeleteDeviceFleet'))).toMatchObject({
      status: 403,
      body: { __type: 'InvalidSignatureException' },
    });
    expect(await fleetExists('fc')).toBe(true);
  });

  it('a device key speaking for another device is told that its access key, not a certificate, belongs elsewhere (N9)', async () => {
    const registered = await t.call('POST', '/api/v1/fleets/fb/devices', {
      token: t.adminToken,
      body: { devices: [{ name: 'b-02' }, { name: 'b-03' }] },
    });
    expect(registered.status).toBe(201);
    const created = await t.call('POST', '/api/v1/access-keys', {
      token: t.adminToken,
      body: { name: 'b-02 agent', scope: 'read-only', deviceName: 'b-02' },
    });
    expect(created.status).toBe(201);
    const deviceKey = created.body as SigningKey;
    const heartbeat = sign(t.url, deviceKey, {
      path: '/SendHeartbeat',
      headers: { 'content-type': 'application/json' },
      signed: ['content-type'],
      body: JSON.stringify({ AgentVersion: '1.0', DeviceName: 'b-03', DeviceFleetName: 'fb' }),
    });
    const refused = await send(heartbeat);
    expect(refused.body.message).toBe(
      `access key ${deviceKey.accessKeyId} belongs to device b-02 of fleet fb; it cannot act as b-03 of fleet fb`,
    );
  });
});
