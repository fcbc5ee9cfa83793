/**
 * Calls the SageMaker facade over real HTTP, signed with SigV4 as botocore signs a JSON call (host,
 * content-type, x-amz-date and x-amz-target signed), for tests that run no Python; and the signer itself, with
 * the choice of headers signed and a presigned (query) form, for the SigV4 tests.
 */
import { createHash, createHmac } from 'node:crypto';

const REGION = 'eu-west-1';
const sha256Hex = (data: string) => createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data, 'utf8').digest();

export interface AccessKey {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface SageMakerAnswer {
  status: number;
  body: Record<string, unknown> & { __type?: string; message?: string };
}

const uriEncode = (text: string) =>
  encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

export interface SignedCall {
  url: string;
  headers: Record<string, string>;
  body: string;
}

/**
 * Signs POST `path` with SigV4 for the `sagemaker` signing name: `headers` are sent, those named in
 * `signed` (plus host) are signed; in the header form x-amz-date is sent and signed as botocore does.
 */
export function signSageMakerRequest(
  baseUrl: string,
  key: AccessKey,
  options: {
    path?: string;
    headers: Record<string, string>;
    signed: string[];
    body: string;
    presignSeconds?: number;
  },
): SignedCall {
  const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
  const scope = `${amzDate.slice(0, 8)}/${REGION}/sagemaker/aws4_request`;
  const path = options.path ?? '/';
  const host = new URL(baseUrl).host;
  const headers: Record<string, string> = { host, ...options.headers };
  if (options.presignSeconds === undefined) headers['x-amz-date'] = amzDate;
  const signed = [
    ...new Set(['host', ...options.signed, ...(options.presignSeconds === undefined ? ['x-amz-date'] : [])]),
  ].sort();
  const query: [string, string][] =
    options.presignSeconds === undefined
      ? []
      : [
          ['X-Amz-Algorithm', 'AWS4-HMAC-SHA256'],
          ['X-Amz-Credential', `${key.accessKeyId}/${scope}`],
          ['X-Amz-Date', amzDate],
          ['X-Amz-Expires', String(options.presignSeconds)],
          ['X-Amz-SignedHeaders', signed.join(';')],
        ];
  const canonicalQuery = query
    .map(([k, v]) => `${uriEncode(k)}=${uriEncode(v)}`)
    .sort()
    .join('&');
  const canonical = [
    'POST',
    path,
    canonicalQuery,
    signed.map((name) => `${name}:${headers[name]}\n`).join(''),
    signed.join(';'),
    sha256Hex(options.body),
  ].join('\n');
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonical)].join('\n');
  let signingKey = hmac(`AWS4${key.secretAccessKey}`, amzDate.slice(0, 8));
  for (const part of [REGION, 'sagemaker', 'aws4_request']) signingKey = hmac(signingKey, part);
  const signature = hmac(signingKey, stringToSign).toString('hex');
  delete headers.host; // fetch sends the URL's host itself
  if (options.presignSeconds !== undefined) {
    return {
      url: `${baseUrl}${path}?${canonicalQuery}&X-Amz-Signature=${signature}`,
      headers,
      body: options.body,
    };
  }
  headers.authorization =
    `AWS4-HMAC-SHA256 Credential=${key.accessKeyId}/${scope}, SignedHeaders=${signed.join(';')}, ` +
    `Signature=${signature}`;
  return { url: `${baseUrl}${path}`, headers, body: options.body };
}

export async function sagemakerCall(
  baseUrl: string,
  key: AccessKey,
  operation: string,
  input: Record<string, unknown>,
): Promise<SageMakerAnswer> {
  const call = signSageMakerRequest(baseUrl, key, {
    headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `SageMaker.${operation}` },
    signed: ['content-type', 'x-amz-target'],
    body: JSON.stringify(input),
  });
  const response = await fetch(call.url, { method: 'POST', headers: call.headers, body: call.body });
  return { status: response.status, body: (await response.json()) as SageMakerAnswer['body'] };
}
