/**
 * A real HTTP peer between the server and s3rver that forwards every request as it came and keeps its method,
 * path and headers: what the server sent, for the headers s3rver accepts and ignores (SSE-KMS). `answer` may
 * answer a request itself instead, as a store that s3rver is not (AWS with a KMS key it cannot use, MinIO
 * without KMS) answers it.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedRequest {
  method: string;
  /** The path with its query, as sent. */
  url: string;
  headers: http.IncomingHttpHeaders;
}

export interface RecordingProxy {
  endpoint: string;
  requests: RecordedRequest[];
  stop(): Promise<void>;
}

/** An answer the proxy gives itself: an S3 error document. */
export interface ProxyAnswer {
  status: number;
  body: string;
}

export async function startRecordingProxy(
  upstreamPort: number,
  answer: (request: RecordedRequest) => ProxyAnswer | undefined = () => undefined,
): Promise<RecordingProxy> {
  const requests: RecordedRequest[] = [];
  const server = http.createServer((request, response) => {
    const recorded = { method: request.method ?? '', url: request.url ?? '', headers: request.headers };
    requests.push(recorded);
    const own = answer(recorded);
    if (own !== undefined) {
      // After the whole body, as S3 answers a PUT: an answer mid-body would cut the upload off instead.
      request.resume();
      request.once('end', () =>
        response.writeHead(own.status, { 'content-type': 'application/xml' }).end(own.body),
      );
      return;
    }
    // The headers go on unchanged, Host included: the request's SigV4 signature covers them.
    const upstream = http.request(
      {
        host: '127.0.0.1',
        port: upstreamPort,
        method: request.method,
        path: request.url,
        headers: request.headers,
      },
      (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      },
    );
    upstream.on('error', () => response.destroy());
    request.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
