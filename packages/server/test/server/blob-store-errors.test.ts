/**
 * `init` with an S3 blob store it cannot use names the store, its bucket, the reason and the setting to fix,
 * not the S3 SDK's own words (`UnknownError`, `Could not load credentials from any providers`).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runServerCli } from '../support/process.js';
import { startTestS3, type TestS3 } from '../support/s3.js';

let cwd: string;
let s3: TestS3;
beforeAll(async () => {
  cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-blob-errors-'));
  s3 = await startTestS3();
});
afterAll(async () => {
  await s3?.stop();
  await rm(cwd, { recursive: true, force: true });
});

/** A port nothing listens on: taken, then released. */
async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as { port: number };
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

const withCredentials = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };

describe('edgefleet-server init with an S3 blob store it cannot use', { timeout: 60_000 }, () => {
  it('names the bucket that does not exist and the blob setting', async () => {
    const result = await runServerCli(
      ['init', '--data-dir', 'a', '--blob', 's3://nobucket/edgefleet', '--blob-endpoint', s3.endpoint],
      cwd,
      withCredentials,
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `edgefleet-server: cannot use the blob store s3://nobucket/edgefleet at ${s3.endpoint}: bucket nobucket does not exist (404); create it, or name an existing bucket (the bucket is named by blob (--blob, EDGEFLEET_BLOB: s3://bucket/prefix))`,
    );
    expect(result.stderr).not.toMatch(/UnknownError/);
  });

  it('names an endpoint that does not answer and its setting', async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    const result = await runServerCli(
      ['init', '--data-dir', 'b', '--blob', `s3://${s3.bucket}/edgefleet`, '--blob-endpoint', endpoint],
      cwd,
      withCredentials,
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      new RegExp(
        `cannot use the blob store s3://${s3.bucket}/edgefleet at ${endpoint}: cannot reach ${endpoint} \\(ECONNREFUSED\\).*--blob-endpoint \\(EDGEFLEET_BLOB_ENDPOINT, s3\\.endpoint`,
      ),
    );
  });

  it('says how to give credentials when there are none', async () => {
    const result = await runServerCli(
      ['init', '--data-dir', 'c', '--blob', `s3://${s3.bucket}/edgefleet`, '--blob-endpoint', s3.endpoint],
      cwd,
      {
        AWS_ACCESS_KEY_ID: '',
        AWS_SECRET_ACCESS_KEY: '',
        AWS_SESSION_TOKEN: '',
        AWS_PROFILE: '',
        AWS_SHARED_CREDENTIALS_FILE: path.join(cwd, 'no-credentials'),
        AWS_CONFIG_FILE: path.join(cwd, 'no-config'),
        AWS_EC2_METADATA_DISABLED: 'true',
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: '',
        AWS_CONTAINER_CREDENTIALS_FULL_URI: '',
        AWS_WEB_IDENTITY_TOKEN_FILE: '',
      },
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      new RegExp(
        `cannot use the blob store s3://${s3.bucket}/edgefleet at ${s3.endpoint}: no S3 credentials: set s3\\.accessKeyId and s3\\.secretAccessKey`,
      ),
    );
    expect(result.stderr).not.toMatch(/Could not load credentials from any providers/);
  });

  it.each([
    [
      301,
      { 'x-amz-bucket-region': 'eu-west-2' },
      /answered with HTTP 301; the bucket is in region eu-west-2: set --blob-region \(EDGEFLEET_BLOB_REGION, s3\.region\)/,
    ],
    [400, {}, /answered with HTTP 400; check blob \(--blob.*--blob-endpoint.*--blob-region/],
  ])('names an answer outside the table (HTTP %i) and what to set', async (status, headers, expected) => {
    // An S3 endpoint answering every request so, without a body, as AWS answers HeadBucket.
    const endpoint: Server = createHttpServer((request, response) => {
      response.writeHead(status, headers).end();
    });
    await new Promise<void>((resolve) => endpoint.listen(0, '127.0.0.1', resolve));
    const { port } = endpoint.address() as { port: number };
    try {
      const result = await runServerCli(
        [
          'init',
          '--data-dir',
          `status-${status}`,
          '--blob',
          's3://fleet-blobs/edgefleet',
          '--blob-endpoint',
          `http://127.0.0.1:${port}`,
        ],
        cwd,
        withCredentials,
      );
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/cannot use the blob store s3:\/\/fleet-blobs\/edgefleet/);
      expect(result.stderr).toMatch(expected);
      expect(result.stderr).not.toMatch(/UnknownError/);
    } finally {
      await new Promise((resolve) => endpoint.close(resolve));
    }
  });
  it('fails, naming the endpoint, when the endpoint accepts and never answers (s3.socketTimeoutMs)', async () => {
    // Takes every connection and reads it, answering nothing: without a socket timeout init would wait forever
    // (the bound is this test's timeout).
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const endpoint = `http://127.0.0.1:${(silent.address() as { port: number }).port}`;
    const configFile = path.join(cwd, 'silent-s3.json');
    await writeFile(
      configFile,
      JSON.stringify({ s3: { socketTimeoutMs: 1000, connectionTimeoutMs: 1000 } }),
      { mode: 0o600 },
    );
    try {
      const result = await runServerCli(
        [
          'init',
          '--config',
          configFile,
          '--data-dir',
          'silent',
          '--blob',
          `s3://${s3.bucket}/edgefleet`,
          '--blob-endpoint',
          endpoint,
        ],
        cwd,
        withCredentials,
      );
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        `cannot use the blob store s3://${s3.bucket}/edgefleet at ${endpoint}: ${endpoint} is not answering (TimeoutError)`,
      );
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});
