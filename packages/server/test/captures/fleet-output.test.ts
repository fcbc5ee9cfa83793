import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { createServer, connect, type Server, type Socket } from 'node:net';
import os from 'node:os';
import { PassThrough } from 'node:stream';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../src/blobs/index.js';
import { CaptureIngest } from '../../src/captures/capture-ingest.js';
import { FleetOutputs } from '../../src/captures/fleet-output.js';
import { DomainError } from '../../src/errors/index.js';
import { FleetStore } from '../../src/fleets/index.js';
import { migrateToLatest, openDatabase } from '../../src/storage/index.js';

// The fleet-output S3 clients' timeouts come from the config (captures.outputS3SocketTimeoutMs, …ConnectionTimeoutMs):
// a real S3 client against endpoints that never answer, or never accept, fails with the configured value.
let dir: string;
const credentials = { accessKeyId: 'test', secretAccessKey: 'test-secret' };
const cleanups: Array<() => void | Promise<void>> = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-fleet-output-'));
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(() => rm(dir, { recursive: true, force: true }));

function outputsFor(endpoint: string, timeouts: { socketTimeoutMs: number; connectionTimeoutMs: number }) {
  const outputs = new FleetOutputs(
    new LocalBlobStore(dir),
    { endpoint, region: 'us-east-1', forcePathStyle: true, credentials },
    { uploadSlots: 1, timeouts },
  );
  cleanups.push(() => outputs.close());
  return outputs.targetFor('s3://fleet-bucket/captures')!.store;
}

async function causeOf(failing: Promise<unknown>): Promise<string> {
  const error = await failing.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(Error);
  return String(((error as Error).cause as Error | undefined)?.message);
}

describe('fleet-output S3 timeouts', () => {
  it('a request to an endpoint that accepts and never answers fails after outputS3SocketTimeoutMs', async () => {
    const sockets = new Set<Socket>();
    const silent: Server = createServer((socket) => {
      sockets.add(socket);
      socket.resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          for (const socket of sockets) socket.destroy();
          silent.close(() => resolve());
        }),
    );
    const { port } = silent.address() as { port: number };
    const store = outputsFor(`http://127.0.0.1:${port}`, {
      socketTimeoutMs: 1000,
      connectionTimeoutMs: 60_000,
    });
    // The SDK's own timeout error is the cause of the store's "not answering".
    expect(await causeOf(store.put('plant/one.jsonl', 'x'))).toMatch(
      /the request socket timed out after 1000 ms of inactivity \(configured by client requestHandler\)/,
    );
  }, 30_000);

  // Linux drops a SYN while a listener's accept queue is full, so a connection to a listener that never accepts
  // (backlog 0, its one queued place taken) stays unestablished. Node accepts at once, so Python holds it; without
  // python3 the test is skipped (spawning it would fail with an unhandled error instead).
  it.runIf(process.platform === 'linux' && spawnSync('python3', ['-c', '']).status === 0)(
    'a connection that is never established fails after outputS3ConnectionTimeoutMs',
    async () => {
      const listener: ChildProcess = spawn(
        'python3',
        [
          '-c',
          'import socket, sys\ns = socket.socket()\ns.bind(("127.0.0.1", 0))\ns.listen(0)\nprint(s.getsockname()[1], flush=True)\nsys.stdin.read()',
        ],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      cleanups.push(() => {
        listener.kill('SIGKILL');
      });
      const [line] = (await once(createInterface({ input: listener.stdout! }), 'line')) as [string];
      const port = Number(line);
      // Takes the queue's one place.
      const first = connect(port, '127.0.0.1');
      cleanups.push(() => {
        first.destroy();
      });
      await new Promise((resolve, reject) => first.once('connect', resolve).once('error', reject));
      const store = outputsFor(`http://127.0.0.1:${port}`, {
        socketTimeoutMs: 60_000,
        connectionTimeoutMs: 1000,
      });
      expect(await causeOf(store.put('plant/two.jsonl', 'x'))).toMatch(
        /did not establish a connection with the server within the configured timeout of 1000 ms/,
      );
    },
    30_000,
  );
});

/**
 * A real HTTP server as the S3 endpoint, answering HeadBucket by bucket name with what AWS answers (no body) once the request's body is in:
 * 200 for `present`, 403 for `no-list` (a policy with s3:PutObject only), 301 and the bucket's region for
 * `eu-bucket`, 400 for `bad-name`, 503 for `down`, 502 for `bad-gateway`, 501 for `not-implemented`, 404 for
 * anything else. It counts the requests per bucket.
 */
async function fakeS3(): Promise<{ endpoint: string; requests: Map<string, number> }> {
  const requests = new Map<string, number>();
  const answers: Record<string, [number, Record<string, string>]> = {
    present: [200, {}],
    'no-list': [403, {}],
    'eu-bucket': [301, { 'x-amz-bucket-region': 'eu-west-1' }],
    'bad-name': [400, {}],
    down: [503, {}],
    'bad-gateway': [502, {}],
    'not-implemented': [501, {}],
  };
  const server = createHttpServer((request, response) => {
    const bucket = (request.url ?? '/').split(/[/?]/)[1]!;
    requests.set(bucket, (requests.get(bucket) ?? 0) + 1);
    const [status, headers] = answers[bucket] ?? [404, {}];
    // Answers once the whole body is in (a PUT's), as S3 does.
    request.resume();
    request.once('end', () => response.writeHead(status, headers).end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { endpoint: `http://127.0.0.1:${(server.address() as { port: number }).port}`, requests };
}

function checkerFor(endpoint: string, socketTimeoutMs = 60_000) {
  const outputs = new FleetOutputs(
    new LocalBlobStore(dir),
    { endpoint, region: 'us-east-1', forcePathStyle: true, credentials },
    { uploadSlots: 1, timeouts: { socketTimeoutMs, connectionTimeoutMs: 10_000 } },
  );
  cleanups.push(() => outputs.close());
  return outputs;
}

async function refusal(answer: Promise<unknown>): Promise<DomainError> {
  const error = await answer.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(DomainError);
  return error as DomainError;
}

describe('the output check at fleet create/update', () => {
  it('accepts an existing bucket without a warning', async () => {
    const s3 = await fakeS3();
    expect(await checkerFor(s3.endpoint).check('s3://present/edge')).toEqual({});
  });

  it('accepts a bucket whose HeadBucket is forbidden (403), with a warning naming the permissions', async () => {
    const s3 = await fakeS3();
    const answer = await checkerFor(s3.endpoint).check('s3://no-list/edge');
    expect(answer.warning).toMatch(
      /^cannot check the bucket of s3:\/\/no-list\/edge: HeadBucket was refused \(403\); HeadBucket needs s3:ListBucket, captures need only s3:PutObject/,
    );
  });

  it('refuses a missing bucket (404) with a 400', async () => {
    const s3 = await fakeS3();
    const error = await refusal(checkerFor(s3.endpoint).check('s3://nowhere/edge'));
    expect(error.code).toBe('ValidationError');
    expect(error.message).toMatch(/bucket nowhere does not exist \(404\)/);
  });

  it('refuses a bucket in another region (301) with a 400 naming its region', async () => {
    const s3 = await fakeS3();
    const error = await refusal(checkerFor(s3.endpoint).check('s3://eu-bucket/edge'));
    expect(error.code).toBe('ValidationError');
    expect(error.message).toMatch(
      /^the output location s3:\/\/eu-bucket\/edge cannot be used: bucket eu-bucket is in another region \(HTTP 301, region eu-west-1\) than the server's s3.region us-east-1/,
    );
    expect(error.details).toMatchObject({ status: 301, bucketRegion: 'eu-west-1' });
  });

  it('refuses any other answer (400) with a 400 naming the status, not a raw S3 error', async () => {
    const s3 = await fakeS3();
    const error = await refusal(checkerFor(s3.endpoint).check('s3://bad-name/edge'));
    expect(error.code).toBe('ValidationError');
    expect(error.message).toMatch(/HeadBucket on bucket bad-name answered HTTP 400/);
  });

  it('answers an endpoint that is down with a 503 after one attempt', async () => {
    const s3 = await fakeS3();
    const error = await refusal(checkerFor(s3.endpoint).check('s3://down/edge'));
    expect(error.code).toBe('DependencyUnavailable');
    expect(s3.requests.get('down')).toBe(1);
  });

  it('takes only 500/502/503/504 for an outage: a 501 is refused for good (400), a 502 is a 503', async () => {
    const s3 = await fakeS3();
    const checker = checkerFor(s3.endpoint);
    const notImplemented = await refusal(checker.check('s3://not-implemented/edge'));
    expect(notImplemented.code).toBe('ValidationError');
    expect(notImplemented.message).toMatch(/HeadBucket on bucket not-implemented answered HTTP 501/);
    expect((await refusal(checker.check('s3://bad-gateway/edge'))).code).toBe('DependencyUnavailable');
  });

  it('checks only a changed location, after the fleet name answers (409, 404)', async () => {
    const s3 = await fakeS3();
    const database = await openDatabase({ engine: 'sqlite', file: path.join(dir, 'fleets.db') });
    await migrateToLatest(database.db);
    cleanups.push(() => database.close());
    const outputs = checkerFor(s3.endpoint);
    const fleets = new FleetStore(database.db, Date.now, (location) => outputs.check(location));
    const created = await fleets.create({
      name: 'plant',
      outputConfig: { s3OutputLocation: 's3://present/edge' },
    });
    expect(created.warnings).toBeUndefined();
    expect(s3.requests.get('present')).toBe(1);

    // The name answers first: no bucket is asked about.
    expect(
      (await refusal(fleets.create({ name: 'plant', outputConfig: { s3OutputLocation: 's3://down/x' } })))
        .code,
    ).toBe('Conflict');
    expect(
      (await refusal(fleets.update('no-such-fleet', { outputConfig: { s3OutputLocation: 's3://down/x' } })))
        .code,
    ).toBe('NotFound');
    expect(s3.requests.get('down')).toBeUndefined();

    // An unchanged location (UpdateDeviceFleet always carries it) is not checked again.
    await fleets.update('plant', {
      description: 'line 1',
      outputConfig: { s3OutputLocation: 's3://present/edge' },
    });
    expect(s3.requests.get('present')).toBe(1);

    // A changed one is, and a 403 is taken with the warning in the answer.
    const moved = await fleets.update('plant', { outputConfig: { s3OutputLocation: 's3://no-list/edge' } });
    expect(moved.outputConfig.s3OutputLocation).toBe('s3://no-list/edge');
    expect(moved.warnings).toEqual([expect.stringMatching(/HeadBucket needs s3:ListBucket/)]);
  });
});

describe('capture writes to a fleet output that cannot be used', () => {
  /** A capture ingest writing fleet plant's captures to `s3://<bucket>/edge` on the fake S3; its log lines kept. */
  async function ingestFor(bucket: string, socketTimeoutMs = 60_000) {
    const s3 = await fakeS3();
    const database = await openDatabase({ engine: 'sqlite', file: path.join(dir, `${bucket}.db`) });
    await migrateToLatest(database.db);
    cleanups.push(() => database.close());
    await new FleetStore(database.db).create({
      name: 'plant',
      outputConfig: { s3OutputLocation: `s3://${bucket}/edge` },
    });
    const warnings: string[] = [];
    const ingest = new CaptureIngest({
      db: database.db,
      outputs: checkerFor(s3.endpoint, socketTimeoutMs),
      limits: { maxFileBytes: 1 << 20, dailyQuotaBytesPerDevice: 1 << 30, largeBodyBytes: 1000 },
      log: { warn: (_fields, message) => warnings.push(message), info: () => undefined },
    });
    return { s3, ingest, warnings };
  }
  const device = { deviceName: 'cam-1', fleetName: 'plant' };
  const key = 'edge/plant/model/2026/12/07/04/raw-data/one.bin';

  it('tells the device the location and the problem, never the S3 endpoint (that goes to the log)', async () => {
    const { s3, ingest, warnings } = await ingestFor('down');
    const error = await refusal(
      ingest.store(device, { key, contentType: 'application/octet-stream', body: Buffer.from('x') }),
    );
    expect(error.code).toBe('DependencyUnavailable');
    expect(error.message).toMatch(
      /^fleet plant's output location s3:\/\/down\/edge cannot be written now: its object store is not answering \(unreachable\); keep the capture/,
    );
    expect(error.message).not.toContain(s3.endpoint);
    expect(warnings).toEqual([expect.stringContaining(s3.endpoint)]);
  });

  it('answers a streamed upload whose device paused past the socket timeout 408, without an outage of the output', async () => {
    const { ingest, warnings } = await ingestFor('present', 1000);
    const body = new PassThrough();
    cleanups.push(() => void body.destroy());
    body.write(Buffer.alloc(2000));
    // The rest of the 10000 bytes never comes: the device stalled.
    const error = await refusal(
      ingest.storeStream(device, {
        key,
        contentType: 'application/octet-stream',
        body,
        contentLength: 10_000,
      }),
    );
    expect(error.code).toBe('RequestTimeout');
    expect(error.message).toMatch(
      /the capture file .*one\.bin stopped arriving before its 10000 bytes were in/,
    );
    expect(warnings).toEqual([]);
  }, 30_000);
});
