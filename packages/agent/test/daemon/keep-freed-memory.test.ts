import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { keepFreedMemory } from '../../src/daemon/process-tuning.js';
import { loadSysvShmAddon, type SysvShmAddon } from '../../src/shm/index.js';
import { agentClient, modelPackage, useAgentProcesses } from '../capture/helpers.js';
import { IMAGE_BYTES, IMAGE_EXPECTED, IMAGE_SAMPLE } from '../support/direct-output-models.js';
import { makeSegment, segmentBytes } from '../support/segments.js';
import { HttpClient, bytesOf, registerRegion, targetOf } from '../rest/helpers.js';
import { listening, writeAgentConfig } from './process-helpers.js';

// edgefleet_keep_freed_memory_bytes in a real agent. onnxruntime-node copies every output into a new ArrayBuffer;
// served over KServe shared memory, the image model's 588 KiB copy is garbage at once, and with glibc's own
// thresholds the freed copies went back to the kernel between collections, so each request faulted 147 fresh
// pages in (docs/benchmarks.md). Real agent process, real segments, real HTTP over a Unix socket; the agent's page
// faults read from /proc/<pid>/stat.
const addon = loadSysvShmAddon();
const created: number[] = [];
const agents = useAgentProcesses('edgefleet-keep-freed-');

afterEach(() => {
  for (const shmid of created.splice(0)) addon.remove(shmid);
});

/** Minor page faults of a process so far (/proc/<pid>/stat, field 10). */
async function minorFaults(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[10 - 3]);
}

/** The agent's minor page faults per image request from region to region, once it runs them steadily. */
async function faultsPerRequest(
  name: string,
  keys: Record<string, unknown>,
  tunables?: string,
): Promise<number> {
  const root = join(agents.root, name);
  await mkdir(root);
  const socket = join(root, 'agent.sock');
  const restSocket = join(root, 'rest.sock');
  const config = join(root, 'agent.json');
  await writeAgentConfig(config, {
    edgefleet_inference_workers: 1,
    edgefleet_rest_socket_path: restSocket,
    ...keys,
  });
  // Without GLIBC_TUNABLES from this environment (an operator's drop-in may set it): the agent's own setting is
  // under test.
  const { GLIBC_TUNABLES: _, ...env } = process.env;
  const agent = agents.spawn(['-a', socket, '-c', config], {
    env: tunables === undefined ? env : { ...env, GLIBC_TUNABLES: tunables },
  });
  await agent.waitFor(listening, 'listening');
  const grpc = agentClient(`unix://${socket}`);
  const http = new HttpClient(targetOf(`unix:${restSocket}`));
  try {
    await grpc.call('LoadModel', {
      url: await modelPackage(root, 'image-identity', 'image'),
      handle: 'image',
    });
    const input = makeSegment(addon, created, bytesOf(IMAGE_SAMPLE.data), { mode: 0o600 });
    const output = makeSegment(addon, created, new Uint8Array(0), { size: IMAGE_BYTES, mode: 0o600 });
    for (const [region, shmid] of [
      ['in', input],
      ['out', output],
    ] as const)
      expect((await registerRegion(http, region, shmid, IMAGE_BYTES)).status).toBe(200);
    const infer = async () => {
      const result = await http.postJson('/v2/models/image/infer', {
        inputs: [
          {
            name: 'image',
            shape: [1, 3, 224, 224],
            datatype: 'FP32',
            parameters: { shared_memory_region: 'in', shared_memory_byte_size: IMAGE_BYTES },
          },
        ],
        outputs: [
          {
            name: 'image_out',
            parameters: { shared_memory_region: 'out', shared_memory_byte_size: IMAGE_BYTES },
          },
        ],
      });
      expect(result.status).toBe(200);
    };
    // Past the model's first runs and the agent's first collections.
    for (let i = 0; i < 300; i++) await infer();
    const pid = agent.child.pid!;
    const before = await minorFaults(pid);
    const requests = 600;
    for (let i = 0; i < requests; i++) await infer();
    const faults = (await minorFaults(pid)) - before;
    expect(segmentBytes(addon, output, 0, IMAGE_BYTES).equals(IMAGE_EXPECTED)).toBe(true);
    return faults / requests;
  } finally {
    grpc.close();
    http.close();
    agent.child.kill('SIGTERM');
    await agent.exited;
  }
}

const GLIBC = Boolean(
  (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime,
);

// glibc's thresholds only: elsewhere the setting does nothing (the unit tests below cover what it says then).
describe.skipIf(!GLIBC)('edgefleet_keep_freed_memory_bytes', () => {
  it('keeps the pages of freed output copies for the next request instead of faulting fresh ones in', async () => {
    const kept = await faultsPerRequest('default', {});
    // The control: the same with glibc's own thresholds faults a 588 KiB output's 147 pages in, or most of them.
    // Its mmap threshold is pinned at glibc's starting value (128 KiB): left alone, glibc raises it after large
    // frees, so whether the control faults would depend on what the process freed first (it got 2 once).
    const glibc = await faultsPerRequest(
      'glibc',
      { edgefleet_keep_freed_memory_bytes: 0 },
      'glibc.malloc.mmap_threshold=131072',
    );
    expect(glibc).toBeGreaterThan(60);
    expect(kept).toBeLessThan(20);
  }, 120_000);
});

describe('keepFreedMemory', () => {
  const MiB = 1024 ** 2;
  type Outcome = ReturnType<NonNullable<SysvShmAddon['setMallocThresholds']>>;
  /** A logger whose lines (debug and up) land in `lines`. */
  function recordingLogger() {
    const lines: Array<{ level: number; msg: string }> = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line)) });
    return { logger, lines };
  }
  /** The addon with setMallocThresholds replaced by one that records its arguments and answers `outcome`. */
  function addonAnswering(outcome: Outcome, calls: number[][]): SysvShmAddon {
    return { ...addon, setMallocThresholds: (...args: number[]) => (calls.push(args), outcome) };
  }

  it('sets an mmap threshold of half the bytes kept (at most 32 MiB), and a trim threshold and top pad of all of them', () => {
    const calls: number[][] = [];
    const { logger, lines } = recordingLogger();
    expect(keepFreedMemory(32 * MiB, logger, addonAnswering('applied', calls))).toBe(true);
    expect(keepFreedMemory(256 * MiB, logger, addonAnswering('applied', calls))).toBe(true);
    expect(calls).toEqual([
      [16 * MiB, 32 * MiB, 32 * MiB],
      [32 * MiB, 256 * MiB, 256 * MiB],
    ]);
    expect(lines.map((line) => line.msg)).toEqual([
      'glibc keeps freed memory for reuse',
      'glibc keeps freed memory for reuse',
    ]);
  });

  it('leaves the C library alone at 0, and says in the log why it could not set them', () => {
    const calls: number[][] = [];
    const { logger, lines } = recordingLogger();
    expect(keepFreedMemory(0, logger, addonAnswering('applied', calls))).toBe(false);
    expect(calls).toEqual([]);
    expect(keepFreedMemory(8 * MiB, logger, addonAnswering('refused', calls))).toBe(false);
    expect(keepFreedMemory(8 * MiB, logger, addonAnswering('unsupported', calls))).toBe(false);
    const { setMallocThresholds: _, ...older } = addon;
    expect(keepFreedMemory(8 * MiB, logger, older)).toBe(false);
    expect(keepFreedMemory(8 * MiB, logger, null)).toBe(false);
    const WARN = 40;
    const DEBUG = 20;
    expect(lines.map(({ level, msg }) => ({ level, msg }))).toEqual([
      { level: WARN, msg: expect.stringMatching(/glibc refused the mmap threshold/) },
      { level: DEBUG, msg: expect.stringMatching(/the C library is not glibc/) },
      { level: DEBUG, msg: expect.stringMatching(/the native addon is missing or predates it/) },
      { level: DEBUG, msg: expect.stringMatching(/the native addon is missing or predates it/) },
    ]);
  });
});
