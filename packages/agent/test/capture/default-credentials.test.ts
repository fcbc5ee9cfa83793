import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { MissingCredentialsError, S3ObjectStore } from '../../src/capture/index.js';
import { startS3 } from './helpers.js';

// Cloud captures with no IoT credentials provider configured use the AWS SDK's default chain, as on Greengrass,
// where a component that depends on aws.greengrass.TokenExchangeService gets container credentials from the
// nucleus (AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN). Real s3rver; a real HTTP
// server stands in for the Token Exchange Service's endpoint.
let dir: string;
let s3: Awaited<ReturnType<typeof startS3>>;
let tes: Server;
let tesUrl: string;
const tesAuthorizations: (string | undefined)[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-default-credentials-'));
  s3 = await startS3(join(dir, 's3'));
  tes = createServer((req, res) => {
    tesAuthorizations.push(req.headers.authorization);
    res.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({
        AccessKeyId: 'S3RVER',
        SecretAccessKey: 'S3RVER',
        Token: 'session',
        Expiration: new Date(Date.now() + 3600_000).toISOString(),
      }),
    );
  });
  await new Promise<void>((resolve) => tes.listen(0, '127.0.0.1', resolve));
  tesUrl = `http://127.0.0.1:${(tes.address() as { port: number }).port}/2016-11-01/credentialprovider/`;
});
afterAll(async () => {
  await new Promise((resolve) => tes?.close(resolve));
  await s3?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** No credentials anywhere the SDK looks: no keys, no profile files, no web identity, no container, no IMDS. */
function noCredentialsAnywhere(): void {
  for (const name of [
    'AWS_ACCESS_KEY_ID',
    'AWS_SECRET_ACCESS_KEY',
    'AWS_SESSION_TOKEN',
    'AWS_PROFILE',
    'AWS_WEB_IDENTITY_TOKEN_FILE',
    'AWS_ROLE_ARN',
    'AWS_CONTAINER_CREDENTIALS_FULL_URI',
    'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
    'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  ])
    vi.stubEnv(name, undefined);
  vi.stubEnv('AWS_SHARED_CREDENTIALS_FILE', join(dir, 'no-credentials'));
  vi.stubEnv('AWS_CONFIG_FILE', join(dir, 'no-config'));
  vi.stubEnv('AWS_EC2_METADATA_DISABLED', 'true');
}
afterEach(() => {
  vi.unstubAllEnvs();
});

const store = () =>
  new S3ObjectStore({
    bucket: s3.bucket,
    region: 'us-east-1',
    endpoint: s3.endpoint,
    credentials: { source: 'default' },
    maxAttempts: 1,
  });

/** What putting a one-line manifest at `key` into `bucket` fails with (undefined when it is stored). */
const putFailure = (bucket: S3ObjectStore, key: string) =>
  bucket.put(key, Buffer.from('{}\n'), 'application/jsonl').then(
    () => undefined,
    (e: unknown) => e as Error,
  );

describe('Cloud uploads with the AWS SDK default chain', () => {
  it('with none to be had, fails naming the sources tried and the config keys of the IoT credentials provider', async () => {
    noCredentialsAnywhere();
    const bucket = store();
    try {
      const error = await putFailure(bucket, 'a/key.jsonl');
      expect(error).toBeInstanceOf(MissingCredentialsError);
      expect(error?.message).toMatch(
        new RegExp(
          `^no AWS credentials to upload to s3://${s3.bucket} at ${s3.endpoint.replace(/[.]/g, '\\.')}: the AWS SDK tried the environment .*container credentials \\(AWS_CONTAINER_CREDENTIALS_FULL_URI: on Greengrass, the Token Exchange Service.* and EC2 instance metadata; or use the AWS IoT credentials provider: set sagemaker_edge_provider_aws_iot_cred_endpoint, sagemaker_edge_provider_aws_cert_file and sagemaker_edge_provider_aws_cert_pk_file`,
        ),
      );
      expect(await s3.keys()).toEqual([]);
    } finally {
      bucket.close();
    }
  });

  it('says which of its sources were set and gave none: a Token Exchange Service that answers 403 (N5)', async () => {
    noCredentialsAnywhere();
    const refusing = createServer((_req, res) =>
      res
        .writeHead(403, { 'content-type': 'application/json' })
        .end('{"message":"Role alias GreengrassV2TokenExchangeRoleAlias does not exist"}'),
    );
    await new Promise<void>((resolve) => refusing.listen(0, '127.0.0.1', resolve));
    vi.stubEnv(
      'AWS_CONTAINER_CREDENTIALS_FULL_URI',
      `http://127.0.0.1:${(refusing.address() as { port: number }).port}/2016-11-01/credentialprovider/`,
    );
    vi.stubEnv('AWS_CONTAINER_AUTHORIZATION_TOKEN', 'tes-token');
    const bucket = store();
    try {
      const error = await putFailure(bucket, 'c/key.jsonl');
      expect(error).toBeInstanceOf(MissingCredentialsError);
      expect(error?.message).toMatch(
        new RegExp(
          `^no AWS credentials to upload to s3://${s3.bucket} at \\S+ \\(AWS_CONTAINER_CREDENTIALS_FULL_URI is set but gave none\\): the AWS SDK tried`,
        ),
      );
    } finally {
      bucket.close();
      await new Promise((resolve) => refusing.close(resolve));
    }
  });

  it("takes the Token Exchange Service's container credentials, as the nucleus hands them to a dependent component", async () => {
    noCredentialsAnywhere();
    vi.stubEnv('AWS_CONTAINER_CREDENTIALS_FULL_URI', tesUrl);
    vi.stubEnv('AWS_CONTAINER_AUTHORIZATION_TOKEN', 'tes-token');
    const bucket = store();
    try {
      await bucket.put('b/key.jsonl', Buffer.from('{}\n'), 'application/jsonl');
      expect(await s3.keys()).toContain('b/key.jsonl');
      expect(tesAuthorizations).toContain('tes-token');
    } finally {
      bucket.close();
    }
  });
});
