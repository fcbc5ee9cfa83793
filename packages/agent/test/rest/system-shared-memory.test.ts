import { execFile } from 'node:child_process';
import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { TEST_MODELS } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PackageStore, UpdateEngine } from '../../src/deployments/index.js';
import { REASON_WITHHELD, publicAgentStatus } from '../../src/rest/agent-status-route.js';
import { RestError } from '../../src/rest/rest-errors.js';
import {
  MAX_REGIONS,
  MAX_REGIONS_PER_UID,
  SharedMemoryRegions,
} from '../../src/rest/shared-memory-routes.js';
import { SYSV_SHM_ADDON_PATH, SharedMemoryReader, loadSysvShmAddon } from '../../src/shm/index.js';
import { AgentDatabase, type DeploymentModelRow } from '../../src/state/index.js';
import { waitUntil } from '../support/wait-until.js';
import {
  HttpClient,
  bytesOf,
  registerRegion,
  scratch,
  startAgent,
  targetOf,
  unregisterListedRegions,
  valuesOf,
} from './helpers.js';
import { makeSegment, segmentBytes, writeSegment } from '../support/segments.js';
import { ROW, pairInputs, pairModel, pairReference } from '../support/direct-output-models.js';

// The KServe v2 system shared memory extension over System V segments: regions registered by name, inputs read
// from them and outputs written into them, only for callers whose socket credentials allow the segment.
const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;
const addon = loadSysvShmAddon();
const created: number[] = [];
let files: Awaited<ReturnType<typeof scratch>>;
let agent: Awaited<ReturnType<typeof startAgent>>;
let client: HttpClient;
let socketPath: string;
let reader: SharedMemoryReader;
let deployments: { database: AgentDatabase; store: PackageStore; engine: UpdateEngine };
/** Nobody registered regions in this test: the clean-up unregisters them as nobody (root sees only its own). */
let nobodyRegistered = false;

const sample = TEST_MODELS.tiny.sampleInputs();
const x = bytesOf(sample.x!.data);
const expectedY = bytesOf(TEST_MODELS.tiny.reference(sample).y!.data);
/** Another input of the tiny model, and its output as JSON carries it: what nobody's own segments hold. */
const otherSample = { x: { ...sample.x!, data: Float32Array.from({ length: 16 }, (_, i) => 100 + i) } };
const otherX = bytesOf(otherSample.x.data);
const otherYValues = valuesOf(TEST_MODELS.tiny.reference(otherSample).y!);
const yValues = valuesOf(TEST_MODELS.tiny.reference(sample).y!);

/** A segment of this process's user (root in CI) of `size` bytes, `bytes` at its start, with `mode`. */
function segment(size: number, bytes: Uint8Array, mode: number): number {
  return makeSegment(addon, created, bytes, { size, mode });
}

/** The tiny model's input `x`, its bytes to be read from a region. */
const tensorX = () => ({
  name: Buffer.from('x'),
  dataType: 'FLOAT32' as const,
  shape: [1, 16],
  data: Buffer.alloc(0),
});

const post = (path: string, body: unknown) => client.postJson(path, body);

/** An inference of `tiny` whose input lies in `inputRegion` and whose output (if any) goes to `outputRegion`. */
const inferBodyViaRegions = (
  inputRegion: string,
  outputRegion: string | undefined,
  { inputBytes = 64, outputBytes = 64, outputOffset = 0 } = {},
) => ({
  inputs: [
    {
      name: 'x',
      shape: [1, 16],
      datatype: 'FP32',
      parameters: { shared_memory_region: inputRegion, shared_memory_byte_size: inputBytes },
    },
  ],
  ...(outputRegion !== undefined && {
    outputs: [
      {
        name: 'y',
        parameters: {
          shared_memory_region: outputRegion,
          shared_memory_byte_size: outputBytes,
          shared_memory_offset: outputOffset,
        },
      },
    ],
  }),
});

const inferViaRegions = (inputRegion: string, outputRegion: string, outputOffset = 0) =>
  post('/v2/models/tiny/infer', inferBodyViaRegions(inputRegion, outputRegion, { outputOffset }));

/**
 * The update engine the agent reports, on its own database: 'tiny' ended Failed because rolling it back failed
 * (the engine's #rollBack keeps both messages, each naming a file of the agent's), 'other' committed.
 */
function updateEngineWithAFailedRollback(root: string) {
  const database = AgentDatabase.open({ path: join(root, 'agent.db'), walSyncIntervalMs: 0 });
  const store = new PackageStore({
    root: join(root, 'deployments'),
    endpoint: 'https://127.0.0.1:1',
    tls: () => Promise.reject(new Error('this test downloads nothing')),
    timeoutMs: 1000,
  });
  const now = Date.now();
  const row: DeploymentModelRow = {
    handle: 'other',
    deploymentName: 'up',
    state: 'Committed',
    desired: 'DEPLOY',
    failurePolicy: 'ROLLBACK_ON_FAILURE',
    allowDowngrade: false,
    modelName: 'other',
    version: '2.0',
    packageUrl: '/api/v1/device/packages/p2',
    sha256: 'a'.repeat(64),
    size: 100,
    packageDir: join(root, 'deployments/packages/other/2.0'),
    previousUrl: null,
    previousVersion: null,
    committedVersion: '2.0',
    reason: null,
    rollbackFailureReason: null,
    rolledBackWithDeployment: false,
    restarts: 0,
    startedAt: now - 2000,
    updatedAt: now - 1000,
    endedAt: now - 1000,
    reported: true,
  };
  database.deployments.saveAll([
    row,
    {
      ...row,
      handle: 'tiny',
      modelName: 'tiny',
      state: 'Failed',
      packageDir: join(root, 'deployments/packages/tiny/2.0'),
      previousUrl: join(root, 'deployments/packages/tiny/1.0'),
      previousVersion: '1.0',
      committedVersion: null,
      reason: `cannot read ${root}/lock`,
      rollbackFailureReason: `ENOENT: no such file or directory, open '${root}/deployments/packages/tiny/1.0/manifest.json'`,
      updatedAt: now,
      endedAt: now,
    },
  ]);
  const engine = new UpdateEngine({
    registry: agent.registry,
    repository: database.deployments,
    store,
    trust: null,
    requireSignatures: false,
    healthWindowMs: 10,
    logger: { info: () => {}, warn: () => {}, error: () => {} },
  });
  return { database, store, engine };
}

beforeAll(async () => {
  files = await scratch('agent-rest-shm-');
  socketPath = join(files.root, 'rest.sock');
  agent = await startAgent({
    socketPath,
    socketMode: 0o666,
    sharedMemory: (reader = new SharedMemoryReader({ addon })),
    // As the daemon reports its update engine (agent-daemon.ts).
    agentStatus: () => ({ deployments: { enabled: true, models: deployments.engine.status() } }),
  });
  deployments = updateEngineWithAFailedRollback(files.root);
  await agent.registry.load({ name: 'tiny', url: await files.catalogue('tiny') });
  client = new HttpClient(targetOf(`unix:${socketPath}`));
  await chmod(files.root, 0o755);
});
afterEach(async () => {
  // Each user's regions are its own, root's too: root unregisters those its status lists, nobody all of its own.
  await unregisterListedRegions(client);
  if (nobodyRegistered) {
    nobodyRegistered = false;
    const { results } = await runAsNobody([{ path: '/v2/systemsharedmemory/unregister', body: {} }]);
    expect(results[0]!.status).toBe(200);
  }
  for (const shmid of created.splice(0)) addon.remove(shmid);
});
afterAll(async () => {
  client?.agent.destroy();
  await deployments?.engine.close();
  deployments?.store.close();
  deployments?.database.close();
  await agent?.stop();
  await files?.cleanup();
});

describe('KServe v2 system shared memory', () => {
  it('is listed as an extension; registers, reports and unregisters regions', async () => {
    const meta = (await client.request({ path: '/v2' })).json() as { extensions: string[] };
    expect(meta.extensions).toContain('system_shared_memory');
    const shmid = segment(256, x, 0o600);
    const register = await post('/v2/systemsharedmemory/region/in/register', {
      key: String(shmid),
      offset: 64,
      byte_size: 128,
    });
    expect(register.status).toBe(200);
    const status = await client.request({ path: '/v2/systemsharedmemory/region/in/status' });
    expect(status.json()).toEqual([{ name: 'in', key: String(shmid), offset: 64, byte_size: 128 }]);
    expect((await client.request({ path: '/v2/systemsharedmemory/status' })).json()).toHaveLength(1);
    expect((await post('/v2/systemsharedmemory/region/in/unregister', {})).status).toBe(200);
    const gone = await client.request({ path: '/v2/systemsharedmemory/region/in/status' });
    expect(gone.status).toBe(404);
    expect(gone.text()).toMatch(/no system shared memory region named \\"in\\"/);
  });

  it('caps the regions one user registers: a flood past MAX_REGIONS_PER_UID is refused with 429, clearly', async () => {
    const shmid = segment(64, x, 0o600);
    const register = (name: string) => registerRegion(client, name, shmid, 64);
    for (let i = 0; i < MAX_REGIONS_PER_UID; i++) expect((await register(`r${i}`)).status).toBe(200);
    const refused = await register('one-too-many');
    expect(refused.status).toBe(429);
    expect(refused.text()).toMatch(
      new RegExp(
        `uid ${process.getuid!()} has ${MAX_REGIONS_PER_UID} system shared memory regions registered, the most one user may have at once \\(${MAX_REGIONS_PER_UID}\\); unregister some first`,
      ),
    );
    // Nothing registered before is lost, and the refused one is not half-registered.
    const listed = (await client.request({ path: '/v2/systemsharedmemory/status' })).json() as unknown[];
    expect(listed).toHaveLength(MAX_REGIONS_PER_UID);
    expect((await client.request({ path: '/v2/systemsharedmemory/region/one-too-many/status' })).status).toBe(
      404,
    );
    // Room again once one is unregistered.
    expect((await post('/v2/systemsharedmemory/region/r0/unregister', {})).status).toBe(200);
    expect((await register('one-too-many')).status).toBe(200);
  });

  it('reads the input from one region and writes the output into another, exactly, with no tensor in the bodies', async () => {
    const input = segment(64, x, 0o600);
    const output = segment(192, new Uint8Array(0), 0o600);
    expect((await registerRegion(client, 'in', input, 64)).status).toBe(200);
    expect((await registerRegion(client, 'out', output, 128, 64)).status).toBe(200);
    const before = agent.pool.stats().inputBytes;
    const result = await inferViaRegions('in', 'out', 32);
    expect(result.status).toBe(200);
    // The worker mapped both segments itself: no input bytes copied or sent, no output mapped on the event loop.
    const after = agent.pool.stats().inputBytes;
    expect(after.segment - before.segment).toBe(64);
    expect(after.copies).toBe(before.copies);
    expect(reader.cachedWritableSegmentCount).toBe(0);
    expect(result.json()).toMatchObject({
      outputs: [
        {
          name: 'y',
          datatype: 'FP32',
          shape: [1, 16],
          parameters: { shared_memory_region: 'out', shared_memory_byte_size: 64, shared_memory_offset: 32 },
        },
      ],
    });
    expect((result.json() as { outputs: Array<{ data?: unknown }> }).outputs[0]!.data).toBeUndefined();
    // Region offset 64 + output offset 32.
    expect([...segmentBytes(addon, output, 96, 64)]).toEqual([...expectedY]);
    expect([...segmentBytes(addon, output, 0, 96)]).toEqual(Array(96).fill(0));
  });

  it('answers right on the workers when an output region lies over an input (one region, or two over one segment)', async () => {
    // The layouts system-shared-memory-inline.test.ts runs on the event loop, here on this agent's workers (its
    // inline path is off): the worker writes each output once the run has read every input.
    await agent.registry.load({ name: 'pair', url: await files.custom(pairModel(), 'pair') });
    try {
      const { a, b } = pairInputs();
      const expected = pairReference({ a, b });
      const size = a.byteLength;
      const original = Buffer.concat([bytesOf(a), bytesOf(b)]);
      const place = (region: string, offset = 0) => ({
        shared_memory_region: region,
        shared_memory_byte_size: size,
        ...(offset !== 0 && { shared_memory_offset: offset }),
      });
      /** a from `regionA`, b from `regionB` (at `offsetB`), sum and product into `outputRegion`, on a worker. */
      const pairOnAWorker = async (
        regionA: string,
        regionB: string,
        offsetB: number,
        outputRegion: string,
      ) => {
        const runs = agent.pool.stats().runs;
        const result = await client.postJson('/v2/models/pair/infer', {
          inputs: [
            { name: 'a', shape: [1, ROW], datatype: 'FP32', parameters: place(regionA) },
            { name: 'b', shape: [1, ROW], datatype: 'FP32', parameters: place(regionB, offsetB) },
          ],
          outputs: [
            { name: 'sum', parameters: place(outputRegion) },
            { name: 'product', parameters: place(outputRegion, size) },
          ],
        });
        expect(result.status).toBe(200);
        expect(agent.pool.stats().runs).toMatchObject({ inline: 0, worker: runs.worker + 1 });
      };
      const floatsAt = (shmid: number, offset: number) =>
        new Float32Array(segmentBytes(addon, shmid, offset, size).buffer);

      // One region for both inputs and both outputs: each output over the input it is computed from after the other.
      const both = segment(2 * size, original, 0o600);
      expect((await registerRegion(client, 'both', both, 2 * size)).status).toBe(200);
      await pairOnAWorker('both', 'both', size, 'both');
      expect(floatsAt(both, 0)).toEqual(expected.sum);
      expect(floatsAt(both, size)).toEqual(expected.product);

      // Two regions over one segment, at different offsets: inputs through 'left' and 'right', outputs through
      // 'whole' (the same bytes).
      const shared = segment(2 * size, original, 0o600);
      expect((await registerRegion(client, 'left', shared, size)).status).toBe(200);
      expect((await registerRegion(client, 'right', shared, size, size)).status).toBe(200);
      expect((await registerRegion(client, 'whole', shared, 2 * size)).status).toBe(200);
      await pairOnAWorker('left', 'right', 0, 'whole');
      expect(floatsAt(shared, 0)).toEqual(expected.sum);
      expect(floatsAt(shared, size)).toEqual(expected.product);
    } finally {
      await agent.registry.unload('pair');
    }
  });

  it('refuses regions past the segment, tensors past the region, and unknown or unregistered regions, clearly', async () => {
    const shmid = segment(64, x, 0o600);
    const past = await post('/v2/systemsharedmemory/region/big/register', {
      key: String(shmid),
      byte_size: 65,
    });
    expect(past.status).toBe(400);
    expect(past.text()).toMatch(/runs past the end of shared memory segment/);
    const bad = await post('/v2/systemsharedmemory/region/bad/register', { key: 'abc', byte_size: 1 });
    expect(bad.status).toBe(400);
    expect(bad.text()).toMatch(/shmid/);
    expect((await registerRegion(client, 'small', shmid, 32)).status).toBe(200);
    const tooSmall = await inferViaRegions('small', 'small');
    expect(tooSmall.status).toBe(400);
    expect(tooSmall.text()).toMatch(/run past the end of region \\"small\\" \(32 bytes\)/);
    const unknown = await inferViaRegions('nowhere', 'nowhere');
    expect(unknown.status).toBe(400);
    expect(unknown.text()).toMatch(/region \\"nowhere\\", which is not registered/);
    const missingSize = await post('/v2/models/tiny/infer', {
      inputs: [
        { name: 'x', shape: [1, 16], datatype: 'FP32', parameters: { shared_memory_region: 'small' } },
      ],
    });
    expect(missingSize.status).toBe(400);
    expect(missingSize.text()).toMatch(/without shared_memory_byte_size/);
  });

  it('makes unregistering a region wait for the request using it, so memory reused afterwards is never written', async () => {
    await agent.registry.load({ name: 'slow', url: await files.catalogue('slow') });
    try {
      const input = segment(64, x, 0o600);
      const output = segment(64, new Uint8Array(0), 0o600);
      await registerRegion(client, 'in', input, 64);
      await registerRegion(client, 'out', output, 64);
      // The one worker is busy with two slow runs, so the request waits, checked, in the queue meanwhile.
      const slow = TEST_MODELS.slow.sampleInputs().x!;
      const slowRun = () =>
        agent.registry.predict('slow', [
          { name: Buffer.from('x'), dataType: 'FLOAT32', shape: slow.shape, data: bytesOf(slow.data) },
        ]);
      const queued = () =>
        waitUntil(
          () => agent.pool.stats().models.some((m) => m.key.startsWith('tiny') && m.queued === 1),
          'the request to wait in the tiny model queue',
        );
      let busy = Promise.all([slowRun(), slowRun()]);
      let pending = inferViaRegions('in', 'out');
      await queued();
      // The client reuses the memory as soon as unregister answers: nothing may write there afterwards.
      const reused = new Uint8Array(64).fill(0xa5);
      const { status, outputWhenAnswered } = await post(
        '/v2/systemsharedmemory/region/out/unregister',
        {},
      ).then((response) => {
        const outputWhenAnswered = segmentBytes(addon, output, 0, 64);
        writeSegment(addon, output, reused);
        return { status: response.status, outputWhenAnswered };
      });
      expect(status).toBe(200);
      // Unregister answered only once the request using the region was done with it: its output was written.
      expect([...outputWhenAnswered]).toEqual([...expectedY]);
      const result = await pending;
      expect(result.status).toBe(200);
      await busy;
      expect([...segmentBytes(addon, output, 0, 64)]).toEqual([...reused]);
      const after = await inferViaRegions('in', 'out');
      expect(after.status).toBe(400);
      expect(after.text()).toMatch(/region \\"out\\", which is not registered/);
      expect([...segmentBytes(addon, output, 0, 64)]).toEqual([...reused]);
      await registerRegion(client, 'out', output, 64);
      expect((await inferViaRegions('in', 'out')).status).toBe(200);
      expect([...segmentBytes(addon, output, 0, 64)]).toEqual([...expectedY]);

      // The output segment itself removed (and destroyed: nothing holds it) after the agent checked it.
      const doomed = segment(64, new Uint8Array(0), 0o600);
      await registerRegion(client, 'doomed', doomed, 64);
      busy = Promise.all([slowRun(), slowRun()]);
      pending = inferViaRegions('in', 'doomed');
      await queued();
      addon.remove(doomed);
      created.splice(created.indexOf(doomed), 1);
      await busy;
      const failed = await pending;
      expect(failed.status).toBe(400);
      expect(failed.text()).toMatch(
        /output \\"y\\": shared memory segment \d+ does not exist \(removed, or never created\): cannot attach it read-write/,
      );
      expect((await inferViaRegions('in', 'out')).status).toBe(200);
    } finally {
      await agent.registry.unload('slow');
    }
  });

  it('fails a request whose output region was removed from under it with a clear error, and keeps serving', async () => {
    const input = segment(64, x, 0o600);
    const output = segment(64, new Uint8Array(0), 0o600);
    await registerRegion(client, 'in', input, 64);
    await registerRegion(client, 'out', output, 64);
    // The segment goes away while registered: the next use is a clear error, never a crash.
    addon.remove(output);
    created.splice(created.indexOf(output), 1);
    const result = await inferViaRegions('in', 'out');
    expect(result.status).toBe(400);
    expect(result.text()).toMatch(/does not exist/);
    const again = await post('/v2/models/tiny/infer', {
      inputs: [
        {
          name: 'x',
          shape: [1, 16],
          datatype: 'FP32',
          parameters: { shared_memory_region: 'in', shared_memory_byte_size: 64 },
        },
      ],
    });
    expect(again.status).toBe(200);
  });
});

describe('SharedMemoryRegions in use', () => {
  it('refuses new uses of a region being unregistered, and past the wait keeps it registered with a clear 409', async () => {
    const regions = new SharedMemoryRegions(reader, { unregisterWaitMs: 50 });
    const me = { pid: process.pid, uid: process.getuid!(), gid: process.getgid!(), groups: [] };
    const shmid = segment(64, x, 0o600);
    regions.register('r', { key: String(shmid), byte_size: 64 }, me);
    const use = regions.use(['r', 'r', 'unknown'], me);
    const unregistering = regions.unregister('r', me).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(() => regions.use(['r'], me)).toThrow(/region "r" is being unregistered/);
    const error = await unregistering;
    expect(error).toBeInstanceOf(RestError);
    expect((error as RestError).statusCode).toBe(409);
    expect((error as RestError).message).toMatch(
      /region "r" still in use by a request after 50 ms, so still registered/,
    );
    expect(regions.status('r', me)).toEqual([{ name: 'r', key: String(shmid), offset: 0, byte_size: 64 }]);
    // Usable again, and unregistered at once when no request uses it.
    regions.use(['r'], me).release();
    use.release();
    use.release(); // a second release changes nothing
    await regions.unregister('r', me);
    expect(regions.status(undefined, me)).toEqual([]);
  });
});

describe('SharedMemoryRegions among users (peer identities as SO_PEERCRED gives them)', () => {
  const user = (uid: number) => ({ pid: 1, uid, gid: uid, groups: [] });
  const root = user(0);

  it('keeps MAX_REGIONS across users, MAX_REGIONS_PER_UID each: one user filling its quota leaves the others room', () => {
    const regions = new SharedMemoryRegions(reader);
    const shmid = segment(64, x, 0o644); // readable by every user
    const body = { key: String(shmid), byte_size: 64 };
    for (let i = 0; i < MAX_REGIONS_PER_UID; i++) regions.register(`a${i}`, body, user(1001));
    expect(() => regions.register('a-more', body, user(1001))).toThrow(
      /uid 1001 has 64 system shared memory regions registered, the most one user may have at once/,
    );
    regions.register('b0', body, user(1002));
    // The whole pool: 4 users' quotas; a fifth user is refused with the pool's own message.
    for (let i = 1; i < MAX_REGIONS_PER_UID; i++) regions.register(`b${i}`, body, user(1002));
    for (let i = 0; i < MAX_REGIONS - 2 * MAX_REGIONS_PER_UID; i++)
      regions.register(`c${i}`, body, user(1003 + Math.floor(i / MAX_REGIONS_PER_UID)));
    let refused: unknown;
    try {
      regions.register('e0', body, user(2000));
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(RestError);
    expect((refused as RestError).statusCode).toBe(429);
    expect((refused as RestError).message).toMatch(
      new RegExp(
        `${MAX_REGIONS} system shared memory regions are registered already, the most this agent keeps across all users`,
      ),
    );
  });

  it('shows each user its own regions only (root too, an unknown caller none); another user’s name is a 404', async () => {
    const regions = new SharedMemoryRegions(reader);
    const shmid = segment(64, x, 0o644);
    regions.register('alice-in', { key: String(shmid), byte_size: 64 }, user(1001));
    regions.register('bob-in', { key: String(shmid), offset: 32, byte_size: 32 }, user(1002));
    regions.register('root-in', { key: String(shmid), byte_size: 16 }, root);
    expect(regions.status(undefined, user(1001))).toEqual([
      { name: 'alice-in', key: String(shmid), offset: 0, byte_size: 64 },
    ]);
    expect(regions.status(undefined, user(1002)).map((r) => r.name)).toEqual(['bob-in']);
    expect(regions.status(undefined, root).map((r) => r.name)).toEqual(['root-in']);
    expect(regions.status(undefined, null)).toEqual([]);
    expect(regions.status('bob-in', user(1002))).toHaveLength(1);
    for (const caller of [user(1001), root, null])
      expect(() => regions.status('bob-in', caller)).toThrow(
        /no system shared memory region named "bob-in" is registered/,
      );
  });

  it('gives each uid its own namespace of names: the same name for two users is two regions, each its own', async () => {
    const regions = new SharedMemoryRegions(reader);
    const shmid = segment(64, x, 0o644);
    const [alice, bob] = [user(1001), user(1002)];
    regions.register('in', { key: String(shmid), byte_size: 64 }, alice);
    regions.register('in', { key: String(shmid), offset: 32, byte_size: 32 }, bob);
    regions.register('in', { key: String(shmid), offset: 48, byte_size: 16 }, root);
    expect(regions.status('in', alice)).toEqual([
      { name: 'in', key: String(shmid), offset: 0, byte_size: 64 },
    ]);
    expect(regions.status('in', bob)).toEqual([
      { name: 'in', key: String(shmid), offset: 32, byte_size: 32 },
    ]);
    expect(regions.status(undefined, root)).toEqual([
      { name: 'in', key: String(shmid), offset: 48, byte_size: 16 },
    ]);
    // Each reads its own region's bytes: bob's starts 32 bytes into the segment.
    const [lease] = regions.readInputs(
      [tensorX()],
      [{ region: 'in', offset: 0, byteSize: 32, position: 0 }],
      bob,
    );
    expect([...lease!.data]).toEqual([...x.subarray(32, 64)]);
    lease!.release();
    // The same uid registering a name it holds is refused as it always was, and its region is kept.
    expect(() => regions.register('in', { key: String(shmid), byte_size: 8 }, alice)).toThrow(
      /^a system shared memory region named "in" is already registered; unregister it first$/,
    );
    expect(regions.status('in', alice)).toEqual([
      { name: 'in', key: String(shmid), offset: 0, byte_size: 64 },
    ]);
    // One user's unregister (by name, or of all its own) leaves the others' of the same name.
    await regions.unregister('in', bob);
    expect(() => regions.status('in', bob)).toThrow(/no system shared memory region named "in"/);
    await regions.unregister(undefined, root);
    expect(regions.status('in', alice)).toHaveLength(1);
    // Each user's quota counts its own regions only, and freed names and room are reusable.
    regions.register('in', { key: String(shmid), byte_size: 64 }, bob);
    expect(regions.status(undefined, bob)).toHaveLength(1);
  });

  /** The error `act` throws (a RestError), with `name` written as <name>, to compare with an unknown region's. */
  const refusal = async (act: () => unknown, name: string) => {
    try {
      await act();
    } catch (error) {
      expect(error).toBeInstanceOf(RestError);
      const { statusCode, message } = error as RestError;
      return { statusCode, message: message.replaceAll(JSON.stringify(name), '<name>') };
    }
    throw new Error('expected a refusal');
  };

  it('is not registered, to another user, wherever it is named: unregister, inputs, outputs, in use (root too)', async () => {
    const regions = new SharedMemoryRegions(reader, { unregisterWaitMs: 5_000 });
    const shmid = segment(64, x, 0o666); // every user could read and write it: only the owner decides
    const [alice, bob] = [user(1001), user(1002)];
    regions.register('alice-in', { key: String(shmid), byte_size: 64 }, alice);
    const unknownRegion = 'never-registered';
    // What bob gets naming alice's region is what he gets naming one that does not exist: no size, shmid or uid.
    const alike = async (act: (name: string) => unknown, status: number) => {
      const theirs = await refusal(() => act('alice-in'), 'alice-in');
      expect(theirs).toEqual(await refusal(() => act(unknownRegion), unknownRegion));
      expect(theirs.statusCode).toBe(status);
      expect(theirs.message).not.toMatch(new RegExp(`${shmid}|1001|64`));
    };
    // Past the end of the region (80 bytes at 0 of 64): the bounds would tell its size.
    const input = (name: string) => ({ region: name, offset: 0, byteSize: 80, position: 0 });
    // Root is one more user: another's region is not registered to root either.
    for (const other of [bob, root]) {
      await alike((name) => regions.unregister(name, other), 404);
      await alike((name) => regions.readInputs([tensorX()], [input(name)], other), 400);
      await alike((name) => regions.outputSegments([{ name: 'y', sharedMemory: input(name) }], other), 400);
      await alike((name) => regions.writeOutput('y', input(name), new Uint8Array(4), other), 400);
    }
    expect(regions.status('alice-in', alice)).toHaveLength(1);
    // Held by one of alice's requests and being unregistered: bob is not told so either.
    const aliceUse = regions.use(['alice-in'], alice);
    const unregistering = regions.unregister('alice-in', alice);
    expect(() => regions.use(['alice-in'], alice)).toThrow(/is being unregistered/);
    regions.use(['alice-in'], bob).release();
    aliceUse.release();
    await unregistering;
    expect(regions.status(undefined, alice)).toEqual([]);
    // A caller the agent does not know (TCP) is refused shared memory, before any region is looked up.
    expect(
      await refusal(() => regions.readInputs([tensorX()], [input('alice-in')], null), 'alice-in'),
    ).toMatchObject({
      statusCode: 403,
      message: expect.stringMatching(/only for callers on the agent’s Unix socket/),
    });
  });

  it('unregisters all (no name) of the caller’s own regions only, root’s included', async () => {
    const regions = new SharedMemoryRegions(reader);
    const shmid = segment(64, x, 0o644);
    const body = { key: String(shmid), byte_size: 64 };
    const [alice, bob] = [user(1001), user(1002)];
    regions.register('alice-in', body, alice);
    regions.register('bob-in', body, bob);
    regions.register('root-in', body, root);
    // A root app's cleanup (Triton clients unregister all on their way out) leaves the other apps' regions.
    await regions.unregister(undefined, root);
    expect(regions.status(undefined, root)).toEqual([]);
    await regions.unregister(undefined, alice);
    expect(regions.status(undefined, alice)).toEqual([]);
    expect(regions.status(undefined, bob).map((r) => r.name)).toEqual(['bob-in']);
    // Root may not name another's region to unregister it: it is not root's.
    await expect(regions.unregister('bob-in', root)).rejects.toThrow(
      /no system shared memory region named "bob-in"/,
    );
    expect(regions.status('bob-in', bob)).toHaveLength(1);
  });
});

describe('the agent status for a caller who is not an operator', () => {
  it('passes the listed fields only, and fails closed: updates that do not parse are left out, with a warning', () => {
    const updates = deployments.engine.status();
    const warnings: string[] = [];
    const warn = (message: string) => warnings.push(message);
    // A field the engine may add one day, and a key beside deployments: neither is listed, so neither passes.
    const added = publicAgentStatus(
      {
        deployments: { enabled: true, models: updates.map((u) => ({ ...u, packageDir: '/secret/dir' })) },
        debug: '/secret/dir',
      },
      warn,
    );
    expect(Object.keys(added)).toEqual(['deployments']);
    expect(JSON.stringify(added)).not.toContain('/secret');
    expect(warnings).toEqual([]);
    // The engine's shape changed (a reason that is not a string): the updates are dropped, not copied.
    const changed = publicAgentStatus(
      { deployments: { enabled: true, models: [{ ...updates[0], reason: { file: '/secret/lock' } }] } },
      warn,
    );
    expect(changed).toEqual({ deployments: { enabled: true } });
    // A handle's last failed deployment: its reasons are withheld like the update's own.
    const withFailure = publicAgentStatus(
      {
        deployments: {
          enabled: true,
          models: [
            {
              ...updates[0],
              lastFailure: {
                deployment: 'broken',
                state: 'Failed',
                version: '9.0',
                reason: 'cannot read /secret/lock',
                rollbackFailureReason: null,
                startedAt: '2026-01-01T00:00:00.000Z',
                endedAt: '2026-01-01T00:00:01.000Z',
                packageDir: '/secret/dir',
              },
            },
          ],
        },
      },
      warn,
    ) as { deployments: { models: Array<{ lastFailure: unknown }> } };
    expect(withFailure.deployments.models[0]!.lastFailure).toEqual({
      deployment: 'broken',
      state: 'Failed',
      version: '9.0',
      reason: REASON_WITHHELD,
      rollbackFailureReason: null,
      startedAt: '2026-01-01T00:00:00.000Z',
      endedAt: '2026-01-01T00:00:01.000Z',
    });
    expect(publicAgentStatus({ deployments: '/secret/dir' }, warn)).toEqual({});
    expect(publicAgentStatus({ deployments: { enabled: false } }, warn)).toEqual({
      deployments: { enabled: false },
    });
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(/deployment models are left out for this caller: .*reason/s);
    expect(warnings.join('\n')).not.toContain('/secret');
  });

  it("a full data root: which deployment waits and since when, the words withheld; a load's error not at all", () => {
    const updates = deployments.engine.status();
    const warnings: string[] = [];
    const shown = publicAgentStatus(
      {
        deployments: {
          enabled: true,
          models: updates.map((u) => ({ ...u, loadFailure: 'cannot read /secret/dir/model.onnx' })),
          storageFull: {
            deployment: 'two',
            reason: 'ENOSPC: no space left on device, open /secret/dir',
            message: "the device's storage is full: ENOSPC: no space left on device, open /secret/dir; …",
            since: '2026-01-01T00:00:00.000Z',
          },
        },
      },
      (message) => warnings.push(message),
    ) as { deployments: { storageFull: unknown } };
    expect(shown.deployments.storageFull).toEqual({
      deployment: 'two',
      reason: REASON_WITHHELD,
      message: REASON_WITHHELD,
      since: '2026-01-01T00:00:00.000Z',
    });
    expect(JSON.stringify(shown)).not.toContain('/secret');
    expect(
      publicAgentStatus({ deployments: { enabled: true, models: updates, storageFull: null } }, () => {}),
    ).toMatchObject({ deployments: { storageFull: null } });
    expect(warnings).toEqual([]);
  });
});

/** What packages/agent/docs/rest-api.md lists of an update for a caller who is not an operator. */
const PUBLIC_UPDATE_FIELDS = [
  'committedVersion',
  'deployment',
  'desired',
  'endedAt',
  'handle',
  'held',
  'lastFailure',
  'loaded',
  'notLoadedReason',
  'previousVersion',
  'reason',
  'rollbackFailureReason',
  'startedAt',
  'state',
  'unloadedByApplicationAt',
  'updatedAt',
  'version',
];

/** Runs a Node.js script as `nobody` (its own process, bounded in time); resolves with what it printed. */
function runScriptAsNobody(script: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['-e', script, ...args],
      { uid: NOBODY, gid: NOBODY, timeout: 30_000, killSignal: 'SIGKILL', cwd: files.root },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`the client failed: ${error.message}\n${stderr}`));
        else resolve(stdout);
      },
    );
  });
}

/**
 * A segment nobody makes itself (owner nobody, mode 0600, as a client makes one) holding `bytes`; this process
 * (root) removes it in the clean-up.
 */
async function segmentOfNobody(bytes: Uint8Array): Promise<number> {
  const script = `
    const [addonPath, base64] = process.argv.slice(1);
    const addon = require(addonPath);
    const bytes = Buffer.from(base64, 'base64');
    const { shmid } = addon.create(bytes.length);
    const mapping = addon.attachReadWrite(shmid);
    new Uint8Array(mapping).set(bytes);
    addon.detach(mapping);
    process.stdout.write(String(shmid));`;
  const shmid = Number(
    await runScriptAsNobody(script, [SYSV_SHM_ADDON_PATH, Buffer.from(bytes).toString('base64')]),
  );
  created.push(shmid);
  expect(addon.stat(shmid)).toMatchObject({ ownerUid: NOBODY, mode: 0o600 });
  return shmid;
}

/**
 * Runs an HTTP client as `nobody` against the agent's socket; resolves with each request's status and body. A
 * request that registers makes the clean-up unregister nobody's regions.
 */
async function runAsNobody(requests: Array<{ path: string; body?: unknown }>) {
  if (requests.some(({ path }) => path.endsWith('/register'))) nobodyRegistered = true;
  const script = `
    const http = require('node:http');
    const [socketPath, plan] = process.argv.slice(1);
    const call = ({ path, body }) => new Promise((resolve, reject) => {
      const data = body === undefined ? '' : JSON.stringify(body);
      const method = body === undefined ? 'GET' : 'POST';
      const req = http.request({ socketPath, path, method, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      });
      req.on('error', reject);
      req.end(data);
    });
    (async () => {
      const results = [];
      for (const r of JSON.parse(plan)) results.push(await call(r));
      process.stdout.write(JSON.stringify({ uid: process.getuid(), results }));
    })();`;
  const printed = await runScriptAsNobody(script, [socketPath, JSON.stringify(requests)]);
  return JSON.parse(printed) as { uid: number; results: Array<{ status: number; body: string }> };
}

/** The output values of an inference answered in JSON (its body as text). */
const outputValuesOf = (body: string) =>
  (JSON.parse(body) as { outputs: Array<{ data: unknown }> }).outputs[0]!.data;

describe.skipIf(!isRoot)(
  'system shared memory only for callers the segment allows (client as nobody)',
  () => {
    it('refuses registering a segment the caller could not read, and writing outputs where it could not write', async () => {
      const secret = segment(64, x, 0o600); // root's, unreadable to nobody
      const readable = segment(64, x, 0o644); // nobody may read it, not write it
      const before = segmentBytes(addon, readable, 0, 64);
      const { uid, results } = await runAsNobody([
        {
          path: '/v2/systemsharedmemory/region/secret/register',
          body: { key: String(secret), byte_size: 64 },
        },
        { path: '/v2/systemsharedmemory/region/ro/register', body: { key: String(readable), byte_size: 64 } },
        { path: '/v2/models/tiny/infer', body: inferBodyViaRegions('ro', 'ro') },
      ]);
      expect(uid).toBe(NOBODY);
      expect(results[0]!.status).toBe(403);
      expect(results[0]!.body).toMatch(
        new RegExp(`caller \\(uid ${NOBODY}, gid ${NOBODY}\\) may not read shared memory segment ${secret}`),
      );
      expect(results[1]!.status).toBe(200);
      expect(results[2]!.status).toBe(403);
      expect(results[2]!.body).toMatch(new RegExp(`may not write shared memory segment ${readable}`));
      expect([...segmentBytes(addon, readable, 0, 64)]).toEqual([...before]);
    });

    it('gives each user its own quota of regions: root filling its quota leaves nobody room', async () => {
      const shmid = segment(64, x, 0o644); // nobody may read it
      const body = { key: String(shmid), byte_size: 64 };
      for (let i = 0; i < MAX_REGIONS_PER_UID; i++)
        expect((await post(`/v2/systemsharedmemory/region/root${i}/register`, body)).status).toBe(200);
      expect((await post('/v2/systemsharedmemory/region/root-more/register', body)).status).toBe(429);
      const { results } = await runAsNobody([
        { path: '/v2/systemsharedmemory/region/nobodys/register', body },
        { path: '/v2/systemsharedmemory/status' },
        { path: '/v2/systemsharedmemory/region/nobodys/status' },
        { path: '/v2/systemsharedmemory/region/root0/status' },
        { path: '/v2/systemsharedmemory/region/nobodys/unregister', body: {} },
      ]);
      expect(results.map((r) => r.status)).toEqual([200, 200, 200, 404, 200]);
      // Nobody sees its own region only: not root's names, keys or sizes, and not whether root0 exists.
      expect(JSON.parse(results[1]!.body)).toEqual([
        { name: 'nobodys', key: String(shmid), offset: 0, byte_size: 64 },
      ]);
      expect(results[3]!.body).toMatch(/no system shared memory region named \\"root0\\" is registered/);
    });

    it('keeps root’s regions from nobody on every route that names them, and root’s unregister-all from nobody’s', async () => {
      const roots = segment(64, x, 0o600); // root's region, on a segment nobody could not even read
      const nobodys = segment(64, x, 0o644);
      expect((await registerRegion(client, 'roots', roots, 64)).status).toBe(200);
      // 80 bytes of a 64-byte region: the bounds would tell its size.
      const infer = (input: string) => ({
        path: '/v2/models/tiny/infer',
        body: inferBodyViaRegions(input, undefined, { inputBytes: 80 }),
      });
      const { results } = await runAsNobody([
        { path: '/v2/systemsharedmemory/region/roots/unregister', body: {} },
        { path: '/v2/systemsharedmemory/region/nonesuch/unregister', body: {} },
        infer('roots'),
        infer('nonesuch'),
        {
          path: '/v2/systemsharedmemory/region/nobodys/register',
          body: { key: String(nobodys), byte_size: 64 },
        },
        // Its own region for the input (read as nobody may), root's for the output.
        { path: '/v2/models/tiny/infer', body: inferBodyViaRegions('nobodys', 'roots', { outputBytes: 80 }) },
        // Root's name is free in nobody's own namespace: register tells nothing of root's either.
        {
          path: '/v2/systemsharedmemory/region/roots/register',
          body: { key: String(nobodys), byte_size: 32 },
        },
        { path: '/v2/systemsharedmemory/status' },
      ]);
      // The error messages, each region's name written alike (what tells them apart is the name nobody sent).
      const errors = results.map((r) =>
        (JSON.parse(r.body) as { error?: string }).error?.replace(/"(roots|nonesuch)"/g, '<name>'),
      );
      // Root's region, named by nobody, answers as one that does not exist: unregister 404, inference 400.
      expect(results.map((r) => r.status)).toEqual([404, 404, 400, 400, 200, 400, 200, 200]);
      expect(errors[0]).toBe(errors[1]);
      expect(errors[2]).toBe(errors[3]);
      expect(errors[5]).toMatch(
        /^output "y" names system shared memory region <name>, which is not registered/,
      );
      for (const { body } of results.slice(0, 7))
        expect(body).not.toMatch(new RegExp(`${roots}|uid 0|64 bytes`));
      expect(JSON.parse(results[7]!.body)).toEqual([
        { name: 'nobodys', key: String(nobodys), offset: 0, byte_size: 64 },
        { name: 'roots', key: String(nobodys), offset: 0, byte_size: 32 },
      ]);
      // Root's region is still root's, as root registered it; root's unregister-all leaves nobody's.
      expect((await client.request({ path: '/v2/systemsharedmemory/region/roots/status' })).json()).toEqual([
        { name: 'roots', key: String(roots), offset: 0, byte_size: 64 },
      ]);
      expect((await post('/v2/systemsharedmemory/unregister', {})).status).toBe(200);
      expect((await client.request({ path: '/v2/systemsharedmemory/status' })).json()).toEqual([]);
      const after = await runAsNobody([{ path: '/v2/systemsharedmemory/status' }]);
      expect((JSON.parse(after.results[0]!.body) as Array<{ name: string }>).map((r) => r.name)).toEqual([
        'nobodys',
        'roots',
      ]);
    });

    it('gives each user its own namespace of region names: root and nobody each register "input0" and use their own', async () => {
      const rootsInput = segment(64, x, 0o600);
      const nobodysInput = await segmentOfNobody(otherX);
      const rootsStatus = [{ name: 'input0', key: String(rootsInput), offset: 0, byte_size: 64 }];
      const nobodysStatus = [{ name: 'input0', key: String(nobodysInput), offset: 0, byte_size: 64 }];
      const infer = { path: '/v2/models/tiny/infer', body: inferBodyViaRegions('input0', undefined) };
      const registerNobodys = {
        path: '/v2/systemsharedmemory/region/input0/register',
        body: { key: String(nobodysInput), byte_size: 64 },
      };
      const rootInfers = async () => {
        const result = await post('/v2/models/tiny/infer', inferBodyViaRegions('input0', undefined));
        expect(result.status).toBe(200);
        return outputValuesOf(result.text());
      };
      expect((await registerRegion(client, 'input0', rootsInput, 64)).status).toBe(200);
      const first = await runAsNobody([
        registerNobodys,
        infer,
        { path: '/v2/systemsharedmemory/status' },
        { path: '/v2/systemsharedmemory/region/input0/status' },
      ]);
      expect(first.results.map((r) => r.status)).toEqual([200, 200, 200, 200]);
      // Each inference reads its own user's segment, each status lists its own user's region only.
      expect(outputValuesOf(first.results[1]!.body)).toEqual(otherYValues);
      expect(JSON.parse(first.results[2]!.body)).toEqual(nobodysStatus);
      expect(JSON.parse(first.results[3]!.body)).toEqual(nobodysStatus);
      expect(await rootInfers()).toEqual(yValues);
      expect((await client.request({ path: '/v2/systemsharedmemory/status' })).json()).toEqual(rootsStatus);
      expect((await client.request({ path: '/v2/systemsharedmemory/region/input0/status' })).json()).toEqual(
        rootsStatus,
      );
      // Root unregistering its "input0" leaves nobody's working; nobody unregistering its own leaves root's.
      expect((await post('/v2/systemsharedmemory/region/input0/unregister', {})).status).toBe(200);
      expect((await client.request({ path: '/v2/systemsharedmemory/region/input0/status' })).status).toBe(
        404,
      );
      expect((await registerRegion(client, 'input0', rootsInput, 64)).status).toBe(200);
      const second = await runAsNobody([
        infer,
        { path: '/v2/systemsharedmemory/region/input0/unregister', body: {} },
        infer,
      ]);
      expect(second.results.map((r) => r.status)).toEqual([200, 200, 400]);
      expect(outputValuesOf(second.results[0]!.body)).toEqual(otherYValues);
      expect(second.results[2]!.body).toMatch(/region \\"input0\\", which is not registered/);
      expect(await rootInfers()).toEqual(yValues);
      expect((await client.request({ path: '/v2/systemsharedmemory/status' })).json()).toEqual(rootsStatus);
    });

    it('keeps a local user from squatting another’s names: nobody registers "input0" and "output0" first, root’s app still gets its own', async () => {
      const nobodysInput = await segmentOfNobody(otherX);
      const nobodysOutput = await segmentOfNobody(new Uint8Array(64));
      const squat = await runAsNobody([
        {
          path: '/v2/systemsharedmemory/region/input0/register',
          body: { key: String(nobodysInput), byte_size: 64 },
        },
        {
          path: '/v2/systemsharedmemory/region/output0/register',
          body: { key: String(nobodysOutput), byte_size: 64 },
        },
      ]);
      expect(squat.results.map((r) => r.status)).toEqual([200, 200]);
      // Root's app starts afterwards and registers the names it always uses: both succeed, on its own segments.
      const rootsInput = segment(64, x, 0o600);
      const rootsOutput = segment(64, new Uint8Array(0), 0o600);
      const registered = await registerRegion(client, 'input0', rootsInput, 64);
      expect(registered.text()).toBe('{}');
      expect(registered.status).toBe(200);
      expect((await registerRegion(client, 'output0', rootsOutput, 64)).status).toBe(200);
      const result = await inferViaRegions('input0', 'output0');
      expect(result.status).toBe(200);
      // Root's input was read from root's segment and its output written there, nothing into nobody's.
      expect([...segmentBytes(addon, rootsOutput, 0, 64)]).toEqual([...expectedY]);
      expect([...segmentBytes(addon, nobodysOutput, 0, 64)]).toEqual(Array(64).fill(0));
      // The squatter's regions are still its own, and still serve it.
      const { results } = await runAsNobody([
        { path: '/v2/models/tiny/infer', body: inferBodyViaRegions('input0', undefined) },
      ]);
      expect(results[0]!.status).toBe(200);
      expect(outputValuesOf(results[0]!.body)).toEqual(otherYValues);
    });

    it('shows root its own regions only, and model file paths to root only', async () => {
      const shmid = segment(64, x, 0o644);
      const { results } = await runAsNobody([
        {
          path: '/v2/systemsharedmemory/region/nobodys/register',
          body: { key: String(shmid), byte_size: 64 },
        },
        { path: '/edgefleet/v1/status' },
      ]);
      expect(results[0]!.status).toBe(200);
      // Root is one more user: nobody's region is not root's to see.
      expect((await client.request({ path: '/v2/systemsharedmemory/status' })).json()).toEqual([]);
      expect((await client.request({ path: '/v2/systemsharedmemory/region/nobodys/status' })).status).toBe(
        404,
      );
      type Status = { models: Array<{ name: string; version: string; path?: string }> };
      const seenByNobody = JSON.parse(results[1]!.body) as Status;
      const seenByRoot = (await client.request({ path: '/edgefleet/v1/status' })).json() as Status;
      expect(seenByRoot.models.find((m) => m.name === 'tiny')!.path).toMatch(/\.onnx$|\//);
      const tiny = seenByNobody.models.find((m) => m.name === 'tiny')!;
      expect(tiny.version).toBe(seenByRoot.models.find((m) => m.name === 'tiny')!.version);
      expect(tiny).not.toHaveProperty('path');
      // Updates: the listed fields only, both failure messages withheld where there is one, null where none.
      type Update = Record<string, unknown>;
      const updatesSeenBy = (status: unknown) =>
        (status as { deployments: { models: Update[] } }).deployments.models;
      const [failed, committed] = updatesSeenBy(seenByNobody);
      expect(seenByNobody).toMatchObject({ deployments: { enabled: true } });
      expect(Object.keys(failed!).sort()).toEqual(PUBLIC_UPDATE_FIELDS);
      expect(failed).toMatchObject({
        handle: 'tiny',
        deployment: 'up',
        state: 'Failed',
        version: '2.0',
        previousVersion: '1.0',
        reason: REASON_WITHHELD,
        rollbackFailureReason: REASON_WITHHELD,
      });
      expect(committed).toMatchObject({
        handle: 'other',
        state: 'Committed',
        reason: null,
        rollbackFailureReason: null,
      });
      const [failedForRoot] = updatesSeenBy(seenByRoot);
      expect(failedForRoot).toMatchObject({
        reason: `cannot read ${files.root}/lock`,
        rollbackFailureReason: expect.stringContaining(`${files.root}/deployments/packages/tiny/1.0`),
      });
      expect(results[1]!.body).not.toContain(files.root);
    });

    it('refuses a caller on TCP (no socket credentials) any region', async () => {
      const unixPath = join(files.root, 'both.sock');
      const tcpAgent = await startAgent({
        tcp: true,
        socketPath: unixPath,
        sharedMemory: new SharedMemoryReader({ addon }),
      });
      try {
        const tcpAddress = tcpAgent.server.addresses.find((address) => !address.startsWith('unix:'))!;
        const tcp = new HttpClient(targetOf(tcpAddress));
        const shmid = segment(64, x, 0o666);
        const local = new HttpClient(targetOf(`unix:${unixPath}`));
        const registered = await local.request({
          method: 'POST',
          path: '/v2/systemsharedmemory/region/local/register',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ key: String(shmid), byte_size: 64 }),
        });
        local.agent.destroy();
        expect(registered.status).toBe(200);
        const result = await tcp.request({
          method: 'POST',
          path: '/v2/systemsharedmemory/region/r/register',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ key: String(shmid), byte_size: 64 }),
        });
        const status = await tcp.request({ path: '/v2/systemsharedmemory/status' });
        tcp.agent.destroy();
        expect(result.status).toBe(403);
        expect(result.text()).toMatch(/only for callers on its Unix socket/);
        // Nothing of the regions registered on the Unix socket either.
        expect(status.json()).toEqual([]);
      } finally {
        await tcpAgent.stop();
      }
    });
  },
);
