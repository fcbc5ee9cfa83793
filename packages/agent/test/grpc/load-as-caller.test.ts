import { execFile } from 'node:child_process';
import { chmod, cp, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InferencePool } from '../../src/inference/index.js';
import { scratch, startPool, startTestAgent, type TestAgent } from './helpers.js';

// Red-team F-G over gRPC: LoadModel for a caller the agent knows (SO_PEERCRED) loads only from a folder the caller
// could read itself; every other path answers one NOT_FOUND, whatever is there. The client runs as nobody.
const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;
const CLIENT = fileURLToPath(new URL('./fixtures/load-peer-client.mjs', import.meta.url));

let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let agent: TestAgent;
let privateDir: string;
let openTiny: string;

function loadAsNobody(calls: Array<{ handle: string; url: string }>) {
  return new Promise<{ uid: number; results: Array<{ code: number; details?: string }> }>(
    (resolve, reject) => {
      execFile(
        process.execPath,
        [CLIENT, JSON.stringify({ target: agent.target, calls })],
        { uid: NOBODY, gid: NOBODY, timeout: 30_000, killSignal: 'SIGKILL', cwd: files.root },
        (error, stdout, stderr) => {
          if (error) reject(new Error(`the client failed: ${error.message}\n${stderr}`));
          else
            resolve(
              JSON.parse(stdout) as { uid: number; results: Array<{ code: number; details?: string }> },
            );
        },
      );
    },
  );
}

describe.skipIf(!isRoot)('gRPC LoadModel as another user (real process on the Unix socket)', () => {
  beforeAll(async () => {
    files = await scratch('agent-grpc-load-peer-');
    pool = await startPool(1);
    agent = await startTestAgent({ pool, dir: files.root });
    const tiny = await files.catalogue('tiny');
    privateDir = join(files.root, 'private');
    await mkdir(join(privateDir, 'empty'), { recursive: true });
    await writeFile(join(privateDir, 'device.key'), 'secret');
    await cp(tiny, join(privateDir, 'tiny'), { recursive: true });
    await chmod(privateDir, 0o700);
    openTiny = join(files.root, 'open-tiny');
    await cp(tiny, openTiny, { recursive: true });
    await chmod(openTiny, 0o755);
    await chmod(files.root, 0o755);
    await chmod(join(files.root, 'agent.sock'), 0o666);
  });
  afterAll(async () => {
    await agent?.close();
    await pool?.close();
    await files?.cleanup();
  });

  it('answers one NOT_FOUND for every path the caller could not read, then loads one it can', async () => {
    const urls = ['device.key', 'nothere', 'empty', 'tiny'].map((name) => join(privateDir, name));
    const { uid, results } = await loadAsNobody([
      ...urls.map((url, i) => ({ handle: `probe${i}`, url })),
      { handle: 'mine', url: openTiny },
    ]);
    expect(uid).toBe(NOBODY);
    expect(results.slice(0, urls.length)).toEqual(
      urls.map((url) => ({
        code: grpc.status.NOT_FOUND,
        details: `no model package at ${url} that you can read; expected the folder of an extracted model package that your user (uid ${NOBODY}) may read and search, on a path it may search`,
      })),
    );
    expect(results[urls.length]).toEqual({ code: 0 });
    expect(agent.registry.list().map((m) => m.name)).toEqual(['mine']);
  });
});
