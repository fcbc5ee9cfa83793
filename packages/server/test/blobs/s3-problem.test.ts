/**
 * Review N6: a credential source that did not answer (the container credentials endpoint, STS for a web
 * identity) is an outage that a retry may end, not a server without credentials (which the fleet output check
 * answers with a 400 saying to configure them). The errors are shaped as the AWS SDK's providers throw them:
 * fromHttp wraps the request's failure as text (`String(e)`), others keep it as the cause.
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { BlobStoreUnavailableError, S3BlobStore } from '../../src/blobs/index.js';
import { s3ProblemOf } from '../../src/blobs/s3-blob-store.js';
import { operatorReasonOf } from '../../src/captures/capture-ingest.js';

const providerError = (message: string, cause?: unknown) =>
  Object.assign(new Error(message, cause !== undefined ? { cause } : undefined), {
    name: 'CredentialsProviderError',
    tryNextLink: true,
  });

describe('an S3 credentials failure', () => {
  it('is an outage when the credential source timed out or could not be reached', () => {
    expect(
      s3ProblemOf(
        providerError('TimeoutError: Connection timed out after 1000 ms'),
        'b',
        'AWS S3 (region r)',
      ),
    ).toEqual({
      problem: 'unreachable',
      reason: "the source of the server's S3 credentials did not answer (TimeoutError); try again later",
    });
    const refused = Object.assign(new Error('connect ECONNREFUSED 169.254.170.2:80'), {
      code: 'ECONNREFUSED',
    });
    expect(s3ProblemOf(providerError('Could not load credentials', refused), 'b', 'e')).toMatchObject({
      problem: 'unreachable',
      reason: expect.stringContaining('(ECONNREFUSED)'),
    });
  });

  it('is missing credentials otherwise', () => {
    expect(
      s3ProblemOf(providerError('Could not load credentials from any providers'), 'b', 'e'),
    ).toMatchObject({
      problem: 'credentials',
    });
  });
});

// Review N7: the fleet report's reason hides the s3.endpoint setting, and keeps AWS's "AWS S3 (region …)".
describe("an outage's reason as the fleet report shows it", () => {
  it('names the setting for a configured endpoint (a real one, closed), and keeps the AWS description', async () => {
    const closed = await new Promise<number>((resolve) => {
      const server = net.createServer();
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address() as net.AddressInfo;
        server.close(() => resolve(port));
      });
    });
    const endpoint = `http://127.0.0.1:${closed}`;
    const store = new S3BlobStore({
      bucket: 'b',
      prefix: 'p',
      endpoint,
      credentials: { accessKeyId: 'k', secretAccessKey: 's' },
      maxAttempts: 1,
    });
    const failure = await store.check().then(
      () => undefined,
      (error: unknown) => error,
    );
    await store.close();
    expect(failure).toBeInstanceOf(BlobStoreUnavailableError);
    const reason = operatorReasonOf(failure as BlobStoreUnavailableError);
    expect(reason).toContain("the server's S3 endpoint (s3.endpoint)");
    expect(reason).not.toContain(endpoint);

    const aws = 'AWS S3 (region eu-west-1)';
    const onAws = new BlobStoreUnavailableError(
      's3://b/p',
      aws,
      'unreachable',
      `${aws} is not answering (HTTP 503); try again later`,
      { endpointConfigured: false },
    );
    expect(operatorReasonOf(onAws)).toBe(`${aws} is not answering (HTTP 503); try again later`);
  });
});

// Review s15 K1: a write with a fleet's KMS key that KMS itself could not serve (its 5xx) is an outage, not the key.
describe('a KMS failure on a write with a fleet key', () => {
  const kmsError = (name: string, httpStatusCode: number) =>
    Object.assign(new Error(name), { name, $metadata: { httpStatusCode } });
  it("is the key's when KMS refuses it, an outage when KMS fails or throttles", () => {
    expect(s3ProblemOf(kmsError('KMS.NotFoundException', 400), 'b', 'e', false, 'k-1')).toMatchObject({
      problem: 'forbidden',
      reason: expect.stringContaining("fleet's KMS key k-1"),
    });
    expect(s3ProblemOf(kmsError('NotImplemented', 501), 'b', 'e', false, 'k-1')).toMatchObject({
      problem: 'forbidden',
    });
    for (const [name, status] of [
      ['KMS.KMSInternalException', 500],
      ['KMS.ThrottlingException', 503],
    ] as const) {
      expect(s3ProblemOf(kmsError(name, status), 'b', 'e', false, 'k-1')).toMatchObject({
        problem: 'unreachable',
      });
    }
  });
});
