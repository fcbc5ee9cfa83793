import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import { rootCertificates } from 'node:tls';
import { z } from 'zod';

export interface IotCredentialsOptions {
  /**
   * `sagemaker_edge_provider_aws_iot_cred_endpoint`: host name (as AWS prints it), https URL of the host, or the
   * full credentials URL `https://<host>/role-aliases/<alias>/credentials` (as AWS's Edge Manager samples wrote it).
   */
  endpoint: string;
  /**
   * The role alias the device may assume; SageMaker Edge Manager created `SageMakerEdge-<fleet>`. A full
   * credentials URL names its own, which is used instead.
   */
  roleAlias: string;
  /** Sent as x-amzn-iot-thingname; the thing the certificate is attached to. */
  thingName: string;
  /** Device certificate and key (PEM): the mTLS identity. */
  certFile: string;
  keyFile: string;
  /** CA certificate(s) the endpoint's certificate chains to, in addition to Node's built-in roots. */
  caFile?: string;
  /** Refresh this long before the credentials expire. Default 5 minutes. */
  refreshBeforeMs?: number;
  timeoutMs?: number;
  now?: () => number;
}

export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  expiration?: Date;
}

const ResponseSchema = z.object({
  credentials: z.object({
    accessKeyId: z.string().min(1),
    secretAccessKey: z.string().min(1),
    sessionToken: z.string().min(1),
    expiration: z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'an ISO 8601 time'),
  }),
});

/** The path of the IoT credentials provider's one operation; the alias is a path segment, so never a slash. */
const CREDENTIALS_PATH = /^\/role-aliases\/([^/]+)\/credentials\/?$/;

/** What AWS IoT takes as a role alias name (and edgefleet_capture_iot_role_alias must be). */
export const IOT_ROLE_ALIAS_PATTERN = /^[\w=,@-]{1,128}$/;
export const IOT_ROLE_ALIAS_FORM = '1 to 128 letters, digits and = , @ - _';

export const IOT_CREDENTIAL_ENDPOINT_FORMS = `a host name (abc123.credentials.iot.eu-west-1.amazonaws.com, or https://<host>) or the full credentials URL https://<host>/role-aliases/<alias>/credentials (its alias ${IOT_ROLE_ALIAS_FORM})`;

export interface IotCredentialEndpoint {
  /** `https://<host>[:port]/`. */
  base: string;
  /** The role alias a full credentials URL names. */
  roleAlias?: string;
}

/**
 * Reads the endpoint in either accepted form; undefined for anything else (another scheme, path, query or
 * fragment), which would otherwise become a request to a path the provider does not serve.
 */
export function parseIotCredentialEndpoint(endpoint: string): IotCredentialEndpoint | undefined {
  const text = endpoint.trim();
  if (/^[a-z][a-z\d+.-]*:\/\//i.test(text) && !/^https:\/\//i.test(text)) return undefined;
  let url: URL;
  try {
    url = new URL(/^https:\/\//i.test(text) ? text : `https://${text}`);
  } catch {
    return undefined;
  }
  if (url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') return undefined;
  const base = `${url.origin}/`;
  if (url.pathname === '/') return { base };
  const match = CREDENTIALS_PATH.exec(url.pathname);
  if (!match) return undefined;
  let roleAlias: string;
  try {
    roleAlias = decodeURIComponent(match[1]!);
  } catch {
    return undefined;
  }
  // Decoded, an alias could hold anything (%00, %2F, %3F): only what AWS IoT would take is sent.
  if (!IOT_ROLE_ALIAS_PATTERN.test(roleAlias)) return undefined;
  return { base, roleAlias };
}

/** The URL one credentials request goes to, with the role alias it asks for. */
function iotCredentialsRequest(endpoint: string, roleAlias: string): { url: URL; roleAlias: string } {
  const parsed = parseIotCredentialEndpoint(endpoint);
  if (parsed === undefined)
    throw new Error(
      `the IoT credentials endpoint ${JSON.stringify(endpoint)} (sagemaker_edge_provider_aws_iot_cred_endpoint) is not ${IOT_CREDENTIAL_ENDPOINT_FORMS}`,
    );
  const alias = parsed.roleAlias ?? roleAlias;
  return {
    url: new URL(`role-aliases/${encodeURIComponent(alias)}/credentials`, parsed.base),
    roleAlias: alias,
  };
}

/**
 * The AWS IoT credentials provider, as SageMaker Edge devices used it: temporary AWS credentials for a role
 * alias, obtained over mutual TLS with the device certificate
 * (GET https://<endpoint>/role-aliases/<alias>/credentials). Returns an AWS SDK credential provider that caches
 * the credentials until shortly before they expire; concurrent calls share one request.
 */
export function iotCredentialProvider(options: IotCredentialsOptions): () => Promise<AwsCredentials> {
  const now = options.now ?? Date.now;
  const refreshBefore = options.refreshBeforeMs ?? 5 * 60_000;
  let cached: AwsCredentials | undefined;
  let inflight: Promise<AwsCredentials> | undefined;
  return async () => {
    if (cached?.expiration && cached.expiration.getTime() - refreshBefore > now()) return cached;
    inflight ??= fetchIotCredentials(options).finally(() => (inflight = undefined));
    cached = await inflight;
    return cached;
  };
}

export async function fetchIotCredentials(options: IotCredentialsOptions): Promise<AwsCredentials> {
  const [cert, key, ca] = await Promise.all([
    readFile(options.certFile),
    readFile(options.keyFile),
    options.caFile === undefined ? undefined : readFile(options.caFile, 'utf8'),
  ]);
  const { url, roleAlias } = iotCredentialsRequest(options.endpoint, options.roleAlias);
  const body = await new Promise<string>((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'GET',
        cert,
        key,
        ca: ca === undefined ? undefined : [...rootCertificates, ca],
        headers: { 'x-amzn-iot-thingname': options.thingName },
        timeout: options.timeoutMs ?? 10_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) {
            reject(
              new Error(
                `the IoT credentials provider ${url.href} answered ${res.statusCode} for role alias ${roleAlias} (thing ${options.thingName}): ${text.slice(0, 300)}`,
              ),
            );
          } else resolve(text);
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () =>
      req.destroy(new Error(`the IoT credentials provider ${url.href} did not answer in time`)),
    );
    req.on('error', (error) =>
      reject(
        new Error(`cannot reach the IoT credentials provider ${url.href}: ${error.message}`, {
          cause: error,
        }),
      ),
    );
    req.end();
  });
  let parsed;
  try {
    parsed = ResponseSchema.parse(JSON.parse(body));
  } catch (error) {
    throw new Error(
      `the IoT credentials provider ${url.href} answered with something other than {"credentials":{accessKeyId, secretAccessKey, sessionToken, expiration}}: ${(error as Error).message}`,
    );
  }
  const c = parsed.credentials;
  return {
    accessKeyId: c.accessKeyId,
    secretAccessKey: c.secretAccessKey,
    sessionToken: c.sessionToken,
    expiration: new Date(c.expiration),
  };
}
