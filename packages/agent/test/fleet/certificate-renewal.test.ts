import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRootCa } from '@edgefleet/core';
import {
  CertificateRenewal,
  renewalDueAt,
  startFleetClient,
  type FleetClient,
} from '../../src/fleet/index.js';
import {
  agentConfig,
  captureLogger,
  enrollDevice,
  operator,
  removeControlPlane,
  startControlPlane,
  until,
  type ControlPlane,
} from './support.js';

let plane: ControlPlane;
let work: string;
beforeAll(async () => {
  plane = await startControlPlane();
  work = await mkdtemp(join(tmpdir(), 'ef-renewal-'));
});
afterAll(async () => {
  await removeControlPlane(plane, work);
});

const serialOf = async (file: string) => new X509Certificate(await readFile(file, 'utf8')).serialNumber;

describe('device certificate renewal', () => {
  it('renews through the server before expiry and keeps heartbeating without a failed one', async () => {
    const dir = join(work, 'cam-r');
    const config = await agentConfig(await enrollDevice(plane, 'renewals', 'cam-r', dir), dir);
    const { certFile, certKeyFile } = config.provider;
    const firstSerial = await serialOf(certFile!);
    const firstKey = await readFile(certKeyFile!, 'utf8');
    const { logger, lines } = captureLogger();
    let client: FleetClient | undefined;
    try {
      client = await startFleetClient({
        config,
        registry: { list: () => [] },
        logger,
        agentVersion: '0.1.0',
        timing: { heartbeatIntervalMs: 200, initialBackoffMs: 50, maxBackoffMs: 400, requestTimeoutMs: 5000 },
        // Due: only the enrolled certificate (its lifetime is days; the clock is not touched).
        renewal: { isDue: (certificate) => certificate.serialNumber === firstSerial },
      });
      const renewed = await until(
        () => lines.find((l) => l.event === 'fleet-certificate-renewed'),
        'a renewal',
      );
      const sentAtRenewal = client.status().heartbeatsSent;
      await until(
        () => (client!.status().heartbeatsSent >= sentAtRenewal + 3 ? true : undefined),
        'three more heartbeats',
      );

      const newSerial = await serialOf(certFile!);
      expect(newSerial).not.toBe(firstSerial);
      expect(renewed.serial?.toUpperCase()).toBe(newSerial.toUpperCase());
      expect(await readFile(certKeyFile!, 'utf8')).not.toBe(firstKey); // a new key pair
      expect((await stat(certKeyFile!)).mode & 0o777).toBe(0o600);
      expect(lines.filter((l) => /failed/.test(l.event ?? ''))).toEqual([]);
      expect(client.status().consecutiveFailures).toBe(0);

      // The old certificate revoked: heartbeats go on, so they already use the new one.
      await operator(plane, 'POST', '/api/v1/devices/cam-r/certificates/revoke', { serial: firstSerial });
      const afterRevoke = client.status().heartbeatsSent;
      await until(
        () => (client!.status().heartbeatsSent >= afterRevoke + 2 ? true : undefined),
        'heartbeats after revoking the old certificate',
      );
      expect(lines.filter((l) => /failed/.test(l.event ?? ''))).toEqual([]);
      const { certificates } = await operator(plane, 'GET', '/api/v1/devices/cam-r/certificates');
      expect(certificates).toHaveLength(2);
      expect(lines.filter((l) => l.event === 'fleet-certificate-renewed')).toHaveLength(1);
    } finally {
      await client?.stop();
    }
  });

  it('is due once two thirds of the lifetime have passed', () => {
    expect(
      renewalDueAt(new Date('2026-01-01T00:00:00Z'), new Date('2026-01-31T00:00:00Z')).toISOString(),
    ).toBe('2026-01-21T00:00:00.000Z');
  });

  it('finishes a renewal cut between its two renames, and discards one cut before them', async () => {
    const dir = await mkdtemp(join(work, 'recover-'));
    const files = { certFile: join(dir, 'device.pem'), keyFile: join(dir, 'device.key') };
    const old = createRootCa({ commonName: 'old', validityDays: 30, keyType: 'ecdsa-p256' });
    const next = createRootCa({ commonName: 'next', validityDays: 30, keyType: 'ecdsa-p256' });
    const renewal = new CertificateRenewal({ files });

    // Cut after the key was renamed: the new key is in place, the new certificate still pending.
    await writeFile(files.keyFile, next.privateKeyPem);
    await writeFile(files.certFile, old.certificatePem);
    await writeFile(`${files.certFile}.renewing`, next.certificatePem);
    expect(await renewal.recover()).toBe(true);
    expect(await readFile(files.certFile, 'utf8')).toBe(next.certificatePem);

    // Cut before either rename: the old pair stays, the pending files go.
    await writeFile(files.keyFile, old.privateKeyPem);
    await writeFile(files.certFile, old.certificatePem);
    await writeFile(`${files.keyFile}.renewing`, next.privateKeyPem);
    await writeFile(`${files.certFile}.renewing`, next.certificatePem);
    expect(await renewal.recover()).toBe(false);
    expect(await readFile(files.certFile, 'utf8')).toBe(old.certificatePem);
    expect(await readFile(files.keyFile, 'utf8')).toBe(old.privateKeyPem);
    await expect(stat(`${files.certFile}.renewing`)).rejects.toThrow(/ENOENT/);
  });
});
