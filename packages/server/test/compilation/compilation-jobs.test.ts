import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { writeTestModel } from '@edgefleet/core';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBlobStore, S3Objects } from '../../src/blobs/index.js';
import { CompilationJobStore, INTERRUPTED_IMPORT_REASON } from '../../src/compilation/index.js';
import { ModelStore } from '../../src/models/index.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { startTestS3, type TestS3 } from '../support/s3.js';

const engines = await databaseEngines();

describe.each(engines)('compilation jobs on $engine (ONNX imported from s3rver)', (fixture) => {
  let database: ServerDatabase;
  let dir: string;
  let s3: TestS3;
  let jobs: CompilationJobStore;
  let models: ModelStore;
  let objects: S3Objects;

  beforeAll(async () => {
    if (!fixture.available) return;
    database = await openFreshDatabase(fixture);
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-compilation-'));
    s3 = await startTestS3('neo-inputs');
    objects = new S3Objects({
      endpoint: s3.endpoint,
      forcePathStyle: true,
      credentials: s3.credentials,
    });
    await objects.put('s3://neo-inputs/models/tiny.onnx', await readFile(await writeTestModel('tiny', dir)));
    await objects.put('s3://neo-inputs/models/not-a-model.onnx', Buffer.from('not onnx'));
    models = new ModelStore(database.db, {
      blobs: new LocalBlobStore(path.join(dir, 'blobs')),
      workDir: path.join(dir, 'work'),
      maxUploadBytes: 1024 * 1024,
    });
    jobs = new CompilationJobStore(database.db, {
      models,
      openS3Object: (uri) => objects.get(uri),
      logger: pino({ level: 'silent' }),
    });
  });
  afterAll(async () => {
    await database?.close();
    await s3?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const create = (name: string, inputS3Uri: string, framework = 'ONNX') =>
    jobs.create({
      name,
      framework,
      inputS3Uri,
      roleArn: 'arn:aws:iam::123456789012:role/neo',
      outputS3Location: 's3://neo-inputs/out',
      tags: [{ key: 'team', value: 'cv' }],
    });

  it.skipIf(!fixture.available)('imports a valid model into the registry and completes', async () => {
    expect((await create('tiny-job', 's3://neo-inputs/models/tiny.onnx')).status).toBe('INPROGRESS');
    await jobs.settle();
    const job = await jobs.get('tiny-job');
    expect(job).toMatchObject({ status: 'COMPLETED', modelName: 'compilation-tiny-job', modelVersion: '1' });
    const version = await models.getVersion('compilation-tiny-job', '1');
    expect(job.modelSha256).toBe(version.sha256);
    expect(job.tags).toEqual([{ key: 'team', value: 'cv' }]);
    expect((await jobs.list({ limit: 10, status: 'COMPLETED' })).map((j) => j.name)).toEqual(['tiny-job']);
  });

  it.skipIf(!fixture.available)('fails a missing object or an invalid model, naming why', async () => {
    await create('missing-job', 's3://neo-inputs/models/none.onnx');
    await create('garbage-job', 's3://neo-inputs/models/not-a-model.onnx');
    await jobs.settle();
    expect(await jobs.get('missing-job')).toMatchObject({ status: 'FAILED' });
    expect((await jobs.get('missing-job')).failureReason).toMatch(/none\.onnx/);
    expect((await jobs.get('garbage-job')).status).toBe('FAILED');
    await expect(jobs.stop('garbage-job')).rejects.toThrow(/FAILED; only INPROGRESS jobs stop/);
  });

  it.skipIf(!fixture.available)(
    'a store it cannot use fails the job naming the URI, the store and the settings to set (C4)',
    async () => {
      // The store answers, but not to these credentials: as for a server with no or wrong S3 settings.
      const wrong = new S3Objects({
        endpoint: s3.endpoint,
        forcePathStyle: true,
        credentials: { accessKeyId: 'NOT-S3RVER', secretAccessKey: 'nope' },
      });
      const refused = new CompilationJobStore(database.db, {
        models,
        openS3Object: (uri) => wrong.get(uri),
        logger: pino({ level: 'silent' }),
      });
      await refused.create({
        name: 'no-access-job',
        framework: 'ONNX',
        inputS3Uri: 's3://neo-inputs/models/tiny.onnx',
        roleArn: 'arn:aws:iam::123456789012:role/neo',
        outputS3Location: 's3://neo-inputs/out',
        tags: [],
      });
      await refused.settle();
      const job = await jobs.get('no-access-job');
      expect(job.status).toBe('FAILED');
      expect(job.failureReason).toMatch(
        new RegExp(
          `^cannot read s3://neo-inputs/models/tiny\\.onnx on the S3 endpoint ${s3.endpoint.replaceAll('.', '\\.')} with the configured s3\\.accessKeyId\\. The server reaches s3:// URIs through its own S3 settings: set s3\\.accessKeyId and s3\\.secretAccessKey .*--blob-endpoint \\(EDGEFLEET_BLOB_ENDPOINT, s3\\.endpoint\\) and --blob-region \\(s3\\.region\\)\\. The store said: .+`,
        ),
      );
    },
  );

  it.skipIf(!fixture.available)('refuses other frameworks and duplicate names', async () => {
    await expect(create('tf-job', 's3://neo-inputs/models/m.tar.gz', 'TENSORFLOW')).rejects.toThrow(
      /TENSORFLOW is not supported.*ONNX/,
    );
    await expect(create('tiny-job', 's3://neo-inputs/models/tiny.onnx')).rejects.toThrow(/already exists/);
  });
  it.skipIf(!fixture.available)(
    'fails only an import whose lease ran out; its server finishing late leaves no model (F-compile-replicas)',
    async () => {
      const at = Date.now();
      const lease = 60_000;
      // A server that started an import ten minutes ago and never renewed it (killed), and a live one.
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      // Both imports are held in flight until the test lets them go.
      const held = async (uri: string) => {
        await gate;
        return objects.get(uri);
      };
      const dead = new CompilationJobStore(database.db, {
        models,
        openS3Object: held,
        logger: pino({ level: 'silent' }),
        leaseMs: lease,
        now: () => at - 10 * 60_000,
      });
      const sweeper = new CompilationJobStore(database.db, {
        models,
        openS3Object: () => Promise.reject(new Error('not used')),
        logger: pino({ level: 'silent' }),
        leaseMs: lease,
      });
      const live = new CompilationJobStore(database.db, {
        models,
        openS3Object: held,
        logger: pino({ level: 'silent' }),
        leaseMs: lease,
      });
      const input = (name: string) => ({
        name,
        framework: 'ONNX',
        inputS3Uri: 's3://neo-inputs/models/tiny.onnx',
        roleArn: 'arn:aws:iam::123456789012:role/neo',
        outputS3Location: 's3://neo-inputs/out',
        tags: [],
      });
      await dead.create(input('lease-dead'));
      await live.create(input('lease-live'));
      expect(await sweeper.failExpired()).toEqual(['lease-dead']);
      expect(await jobs.get('lease-dead')).toMatchObject({
        status: 'FAILED',
        failureReason: INTERRUPTED_IMPORT_REASON,
      });
      expect((await jobs.get('lease-live')).status).toBe('INPROGRESS');
      // The dead server was only stalled: its import completes, but the job stays FAILED, with no model.
      release();
      await dead.settle();
      expect((await jobs.get('lease-dead')).status).toBe('FAILED');
      await expect(models.getVersion('compilation-lease-dead', '1')).rejects.toThrow(
        /does not exist|not found/i,
      );
      await live.settle();
      expect((await jobs.get('lease-live')).status).toBe('COMPLETED');
    },
  );

  it.skipIf(!fixture.available)(
    'a server that dies between storing the model and recording the job leaves no model behind; a retry under a new name completes',
    async () => {
      const input = (name: string) => ({
        name,
        framework: 'ONNX',
        inputS3Uri: 's3://neo-inputs/models/tiny.onnx',
        roleArn: 'arn:aws:iam::123456789012:role/neo',
        outputS3Location: 's3://neo-inputs/out',
        tags: [],
      });
      // The crash point: the model is stored, then the process is gone before the job's row is written (its
      // upload never returns). `die` ends that never-returning upload once the test is done with it.
      const crashAfterStore = () => {
        let die!: (error: Error) => void;
        const dead = new Promise<never>((_resolve, reject) => (die = reject));
        let stored!: () => void;
        const storedModel = new Promise<void>((resolve) => (stored = resolve));
        const crashing: Pick<ModelStore, 'upload' | 'findVersion' | 'deleteVersion'> = {
          upload: async (upload) => {
            await models.upload(upload);
            stored();
            return dead;
          },
          findVersion: (name, version) => models.findVersion(name, version),
          deleteVersion: (name, version) => models.deleteVersion(name, version),
        };
        return { crashing, storedModel, die: () => die(new Error('the process was killed')) };
      };

      // Restarted with the same identity: the server fails its own interrupted import at once.
      const first = crashAfterStore();
      const killed = new CompilationJobStore(database.db, {
        models: first.crashing,
        openS3Object: (uri) => objects.get(uri),
        logger: pino({ level: 'silent' }),
        instanceId: 'crashing-server',
      });
      await killed.create(input('crash-own'));
      await first.storedModel;
      expect((await models.getVersion('compilation-crash-own', '1')).modelName).toBe('compilation-crash-own');
      const restarted = new CompilationJobStore(database.db, {
        models,
        openS3Object: (uri) => objects.get(uri),
        logger: pino({ level: 'silent' }),
        instanceId: 'crashing-server',
      });
      expect(await restarted.failOwnInterrupted()).toEqual(['crash-own']);
      expect(await jobs.get('crash-own')).toMatchObject({
        status: 'FAILED',
        failureReason: INTERRUPTED_IMPORT_REASON,
      });
      expect(await models.findVersion('compilation-crash-own', '1')).toBeUndefined();

      // Another replica, once the lease ran out.
      const second = crashAfterStore();
      const lease = 60_000;
      const at = Date.now();
      const killedLongAgo = new CompilationJobStore(database.db, {
        models: second.crashing,
        openS3Object: (uri) => objects.get(uri),
        logger: pino({ level: 'silent' }),
        leaseMs: lease,
        now: () => at - 10 * 60_000,
      });
      await killedLongAgo.create(input('crash-lease'));
      await second.storedModel;
      const replica = new CompilationJobStore(database.db, {
        models,
        openS3Object: (uri) => objects.get(uri),
        logger: pino({ level: 'silent' }),
        leaseMs: lease,
      });
      expect(await replica.failExpired()).toEqual(['crash-lease']);
      expect(await models.findVersion('compilation-crash-lease', '1')).toBeUndefined();

      // A version that was there before the job (the import's upload was refused as a duplicate) is not its.
      // (Stored a second earlier: a version stored in the same millisecond as the job could be the import's.)
      const earlier = new ModelStore(database.db, {
        blobs: new LocalBlobStore(path.join(dir, 'blobs')),
        workDir: path.join(dir, 'work'),
        maxUploadBytes: 1024 * 1024,
        now: () => Date.now() - 1000,
      });
      await earlier.upload({
        name: 'compilation-crash-kept',
        version: '1',
        kind: 'onnx',
        body: Readable.from(await readFile(await writeTestModel('tiny', dir))),
      });
      const third = crashAfterStore();
      const stuck = new CompilationJobStore(database.db, {
        models: third.crashing,
        // A read that never answers (until the store is closed below).
        openS3Object: (_uri, signal) =>
          new Promise<Readable>((_resolve, reject) =>
            signal.addEventListener('abort', () => reject(signal.reason as Error)),
          ),
        logger: pino({ level: 'silent' }),
        instanceId: 'stuck-server',
      });
      await stuck.create(input('crash-kept'));
      const stuckRestarted = new CompilationJobStore(database.db, {
        models,
        openS3Object: (uri) => objects.get(uri),
        logger: pino({ level: 'silent' }),
        instanceId: 'stuck-server',
      });
      expect(await stuckRestarted.failOwnInterrupted()).toEqual(['crash-kept']);
      expect(await models.findVersion('compilation-crash-kept', '1')).toBeDefined();

      // The "killed" imports end (in a real crash their process is gone): they write nothing more.
      first.die();
      second.die();
      await killed.settle();
      await killedLongAgo.settle();
      await stuck.close();
      expect((await jobs.get('crash-own')).status).toBe('FAILED');
      expect((await jobs.get('crash-lease')).status).toBe('FAILED');

      // The client retries under a new name (the failed job's name stays taken): it completes.
      await jobs.create(input('crash-own-retry'));
      await jobs.settle();
      expect(await jobs.get('crash-own-retry')).toMatchObject({ status: 'COMPLETED' });
      expect(await models.findVersion('compilation-crash-own-retry', '1')).toBeDefined();
    },
  );

  it.skipIf(!fixture.available)(
    'NameContains filters before the page limit: a page never ends short of a match (F-compile-page)',
    async () => {
      const input = (name: string) => ({
        name,
        framework: 'ONNX',
        inputS3Uri: 's3://neo-inputs/models/tiny.onnx',
        roleArn: 'arn:aws:iam::123456789012:role/neo',
        outputS3Location: 's3://neo-inputs/out',
        tags: [],
      });
      for (let i = 0; i < 5; i++) await jobs.create(input(`page-aa-${i}`));
      await jobs.create(input('page-zz-MATCH'));
      await jobs.settle();
      expect((await jobs.list({ limit: 3, nameContains: 'match' })).map((j) => j.name)).toEqual([
        'page-zz-MATCH',
      ]);
      // `_` and `%` are literal (job names cannot hold them): unescaped, LIKE would list every job (review N11).
      expect(await jobs.list({ limit: 10, nameContains: '_' })).toEqual([]);
      expect(await jobs.list({ limit: 10, nameContains: '%' })).toEqual([]);
    },
  );
});
