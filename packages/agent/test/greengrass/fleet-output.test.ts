import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceApiError, type DeviceTlsIdentity } from '../../src/fleet/device-api.js';
import { readFleetOutput } from '../../src/greengrass/fleet-output.js';
import { issueMtlsCertificates } from '../support/openssl-mtls.js';

// Greengrass Install asks the device API for the fleet's output: through the agent's own mutual-TLS client, bounded
// in all (not only between bytes), so that a server answering a byte at a time cannot hold Install until the nucleus
// kills it, and saying when the server refused the device. A real HTTPS peer with client certificates.
let dir: string;
let server: Server;
let endpoint: string;
let tls: DeviceTlsIdentity;
const drips: NodeJS.Timeout[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-fleet-output-'));
  const { key, cert, ca } = await issueMtlsCertificates(dir, 'device-1');
  server = createServer({ key, cert, ca, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    if (req.url === '/api/v1/device/agent-settings') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write(' ');
      // One byte every 50 ms, for ever: never idle long enough for a per-byte timeout.
      drips.push(setInterval(() => res.write(' '), 50));
      return;
    }
    res
      .writeHead(403, { 'content-type': 'application/json' })
      .end('{"code":"Forbidden","message":"revoked"}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  endpoint = `https://127.0.0.1:${port}`;
  tls = {
    certPem: await readFile(join(dir, 'device.pem'), 'utf8'),
    keyPem: await readFile(join(dir, 'device.key'), 'utf8'),
    caPem: await readFile(join(dir, 'ca.pem'), 'utf8'),
  };
});
afterAll(async () => {
  for (const drip of drips) clearInterval(drip);
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await rm(dir, { recursive: true, force: true });
});

describe('readFleetOutput', () => {
  it('gives up on a server that answers a byte at a time, as unreachable', async () => {
    const failed = await readFleetOutput(endpoint, tls, 500).catch((error: unknown) => error);
    expect(failed).toBeInstanceOf(DeviceApiError);
    expect((failed as DeviceApiError).failure).toBe('unreachable');
  });

  it('says the server refused the device (its certificate revoked), not that it could not be reached', async () => {
    const failed = await readFleetOutput(`${endpoint}/refusing`, tls, 5_000).catch((error: unknown) => error);
    expect(failed).toBeInstanceOf(DeviceApiError);
    expect((failed as DeviceApiError).failure).toBe('refused');
  });
});
