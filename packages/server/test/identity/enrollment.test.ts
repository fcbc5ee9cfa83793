import { X509Certificate } from 'node:crypto';
import { createRootCa, issueCertificate } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceIdentityService } from '../../src/identity/index.js';
import { createCsr, deviceCall, deviceKey } from '../support/device.js';
import { databaseEngines } from '../support/engines.js';
import { enrollDevice, startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('enrollment and device identity on $engine', (fixture) => {
  let t: TestServer;
  let ca: string;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({ database: await fixture.createLocation() });
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'plant', outputConfig: { s3OutputLocation: 's3://captures/plant' } },
    });
    const registered = await t.call('POST', '/api/v1/fleets/plant/devices', {
      token: t.adminToken,
      body: {
        devices: [
          'dev-a',
          'dev-b',
          'dev-c',
          'dev-d',
          'dev-e',
          'dev-f',
          'dev-r',
          'dev-burst',
          'dev-g',
          'dev-h',
          'dev-x',
          'dev-y',
          'dev-spent',
        ]
          .map((name) => ({ name }) as { name: string; iotThingName?: string })
          // Edge Manager's RegisterDevices allowed an IotThingName other than the DeviceName, and one that is no
          // valid device name.
          .concat([
            { name: 'cam-1', iotThingName: 'Core_1' },
            { name: 'cam-2', iotThingName: 'cam-2-core' },
            { name: 'cam-3' },
          ]),
      },
    });
    expect(registered.status).toBe(201);
    ca = (await t.call('GET', '/api/v1/device-ca', { token: t.readToken })).body.certificatePem;
  });
  afterAll(() => t?.stop());

  const newToken = async (device: string, body: unknown = {}) =>
    t.call('POST', `/api/v1/devices/${device}/enrollment-tokens`, { token: t.adminToken, body });

  it.skipIf(!fixture.available)(
    'enrolls with a single-use token: a certificate naming device and fleet',
    async () => {
      const token = await newToken('dev-a', { ttlSeconds: 600 });
      expect(token.status).toBe(201);
      expect(token.body).toMatchObject({
        deviceName: 'dev-a',
        fleetName: 'plant',
        deviceEndpoint: t.server.deviceEndpoint,
        token: expect.stringMatching(/^efe_/),
      });
      const key = deviceKey();
      const enrolled = await t.call('POST', '/api/v1/enroll', {
        token: token.body.token,
        body: { csr: createCsr(key, 'ignored') },
      });
      expect(enrolled.status).toBe(201);
      const cert = new X509Certificate(enrolled.body.certificatePem);
      expect(cert.subject).toMatch(/CN=dev-a/);
      expect(cert.subject).toMatch(/OU=plant/);
      expect(cert.verify(new X509Certificate(enrolled.body.caCertificatePem).publicKey)).toBe(true);
      expect(enrolled.body.caCertificatePem).toBe(ca);
      expect(enrolled.body.agentConfig).toEqual({
        sagemaker_edge_core_device_name: 'dev-a',
        sagemaker_edge_core_device_fleet_name: 'plant',
        sagemaker_edge_core_endpoint_override: t.server.deviceEndpoint,
        sagemaker_edge_provider_provider: 'Aws',
      });

      const described = await t.call('GET', '/api/v1/devices/dev-a', { token: t.readToken });
      expect(described.body.identity).toMatchObject({
        status: 'ENROLLED',
        certificate: { serial: enrolled.body.serial, fingerprintSha256: enrolled.body.fingerprintSha256 },
      });
      expect(Date.parse(described.body.identity.certificate.notAfter)).toBe(
        Date.parse(enrolled.body.notAfter),
      );

      const reused = await t.call('POST', '/api/v1/enroll', {
        token: token.body.token,
        body: { csr: createCsr(key, 'x') },
      });
      expect(reused).toMatchObject({ status: 401, body: { code: 'EnrollmentTokenUsed' } });
    },
  );

  it.skipIf(!fixture.available)(
    'with the device the host takes itself for, refuses a token issued for another device and leaves it unused',
    async () => {
      const token = (await newToken('dev-x')).body.token as string;
      const key = deviceKey();
      const other = await t.call('POST', '/api/v1/enroll', {
        token,
        body: { csr: createCsr(key, 'h'), deviceName: 'dev-y' },
      });
      expect(other).toMatchObject({
        status: 403,
        body: {
          code: 'Forbidden',
          message:
            'the enrollment token was issued for device dev-x, not dev-y; expected a token for dev-y (the token is left unused)',
        },
      });
      const described = await t.call('GET', '/api/v1/devices/dev-y', { token: t.readToken });
      expect(described.body.identity?.status).not.toBe('ENROLLED');
      // Unused: the device it was issued for enrolls with it.
      const right = await t.call('POST', '/api/v1/enroll', {
        token,
        body: { csr: createCsr(key, 'h'), deviceName: 'dev-x' },
      });
      expect(right.status).toBe(201);
      expect(right.body.deviceName).toBe('dev-x');
    },
  );

  it.skipIf(!fixture.available)(
    "answers a spent token as spent, whichever device the host takes itself for (not 'left unused')",
    async () => {
      const token = (await newToken('dev-spent')).body.token as string;
      const spent = await t.call('POST', '/api/v1/enroll', {
        token,
        body: { csr: createCsr(deviceKey(), 'h'), deviceName: 'dev-spent' },
      });
      expect(spent.status).toBe(201);
      for (const body of [{ deviceName: 'dev-h' }, { thingName: 'Core_9' }]) {
        const again = await t.call('POST', '/api/v1/enroll', {
          token,
          body: { csr: createCsr(deviceKey(), 'h'), ...body },
        });
        expect(again).toMatchObject({
          status: 401,
          body: {
            code: 'EnrollmentTokenUsed',
            message: 'the enrollment token was already used; ask for a new one',
          },
        });
      }
    },
  );

  it.skipIf(!fixture.available)(
    "with the host's IoT thing name, takes the device's registered thing name (or its name when it has none)",
    async () => {
      const enroll = (token: string, thingName: string) =>
        t.call('POST', '/api/v1/enroll', { token, body: { csr: createCsr(deviceKey(), 'h'), thingName } });
      // A thing name that is no valid device name (an underscore) is a thing name all the same, not a 400.
      const cam1 = (await newToken('cam-1')).body.token as string;
      const wrongThing = await enroll(cam1, 'Core_2');
      expect(wrongThing).toMatchObject({
        status: 403,
        body: {
          code: 'Forbidden',
          message:
            'the enrollment token was issued for device cam-1, whose IoT thing name is Core_1, not Core_2; expected a token for the device registered with IoT thing name Core_2 (or named so) (the token is left unused)',
        },
      });
      // Its name is not its thing name once one is registered.
      expect((await enroll(cam1, 'cam-1')).status).toBe(403);
      expect(await enroll(cam1, 'Core_1')).toMatchObject({ status: 201, body: { deviceName: 'cam-1' } });

      const cam2 = (await newToken('cam-2')).body.token as string;
      expect(await enroll(cam2, 'cam-2-core')).toMatchObject({ status: 201, body: { deviceName: 'cam-2' } });

      const cam3 = (await newToken('cam-3')).body.token as string;
      const unregistered = await enroll(cam3, 'cam-3-core');
      expect(unregistered.status).toBe(403);
      expect(unregistered.body.message).toMatch(
        /issued for device cam-3, whose IoT thing name is cam-3 \(none is registered: its device name stands for it\), not cam-3-core/,
      );
      expect(await enroll(cam3, 'cam-3')).toMatchObject({ status: 201, body: { deviceName: 'cam-3' } });

      const bad = await enroll((await newToken('dev-y')).body.token as string, 'a/b');
      expect(bad.status).toBe(400);
      expect(JSON.stringify(bad.body)).toMatch(/thingName/);
    },
  );

  it.skipIf(!fixture.available)('refuses expired, unknown and missing tokens', async () => {
    const csr = createCsr(deviceKey(), 'dev-b');
    // A token created two hours "ago" with a one-hour lifetime: really stored, really expired.
    const past = new DeviceIdentityService(t.server.database.db, {
      databaseEngine: t.server.database.engine,
      ca: t.server.services.deviceCa,
      certificateValidityDays: 1,
      enrollmentTokenTtlSeconds: 3600,
      maxEnrollmentTokenTtlSeconds: 3600,
      now: () => Date.now() - 2 * 3_600_000,
    });
    const expired = await past.createEnrollmentToken('dev-b');
    expect(await t.call('POST', '/api/v1/enroll', { token: expired.token, body: { csr } })).toMatchObject({
      status: 401,
      body: { code: 'EnrollmentTokenExpired' },
    });
    expect(
      await t.call('POST', '/api/v1/enroll', { token: 'efe_not-a-real-token', body: { csr } }),
    ).toMatchObject({
      status: 401,
      body: { code: 'EnrollmentTokenInvalid' },
    });
    expect(await t.call('POST', '/api/v1/enroll', { body: { csr } })).toMatchObject({
      status: 401,
      body: { code: 'EnrollmentTokenInvalid' },
    });
    // An operator token is not an enrollment token.
    expect(await t.call('POST', '/api/v1/enroll', { token: t.adminToken, body: { csr } })).toMatchObject({
      status: 401,
    });
  });

  it.skipIf(!fixture.available)('keeps the token when the CSR is bad', async () => {
    const token = (await newToken('dev-b')).body.token;
    const bad = await t.call('POST', '/api/v1/enroll', {
      token,
      body: { csr: createCsr(deviceKey(), 'x', { tamper: true }) },
    });
    expect(bad).toMatchObject({ status: 400, body: { code: 'ValidationError', details: { field: 'csr' } } });
    expect(await t.call('POST', '/api/v1/enroll', { token, body: { csr: 'nonsense' } })).toMatchObject({
      status: 400,
    });
    expect(await t.call('POST', '/api/v1/enroll', { token, body: {} })).toMatchObject({ status: 400 });
    const good = await t.call('POST', '/api/v1/enroll', {
      token,
      body: { csr: createCsr(deviceKey(), 'x') },
    });
    expect(good.status).toBe(201);
  });

  it.skipIf(!fixture.available)('guards token creation', async () => {
    expect(
      await t.call('POST', '/api/v1/devices/dev-c/enrollment-tokens', { token: t.readToken, body: {} }),
    ).toMatchObject({ status: 403 });
    expect(await t.call('POST', '/api/v1/devices/dev-c/enrollment-tokens', { body: {} })).toMatchObject({
      status: 401,
    });
    expect(await newToken('no-such-device')).toMatchObject({ status: 404 });
    expect(await newToken('dev-c', { ttlSeconds: 10 })).toMatchObject({ status: 400 });
    expect(await newToken('dev-c', { ttlSeconds: 10_000_000 })).toMatchObject({
      status: 400,
      body: { message: expect.stringMatching(/above the configured maximum/) },
    });
  });

  it.skipIf(!fixture.available)('lets an enrolled device in over mutual TLS, as itself', async () => {
    const device = await enrollDevice(t, 'dev-c');
    const me = await deviceCall(t.server.deviceUrl, device.tls, 'GET', '/api/v1/device/identity');
    expect(me).toMatchObject({
      status: 200,
      body: { deviceName: 'dev-c', fleetName: 'plant', serial: device.serial },
    });
    // Readiness is public on the device port too; operator routes are not served there.
    expect((await deviceCall(t.server.deviceUrl, { ca }, 'GET', '/readyz')).status).toBe(200);
    // Liveness too, without the build: the device port faces the network, where version and schema would tell
    // anyone which known flaws this server has. The operator port shows them (upgrades).
    expect(await deviceCall(t.server.deviceUrl, { ca }, 'GET', '/healthz')).toEqual({
      status: 200,
      body: { status: 'ok' },
    });
    expect(await t.call('GET', '/healthz')).toMatchObject({
      status: 200,
      body: { status: 'ok', version: expect.any(String), schema: expect.any(String) },
    });
    expect((await deviceCall(t.server.deviceUrl, device.tls, 'GET', '/api/v1/fleets')).status).toBe(404);
  });

  it.skipIf(!fixture.available)(
    'refuses connections without a certificate or with a foreign one',
    async () => {
      expect(await deviceCall(t.server.deviceUrl, { ca }, 'GET', '/api/v1/device/identity')).toMatchObject({
        status: 401,
        body: { code: 'CertificateRequired' },
      });
      const rogue = createRootCa({ commonName: 'Rogue CA', validityDays: 10, keyType: 'ecdsa-p256' });
      const key = deviceKey();
      const forged = issueCertificate(rogue, {
        subject: { commonName: 'dev-c', organizationalUnit: 'plant' },
        publicKeyPem: key.publicKeyPem,
        validityDays: 10,
        basicConstraints: { ca: false },
        keyUsage: ['digitalSignature'],
        extendedKeyUsage: ['clientAuth'],
      });
      const response = await deviceCall(
        t.server.deviceUrl,
        { ca, cert: forged, key: key.privateKeyPem },
        'GET',
        '/api/v1/device/identity',
      );
      expect(response).toMatchObject({ status: 401, body: { code: 'CertificateInvalid' } });
    },
  );

  it.skipIf(!fixture.available)('refuses an expired certificate', async () => {
    const key = deviceKey();
    const issued = await t.server.services.identity.issue('dev-d', key.publicKeyPem, {
      notBefore: new Date(Date.now() - 3 * 86_400_000),
      notAfter: new Date(Date.now() - 86_400_000),
    });
    const response = await deviceCall(
      t.server.deviceUrl,
      { ca, cert: issued.certificatePem, key: key.privateKeyPem },
      'GET',
      '/api/v1/device/identity',
    );
    expect(response).toMatchObject({ status: 401, body: { code: 'CertificateExpired' } });
    expect((await t.call('GET', '/api/v1/devices/dev-d', { token: t.readToken })).body.identity.status).toBe(
      'EXPIRED',
    );
  });

  it.skipIf(!fixture.available)(
    "lists a device's certificates: 404 for a name never registered, a deregistered one's kept (revoked)",
    async () => {
      const list = (device: string) =>
        t.call('GET', `/api/v1/devices/${device}/certificates`, { token: t.readToken });
      const missing = await list('never-registered');
      expect(missing).toMatchObject({ status: 404, body: { code: 'NotFound' } });
      expect(missing.body.message).toMatch(/device never-registered does not exist/);
      // Registered, not enrolled yet: no certificate, and that is an answer.
      expect(await list('dev-g')).toMatchObject({ status: 200, body: { certificates: [] } });
      const enrolled = await enrollDevice(t, 'dev-h');
      expect((await t.call('DELETE', '/api/v1/devices/dev-h', { token: t.adminToken })).status).toBe(204);
      const kept = await list('dev-h');
      expect(kept.status).toBe(200);
      expect(kept.body.certificates).toEqual([
        expect.objectContaining({ serial: enrolled.serial, revokedAt: expect.any(String) }),
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'refuses a revoked certificate, and the device can enroll again',
    async () => {
      const device = await enrollDevice(t, 'dev-e');
      expect(
        (await deviceCall(t.server.deviceUrl, device.tls, 'GET', '/api/v1/device/identity')).status,
      ).toBe(200);
      expect(
        await t.call('POST', '/api/v1/devices/dev-e/certificates/revoke', { token: t.readToken, body: {} }),
      ).toMatchObject({ status: 403 });
      const revoked = await t.call('POST', '/api/v1/devices/dev-e/certificates/revoke', {
        token: t.adminToken,
        body: { serial: device.serial, reason: 'lost' },
      });
      expect(revoked).toMatchObject({ status: 200, body: { revoked: 1 } });
      expect(
        await deviceCall(t.server.deviceUrl, device.tls, 'GET', '/api/v1/device/identity'),
      ).toMatchObject({
        status: 401,
        body: { code: 'CertificateRevoked' },
      });
      const listed = await t.call('GET', '/api/v1/devices/dev-e/certificates', { token: t.readToken });
      expect(listed.body.certificates[0]).toMatchObject({
        serial: device.serial,
        revokedAt: expect.any(String),
      });
      expect(
        (await t.call('GET', '/api/v1/devices/dev-e', { token: t.readToken })).body.identity.status,
      ).toBe('REVOKED');

      const again = await enrollDevice(t, 'dev-e');
      expect((await deviceCall(t.server.deviceUrl, again.tls, 'GET', '/api/v1/device/identity')).status).toBe(
        200,
      );
    },
  );

  it.skipIf(!fixture.available)('refuses every certificate of a deregistered device', async () => {
    const device = await enrollDevice(t, 'dev-f');
    expect((await t.call('DELETE', '/api/v1/devices/dev-f', { token: t.adminToken })).status).toBe(204);
    expect(await deviceCall(t.server.deviceUrl, device.tls, 'GET', '/api/v1/device/identity')).toMatchObject({
      status: 401,
      body: { code: 'CertificateRevoked' },
    });
  });

  it.skipIf(!fixture.available)(
    'a renewal revokes every other certificate of the device but the one presented (at most two valid)',
    async () => {
      const device = await enrollDevice(t, 'dev-r');
      const renew = async (tls: typeof device.tls) => {
        const key = deviceKey('ed25519');
        const answer = await deviceCall(t.server.deviceUrl, tls, 'POST', '/api/v1/device/certificate', {
          body: { csr: createCsr(key, 'dev-r') },
        });
        expect(answer.status).toBe(201);
        return { ca, cert: answer.body.certificatePem as string, key: key.privateKeyPem };
      };
      const identity = async (tls: typeof device.tls) =>
        (await deviceCall(t.server.deviceUrl, tls, 'GET', '/api/v1/device/identity')).status;
      const second = await renew(device.tls);
      const third = await renew(second);
      expect(await identity(device.tls)).toBe(401);
      expect(await identity(second)).toBe(200);
      expect(await identity(third)).toBe(200);
      // A stolen certificate renewing again and again still leaves at most two valid.
      const fourth = await renew(second);
      expect(await identity(third)).toBe(401);
      expect([await identity(second), await identity(fourth)]).toEqual([200, 200]);
    },
  );

  it.skipIf(!fixture.available)(
    'renewals sent at once with one certificate still leave at most two valid (a stolen certificate minting more)',
    async () => {
      const device = await enrollDevice(t, 'dev-burst');
      const renewals = await Promise.all(
        Array.from({ length: 8 }, async () => {
          const key = deviceKey('ed25519');
          const answer = await deviceCall(
            t.server.deviceUrl,
            device.tls,
            'POST',
            '/api/v1/device/certificate',
            {
              body: { csr: createCsr(key, 'dev-burst') },
            },
          );
          expect(answer.status).toBe(201);
          return { ca, cert: answer.body.certificatePem as string, key: key.privateKeyPem };
        }),
      );
      const statuses = await Promise.all(
        [device.tls, ...renewals].map(
          async (tls) => (await deviceCall(t.server.deviceUrl, tls, 'GET', '/api/v1/device/identity')).status,
        ),
      );
      // The presented certificate and the renewal that came last.
      expect(statuses.filter((status) => status === 200)).toHaveLength(2);
      expect(statuses[0]).toBe(200);
    },
  );

  it.skipIf(!fixture.available)(
    'renews before expiry; both certificates work until the old one expires',
    async () => {
      const device = await enrollDevice(t, 'dev-a');
      const key = deviceKey('ed25519');
      const renewed = await deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/certificate', {
        body: { csr: createCsr(key, 'dev-a') },
      });
      expect(renewed).toMatchObject({ status: 201, body: { deviceName: 'dev-a', fleetName: 'plant' } });
      expect(renewed.body.serial).not.toBe(device.serial);
      const fresh = { ca, cert: renewed.body.certificatePem, key: key.privateKeyPem };
      expect(
        (await deviceCall(t.server.deviceUrl, fresh, 'GET', '/api/v1/device/identity')).body.serial,
      ).toBe(renewed.body.serial);
      expect(
        (await deviceCall(t.server.deviceUrl, device.tls, 'GET', '/api/v1/device/identity')).status,
      ).toBe(200);
      expect(
        await deviceCall(t.server.deviceUrl, device.tls, 'POST', '/api/v1/device/certificate', {
          body: { csr: 'x' },
        }),
      ).toMatchObject({ status: 400 });
      expect(
        await deviceCall(t.server.deviceUrl, { ca }, 'POST', '/api/v1/device/certificate', {
          body: { csr: createCsr(key, 'dev-a') },
        }),
      ).toMatchObject({ status: 401 });
    },
  );

  it.skipIf(!fixture.available)('enrolls on the device port too, without a client certificate', async () => {
    const token = (await newToken('dev-b')).body.token;
    const enrolled = await deviceCall(t.server.deviceUrl, { ca }, 'POST', '/api/v1/enroll', {
      body: { csr: createCsr(deviceKey(), 'dev-b') },
      headers: { authorization: `Bearer ${token}` },
    });
    expect(enrolled).toMatchObject({ status: 201, body: { deviceName: 'dev-b' } });
  });
});
