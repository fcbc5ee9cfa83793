/**
 * The agent's exit code when it cannot take its data root's lock (core's FolderLock) for a reason that may pass:
 * 1, which the shipped unit restarts (a reason a person must fix is 2: capture-folder-lock.test.ts). A real agent
 * process whose data root is on a real tmpfs with no inodes left, in a user and mount namespace (unshare), where
 * the system allows one.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { watchAgentProcess } from '../../../../test/support/agent-process.js';
import { AGENT_MAIN, buildAgent, writeAgentConfig } from './process-helpers.js';

/** Whether this system lets an unprivileged process make a user and mount namespace and mount in it. */
const namespaces =
  spawnSync('unshare', ['-rm', 'sh', '-c', 'mount -t tmpfs tmpfs /mnt'], { stdio: 'ignore' }).status === 0;

describe.runIf(namespaces)('the agent exits 1 when its data root cannot be locked for now', () => {
  let root: string;
  beforeAll(async () => {
    buildAgent();
    root = await mkdtemp(join(tmpdir(), 'agent-lock-exit-'));
  }, 120_000);
  afterAll(() => rm(root, { recursive: true, force: true }));

  it('a data root on a filesystem with no inodes left: 1 (the unit restarts it), naming the key and the cause', async () => {
    const full = join(root, 'full');
    await mkdir(full);
    const config = join(root, 'agent.json');
    await writeAgentConfig(config, {
      edgefleet_inference_workers: 1,
      edgefleet_rest_socket_path: '',
      sagemaker_edge_local_data_root_path: full,
    });
    const child = spawn(
      'unshare',
      [
        '-rm',
        'sh',
        '-c',
        'mount -t tmpfs -o size=1m,nr_inodes=1 tmpfs "$FULL" && exec "$@"',
        'sh',
        process.execPath,
        AGENT_MAIN,
        '-a',
        join(root, 'agent.sock'),
        '-c',
        config,
      ],
      { cwd: root, env: { ...process.env, FULL: full }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const agent = watchAgentProcess(child);
    const { code } = await agent.exited;
    expect(code, agent.stderr()).toBe(1);
    expect(agent.stderr()).toContain(
      `edgefleet-agent: cannot start: sagemaker_edge_local_data_root_path: cannot create or open the lock file ${join(full, 'agent.lock')}: no space or no inodes left on its filesystem (ENOSPC)`,
    );
  }, 60_000);
});
