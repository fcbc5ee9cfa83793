// The failed reads of a queued capture's payload file count across restarts, with real agent processes: an agent
// killed after every try (a crash loop) still gives up a payload that can never be read, on its 15th try.
import { spawn } from 'node:child_process';
import { chmod, chown, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentCaptureDataStatus } from '@edgefleet/core';
import SqliteDatabase from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_DEFERRAL_POLICY } from '../../src/capture/index.js';
import { agentDatabasePath, capturePayloadFolder } from '../../src/state/index.js';
import { watchAgentProcess, type AgentProcess } from '../../../../test/support/agent-process.js';
import { AGENT_MAIN, buildAgent, listening, writeAgentConfig } from '../daemon/process-helpers.js';
import { agentClient, captureRequest, floatTensor, modelPackage } from './helpers.js';

/**
 * Root reads any file, so as root the agent runs as nobody: a payload file made 0000 is then unreadable (EACCES),
 * a read error that damages nothing (the file is the agent's, whole), so it is tried again, as an I/O error is.
 */
const AGENT_USER = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : undefined;

let root: string;
let tiny: string;
const running: AgentProcess[] = [];

beforeAll(async () => {
  buildAgent();
  root = await mkdtemp(join(tmpdir(), 'edgefleet-read-tries-'));
  tiny = await modelPackage(root, 'tiny');
  if (AGENT_USER) await chownTree(root, AGENT_USER);
}, 180_000);
afterEach(async () => {
  const killed = running.splice(0);
  for (const agent of killed) agent.child.kill('SIGKILL');
  await Promise.all(killed.map((agent) => agent.exited));
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

async function chownTree(path: string, user: { uid: number; gid: number }): Promise<void> {
  await chown(path, user.uid, user.gid);
  for (const entry of await readdir(path, { withFileTypes: true }).catch(() => [])) {
    if (entry.isDirectory()) await chownTree(join(path, entry.name), user);
    else await chown(join(path, entry.name), user.uid, user.gid);
  }
}

function startAgent(args: string[]): AgentProcess {
  const child = spawn(process.execPath, [AGENT_MAIN, ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...AGENT_USER,
  });
  const agent = watchAgentProcess(child);
  running.push(agent);
  return agent;
}

const DEFERRED = 'capture: queued captures could not be read back from their payload files now';
const GIVEN_UP = 'capture: a queued capture could not be read back from its stored form';

describe('failed reads of a payload file', () => {
  it('count across restarts: an agent killed after each try gives the capture up on its 15th try (FAILURE), holding nothing', async () => {
    const dataRoot = join(root, 'data');
    const socket = join(root, 'agent.sock');
    const config = join(root, 'agent.json');
    const writeConfig = (pushPeriodSeconds: number) =>
      writeAgentConfig(config, {
        sagemaker_edge_core_capture_data_destination: 'Disk',
        sagemaker_edge_core_capture_data_disk_path: join(root, 'capture'),
        sagemaker_edge_core_capture_data_batch_size: '10',
        sagemaker_edge_core_capture_data_push_period_seconds: String(pushPeriodSeconds),
        sagemaker_edge_db_module_path: '/opt/sagemaker/lib/libdb.so',
        sagemaker_edge_local_data_root_path: dataRoot,
        edgefleet_inference_workers: 1,
        edgefleet_rest_socket_path: 'none',
      });
    /** The capture's recorded tries, read beside the agent; undefined once it is no longer queued. */
    const readTries = (): number | undefined => {
      const db = new SqliteDatabase(agentDatabasePath(dataRoot), { readonly: true });
      try {
        return db
          .prepare("SELECT read_tries FROM capture_queue WHERE capture_id = 'unreadable'")
          .pluck()
          .get() as number | undefined;
      } finally {
        db.close();
      }
    };

    // Queued, not written (no batch for an hour), then the agent is killed: the capture waits in its file.
    await writeConfig(3600);
    const first = startAgent(['-a', socket, '-c', config, '-f']);
    await first.waitFor(listening, 'listening');
    const client = agentClient(`unix://${socket}`);
    try {
      await client.call('LoadModel', { url: tiny, handle: 'tiny' });
      // 128 KiB: above the inline limit, so its payload is a file.
      await client.call(
        'CaptureData',
        captureRequest('unreadable', { inputTensors: [floatTensor('x', [1, 32 * 1024], 1)] }),
      );
    } finally {
      client.close();
    }
    first.child.kill('SIGKILL');
    await first.exited;
    const payloads = capturePayloadFolder(agentDatabasePath(dataRoot));
    const files = (await readdir(payloads)).filter((name) => name.endsWith('.payload'));
    expect(files).toHaveLength(1);
    await chmod(join(payloads, files[0]!), 0o000);

    // A batch is formed each second; every run tries the file once, then is killed.
    await writeConfig(1);
    const { maxTries } = DEFAULT_DEFERRAL_POLICY;
    for (let run = 1; run <= maxTries; run++) {
      const agent = startAgent(['-a', socket, '-c', config, '-f']);
      const line = await agent.waitFor(
        (l) => l.msg.startsWith(DEFERRED) || l.msg.startsWith(GIVEN_UP),
        'a failed read of the payload',
      );
      if (line.msg.startsWith(GIVEN_UP)) {
        expect(run).toBe(maxTries);
        const status = agentClient(`unix://${socket}`);
        try {
          const answer = await status.call('GetCaptureDataStatus', { captureId: 'unreadable' });
          expect(answer.status).toBe(AgentCaptureDataStatus.FAILURE);
        } finally {
          status.close();
        }
        // Dropped from the queue: no place or bytes held in the buffer at the next start.
        expect(readTries()).toBeUndefined();
        expect(line.err).toMatchObject({
          message: expect.stringContaining(`could not be read back in ${maxTries} tries (the last: EACCES`),
        });
        return;
      }
      agent.child.kill('SIGKILL');
      await agent.exited;
      expect(readTries()).toBe(run);
    }
    throw new Error(`the capture was not given up after ${maxTries} runs of one try each`);
  }, 120_000);
});
