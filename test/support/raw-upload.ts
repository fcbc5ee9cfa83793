/**
 * The device's raw capture upload (`POST /api/v1/device/captures/files/raw`), for tests: one request whose headers
 * go at once and whose body goes when the test says, over a fresh mutual-TLS connection. Here, not in the server's
 * test folder, because the agent's tests drive the same route against a real server.
 */
import https from 'node:https';
import type { TlsIdentity } from './device-tls.js';

export const RAW_CAPTURE_PATH = '/api/v1/device/captures/files/raw';

export interface RawAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests assert on bodies field by field
  body: any;
}

export interface RawUpload {
  /** The server's answer, or the error that ended the request (the connection was cut). */
  answer: Promise<RawAnswer>;
  /** Settles once the headers and the first bytes have been handed to the connection (TLS set up). */
  started: Promise<void>;
  /** Sends the rest of the body. */
  send(): void;
  /** Cuts the connection, the body unfinished. */
  abort(): void;
}

/** `key` and `contentType` as the raw route's query. */
export const rawQueryOf = (fileKey: string, contentType = 'application/octet-stream') =>
  new URLSearchParams({ key: fileKey, contentType }).toString();

/**
 * A raw upload to `deviceUrl` + `urlPath` (default the raw route; `query` as given, so that tests can send what the
 * agent never would) whose first `sent` bytes of `body` go now and the rest on `send`.
 */
export function startRawUpload(
  deviceUrl: string,
  tls: TlsIdentity,
  query: string,
  body: Buffer,
  options: {
    sent?: number;
    /** Added to, or replacing, the raw form's Content-Type and Content-Length. */
    headers?: Record<string, string>;
    /** Sent instead of the raw form's headers: what a client other than the agent might send. */
    onlyHeaders?: Record<string, string>;
    urlPath?: string;
  } = {},
): RawUpload {
  const request = https.request(`${deviceUrl}${options.urlPath ?? RAW_CAPTURE_PATH}?${query}`, {
    method: 'POST',
    ...tls,
    agent: false,
    headers: options.onlyHeaders ?? {
      'content-type': 'application/octet-stream',
      'content-length': String(body.length),
      ...options.headers,
    },
  });
  const answer = new Promise<RawAnswer>((resolve, reject) => {
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = text === '' ? undefined : JSON.parse(text);
        } catch {
          // keep the text
        }
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body: parsed });
      });
    });
    request.on('error', reject);
  });
  const sent = options.sent ?? 0;
  const started = new Promise<void>((resolve) => {
    if (sent > 0) request.write(body.subarray(0, sent), () => resolve());
    else {
      request.flushHeaders();
      request.once('socket', (socket) => socket.once('secureConnect', () => resolve()));
    }
  });
  return {
    answer,
    started,
    send: () => request.end(body.subarray(sent)),
    abort: () => request.destroy(),
  };
}

/** A whole raw upload of `body` under `fileKey`. */
export function uploadRawFile(
  deviceUrl: string,
  tls: TlsIdentity,
  fileKey: string,
  body: Buffer,
  contentType?: string,
): Promise<RawAnswer> {
  const started = startRawUpload(deviceUrl, tls, rawQueryOf(fileKey, contentType), body);
  started.send();
  return started.answer;
}
