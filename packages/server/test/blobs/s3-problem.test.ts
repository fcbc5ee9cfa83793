/**
 * Review N6: a credential source that did not answer (the container credentials endpoint, STS for a web
 * identity) is an outage that a retry may end, not a server without credentials (which the fleet output check
 * answers with a 400 saying to configure them). The errors are shaped as the AWS SDK's providers throw them:
 * fromHttp wraps the request's failure as text (`String(e)`), others keep it as the cause.
 */
import { describe, expect, it } from 'vitest';
import { s3ProblemOf } from '../../src/blobs/s3-blob-store.js';

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
