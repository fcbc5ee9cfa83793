/**
 * A server with no S3 credentials configured takes them from the AWS SDK's default chain, whose last link is
 * EC2's instance metadata service (IMDS). An IMDS that does not answer (it hangs, or refuses the connection) is a
 * credential source that is down: 503, naming IMDS and what to configure, on the operator API and the SageMaker
 * facade alike; not the 400 "no credentials" the SDK's own error reads as. An IMDS that answers with no role is
 * still that 400. Real local HTTP servers play IMDS; a real server, s3rver, real SigV4-signed facade calls. The
 * server's check of IMDS is shared by the requests failing at once, and its verdict kept a few seconds.
 */
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { defaultProvider } from '@aws-sdk/credential-provider-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CredentialSourceUnavailableError,
  withInstanceMetadataCheck,
} from '../../src/blobs/credential-source.js';
import { sagemakerCall, type AccessKey } from '../support/sagemaker-call.js';
import { startTestS3, type TestS3 } from '../support/s3.js';
import { startTestServer, type TestServer } from '../support/server.js';

/** An HTTP server on loopback; `answer` undefined: it takes each request and never answers it. */
async function listen(answer?: (res: ServerResponse) => void): Promise<{ server: Server; url: string }> {
  const server = createServer((_req, res) => answer?.(res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

async function close(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

type Imds = 'hangs' | 'refuses' | 'has no role';

describe.each<Imds>(['hangs', 'refuses', 'has no role'])(
  'fleet outputs on a server whose instance metadata service %s',
  { timeout: 60_000 },
  (imds) => {
    let s3: TestS3;
    let t: TestServer;
    let metadata: Server | undefined;
    let key: AccessKey;
    const saved = new Map<string, string | undefined>();

    beforeAll(async () => {
      let endpoint: string;
      if (imds === 'refuses') {
        // A port that was just listening: nothing answers on it now.
        const gone = await listen();
        endpoint = gone.url;
        await close(gone.server);
      } else {
        const started = await listen(
          imds === 'hangs'
            ? undefined
            : (res) => {
                res.statusCode = 404;
                res.end('no role');
              },
        );
        metadata = started.server;
        endpoint = started.url;
      }
      // The S3 SDK's default chain, emptied but for IMDS, which it finds at `endpoint` (the SDK reads
      // process.env; this in-process server is the SDK's only user in this file).
      const env: Record<string, string> = {
        AWS_ACCESS_KEY_ID: '',
        AWS_SECRET_ACCESS_KEY: '',
        AWS_SESSION_TOKEN: '',
        AWS_PROFILE: '',
        AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/edgefleet-no-credentials',
        AWS_CONFIG_FILE: '/nonexistent/edgefleet-no-config',
        AWS_EC2_METADATA_DISABLED: '',
        AWS_EC2_METADATA_SERVICE_ENDPOINT: endpoint,
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: '',
        AWS_CONTAINER_CREDENTIALS_FULL_URI: '',
        AWS_WEB_IDENTITY_TOKEN_FILE: '',
      };
      for (const [name, value] of Object.entries(env)) {
        saved.set(name, process.env[name]);
        process.env[name] = value;
      }
      s3 = await startTestS3();
      t = await startTestServer({
        blob: `s3://${s3.bucket}/server`,
        config: { s3: { endpoint: s3.endpoint } },
      });
      const created = await t.call('POST', '/api/v1/access-keys', {
        token: t.adminToken,
        body: { name: 'imds', scope: 'admin' },
      });
      expect(created.status).toBe(201);
      key = created.body as AccessKey;
    });
    afterAll(async () => {
      await t?.stop();
      await s3?.stop();
      if (metadata !== undefined) await close(metadata);
      for (const [name, value] of saved) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    });

    const location = () => `s3://${s3.bucket}/plant`;

    it.runIf(imds !== 'has no role')(
      'is 503, naming the metadata service and what to configure, on the operator API and the facade',
      async () => {
        const created = await t.call('POST', '/api/v1/fleets', {
          token: t.adminToken,
          body: { name: 'plant', outputConfig: { s3OutputLocation: location() } },
        });
        expect(created).toMatchObject({
          status: 503,
          body: { code: 'DependencyUnavailable', details: { problem: 'unreachable' } },
        });
        expect(created.headers.get('retry-after')).toBe('15');
        const failure = imds === 'hangs' ? 'no answer within 1000 ms' : 'ECONNREFUSED';
        expect(created.body.message).toContain(
          `the output location ${location()} cannot be used: no S3 credentials are configured, and their last ` +
            `source, the EC2 instance metadata service at ${String(process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT)}, ` +
            `did not answer (${failure}); on EC2, check the instance's IAM role`,
        );
        expect(created.body.message).toContain(
          'elsewhere, set s3.accessKeyId and s3.secretAccessKey (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ' +
            'or an AWS profile), and AWS_EC2_METADATA_DISABLED=true',
        );
        expect((await t.call('GET', '/api/v1/fleets/plant', { token: t.adminToken })).status).toBe(404);

        const viaFacade = await sagemakerCall(t.url, key, 'CreateDeviceFleet', {
          DeviceFleetName: 'plant',
          OutputConfig: { S3OutputLocation: location() },
        });
        expect(viaFacade.status).toBe(503);
        expect(viaFacade.body.__type).toMatch(/ServiceUnavailable/);
        expect(viaFacade.body.message).toContain('the EC2 instance metadata service at');
      },
    );

    it.runIf(imds === 'has no role')(
      'is still the 400 that names the credential settings: the metadata service answered',
      async () => {
        const created = await t.call('POST', '/api/v1/fleets', {
          token: t.adminToken,
          body: { name: 'plant', outputConfig: { s3OutputLocation: location() } },
        });
        expect(created).toMatchObject({
          status: 400,
          body: { code: 'ValidationError', details: { problem: 'credentials' } },
        });
        expect(created.body.message).toMatch(/the server has no S3 credentials .*s3\.accessKeyId/);
      },
    );
  },
);

describe("the server's check of an instance metadata service that hangs", { timeout: 60_000 }, () => {
  let metadata: Server;
  /** Token requests of the server's own check (the SDK's ask for a 6-hour token, the check for 60 s). */
  let checks = 0;
  const saved = new Map<string, string | undefined>();
  beforeAll(async () => {
    const started = await listen();
    metadata = started.server;
    metadata.on('request', (req) => {
      if (req.headers['x-aws-ec2-metadata-token-ttl-seconds'] === '60') checks++;
    });
    // As above: the SDK's default chain, emptied but for IMDS at this server.
    const env: Record<string, string> = {
      AWS_ACCESS_KEY_ID: '',
      AWS_SECRET_ACCESS_KEY: '',
      AWS_SESSION_TOKEN: '',
      AWS_PROFILE: '',
      AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/edgefleet-no-credentials',
      AWS_CONFIG_FILE: '/nonexistent/edgefleet-no-config',
      AWS_EC2_METADATA_DISABLED: '',
      AWS_EC2_METADATA_SERVICE_ENDPOINT: started.url,
      AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: '',
      AWS_CONTAINER_CREDENTIALS_FULL_URI: '',
      AWS_WEB_IDENTITY_TOKEN_FILE: '',
    };
    for (const [name, value] of Object.entries(env)) {
      saved.set(name, process.env[name]);
      process.env[name] = value;
    }
  });
  afterAll(async () => {
    await close(metadata);
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it('is one check for the requests failing together, its verdict kept a while, then checked again', async () => {
    let clock = 1_000_000;
    const provider = withInstanceMetadataCheck(defaultProvider({}), {
      env: process.env,
      timeoutMs: 100,
      verdictMs: 5000,
      now: () => clock,
    });
    const together = await Promise.allSettled(Array.from({ length: 5 }, () => provider()));
    for (const failed of together) {
      expect(failed.status).toBe('rejected');
      expect((failed as PromiseRejectedResult).reason).toBeInstanceOf(CredentialSourceUnavailableError);
    }
    expect(checks).toBe(1);
    // Within the verdict's time: no new check.
    clock += 4999;
    await expect(provider()).rejects.toBeInstanceOf(CredentialSourceUnavailableError);
    expect(checks).toBe(1);
    // Past it: IMDS is asked again.
    clock += 2;
    await expect(provider()).rejects.toBeInstanceOf(CredentialSourceUnavailableError);
    expect(checks).toBe(2);
  });
});
