// One agent per Disk capture folder, with real agent processes: agents with data roots of their own but the same
// capture folder would write, sweep, upload and quota-count each other's files; the second stops before it
// listens, the first captures on; a SIGKILLed agent's folder is free at once.
import { chown, lstat, mkdir, realpath, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { CAPTURE_FOLDER_LOCK_FILE, lockCaptureFolder } from '../../src/capture/index.js';
import { FolderInUseError } from '../../src/state/index.js';
import { captureRequest, diskRecords } from '../capture/helpers.js';
import { callMethod } from '../grpc/helpers.js';
import { listening, useAgentScratch, type AgentProcess } from './process-helpers.js';

const agents = useAgentScratch('capture-folder-lock-', ['tiny']);
const { start, client } = agents;

/** An agent config with its own data root (and database) and Disk captures in `captureFolder`, one per batch. */
async function writeConfig(name: string, captureFolder: string): Promise<string> {
  const path = join(agents.files.root, `${name}.json`);
  await writeFile(
    path,
    JSON.stringify({
      edgefleet_inference_workers: 1,
      edgefleet_rest_socket_path: 'none',
      edgefleet_preload_models: [{ url: agents.packageOf('tiny'), name: 'tiny' }],
      sagemaker_edge_local_data_root_path: join(agents.files.root, `${name}-data`),
      sagemaker_edge_db_module_path: join(agents.files.root, 'db'),
      sagemaker_edge_core_capture_data_destination: 'Disk',
      sagemaker_edge_core_capture_data_disk_path: captureFolder,
      sagemaker_edge_core_capture_data_batch_size: '1',
    }),
  );
  return path;
}

/** Whether the agent listens, or exits first. */
function listens(agent: AgentProcess): Promise<boolean> {
  return Promise.race([
    agent.exited.then(() => false),
    agent.waitFor(listening, 'that it listens').then(
      () => true,
      () => false,
    ),
  ]);
}

/** Captures `captureId` through the agent on `socket` and waits for its record in `folder`. */
async function capturesInto(socket: string, folder: string, captureId: string): Promise<void> {
  expect(await callMethod(client(socket) as never, 'CaptureData', captureRequest(captureId))).toEqual({});
  await vi.waitFor(
    async () =>
      expect((await diskRecords(folder)).map((found) => found.record.eventMetadata.eventId)).toContain(
        captureId,
      ),
    { timeout: 20_000, interval: 20 },
  );
}

describe('one agent per Disk capture folder', () => {
  it('a second agent with its own data root but the same capture folder exits 4 naming the folder and the first agent’s pid; the first captures on', async () => {
    const folder = join(agents.files.root, 'shared-captures');
    const firstSocket = join(agents.files.root, 'first.sock');
    const first = start(['-a', firstSocket, '-c', await writeConfig('first', folder)]);
    await first.waitFor(listening, 'that it listens');
    await capturesInto(firstSocket, folder, 'first-1');

    const secondSocket = join(agents.files.root, 'second.sock');
    const second = start(['-a', secondSocket, '-c', await writeConfig('second', folder)]);
    expect(await listens(second), 'a second agent on the capture folder started').toBe(false);
    expect((await second.exited).code).toBe(4);
    expect(second.stderr()).toBe(
      `edgefleet-agent: cannot start: the Disk capture folder ${folder} (sagemaker_edge_core_capture_data_disk_path) is in use by another edgefleet-agent (pid ${first.child.pid}); one agent per capture folder (each writes, uploads and counts the quota of the whole folder): stop that agent, or give this one a capture folder of its own\n`,
    );
    expect(second.lines.find((l) => l.event === 'start-failed')).toMatchObject({
      exitCode: 4,
      captureFolder: folder,
      holderPid: first.child.pid,
    });
    expect(await lstat(secondSocket).catch(() => 'absent')).toBe('absent');
    // Refused at start, with the data root: before it loaded (and held the memory of) any model.
    expect(second.lines.filter((l) => String(l.msg).startsWith('loaded model'))).toEqual([]);
    expect(first.lines.filter((l) => String(l.msg).startsWith('loaded model'))).not.toEqual([]);

    await capturesInto(firstSocket, folder, 'first-2');
    expect(first.child.exitCode).toBeNull();
  }, 60_000);

  it('a SIGKILLed agent’s capture folder is the next agent’s at once; a capture folder that is the data root itself is locked beside it', async () => {
    const folder = join(agents.files.root, 'killed-captures');
    const socket = join(agents.files.root, 'killed.sock');
    const killed = start(['-a', socket, '-c', await writeConfig('killed', folder)]);
    await killed.waitFor(listening, 'that it listens');
    killed.child.kill('SIGKILL');
    expect((await killed.exited).signal).toBe('SIGKILL');

    const next = start(['-a', socket, '-c', await writeConfig('next', folder), '-f']);
    await next.waitFor(listening, 'that it listens');
    await capturesInto(socket, folder, 'next-1');

    // Its own data root as the capture folder: agent.lock and the capture folder's lock are two files.
    const ownSocket = join(agents.files.root, 'own.sock');
    const own = start(['-a', ownSocket, '-c', await writeConfig('own', join(agents.files.root, 'own-data'))]);
    await own.waitFor(listening, 'that it listens');
    await capturesInto(ownSocket, join(agents.files.root, 'own-data'), 'own-1');
  }, 60_000);

  it('nested capture folders are refused either way round, exit 4 naming both folders and the holder; a symbolic link does not hide one', async () => {
    const outer = join(agents.files.root, 'nested-captures');
    const realOuter = await realpath(agents.files.root).then((root) => join(root, 'nested-captures'));
    const refusal = (folder: string, relation: string, other: string, pid: number | undefined) =>
      `edgefleet-agent: cannot start: the Disk capture folder ${folder} (sagemaker_edge_core_capture_data_disk_path) ${relation} ${other}, the Disk capture folder of another edgefleet-agent (pid ${pid}); one agent per capture folder (each writes, uploads and counts the quota of the whole folder): stop that agent, or give this one a capture folder of its own, neither inside nor containing another agent's\n`;
    const refused = async (name: string, folder: string) => {
      const agent = start([
        '-a',
        join(agents.files.root, `${name}.sock`),
        '-c',
        await writeConfig(name, folder),
      ]);
      expect(await listens(agent), `an agent on ${folder} started`).toBe(false);
      expect((await agent.exited).code).toBe(4);
      return agent;
    };

    const outerSocket = join(agents.files.root, 'outer.sock');
    const first = start(['-a', outerSocket, '-c', await writeConfig('outer', outer)]);
    await first.waitFor(listening, 'that it listens');
    // Inside the held folder: directly, and through a symbolic link to it.
    const inner = await refused('inner', join(outer, 'sub'));
    expect(inner.stderr()).toBe(refusal(join(outer, 'sub'), 'lies inside', realOuter, first.child.pid));
    expect(inner.lines.find((l) => l.event === 'start-failed')).toMatchObject({
      exitCode: 4,
      captureFolder: join(outer, 'sub'),
      holderPid: first.child.pid,
    });
    const alias = join(agents.files.root, 'alias-of-captures');
    await symlink(outer, alias);
    const linked = await refused('linked-inner', join(alias, 'deeper'));
    expect(linked.stderr()).toBe(refusal(join(alias, 'deeper'), 'lies inside', realOuter, first.child.pid));
    await capturesInto(outerSocket, outer, 'outer-1');
    // Where /proc/locks cannot tell (a holder in another pid namespace), a read of the lock file does.
    let unlisted: unknown;
    try {
      lockCaptureFolder(join(outer, 'sub'), {
        procLocksPath: join(agents.files.root, 'no-proc-locks'),
      }).release();
    } catch (error) {
      unlisted = error;
    }
    expect(unlisted).toBeInstanceOf(FolderInUseError);
    expect(unlisted).toMatchObject({
      holderPid: undefined,
      nested: { folder: realOuter, relation: 'inside' },
    });
    // A held lock file another user owns (one they planted in a shared folder above, such as /tmp) is not an
    // agent's: it cannot keep this one from starting. Changing a file's owner needs root, as CI runs.
    if (process.getuid?.() === 0) {
      const outerLock = join(outer, '.edgefleet-capture.lock');
      await chown(outerLock, 54321, 54321);
      try {
        lockCaptureFolder(join(outer, 'sub')).release();
      } finally {
        await chown(outerLock, 0, 0);
      }
    }

    // The other way round: an agent holds the inner folder (the outer's lock file, left by a killed agent, and
    // the inner's, left by a refused one, are held by nobody and count for nothing).
    first.child.kill('SIGKILL');
    await first.exited;
    const innerSocket = join(agents.files.root, 'inner-now.sock');
    const second = start(['-a', innerSocket, '-c', await writeConfig('inner-now', join(outer, 'sub')), '-f']);
    await second.waitFor(listening, 'that it listens');
    const around = await refused('around', outer);
    expect(around.stderr()).toBe(refusal(outer, 'contains', join(realOuter, 'sub'), second.child.pid));
    await capturesInto(innerSocket, join(outer, 'sub'), 'inner-1');
  }, 90_000);

  it('a symbolic link at the capture folder’s lock file stops start-up with exit 2 naming the key, and is left alone', async () => {
    const folder = join(agents.files.root, 'linked-captures');
    await mkdir(folder);
    const target = join(agents.files.root, 'not-a-lock');
    await symlink(target, join(folder, CAPTURE_FOLDER_LOCK_FILE));
    const agent = start([
      '-a',
      join(agents.files.root, 'linked.sock'),
      '-c',
      await writeConfig('linked', folder),
    ]);
    expect((await agent.exited).code).toBe(2);
    expect(agent.stderr()).toContain(
      `sagemaker_edge_core_capture_data_disk_path: the lock file ${join(folder, CAPTURE_FOLDER_LOCK_FILE)} is a symbolic link; expected a regular file owned by the agent's user`,
    );
    expect((await lstat(join(folder, CAPTURE_FOLDER_LOCK_FILE))).isSymbolicLink()).toBe(true);
    expect(await lstat(target).catch(() => 'absent')).toBe('absent');
  }, 60_000);
});
