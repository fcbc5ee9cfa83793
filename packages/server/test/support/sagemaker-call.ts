/**
 * Calls the SageMaker facade over real HTTP, signed with SigV4 as botocore signs a JSON call (host,
 * content-type, x-amz-date and x-amz-target signed), for tests that run no Python.
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

export async function sagemakerCall(
  baseUrl: string,
  key: AccessKey,
  operation: string,
  input: Record<string, unknown>,
): Promise<SageMakerAnswer> {
  const body = JSON.stringify(input);
  const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
  const scope = `${amzDate.slice(0, 8)}/${REGION}/sagemaker/aws4_request`;
  const headers: Record<string, string> = {
    'content-type': 'application/x-amz-json-1.1',
    host: new URL(baseUrl).host,
    'x-amz-date': amzDate,
    'x-amz-target': `SageMaker.${operation}`,
  };
  const signed = Object.keys(headers).sort();
  const canonical = [
    'POST',
    '/',
    '',
    signed.map((name) => `${name}:${headers[name]}\n`).join(''),
    signed.join(';'),
    sha256Hex(body),
  ].join('\n');
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonical)].join('\n');
  let signingKey = hmac(`AWS4${key.secretAccessKey}`, amzDate.slice(0, 8));
  for (const part of [REGION, 'sagemaker', 'aws4_request']) signingKey = hmac(signingKey, part);
  const signature = hmac(signingKey, stringToSign).toString('hex');
  delete headers.host; // fetch sends the URL's host itself
  headers.authorization =
    `AWS4-HMAC-SHA256 Credential=${key.accessKeyId}/${scope}, SignedHeaders=${signed.join(';')}, ` +
    `Signature=${signature}`;
  const response = await fetch(`${baseUrl}/`, { method: 'POST', headers, body });
  return { status: response.status, body: (await response.json()) as SageMakerAnswer['body'] };
}
