/** A real S3 wire protocol for tests: s3rver on 127.0.0.1 with a random port and a temp folder. */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import S3rver from 's3rver';

export interface TestS3 {
  endpoint: string;
  bucket: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** Where its objects are: `keepObjects` leaves them, for a later startTestS3 on the same port and folder. */
  directory: string;
  port: number;
  stop(options?: { keepObjects?: boolean }): Promise<void>;
}

export async function startTestS3(
  bucket = 'edgefleet-test',
  at: { port?: number; directory?: string } = {},
): Promise<TestS3> {
  const directory = at.directory ?? (await mkdtemp(path.join(os.tmpdir(), 'edgefleet-s3-')));
  const server = new S3rver({
    address: '127.0.0.1',
    port: at.port ?? 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  const { port } = await server.run();
  return {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    // s3rver's built-in key pair.
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    directory,
    port,
    stop: async (options = {}) => {
      await server.close();
      if (options.keepObjects !== true) await rm(directory, { recursive: true, force: true });
    },
  };
}
