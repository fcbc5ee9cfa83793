import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { ActiveAccessKey } from '../auth/index.js';
import { AwsError } from './aws-errors.js';

/**
 * AWS Signature Version 4 verification (header and presigned-query forms), for the one signing name the
 * facade serves. Hand-written rather than driven through an SDK signer: verifying means recomputing exactly
 * what the client signed (its chosen header list, its date), which signers are not built to do.
 * https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
 */

export const SIGNING_NAME = 'sagemaker';
const ALGORITHM = 'AWS4-HMAC-SHA256';
/** How far a request's date may be from the server's clock (AWS allows 15 minutes). */
export const MAX_CLOCK_SKEW_MS = 15 * 60 * 1000;
const MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600;

export interface SignedRequest {
  method: string;
  /** The path as sent, still percent-encoded, without the query. */
  rawPath: string;
  /** The query string as sent (after `?`), or ''. */
  rawQuery: string;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/**
 * `x-amz-*` headers a request may carry unsigned: only the payload hash, which is checked against the body
 * itself. Every other one must be in SignedHeaders (botocore and the AWS SDKs sign every header they send but
 * User-Agent and the like), or it could be changed or added under a captured signature, as S3 also refuses.
 */
const UNSIGNED_AMZ_HEADERS = new Set(['x-amz-content-sha256']);

export interface VerifyOptions {
  /** Headers that must be in SignedHeaders (and so present): what the route dispatches on, e.g. x-amz-target. */
  mustSign?: readonly string[];
}

export interface VerifiedSignature {
  key: ActiveAccessKey;
  region: string;
}

interface ParsedSignature {
  accessKeyId: string;
  date: string;
  region: string;
  service: string;
  signedHeaders: string[];
  signature: string;
  amzDate: string;
  /** Presigned only: lifetime in seconds. */
  expiresSeconds?: number;
  presigned: boolean;
}

const sha256Hex = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data, 'utf8').digest();

/** RFC 3986 encoding as SigV4 uses it: everything but unreserved characters is %XX (upper case). */
function uriEncode(text: string, keepSlash: boolean): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-._~]/.test(c) || (keepSlash && c === '/')) out += c;
    else out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    throw new AwsError('InvalidSignatureException', 'the request URL is not validly percent-encoded');
  }
}

function queryPairs(rawQuery: string): [string, string][] {
  if (rawQuery === '') return [];
  return rawQuery.split('&').map((part) => {
    const eq = part.indexOf('=');
    return eq < 0 ? [safeDecode(part), ''] : [safeDecode(part.slice(0, eq)), safeDecode(part.slice(eq + 1))];
  });
}

function headerValue(headers: SignedRequest['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value.join(',') : value;
}

/** "20240101T000000Z" → epoch ms, or undefined when malformed. */
function parseAmzDate(amzDate: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s] = m.map(Number) as [number, number, number, number, number, number, number];
  const at = Date.UTC(y, mo - 1, d, h, mi, s);
  return Number.isNaN(at) ? undefined : at;
}

function parseCredential(credential: string) {
  const parts = credential.split('/');
  if (parts.length !== 5 || parts[4] !== 'aws4_request') {
    throw new AwsError(
      'IncompleteSignatureException',
      `Credential must be <access key id>/<date>/<region>/${SIGNING_NAME}/aws4_request; got "${credential}"`,
    );
  }
  const [accessKeyId, date, region, service] = parts as [string, string, string, string];
  return { accessKeyId, date, region, service };
}

function parseSignature(request: SignedRequest, query: [string, string][]): ParsedSignature | undefined {
  const authorization = headerValue(request.headers, 'authorization');
  if (authorization !== undefined) {
    const m = /^AWS4-HMAC-SHA256\s+(.*)$/s.exec(authorization.trim());
    if (!m) {
      throw new AwsError(
        'IncompleteSignatureException',
        `the Authorization header must use ${ALGORITHM} (Signature Version 4)`,
      );
    }
    const fields = new Map<string, string>();
    for (const part of (m[1] ?? '').split(',')) {
      const eq = part.indexOf('=');
      if (eq > 0) fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
    }
    const credential = fields.get('Credential');
    const signedHeaders = fields.get('SignedHeaders');
    const signature = fields.get('Signature');
    const amzDate = headerValue(request.headers, 'x-amz-date');
    if (!credential || !signedHeaders || !signature || !amzDate) {
      throw new AwsError(
        'IncompleteSignatureException',
        'a signed request needs Credential, SignedHeaders and Signature in Authorization, and an X-Amz-Date header',
      );
    }
    return {
      ...parseCredential(credential),
      signedHeaders: signedHeaders.split(';'),
      signature,
      amzDate,
      presigned: false,
    };
  }
  const params = new Map(query);
  if (!params.has('X-Amz-Algorithm')) return undefined;
  if (params.get('X-Amz-Algorithm') !== ALGORITHM) {
    throw new AwsError('IncompleteSignatureException', `X-Amz-Algorithm must be ${ALGORITHM}`);
  }
  const credential = params.get('X-Amz-Credential');
  const signedHeaders = params.get('X-Amz-SignedHeaders');
  const signature = params.get('X-Amz-Signature');
  const amzDate = params.get('X-Amz-Date');
  const expires = Number(params.get('X-Amz-Expires'));
  if (!credential || !signedHeaders || !signature || !amzDate || !Number.isInteger(expires)) {
    throw new AwsError(
      'IncompleteSignatureException',
      'a presigned URL needs X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders and X-Amz-Signature',
    );
  }
  if (expires < 1 || expires > MAX_PRESIGN_EXPIRES_S) {
    throw new AwsError(
      'AuthorizationQueryParametersError',
      `X-Amz-Expires must be 1-${MAX_PRESIGN_EXPIRES_S} seconds; got ${expires}`,
    );
  }
  return {
    ...parseCredential(credential),
    signedHeaders: signedHeaders.split(';'),
    signature,
    amzDate,
    expiresSeconds: expires,
    presigned: true,
  };
}

function canonicalRequest(
  request: SignedRequest,
  query: [string, string][],
  parsed: ParsedSignature,
  payloadHash: string,
): string {
  // Non-S3 services encode the (already encoded) path once more, keeping '/'.
  const canonicalUri = uriEncode(request.rawPath === '' ? '/' : request.rawPath, true);
  const canonicalQuery = query
    .filter(([key]) => !(parsed.presigned && key === 'X-Amz-Signature'))
    .map(([key, value]) => [uriEncode(key, false), uriEncode(value, false)] as const)
    .sort(([ak, av], [bk, bv]) => (ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([key, value]) => `${key}=${value}`)
    .join('&');
  const canonicalHeaders = parsed.signedHeaders
    .map((name) => {
      const value = headerValue(request.headers, name);
      if (value === undefined) {
        throw new AwsError('InvalidSignatureException', `the signed header "${name}" is missing`);
      }
      return `${name}:${value.trim().replace(/\s+/g, ' ')}\n`;
    })
    .join('');
  return [
    request.method,
    canonicalUri,
    canonicalQuery,
    canonicalHeaders,
    parsed.signedHeaders.join(';'),
    payloadHash,
  ].join('\n');
}

/**
 * A signature covers only the headers it lists: refuses a request whose route-deciding headers are not listed,
 * or that carries an x-amz-* header the signature does not cover (a Describe request's signature replayed with
 * X-Amz-Target changed to a Delete, audit s8 #4).
 */
function assertHeadersSigned(request: SignedRequest, parsed: ParsedSignature, mustSign: readonly string[]) {
  const signed = new Set(parsed.signedHeaders);
  const missing = mustSign.filter((name) => !signed.has(name));
  if (missing.length > 0) {
    throw new AwsError(
      'InvalidSignatureException',
      `SignedHeaders must include ${missing.join(', ')}: the request is dispatched on ${missing.length === 1 ? 'it' : 'them'}; ` +
        `got SignedHeaders=${parsed.signedHeaders.join(';')}`,
    );
  }
  const unsigned = Object.keys(request.headers)
    .map((name) => name.toLowerCase())
    .filter((name) => name.startsWith('x-amz-') && !UNSIGNED_AMZ_HEADERS.has(name) && !signed.has(name))
    .sort();
  if (unsigned.length > 0) {
    throw new AwsError(
      'InvalidSignatureException',
      `There were headers present in the request which were not signed: ${unsigned.join(', ')}; every x-amz-* ` +
        'header sent (but X-Amz-Content-SHA256) must be listed in SignedHeaders, as the AWS SDKs sign them',
    );
  }
}

/**
 * Verifies a request's SigV4 signature against the key it names. Throws an AwsError naming what was wrong:
 * MissingAuthenticationToken (unsigned), UnrecognizedClientException (unknown or revoked key),
 * InvalidSignatureException (bad signature, wrong service, skewed clock, expired presigned URL, an x-amz-*
 * header or a header in `options.mustSign` not covered by the signature).
 */
export async function verifySigV4(
  request: SignedRequest,
  findKey: (accessKeyId: string) => Promise<ActiveAccessKey | undefined>,
  now: number = Date.now(),
  options: VerifyOptions = {},
): Promise<VerifiedSignature> {
  const query = queryPairs(request.rawQuery);
  const parsed = parseSignature(request, query);
  if (parsed === undefined) {
    throw new AwsError(
      'MissingAuthenticationTokenException',
      'Missing Authentication Token: sign the request with AWS Signature Version 4 (an EdgeFleet access key)',
    );
  }
  if (parsed.service !== SIGNING_NAME) {
    throw new AwsError(
      'InvalidSignatureException',
      `Credential should be scoped to correct service: '${SIGNING_NAME}', not '${parsed.service}'`,
    );
  }
  const signedAt = parseAmzDate(parsed.amzDate);
  if (signedAt === undefined || !parsed.amzDate.startsWith(parsed.date)) {
    throw new AwsError(
      'InvalidSignatureException',
      `X-Amz-Date must be YYYYMMDD'T'HHMMSS'Z' and on the Credential's date; got "${parsed.amzDate}"`,
    );
  }
  if (!parsed.signedHeaders.includes('host')) {
    throw new AwsError('InvalidSignatureException', "SignedHeaders must include 'host'");
  }
  assertHeadersSigned(request, parsed, options.mustSign ?? []);
  if (parsed.presigned) {
    if (signedAt - now > MAX_CLOCK_SKEW_MS) {
      throw new AwsError(
        'InvalidSignatureException',
        'Signature not yet current: the presigned URL is dated in the future',
      );
    }
    if (now > signedAt + (parsed.expiresSeconds ?? 0) * 1000) {
      throw new AwsError(
        'InvalidSignatureException',
        `Signature expired: the presigned URL expired at ${new Date(signedAt + (parsed.expiresSeconds ?? 0) * 1000).toISOString()}`,
      );
    }
  } else if (Math.abs(now - signedAt) > MAX_CLOCK_SKEW_MS) {
    throw new AwsError(
      'InvalidSignatureException',
      `Signature expired: ${parsed.amzDate} is now earlier or later than ${new Date(now).toISOString()} by more than 15 minutes`,
    );
  }

  // The payload is always hashed here (so a body cannot be swapped under a signature); a client-sent hash
  // must match it.
  const payloadHash = sha256Hex(request.body);
  const claimedHash = headerValue(request.headers, 'x-amz-content-sha256');
  if (claimedHash !== undefined && claimedHash !== payloadHash) {
    throw new AwsError(
      'InvalidSignatureException',
      'X-Amz-Content-SHA256 does not match the SHA-256 of the body (unsigned payloads are not accepted)',
    );
  }

  const key = await findKey(parsed.accessKeyId);
  if (key === undefined) {
    throw new AwsError(
      'UnrecognizedClientException',
      'The security token included in the request is invalid: the access key is unknown or revoked',
    );
  }
  const scope = `${parsed.date}/${parsed.region}/${parsed.service}/aws4_request`;
  const stringToSign = [
    ALGORITHM,
    parsed.amzDate,
    scope,
    sha256Hex(canonicalRequest(request, query, parsed, payloadHash)),
  ].join('\n');
  let signingKey = hmac(`AWS4${key.secretAccessKey}`, parsed.date);
  for (const part of [parsed.region, parsed.service, 'aws4_request']) signingKey = hmac(signingKey, part);
  const expected = Buffer.from(hmac(signingKey, stringToSign).toString('hex'), 'utf8');
  const given = Buffer.from(parsed.signature, 'utf8');
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) {
    throw new AwsError(
      'InvalidSignatureException',
      'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.',
    );
  }
  return { key, region: parsed.region };
}
