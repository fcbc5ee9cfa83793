import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchIotCredentials, iotCredentialProvider } from '../../src/capture/index.js';
import { issueMtlsCertificates } from '../support/openssl-mtls.js';

// A real AWS IoT credentials provider stand-in: HTTPS with client certificates (mTLS), certificates made by
// OpenSSL: a CA, a server certificate for 127.0.0.1, and a device certificate.
let dir: string;
let server: Server;
let endpoint: string;
const seen: { thing?: string; path?: string; clientSubject?: string }[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-iot-'));
  const { key, cert, ca } = await issueMtlsCertificates(dir, 'device-1');
  server = createServer({ key, cert, ca, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    const peer = (req.socket as TLSSocket).getPeerCertificate();
    seen.push({
      thing: req.headers['x-amzn-iot-thingname'] as string,
      path: req.url!,
      clientSubject: peer.subject?.CN as string,
    });
    if (req.url !== '/role-aliases/SageMakerEdge-fleet-a/credentials') {
      res.writeHead(403, { 'content-type': 'application/json' }).end('{"message":"Access Denied"}');
      return;
    }
    const n = seen.length;
    res.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({
        credentials: {
          accessKeyId: `AKIA${n}`,
          secretAccessKey: 'secret',
          sessionToken: 'token',
          expiration: new Date(Date.now() + 3600_000).toISOString(),
        },
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as { port: number };
  endpoint = `127.0.0.1:${address.port}`;
});
afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await rm(dir, { recursive: true, force: true });
});

const options = () => ({
  endpoint,
  roleAlias: 'SageMakerEdge-fleet-a',
  thingName: 'device-1',
  certFile: join(dir, 'device.pem'),
  keyFile: join(dir, 'device.key'),
  caFile: join(dir, 'ca.pem'),
});

describe('AWS IoT credentials provider', () => {
  it('gets temporary credentials over mutual TLS for the role alias, sending the thing name', async () => {
    const credentials = await fetchIotCredentials(options());
    expect(credentials).toMatchObject({
      accessKeyId: expect.stringMatching(/^AKIA\d+$/),
      secretAccessKey: 'secret',
      sessionToken: 'token',
    });
    expect(credentials.expiration!.getTime()).toBeGreaterThan(Date.now());
    expect(seen.at(-1)).toEqual({
      thing: 'device-1',
      path: '/role-aliases/SageMakerEdge-fleet-a/credentials',
      clientSubject: 'device-1',
    });
  });

  it('caches credentials until shortly before they expire, then fetches new ones', async () => {
    let now = Date.now();
    const provider = iotCredentialProvider({ ...options(), refreshBeforeMs: 5 * 60_000, now: () => now });
    const first = await provider();
    const again = await provider();
    expect(again).toBe(first);
    now = first.expiration!.getTime() - 4 * 60_000;
    const refreshed = await provider();
    expect(refreshed).not.toBe(first);
  });

  it('takes the endpoint as the full credentials URL too, as AWS samples wrote it, with the alias it names', async () => {
    const credentials = await fetchIotCredentials({
      ...options(),
      endpoint: `https://${endpoint}/role-aliases/SageMakerEdge-fleet-a/credentials`,
      roleAlias: 'SageMakerEdge-other-fleet',
    });
    expect(credentials.accessKeyId).toMatch(/^AKIA\d+$/);
    expect(seen.at(-1)?.path).toBe('/role-aliases/SageMakerEdge-fleet-a/credentials');
    // https://host/ is the host form.
    await fetchIotCredentials({ ...options(), endpoint: `https://${endpoint}/` });
    expect(seen.at(-1)?.path).toBe('/role-aliases/SageMakerEdge-fleet-a/credentials');
  });

  it('refuses an endpoint with any other path, naming the key and both forms, without a request', async () => {
    const before = seen.length;
    await expect(
      fetchIotCredentials({ ...options(), endpoint: `https://${endpoint}/role-aliases/a` }),
    ).rejects.toThrow(
      /sagemaker_edge_provider_aws_iot_cred_endpoint\) is not a host name .* or the full credentials URL https:\/\/<host>\/role-aliases\/<alias>\/credentials/,
    );
    expect(seen.length).toBe(before);
  });

  it('says what went wrong, with the full URL asked: a refused role alias, an untrusted server', async () => {
    await expect(fetchIotCredentials({ ...options(), roleAlias: 'other' })).rejects.toThrow(
      `the IoT credentials provider https://${endpoint}/role-aliases/other/credentials answered 403 for role alias other (thing device-1)`,
    );
    await expect(
      fetchIotCredentials({
        ...options(),
        endpoint: `https://${endpoint}/role-aliases/my-edge-alias/credentials`,
      }),
    ).rejects.toThrow(
      `the IoT credentials provider https://${endpoint}/role-aliases/my-edge-alias/credentials answered 403 for role alias my-edge-alias`,
    );
    const { caFile: _ca, ...untrusted } = options();
    await expect(fetchIotCredentials(untrusted)).rejects.toThrow(/cannot reach the IoT credentials provider/);
  });
});
