/**
 * F-compile-replicas: a compilation import runs in the server that created the job, under a lease. Starting
 * another replica (or restarting one) used to fail every INPROGRESS job, whoever ran it; a dead replica's job
 * stayed INPROGRESS until some server started. Real server processes on one PostgreSQL database, one killed
 * with SIGKILL; imports read from s3rver, or from an S3 endpoint that accepts and never answers (an import
 * that is still running, as a large object being read would be).
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Objects } from '../../src/blobs/index.js';
import { databaseEngines } from '../support/engines.js';
import { runServerCli, startServerProcess, type ServerProcess } from '../support/process.js';
import { startTestS3, type TestS3 } from '../support/s3.js';
import { sagemakerCall, type AccessKey } from '../support/sagemaker-call.js';

const engines = await databaseEngines();
const postgres = engines.find((e) => e.engine === 'postgres')!;
// Renewed every quarter lease: long enough that a replica on a busy machine never misses its own renewals.
const LEASE_SECONDS = 5;
const ROLE = 'arn:aws:iam::123456789012:role/SageMakerRole';

describe.skipIf(!postgres.available)(
  'compilation imports across replicas (F-compile-replicas)',
  { timeout: 180_000 },
  () => {
    let cwd: string;
    let s3: TestS3;
    let stalling: net.Server;
    const held: net.Socket[] = [];
    const servers: ServerProcess[] = [];
    let key: AccessKey;
    let a: ServerProcess;
    let b: ServerProcess;

    // Each replica its own data dir, so its own identity (instance-id), as the README says: a server fails the
    // imports its own identity claimed when it starts. B's is a copy of A's (the key material) without it.
    const start = async (configFile: string, dataDir = 'shared') => {
      const server = await startServerProcess(['-c', configFile, '--data-dir', path.join(cwd, dataDir)], cwd);
      servers.push(server);
      return server;
    };
    const describeJob = async (on: ServerProcess, name: string) => {
      const answer = await sagemakerCall(on.operatorUrl, key, 'DescribeCompilationJob', {
        CompilationJobName: name,
      });
      expect(answer.status, JSON.stringify(answer.body)).toBe(200);
      return answer.body;
    };
    const createJob = (on: ServerProcess, name: string, s3Uri: string) =>
      sagemakerCall(on.operatorUrl, key, 'CreateCompilationJob', {
        CompilationJobName: name,
        RoleArn: ROLE,
        InputConfig: { S3Uri: s3Uri, Framework: 'ONNX', DataInputConfig: '{"input":[1,4]}' },
        OutputConfig: { S3OutputLocation: 's3://neo/out', TargetDevice: 'jetson_nano' },
        StoppingCondition: { MaxRuntimeInSeconds: 900 },
      });

    beforeAll(async () => {
      cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-compile-replicas-'));
      s3 = await startTestS3('neo');
      const objects = new S3Objects({
        endpoint: s3.endpoint,
        forcePathStyle: true,
        credentials: s3.credentials,
      });
      await objects.put('s3://neo/models/tiny.onnx', await readFile(await writeTestModel('tiny', cwd)));
      // Takes every request and never answers it: the import reading from it stays in flight.
      stalling = net.createServer((socket) => held.push(socket));
      await new Promise<void>((resolve) => stalling.listen(0, '127.0.0.1', resolve));
      const stallingEndpoint = `http://127.0.0.1:${(stalling.address() as net.AddressInfo).port}`;

      const location = await postgres.createLocation();
      const database = location.engine === 'postgres' ? location.url : '';
      const config = (endpoint: string) =>
        JSON.stringify({
          database,
          listen: '127.0.0.1:0',
          deviceListen: '127.0.0.1:0',
          logLevel: 'info',
          s3: { endpoint, forcePathStyle: true, accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
          compilation: { leaseSeconds: LEASE_SECONDS },
        });
      await writeFile(path.join(cwd, 'a.json'), config(s3.endpoint));
      await writeFile(path.join(cwd, 'b.json'), config(stallingEndpoint));
      const init = await runServerCli(['init', '-c', 'a.json', '--data-dir', path.join(cwd, 'shared')], cwd);
      expect(init.code, init.stderr).toBe(0);
      a = await start('a.json');
      await cp(path.join(cwd, 'shared'), path.join(cwd, 'b-data'), { recursive: true });
      await rm(path.join(cwd, 'b-data', 'instance-id'), { force: true });
      b = await start('b.json', 'b-data');
      const created = await fetch(`${a.operatorUrl}/api/v1/access-keys`, {
        method: 'POST',
        headers: { authorization: `Bearer ${init.stdout.trim()}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'replicas', scope: 'admin' }),
      });
      expect(created.status).toBe(201);
      key = (await created.json()) as AccessKey;
    }, 120_000);
    afterAll(async () => {
      for (const server of servers) await server.stop('SIGKILL');
      for (const socket of held) socket.destroy();
      await new Promise((resolve) => stalling?.close(resolve));
      await s3?.stop();
      await rm(cwd, { recursive: true, force: true });
    });

    it('a replica starting leaves a live replica’s import alone; a killed replica’s import fails once its lease ran out', async () => {
      // A job another replica runs to the end, for contrast: what it was sent is echoed.
      expect((await createJob(a, 'on-a', 's3://neo/models/tiny.onnx')).status).toBe(200);
      let onA = await describeJob(a, 'on-a');
      for (let i = 0; i < 200 && onA.CompilationJobStatus === 'INPROGRESS'; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        onA = await describeJob(a, 'on-a');
      }
      expect(onA).toMatchObject({
        CompilationJobStatus: 'COMPLETED',
        StoppingCondition: { MaxRuntimeInSeconds: 900 },
        InputConfig: { DataInputConfig: '{"input":[1,4]}' },
        ModelArtifacts: { S3ModelArtifacts: 's3://neo/models/tiny.onnx' },
      });

      // B imports from a store that never answers: its job stays in flight while B lives.
      expect((await createJob(b, 'on-b', 's3://neo/models/big.onnx')).status).toBe(200);
      expect((await describeJob(a, 'on-b')).CompilationJobStatus).toBe('INPROGRESS');

      // Another replica starts (as a restart or a scale-up would): B's job is B's, still in flight.
      const c = await start('a.json');
      expect((await describeJob(c, 'on-b')).CompilationJobStatus).toBe('INPROGRESS');
      // B renews its lease while A's and C's sweepers run: the job outlives two leases, still INPROGRESS.
      let live = await describeJob(a, 'on-b');
      for (
        let i = 0;
        i < 400 &&
        (live.LastModifiedTime as number) - (live.CreationTime as number) < 2 * LEASE_SECONDS &&
        live.CompilationJobStatus === 'INPROGRESS';
        i++
      ) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        live = await describeJob(a, 'on-b');
      }
      expect(live.CompilationJobStatus).toBe('INPROGRESS');
      expect((live.LastModifiedTime as number) - (live.CreationTime as number)).toBeGreaterThanOrEqual(
        2 * LEASE_SECONDS,
      );
      await c.stop();

      // B dies without a word: once its lease ran out, a live replica fails the job, saying what to do.
      await b.stop('SIGKILL');
      let dead = await describeJob(a, 'on-b');
      for (let i = 0; i < 600 && dead.CompilationJobStatus === 'INPROGRESS'; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        dead = await describeJob(a, 'on-b');
      }
      expect(dead.CompilationJobStatus).toBe('FAILED');
      expect(dead.FailureReason).toMatch(/create a new compilation job with another name/);
      expect(dead.ModelArtifacts).toBeUndefined();
      // The name stays taken, as the reason says.
      expect((await createJob(a, 'on-b', 's3://neo/models/tiny.onnx')).body.__type).toBe('ResourceInUse');
    });
  },
);
