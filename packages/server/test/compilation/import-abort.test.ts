/**
 * Review E1 and N1/N5/N6: an import whose S3 read stalls (an endpoint that accepts and never answers, or one that
 * stops mid-body) ends: by the client's socket timeout, StopCompilationJob, a lost lease, MaxRuntimeInSeconds or
 * server shutdown, and `settle()` returns. Real TCP endpoints, real S3 clients, real databases.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBlobStore, S3Objects } from '../../src/blobs/index.js';
import {
  CompilationJobStore,
  INTERRUPTED_IMPORT_REASON,
  SHUTDOWN_IMPORT_REASON,
  deadlineReason,
  type CompilationJobsOptions,
  type StoppingCondition,
} from '../../src/compilation/index.js';
import { ModelStore } from '../../src/models/index.js';
import { openDatabase, type ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { sagemakerCall, type AccessKey } from '../support/sagemaker-call.js';
import { startTestServer } from '../support/server.js';

const engines = await databaseEngines();

/** A TCP endpoint that takes every connection and never answers, or answers a body it never finishes. */
async function stallingEndpoint(mode: 'silent' | 'mid-body') {
  const sockets: net.Socket[] = [];
  const closed: Promise<void>[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    closed.push(new Promise((resolve) => socket.once('close', () => resolve())));
    socket.on('error', () => undefined);
    // Reads (and drops) what the client sends, so that its closing the connection is seen.
    socket.resume();
    if (mode === 'mid-body')
      socket.once('data', () =>
        socket.write(
          'HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n' +
            'x'.repeat(10),
        ),
      );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    /** Resolves once a client connected (the import's read is in flight). */
    async connected(): Promise<void> {
      while (sockets.length === 0) await new Promise((resolve) => setTimeout(resolve, 20));
    },
    /** Resolves once every connection the clients opened was closed by them. */
    allClosed: () => Promise.all(closed),
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe.each(engines)(
  'compilation imports that stall, on $engine (review E1)',
  { timeout: 30_000 },
  (fixture) => {
    let database: ServerDatabase;
    let dir: string;
    let models: ModelStore;
    const logger = pino({ level: 'silent' });

    beforeAll(async () => {
      if (!fixture.available) return;
      database = await openFreshDatabase(fixture);
      dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-import-abort-'));
      models = new ModelStore(database.db, {
        blobs: new LocalBlobStore(path.join(dir, 'blobs')),
        workDir: path.join(dir, 'work'),
        maxUploadBytes: 1024 * 1024,
      });
    });
    afterAll(async () => {
      await database?.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    const storeReading = (
      endpoint: string,
      client: { socketTimeoutMs?: number; maxAttempts?: number } = {},
      options: Partial<CompilationJobsOptions> = {},
    ) => {
      const objects = new S3Objects({
        endpoint,
        forcePathStyle: true,
        credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
        ...client,
      });
      return new CompilationJobStore(database.db, {
        models,
        openS3Object: (uri, signal) => objects.get(uri, { signal }),
        logger,
        ...options,
      });
    };
    const input = (name: string, stoppingCondition?: StoppingCondition) => ({
      name,
      framework: 'ONNX',
      inputS3Uri: 's3://neo/models/big.onnx',
      roleArn: 'arn:aws:iam::123456789012:role/neo',
      outputS3Location: 's3://neo/out',
      ...(stoppingCondition !== undefined && { stoppingCondition }),
      tags: [],
    });

    it.skipIf(!fixture.available)(
      'a read that stalls fails the job once the socket timeout passes',
      async () => {
        for (const mode of ['silent', 'mid-body'] as const) {
          const stalling = await stallingEndpoint(mode);
          const jobs = storeReading(stalling.endpoint, { socketTimeoutMs: 200, maxAttempts: 1 });
          await jobs.create(input(`stall-timeout-${mode}`));
          await jobs.settle();
          const job = await jobs.get(`stall-timeout-${mode}`);
          expect(job.status, mode).toBe('FAILED');
          expect(job.failureReason, mode).toMatch(/timed out|not answering/);
          await stalling.allClosed();
          await stalling.stop();
        }
      },
    );

    it.skipIf(!fixture.available)(
      'StopCompilationJob ends the stalled read, before the answer or mid-body, and frees its socket',
      async () => {
        for (const mode of ['silent', 'mid-body'] as const) {
          const stalling = await stallingEndpoint(mode);
          const jobs = storeReading(stalling.endpoint);
          await jobs.create(input(`stall-stop-${mode}`));
          await stalling.connected();
          await jobs.stop(`stall-stop-${mode}`);
          await jobs.settle();
          await stalling.allClosed();
          expect((await jobs.get(`stall-stop-${mode}`)).status, mode).toBe('STOPPED');
          await expect(models.getVersion(`compilation-stall-stop-${mode}`, '1')).rejects.toThrow(
            /does not exist|not found/i,
          );
          await stalling.stop();
        }
      },
    );

    it.skipIf(!fixture.available)(
      'shutdown (close) ends a stalled import, failing it as interrupted',
      async () => {
        const stalling = await stallingEndpoint('silent');
        const jobs = storeReading(stalling.endpoint);
        await jobs.create(input('stall-shutdown'));
        await stalling.connected();
        await jobs.close();
        await stalling.allClosed();
        expect(await jobs.get('stall-shutdown')).toMatchObject({
          status: 'FAILED',
          failureReason: SHUTDOWN_IMPORT_REASON,
        });
        await stalling.stop();
      },
    );

    it.skipIf(!fixture.available)(
      'a lost lease (a replica failed the job, or stopped it) ends the import on its server',
      async () => {
        const stalling = await stallingEndpoint('silent');
        const jobs = storeReading(stalling.endpoint, {}, { leaseMs: 400 });
        // A replica whose clock is well ahead: to it, the import's lease ran out.
        const sweeper = storeReading(stalling.endpoint, {}, { leaseMs: 400, now: () => Date.now() + 60_000 });
        await jobs.create(input('stall-lease'));
        await stalling.connected();
        expect(await sweeper.failExpired()).toEqual(['stall-lease']);
        // The import's next renewal finds the job gone and aborts the read.
        await jobs.settle();
        await stalling.allClosed();
        expect(await jobs.get('stall-lease')).toMatchObject({
          status: 'FAILED',
          failureReason: INTERRUPTED_IMPORT_REASON,
        });
        await stalling.stop();
      },
    );

    it.skipIf(!fixture.available)(
      'StoppingCondition.MaxRuntimeInSeconds is the import’s deadline',
      async () => {
        const stalling = await stallingEndpoint('silent');
        const jobs = storeReading(stalling.endpoint);
        await jobs.create(input('stall-deadline', { MaxRuntimeInSeconds: 1 }));
        await jobs.settle();
        expect(await jobs.get('stall-deadline')).toMatchObject({
          status: 'FAILED',
          failureReason: deadlineReason(1),
        });
        await stalling.stop();
      },
    );

    it.skipIf(!fixture.available)(
      'a restarted server fails its own interrupted imports at once, not other servers’ (review N1)',
      async () => {
        const stalling = await stallingEndpoint('silent');
        const before = storeReading(stalling.endpoint, {}, { instanceId: 'server-a' });
        const other = storeReading(stalling.endpoint, {}, { instanceId: 'server-b' });
        await before.create(input('own-interrupted'));
        await other.create(input('others-import'));
        // Server A, restarted (its process's imports are gone): a new store with the same identity.
        const restarted = storeReading(stalling.endpoint, {}, { instanceId: 'server-a' });
        expect(await restarted.failOwnInterrupted()).toEqual(['own-interrupted']);
        expect(await restarted.get('own-interrupted')).toMatchObject({
          status: 'FAILED',
          failureReason: INTERRUPTED_IMPORT_REASON,
        });
        expect((await restarted.get('others-import')).status).toBe('INPROGRESS');
        await before.close();
        await other.close();
        await stalling.stop();
      },
    );

    it.skipIf(!fixture.available)(
      'a tag write does not renew a dead server’s import (review N6)',
      async () => {
        const stalling = await stallingEndpoint('silent');
        const at = Date.now();
        // A server that started an import ten minutes ago and died (its clock stands still: it renews nothing new).
        const dead = storeReading(stalling.endpoint, {}, { leaseMs: 60_000, now: () => at - 10 * 60_000 });
        const live = storeReading(stalling.endpoint, {}, { leaseMs: 60_000 });
        await dead.create(input('tagged-dead'));
        await live.setTags('tagged-dead', [{ key: 'team', value: 'cv' }]);
        expect(await live.failExpired()).toEqual(['tagged-dead']);
        expect((await live.get('tagged-dead')).tags).toEqual([{ key: 'team', value: 'cv' }]);
        await dead.close();
        await stalling.stop();
      },
    );

    it.skipIf(!fixture.available)(
      'a stored value the schema now rejects does not fail Describe or List (review N5)',
      async () => {
        const stalling = await stallingEndpoint('silent');
        const jobs = storeReading(stalling.endpoint);
        await jobs.create(input('bad-stored', { MaxRuntimeInSeconds: 900 }));
        await jobs.close();
        // As a row written by an older, laxer server would be.
        await sql`update compilation_jobs set stopping_condition = ${'{"MaxRuntimeInSeconds":0}'}, tags = ${'not json'} where name = ${'bad-stored'}`.execute(
          database.db,
        );
        expect(await jobs.get('bad-stored')).toMatchObject({ stoppingCondition: {}, tags: [] });
        expect((await jobs.list({ limit: 100 })).map((job) => job.name)).toContain('bad-stored');
        await stalling.stop();
      },
    );

    it.skipIf(!fixture.available)(
      'a server reads imports with compilation.s3SocketTimeoutMs, and its shutdown ends a stalled import',
      async () => {
        const stalling = await stallingEndpoint('silent');
        const location = await fixture.createLocation();
        const t = await startTestServer({
          database: location,
          config: {
            s3: {
              endpoint: stalling.endpoint,
              forcePathStyle: true,
              accessKeyId: 'S3RVER',
              secretAccessKey: 'S3RVER',
            },
            compilation: { s3SocketTimeoutMs: 1000 },
          },
        });
        let stopped = false;
        try {
          const created = await t.call('POST', '/api/v1/access-keys', {
            token: t.adminToken,
            body: { name: 'stall', scope: 'admin' },
          });
          const key = created.body as AccessKey;
          const create = (name: string, stoppingCondition: Record<string, number> = {}) =>
            sagemakerCall(t.url, key, 'CreateCompilationJob', {
              CompilationJobName: name,
              RoleArn: 'arn:aws:iam::123456789012:role/neo',
              InputConfig: { S3Uri: 's3://neo/models/big.onnx', Framework: 'ONNX' },
              OutputConfig: { S3OutputLocation: 's3://neo/out' },
              StoppingCondition: stoppingCondition,
            });
          expect((await create('server-timeout')).status).toBe(200);
          await t.server.services.compilationJobs.settle();
          const timedOut = await sagemakerCall(t.url, key, 'DescribeCompilationJob', {
            CompilationJobName: 'server-timeout',
          });
          expect(timedOut.body).toMatchObject({ CompilationJobStatus: 'FAILED' });
          expect(timedOut.body.FailureReason).toMatch(/timed out|not answering/);

          // Another stalled import, then the server shuts down (as on SIGTERM): close returns.
          expect((await create('server-shutdown', { MaxRuntimeInSeconds: 3600 })).status).toBe(200);
          await stalling.connected();
          await t.stop();
          stopped = true;
          const database = await openDatabase(location);
          try {
            const job = await database.db
              .selectFrom('compilation_jobs')
              .select(['status', 'failure_reason'])
              .where('name', '=', 'server-shutdown')
              .executeTakeFirstOrThrow();
            expect(job).toEqual({ status: 'FAILED', failure_reason: SHUTDOWN_IMPORT_REASON });
          } finally {
            await database.close();
          }
        } finally {
          if (!stopped) await t.stop();
          await stalling.stop();
        }
      },
    );
  },
);
