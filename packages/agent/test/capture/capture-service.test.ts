import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentDataType, AgentEncoding, createAgentCodec } from '@edgefleet/core';
import SqliteDatabase from 'better-sqlite3';
import fc from 'fast-check';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  CaptureService,
  DiskDestination,
  lockCaptureFolder,
  MemoryCaptureQueue,
  SqliteCaptureQueue,
  type CaptureQueue,
  type CaptureSettings,
} from '../../src/capture/index.js';
import { fromWireCaptureRequest } from '../../src/grpc/index.js';
import type { AgentError } from '../../src/models/index.js';
import { AgentDatabase } from '../../src/state/index.js';
import {
  captureInput,
  captureRequest,
  diskRecords,
  floatTensor,
  listFiles,
  readDataRef,
  testSettings,
  useModelRegistry,
} from './helpers.js';
import { agentErrorOf } from '../support/agent-error.js';

const loaded = useModelRegistry('edgefleet-capture-', { tiny: 'tiny' });

let work: string;
let services: CaptureService[] = [];
beforeEach(async () => {
  work = await mkdtemp(join(loaded.root, 'case-'));
  vi.useFakeTimers({
    toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'],
    now: Date.UTC(2024, 0, 2, 3, 4, 5),
  });
});
afterEach(async () => {
  vi.useRealTimers();
  for (const service of services) await service.close();
  services = [];
});

async function start(
  settings: CaptureSettings,
  options: { registry?: Registry; destination?: DiskDestination; queue?: CaptureQueue } = {},
) {
  const service = new CaptureService({
    settings,
    models: loaded.registry,
    queue: options.queue ?? new MemoryCaptureQueue(),
    destination: options.destination ?? new DiskDestination(settings.diskPath),
    ...(options.registry && { metricsRegistry: options.registry }),
  });
  await service.start();
  services.push(service);
  return service;
}

describe('the bytes a capture keeps', () => {
  /** A record input's bytes, embedded (base64) or in a side file. */
  const inputBytes = async (input: { data?: string; 'data-ref'?: string }): Promise<Buffer> =>
    input.data !== undefined ? Buffer.from(input.data, 'base64') : readDataRef(input['data-ref']!);

  it('copies a caller’s buffer (reused at once: the capture keeps what was sent); keeps a view of the request’s own memory (ownedBuffer)', async () => {
    const settings = testSettings(work, { batchSize: 10 });
    const service = await start(settings);
    const sent = Buffer.from(new Float32Array(16).fill(1).buffer);
    const copied = captureInput('copied', { outputTensors: [], outputs: [] });
    const callerBuffer = copied.inputTensors[0]!.data;
    expect(Buffer.from(callerBuffer).equals(sent)).toBe(true);
    await service.capture(copied);
    callerBuffer.fill(0xee);

    // The gRPC door's case: views into the message's own memory, which nothing writes again; a write into it
    // (made here only to tell a view from a copy) shows in the capture.
    const message = new ArrayBuffer(64);
    const viewed = captureInput('viewed', { outputTensors: [], outputs: [] });
    await service.capture({
      ...viewed,
      inputTensors: [{ ...viewed.inputTensors[0]!, data: new Uint8Array(message) }],
      ownedBuffer: message,
    });
    new Uint8Array(message).fill(0x42);
    await service.flush();
    const kept = new Map<string, Buffer>();
    for (const { record } of await diskRecords(settings.diskPath))
      kept.set(record.eventMetadata.eventId, await inputBytes(record.deviceFleetInputs[0]));
    expect(kept.get('copied')!.equals(sent)).toBe(true);
    expect(kept.get('viewed')!.equals(Buffer.alloc(64, 0x42))).toBe(true);
  });

  it('copies the bytes of a gRPC message that carries far more than it captures (padded with an unknown field): a view would hold the whole message while the buffer counts only the captured bytes', async () => {
    const settings = testSettings(work, { batchSize: 10 });
    const service = await start(settings);
    const codec = createAgentCodec();
    const encoded = codec.encode(
      'CaptureDataRequest',
      captureRequest('padded', { outputTensors: [], outputs: [] }),
    );
    // Field 99, length-delimited (tag 0x9a 0x06, length 0x80 0x80 0x40 = 1 MiB): unknown to the agent's codec,
    // which skips it. The message's own memory, as grpc-js assembles it (the gRPC door's messageMemory).
    const padding = Buffer.concat([Buffer.from([0x9a, 0x06, 0x80, 0x80, 0x40]), Buffer.alloc(1024 * 1024)]);
    const message = new ArrayBuffer(encoded.length + padding.length);
    const bytes = Buffer.from(message);
    bytes.set(encoded);
    bytes.set(padding, encoded.length);
    const decoded = fromWireCaptureRequest(codec.decode('CaptureDataRequest', bytes), {
      reader: null,
      caller: null,
      leases: [],
    });
    // The decoder's tensor is a view of the message: 64 bytes of it.
    expect(decoded.inputTensors[0]!.data.buffer).toBe(message);
    await service.capture({ ...decoded, ownedBuffer: message });
    // A write into the message (made only to tell a view from a copy) does not show in the capture: it was copied.
    bytes.fill(0x42);
    await service.flush();
    const [found] = await diskRecords(settings.diskPath);
    expect(
      (await inputBytes(found!.record.deviceFleetInputs[0])).equals(
        Buffer.from(new Float32Array(16).fill(1).buffer),
      ),
    ).toBe(true);
  });
});

describe('the Disk folder lock', () => {
  it('reports a lock file removed or replaced while the folder is held (an age-based clean-up of the capture folder), once per change', async () => {
    const settings = testSettings(work, { batchSize: 10 });
    const lock = lockCaptureFolder(settings.diskPath);
    const logged: string[] = [];
    const service = new CaptureService({
      settings,
      models: loaded.registry,
      queue: new MemoryCaptureQueue(),
      destination: new DiskDestination(settings.diskPath),
      logger: {
        info: () => undefined,
        warn: (_, message) => logged.push(message),
        error: (_, message) => logged.push(message),
      },
      folderLock: lock,
    });
    services.push(service);
    try {
      await service.start();
      vi.advanceTimersByTime(60_000);
      expect(logged).toEqual([]);
      await rm(lock.path);
      vi.advanceTimersByTime(60_000);
      expect(logged).toEqual([
        `capture: the Disk capture folder's lock file ${lock.path} was removed while this agent holds the folder: another agent can now lock the folder too and write, upload and count its files alongside this one. Restart this agent to lock the folder again, and keep the lock file out of clean-ups of the capture folder (it must stay)`,
      ]);
      vi.advanceTimersByTime(120_000);
      expect(logged).toHaveLength(1);
      // What that allows: a second lock on the folder (another agent's) is taken, on a new file.
      lockCaptureFolder(settings.diskPath).release();
      vi.advanceTimersByTime(60_000);
      expect(logged).toHaveLength(2);
      expect(logged[1]).toMatch(
        /lock file .* was replaced by another file while this agent holds the folder/,
      );
    } finally {
      lock.release();
    }
  });
});

describe('batching', () => {
  it('writes a batch as soon as batch_size captures are buffered, without waiting for the period', async () => {
    const settings = testSettings(work, { batchSize: 3 });
    const service = await start(settings);
    await service.capture(captureInput('a'));
    await service.capture(captureInput('b'));
    expect(service.status('a').status).toBe('IN_PROGRESS');
    await service.capture(captureInput('c'));
    await service.whenIdle();
    const records = await diskRecords(settings.diskPath);
    expect(records.map((r) => r.record.eventMetadata.eventId)).toEqual(['a', 'b', 'c']);
    expect(new Set(records.map((r) => r.file)).size).toBe(1);
    expect(['a', 'b', 'c'].map((id) => service.status(id).status)).toEqual(['SUCCESS', 'SUCCESS', 'SUCCESS']);
    expect(service.held).toBe(0);
  });

  it('writes what is buffered push_period_seconds after the first capture arrived, not a millisecond earlier', async () => {
    const settings = testSettings(work, { batchSize: 5, pushPeriodSeconds: 4 });
    const service = await start(settings);
    await service.capture(captureInput('first'));
    vi.advanceTimersByTime(3000);
    await service.capture(captureInput('second'));
    vi.advanceTimersByTime(999);
    await service.whenIdle();
    expect(await diskRecords(settings.diskPath)).toEqual([]);
    expect(service.status('first').status).toBe('IN_PROGRESS');
    vi.advanceTimersByTime(1);
    await service.whenIdle();
    expect((await diskRecords(settings.diskPath)).map((r) => r.record.eventMetadata.eventId)).toEqual([
      'first',
      'second',
    ]);
    expect(service.status('second').status).toBe('SUCCESS');
  });

  it('never lets a capture wait longer than the period, and writes each exactly once in batches of at most batch_size (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            captures: fc.integer({ min: 0, max: 4 }),
            advanceMs: fc.integer({ min: 0, max: 2500 }),
          }),
          { minLength: 1, maxLength: 12 },
        ),
        fc.integer({ min: 1, max: 4 }),
        async (steps, batchSize) => {
          const caseDir = await mkdtemp(join(work, 'p-'));
          const settings = testSettings(caseDir, { batchSize, bufferSize: 100, pushPeriodSeconds: 2 });
          const service = await start(settings);
          const acceptedAt = new Map<string, number>();
          let next = 0;
          for (const step of steps) {
            for (let i = 0; i < step.captures; i++) {
              const id = `c${next++}`;
              await service.capture(captureInput(id));
              acceptedAt.set(id, Date.now());
            }
            vi.advanceTimersByTime(step.advanceMs);
            await service.whenIdle();
            for (const [id, at] of acceptedAt) {
              if (Date.now() - at >= 2000) expect(service.status(id).status).toBe('SUCCESS');
            }
          }
          await service.flush();
          const records = await diskRecords(settings.diskPath);
          const ids = records.map((r) => r.record.eventMetadata.eventId);
          expect(ids.sort()).toEqual([...acceptedAt.keys()].sort());
          const perFile = new Map<string, number>();
          for (const r of records) perFile.set(r.file, (perFile.get(r.file) ?? 0) + 1);
          for (const count of perFile.values()) expect(count).toBeLessThanOrEqual(batchSize);
          await service.close();
        },
      ),
      { numRuns: 25 },
    );
  });
});

describe('CaptureData errors, as the spec names them', () => {
  it('RESOURCE_EXHAUSTED once buffer_size captures are held, until a batch is written', async () => {
    const settings = testSettings(work, { bufferSize: 5, batchSize: 4, pushPeriodSeconds: 60 });
    const registry = new Registry();
    const service = await start(settings, { registry });
    const results = await Promise.allSettled(
      Array.from({ length: 7 }, (_, i) => service.capture(captureInput(`r${i}`))),
    );
    expect(results.map((r) => r.status)).toEqual([
      'fulfilled',
      'fulfilled',
      'fulfilled',
      'fulfilled',
      'fulfilled',
      'rejected',
      'rejected',
    ]);
    const error = (results[5] as PromiseRejectedResult).reason as AgentError;
    expect(error.code).toBe('RESOURCE_EXHAUSTED');
    expect(error.message).toMatch(/capture buffer is full \(5 of 5 captures/);
    await service.whenIdle();
    // The batch of four went out; four places are free again.
    await service.capture(captureInput('after'));
    const text = await registry.metrics();
    expect(text).toMatch(/edgefleet_capture_rejected_total\{code="RESOURCE_EXHAUSTED"\} 2/);
    expect(text).toMatch(/edgefleet_capture_accepted_total\{model="tiny",source="api"\} 6/);
    expect(text).toMatch(/edgefleet_capture_written_total\{destination="disk"\} 4/);
    expect(text).toMatch(/edgefleet_capture_queue_depth 2/);
  });

  it('ALREADY_EXISTS for a capture_id in use: while committing, queued, or written', async () => {
    const service = await start(testSettings(work, { batchSize: 2 }));
    const both = await Promise.allSettled([
      service.capture(captureInput('same')),
      service.capture(captureInput('same')),
    ]);
    expect(both[0].status).toBe('fulfilled');
    expect(((both[1] as PromiseRejectedResult).reason as AgentError).code).toBe('ALREADY_EXISTS');
    expect((await agentErrorOf(service.capture(captureInput('same')))).message).toMatch(
      /capture_id "same" was used already/,
    );
    await service.flush();
    expect(service.status('same').status).toBe('SUCCESS');
    expect((await agentErrorOf(service.capture(captureInput('same')))).code).toBe('ALREADY_EXISTS');
  });

  it('OUT_OF_RANGE for an inference_timestamp in the future; the time of receipt when absent', async () => {
    const settings = testSettings(work);
    const service = await start(settings);
    const now = Date.now();
    const future = await agentErrorOf(
      service.capture(
        captureInput('f', { inferenceTimestamp: { seconds: Math.floor(now / 1000) + 60, nanos: 0 } }),
      ),
    );
    expect(future.code).toBe('OUT_OF_RANGE');
    expect(future.message).toMatch(/is in the future/);
    await service.capture(
      captureInput('skew', { inferenceTimestamp: { seconds: Math.floor(now / 1000), nanos: 999_000_000 } }),
    );
    await service.capture(captureInput('past', { inferenceTimestamp: { seconds: 1685563524, nanos: 5 } }));
    await service.capture(captureInput('absent'));
    await service.flush();
    const times = Object.fromEntries(
      (await diskRecords(settings.diskPath)).map((r) => [
        r.record.eventMetadata.eventId,
        r.record.eventMetadata.inferenceTime,
      ]),
    );
    expect(times).toEqual({
      skew: '2024-01-02T03:04:05',
      past: '2023-05-31T20:05:24',
      absent: '2024-01-02T03:04:05',
    });
    expect(
      (
        await agentErrorOf(
          service.capture(captureInput('n', { inferenceTimestamp: { seconds: 1, nanos: 1e9 } })),
        )
      ).code,
    ).toBe('INVALID_ARGUMENT');
  });

  it('NOT_FOUND for a model not loaded; the handle wins over the deprecated name', async () => {
    const service = await start(testSettings(work));
    const missing = await agentErrorOf(service.capture(captureInput('m', { modelHandle: 'resnet' })));
    expect(missing.code).toBe('NOT_FOUND');
    expect(missing.message).toMatch(/no model named "resnet" is loaded \(loaded models: tiny\)/);
    await service.capture(captureInput('by-name', { modelHandle: '', modelName: 'tiny' }));
    await service.capture(captureInput('both', { modelHandle: 'tiny', modelName: 'resnet' }));
    expect((await agentErrorOf(service.capture(captureInput('bad', { modelHandle: 'my_model' })))).code).toBe(
      'INVALID_ARGUMENT',
    );
    expect((await agentErrorOf(service.capture(captureInput('none', { modelHandle: '' })))).message).toMatch(
      /names no model/,
    );
  });

  it('INVALID_ARGUMENT for bad ids and bad tensors, saying what was expected', async () => {
    const service = await start(testSettings(work));
    const cases: [string, Parameters<typeof captureRequest>[1] | undefined, RegExp, string?][] = [
      ['', undefined, /capture_id is empty/],
      ['x'.repeat(257), undefined, /257 characters long; expected at most 256/],
      ['tab\there', undefined, /control characters/],
      [
        'dtype',
        {
          inputTensors: [
            { ...floatTensor('x', [2]), tensorMetadata: { name: Buffer.from('x'), dataType: 9, shape: [2] } },
          ],
        },
        /data_type 9, which is not a DataType; expected one of 0 \(UINT8\)/,
      ],
      [
        'shape',
        {
          inputTensors: [
            {
              ...floatTensor('x', [2]),
              tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [-1, 2] },
            },
          ],
        },
        /shape \[-1, 2\]/,
      ],
      [
        'bytes',
        { outputTensors: [{ ...floatTensor('y', [3]), byteData: Buffer.alloc(11) }] },
        /output tensor #1 \("y"\) has 11 bytes of data; shape \[3\] of FLOAT32 needs 12/,
      ],
      [
        'meta',
        { inputTensors: [{ tensorMetadata: null, byteData: Buffer.alloc(4), data: 'byteData' }] },
        /has no tensor_metadata/,
      ],
      [
        'nodata',
        {
          inputTensors: [
            { tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.UINT8, shape: [2] } },
          ],
        },
        /has 0 bytes of data; shape \[2\] of UINT8 needs 2/,
      ],
      [
        'enc',
        { outputs: [{ name: 'json', encoding: 7, byteData: Buffer.from('{}'), data: 'byteData' }] },
        /auxiliary output #1 has encoding 7; expected one of CSV=0, JSON=1, NONE=2, BASE64=3/,
      ],
      [
        'empty',
        { inputTensors: [], outputTensors: [], inputs: [], outputs: [] },
        /carries no data; expected at least one/,
      ],
      [
        'shm-aux',
        {
          inputs: [
            {
              name: 'jpg',
              encoding: AgentEncoding.NONE,
              sharedMemoryHandle: { size: 0, offset: 0, segmentId: 1 },
              data: 'sharedMemoryHandle',
            },
          ],
        },
        /size 0/,
      ],
    ];
    // Some are refused by the gRPC door's decoder (data type, metadata, shared memory), the rest by the service.
    for (const [id, overrides, message] of cases) {
      const error = await agentErrorOf(
        Promise.resolve().then(() => service.capture(captureInput(id, overrides))),
      );
      expect([id, error.code]).toEqual([id, 'INVALID_ARGUMENT']);
      expect(error.message).toMatch(message);
    }
    // Nothing was held by the refusals.
    expect(service.held).toBe(0);
  });

  it('GetCaptureDataStatus: NOT_FOUND for an unknown id, INVALID_ARGUMENT for an empty one', async () => {
    const service = await start(testSettings(work));
    expect((await agentErrorOf(() => service.status('never'))).code).toBe('NOT_FOUND');
    expect((await agentErrorOf(() => service.status(''))).code).toBe('INVALID_ARGUMENT');
  });

  it('UNAVAILABLE after close', async () => {
    const service = await start(testSettings(work));
    await service.close();
    expect((await agentErrorOf(service.capture(captureInput('late')))).code).toBe('UNAVAILABLE');
  });
});

describe('Disk destination', () => {
  it('lays files out like the cloud keys, side files by file:// URL, nothing half-written or temporary left', async () => {
    const settings = testSettings(work, { batchSize: 2, base64EmbedLimit: 32 });
    const service = await start(settings);
    await service.capture(
      captureInput('cap/1', {
        inputTensors: [floatTensor('x', [1, 16], 1.5)],
        inputs: [
          { name: 'jpg', encoding: AgentEncoding.NONE, byteData: Buffer.alloc(100, 9), data: 'byteData' },
        ],
      }),
    );
    await service.capture(captureInput('cap-2'));
    await service.whenIdle();
    const files = await listFiles(settings.diskPath);
    const hour = 'sme-capture/fleet-a/tiny/2024/01/02/03';
    expect(files.every((f) => f.startsWith(`${hour}/`))).toBe(true);
    expect(files.filter((f) => f.endsWith('.jsonl'))).toEqual([
      expect.stringMatching(new RegExp(`^${hour}/[0-9a-f]{32}\\.jsonl$`)),
    ]);
    expect(files.some((f) => f.split('/').at(-1)!.startsWith('.'))).toBe(false);
    const [first, second] = await diskRecords(settings.diskPath);
    const ref = first!.record.deviceFleetInputs[0]['data-ref'] as string;
    expect(ref).toMatch(
      new RegExp(`^file:///.*/${hour}/raw-data/[0-9a-f]{32}/cap_1-[0-9a-f]{8}-input-1\\.bin$`),
    );
    expect((await readDataRef(ref)).equals(Buffer.from(new Float32Array(16).fill(1.5).buffer))).toBe(true);
    expect(
      (await readDataRef(first!.record.deviceFleetAuxiliaryInputs[0]['data-ref'])).equals(
        Buffer.alloc(100, 9),
      ),
    ).toBe(true);
    expect(second!.record.deviceFleetAuxiliaryOutputs[0]).toEqual({
      name: 'Output-1',
      observedContentType: 'json',
      encoding: 'JSON',
      mode: 'Output',
      data: Buffer.from('{"ok":true}').toString('base64'),
    });
  });

  it('retries a failing disk write with backoff, holding the captures, then marks them FAILURE', async () => {
    const blocker = join(work, 'not-a-folder');
    await writeFile(blocker, 'a file where the capture folder should be');
    const settings = testSettings(work, { diskPath: blocker, batchSize: 1, maxDiskWriteAttempts: 3 });
    const service = await start(settings);
    await service.capture(captureInput('doomed'));
    // Each write fails on real I/O; let it, then move the fake clock past the backoff (at most retryMaxMs).
    const deadline = performance.now() + 15_000; // real time: performance is not faked
    while (service.status('doomed').status === 'IN_PROGRESS' && performance.now() < deadline) {
      await new Promise((resolve) => setImmediate(resolve));
      // Held until given up.
      expect(service.held + Number(service.status('doomed').status === 'FAILURE')).toBe(1);
      vi.advanceTimersByTime(settings.spool.retryMaxMs);
    }
    await service.whenIdle();
    expect(service.status('doomed')).toMatchObject({
      status: 'FAILURE',
      detail: expect.stringMatching(/cannot write to .*not-a-folder.*after 3 attempts/),
    });
    expect(service.held).toBe(0);
  });
});

describe('a stored capture that cannot be read back', () => {
  it('is marked FAILURE and gives back its place and its bytes in the buffer', async () => {
    const database = AgentDatabase.open({ path: join(work, 'agent.db'), walSyncIntervalMs: 0 });
    try {
      // Each capture holds 139 bytes (two 16-float tensors and an 11-byte output): room for two, not three.
      const settings = testSettings(work, { bufferBytes: 300, batchSize: 30, pushPeriodSeconds: 60 });
      const queue = new SqliteCaptureQueue({ repository: database.captureQueue });
      const service = await start(settings, { queue });
      await service.capture(captureInput('damaged'));
      await service.capture(captureInput('good'));
      expect((await agentErrorOf(service.capture(captureInput('no-room')))).code).toBe('RESOURCE_EXHAUSTED');

      // The stored row is damaged behind the agent's back (a bad disk sector, an older agent's format).
      const raw = new SqliteDatabase(join(work, 'agent.db'));
      raw.prepare("UPDATE capture_queue SET meta = 'not json' WHERE capture_id = 'damaged'").run();
      raw.close();
      await service.flush();
      expect(service.status('damaged')).toMatchObject({
        status: 'FAILURE',
        detail: expect.stringMatching(/could not be read back/),
      });
      expect(service.status('good').status).toBe('SUCCESS');
      expect(service.held).toBe(0);

      // Both places and all 300 bytes are free again: two captures fit (with the damaged one's bytes still
      // counted, the second was refused).
      await service.capture(captureInput('after-1'));
      await service.capture(captureInput('after-2'));
      expect(service.held).toBe(2);
      await service.close();
    } finally {
      database.close();
    }
  });
});
