/**
 * The server's S3 credentials when none are configured: the AWS SDK's default chain (environment, profile, web
 * identity, the container or EC2 instance metadata endpoint), with one correction. The chain's last link, EC2's
 * instance metadata service (IMDS), reports a timeout or a refused connection the way it reports a host with no
 * role: "Could not load credentials from any providers". That reads as the operator's missing setting (a 400),
 * when it is a source of credentials that did not answer (a 503, which a retry may cure). So when the chain
 * finds nothing and IMDS was its last resort, the server asks IMDS itself whether it answers at all.
 */
import { request } from 'node:http';
import type { S3ClientConfig } from '@aws-sdk/client-s3';
import { defaultProvider } from '@aws-sdk/credential-provider-node';

type CredentialDefaultProvider = NonNullable<S3ClientConfig['credentialDefaultProvider']>;
type CredentialProvider = ReturnType<CredentialDefaultProvider>;

/** How long the server waits for IMDS to answer its check: the SDK's own IMDS timeout. */
export const INSTANCE_METADATA_CHECK_TIMEOUT_MS = 1000;

/** The source of the server's S3 credentials did not answer; a retry may succeed (an outage, not a setting). */
export class CredentialSourceUnavailableError extends Error {
  override readonly name = 'CredentialSourceUnavailableError';
}

/**
 * The IMDS endpoint the SDK's chain ends with, as it chooses it from the environment; undefined when the chain
 * does not ask IMDS (AWS_EC2_METADATA_DISABLED, or container credentials instead). The SDK also reads
 * `ec2_metadata_service_endpoint` from ~/.aws/config; the server asks the default endpoint then.
 */
export function instanceMetadataEndpointOf(env: NodeJS.ProcessEnv): string | undefined {
  const disabled = env.AWS_EC2_METADATA_DISABLED;
  if (disabled !== undefined && disabled !== '' && disabled.toLowerCase() !== 'false') return undefined;
  if (env.AWS_CONTAINER_CREDENTIALS_RELATIVE_URI || env.AWS_CONTAINER_CREDENTIALS_FULL_URI) return undefined;
  if (env.AWS_EC2_METADATA_SERVICE_ENDPOINT) return env.AWS_EC2_METADATA_SERVICE_ENDPOINT.replace(/\/+$/, '');
  if (env.AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE?.toLowerCase() === 'ipv6') return 'http://[fd00:ec2::254]';
  return 'http://169.254.169.254';
}

/**
 * Asks IMDS for a session token (what the SDK asks first). Undefined when it answered anything, even an error
 * status (it is there: the host has no role, or refuses this caller); else how it failed, in a few words.
 */
export function checkInstanceMetadata(
  endpoint: string,
  timeoutMs = INSTANCE_METADATA_CHECK_TIMEOUT_MS,
): Promise<string | undefined> {
  return new Promise((resolve) => {
    let url: URL;
    try {
      url = new URL('/latest/api/token', endpoint);
    } catch {
      resolve(`${endpoint} is not a URL`);
      return;
    }
    const req = request(url, {
      method: 'PUT',
      headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' },
      timeout: timeoutMs,
    });
    req.once('response', (response) => {
      response.resume();
      resolve(undefined);
      req.destroy();
    });
    req.once('timeout', () => {
      resolve(`no answer within ${timeoutMs} ms`);
      req.destroy();
    });
    req.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
    req.end();
  });
}

/** How long a verdict of the IMDS check is kept: requests failing meanwhile share it. */
export const INSTANCE_METADATA_VERDICT_MS = 5000;

export interface InstanceMetadataProbeOptions {
  timeoutMs?: number;
  /** How long a verdict is kept after the check ends; default INSTANCE_METADATA_VERDICT_MS. */
  verdictMs?: number;
  now?: () => number;
}

/**
 * checkInstanceMetadata, shared: callers while a check runs wait for it, and its verdict is kept a few seconds,
 * so that during an IMDS outage every failing S3 request does not open its own connection to IMDS (a flood of
 * capture uploads would make a matching flood of sockets) and wait its own timeout.
 */
export function instanceMetadataProbe(
  options: InstanceMetadataProbeOptions = {},
): (endpoint: string) => Promise<string | undefined> {
  const verdictMs = options.verdictMs ?? INSTANCE_METADATA_VERDICT_MS;
  const now = options.now ?? Date.now;
  // One entry per endpoint the environment names: one or two.
  const checks = new Map<string, { result: Promise<string | undefined>; endedAt?: number }>();
  return (endpoint) => {
    const known = checks.get(endpoint);
    if (known !== undefined && (known.endedAt === undefined || now() - known.endedAt < verdictMs))
      return known.result;
    const check: { result: Promise<string | undefined>; endedAt?: number } = {
      result: checkInstanceMetadata(endpoint, options.timeoutMs),
    };
    void check.result.then(() => (check.endedAt = now()));
    checks.set(endpoint, check);
    return check.result;
  };
}

function isNoCredentials(error: unknown): boolean {
  const { name, message } = (error ?? {}) as { name?: unknown; message?: unknown };
  return (
    name === 'CredentialsProviderError' &&
    /could not load credentials from any providers/i.test(String(message))
  );
}

/**
 * `provider` (the SDK's default chain), whose "no credentials" becomes CredentialSourceUnavailableError, naming
 * IMDS and what to configure, when IMDS was the chain's last resort and does not answer (one shared check:
 * instanceMetadataProbe).
 */
export function withInstanceMetadataCheck(
  provider: CredentialProvider,
  options: { env: NodeJS.ProcessEnv } & InstanceMetadataProbeOptions,
): CredentialProvider {
  const probe = instanceMetadataProbe(options);
  return async (properties) => {
    try {
      return await provider(properties);
    } catch (error) {
      if (!isNoCredentials(error)) throw error;
      const endpoint = instanceMetadataEndpointOf(options.env);
      if (endpoint === undefined) throw error;
      const failure = await probe(endpoint);
      if (failure === undefined) throw error;
      throw new CredentialSourceUnavailableError(
        `no S3 credentials are configured, and their last source, the EC2 instance metadata service at ` +
          `${endpoint}, did not answer (${failure}); on EC2, check the instance's IAM role and its metadata ` +
          'options (a container needs a hop limit of 2), then try again; elsewhere, set s3.accessKeyId and ' +
          's3.secretAccessKey (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile), and ' +
          'AWS_EC2_METADATA_DISABLED=true so that the server does not wait for a metadata service it does not have',
        { cause: error },
      );
    }
  };
}

/** The S3 client's default credential provider for a server with no S3 credentials configured. */
export function serverCredentialDefaultProvider(env: NodeJS.ProcessEnv): CredentialDefaultProvider {
  return (input) => withInstanceMetadataCheck(defaultProvider(input as never), { env });
}
