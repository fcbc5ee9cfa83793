import { execFile } from 'node:child_process';
import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { AgentDataType, TEST_MODELS } from '@edgefleet/core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fromWireCaptureRequest, fromWireTensor, GrpcStatusError } from '../../src/grpc/index.js';
import type { InferencePool } from '../../src/inference/index.js';
import {
  SYSV_SHM_ADDON_PATH,
  SharedMemoryReader,
  loadSysvShmAddon,
  type PeerCredentials,
} from '../../src/shm/index.js';
import { bytesOf, referenceBytes, scratch, startPool, startTestAgent, type TestAgent } from './helpers.js';
import { makeSegment } from '../support/segments.js';

// Issue 15 item 2: a caller allowed on the agent's socket must not read, through the agent, a segment it could not
// attach itself. The client runs as another user (nobody) in its own process; the agent (this process, root in
// CI) could read every segment on the host.
const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;
const addon = loadSysvShmAddon();
const created: number[] = [];
const CLIENT = fileURLToPath(new URL('./fixtures/shm-peer-client.mjs', import.meta.url));

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let agent: TestAgent;
const x = bytesOf(TEST_MODELS.tiny.sampleInputs().x!.data);
const expectedY = [...referenceBytes('tiny').get('y')!.bytes];

/** A segment of this process's user holding `bytes`, with `mode`. */
function segment(bytes: Uint8Array, mode: number): number {
  return makeSegment(addon, created, bytes, { mode });
}

interface ClientCall {
  handle: string;
  shape: number[];
  segment?: number;
  own?: number;
}
interface ClientResult {
  code: number;
  details?: string;
  output?: number[];
}

/** Runs the client as `nobody`, bounded in time; resolves with what it printed. */
function runAsNobody(plan: { ownSegments: Array<{ bytes: number[] }>; calls: ClientCall[] }) {
  return new Promise<{ uid: number; results: ClientResult[] }>((resolve, reject) => {
    execFile(
      process.execPath,
      [CLIENT, JSON.stringify({ target: agent.target, addonPath: SYSV_SHM_ADDON_PATH, ...plan })],
      { uid: NOBODY, gid: NOBODY, timeout: 30_000, killSignal: 'SIGKILL', cwd: files.root },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`the client failed: ${error.message}\n${stderr}`));
        else resolve(JSON.parse(stdout) as { uid: number; results: ClientResult[] });
      },
    );
  });
}

beforeAll(async () => {
  files = await scratch('agent-grpc-peer-');
  pool = await startPool(1);
  agent = await startTestAgent({ pool, dir: files.root });
  await agent.call('LoadModel', { url: await files.catalogue('tiny'), handle: 'tiny' });
  // The client user must reach the socket (the daemon's own socket mode is the operator's choice).
  await chmod(files.root, 0o755);
  await chmod(join(files.root, 'agent.sock'), 0o666);
});
afterEach(() => {
  for (const shmid of created.splice(0)) addon.remove(shmid);
});
afterAll(async () => {
  await agent?.close();
  await pool?.close();
  await files?.cleanup();
});

describe.skipIf(!isRoot)('shared memory is read only for callers that may read it (client as nobody)', () => {
  it('refuses another user’s 0600 segment with PERMISSION_DENIED, and serves the caller’s own and an other-readable one', async () => {
    const secret = segment(x, 0o600);
    const readable = segment(x, 0o604);
    const { uid, results } = await runAsNobody({
      ownSegments: [{ bytes: [...x] }],
      calls: [
        { handle: 'tiny', shape: [1, 16], segment: secret },
        { handle: 'tiny', shape: [1, 16], own: 0 },
        { handle: 'tiny', shape: [1, 16], segment: readable },
      ],
    });
    expect(uid).toBe(NOBODY);
    const [denied, own, other] = results;
    expect(denied).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    expect(denied!.details).toMatch(
      new RegExp(
        `caller \\(uid ${NOBODY}, gid ${NOBODY}\\) may not read shared memory segment ${secret} \\(owner uid 0, gid 0, mode 0600\\)`,
      ),
    );
    expect(denied!.output).toBeUndefined();
    expect(own).toEqual({ code: 0, output: expectedY });
    expect(other).toEqual({ code: 0, output: expectedY });
  });
});

describe('the decoder asks the reader with the caller’s credentials, for Predict and CaptureData alike', () => {
  const nobody: PeerCredentials = { pid: 1, uid: NOBODY, gid: NOBODY, groups: [] };
  const tensor = (segmentId: number) => ({
    tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] },
    sharedMemoryHandle: { segmentId, offset: 0, size: 0 },
    data: 'sharedMemoryHandle' as const,
  });
  const refusal = (run: () => unknown) => {
    try {
      run();
    } catch (error) {
      return error;
    }
    throw new Error('expected a refusal');
  };

  it('PERMISSION_DENIED for a segment the caller may not read, or for an unknown caller', () => {
    const reader = new SharedMemoryReader({ addon });
    const shmid = segment(x, 0o600);
    const asNobody = { reader, caller: nobody, leases: [] };
    for (const error of [
      refusal(() => fromWireTensor(tensor(shmid), 'input tensor #1', asNobody)),
      refusal(() =>
        fromWireCaptureRequest(
          {
            captureId: 'c',
            modelHandle: 'tiny',
            modelName: '',
            inferenceTimestamp: null,
            inputTensors: [tensor(shmid)],
            outputTensors: [],
            inputs: [],
            outputs: [],
          },
          asNobody,
        ),
      ),
      refusal(() => fromWireTensor(tensor(shmid), 'input tensor #1', { reader, caller: null, leases: [] })),
    ]) {
      expect(error).toBeInstanceOf(GrpcStatusError);
      expect((error as GrpcStatusError).code).toBe(grpc.status.PERMISSION_DENIED);
    }
    expect(asNobody.leases).toEqual([]);
    reader.close();
  });
});
