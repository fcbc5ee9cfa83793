// One agent per data root, with real agent processes: a second agent on the same data root stops before it
// touches anything there; a SIGKILLed agent's data root is free at once; another data root is unaffected.
import { lstat, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { callMethod, wireInputs } from '../grpc/helpers.js';
import { listening, useAgentScratch } from './process-helpers.js';

const agents = useAgentScratch('data-root-lock-', ['tiny']);

/** An agent config with the local database on (as deployments and queued captures have it), in `dataRoot`. */
async function writeConfig(name: string, dataRoot: string): Promise<string> {
  const path = join(agents.files.root, `${name}.json`);
  await writeFile(
    path,
    JSON.stringify({
      edgefleet_inference_workers: 1,
      edgefleet_rest_socket_path: 'none',
      sagemaker_edge_local_data_root_path: dataRoot,
      sagemaker_edge_db_module_path: join(agents.files.root, 'db'),
      sagemaker_edge_core_capture_data_destination: 'Disk',
    }),
  );
  return path;
}

const { start, client } = agents;

async function servesTiny(socket: string): Promise<void> {
  const response = await callMethod(client(socket) as never, 'Predict', {
    handle: 'tiny',
    tensors: wireInputs('tiny'),
  });
  expect(response.tensors).toHaveLength(1);
}

/** The models agent.db says to load again, read beside the running agent (a reader is not locked out). */
function recordedModels(dataRoot: string): string[] {
  const db = new SqliteDatabase(join(dataRoot, 'agent.db'), { readonly: true });
  try {
    return db.prepare('SELECT name FROM loaded_models ORDER BY ordinal').pluck().all() as string[];
  } finally {
    db.close();
  }
}

describe('one agent per data root', () => {
  it('a second agent on the same data root exits 4 naming it and the first agent’s pid, touching nothing; the first serves on', async () => {
    const dataRoot = join(agents.files.root, 'shared');
    const config = await writeConfig('shared', dataRoot);
    const firstSocket = join(agents.files.root, 'first.sock');
    const first = start(['-a', firstSocket, '-c', config]);
    expect(await first.waitFor(listening, 'that it listens')).toMatchObject({ dataRoot });
    await callMethod(client(firstSocket) as never, 'LoadModel', {
      url: agents.packageOf('tiny'),
      handle: 'tiny',
    });
    // A payload file the first agent is writing (no row names it yet): another agent's start-up sweep would
    // take it for a crash's leftover and remove it.
    const payloads = join(dataRoot, 'agent.db-payloads');
    await mkdir(payloads, { mode: 0o700 });
    const writing = join(payloads, `.tmp-${'ab'.repeat(16)}.payload`);
    await writeFile(writing, 'a capture being written', { mode: 0o600 });

    const rivals = [
      // A copied config with its own socket, or a manual run beside the unit: the socket checks pass.
      start(['-a', join(agents.files.root, 'second.sock'), '-c', config]),
      // The same command line again (with -f): stopped at the data root, before the socket checks.
      start(['-a', firstSocket, '-c', config, '-f']),
    ];
    for (const rival of rivals) {
      const listened = await Promise.race([
        rival.exited.then(() => false),
        rival.waitFor(listening, 'that it listens').then(
          () => true,
          () => false,
        ),
      ]);
      expect(listened, 'a second agent on the data root started').toBe(false);
      expect((await rival.exited).code).toBe(4);
      expect(rival.stderr()).toBe(
        `edgefleet-agent: cannot start: the data root ${dataRoot} (sagemaker_edge_local_data_root_path) is in use by another edgefleet-agent (pid ${first.child.pid}); one agent per data root: stop that agent, or give this one a data root of its own\n`,
      );
      expect(rival.lines.find((l) => l.event === 'start-failed')).toMatchObject({
        exitCode: 4,
        dataRoot,
        holderPid: first.child.pid,
      });
    }

    expect(await readFile(writing, 'utf8')).toBe('a capture being written');
    expect(await lstat(join(agents.files.root, 'second.sock')).catch(() => 'absent')).toBe('absent');
    expect((await lstat(firstSocket)).isSocket()).toBe(true);
    expect(recordedModels(dataRoot)).toEqual(['tiny']);
    await servesTiny(firstSocket);
    expect(first.child.exitCode).toBeNull();
  }, 60_000);

  it('a SIGKILLed agent’s data root is the next agent’s at once, with its state', async () => {
    const dataRoot = join(agents.files.root, 'killed');
    const config = await writeConfig('killed', dataRoot);
    const socket = join(agents.files.root, 'killed.sock');
    const killed = start(['-a', socket, '-c', config]);
    await killed.waitFor(listening, 'that it listens');
    await callMethod(client(socket) as never, 'LoadModel', { url: agents.packageOf('tiny'), handle: 'tiny' });
    killed.child.kill('SIGKILL');
    expect((await killed.exited).signal).toBe('SIGKILL');

    // -f: the killed agent left its socket file; nothing is left to clean up in the data root.
    const next = start(['-a', socket, '-c', config, '-f']);
    expect(await next.waitFor(listening, 'that it listens')).toMatchObject({ dataRoot, models: ['tiny'] });
    await servesTiny(socket);
  }, 60_000);

  it('another data root is unaffected: two agents, each with its own, both serve', async () => {
    const sockets = [join(agents.files.root, 'one.sock'), join(agents.files.root, 'two.sock')];
    const pair = await Promise.all(
      ['one', 'two'].map(async (name, i) => {
        const agent = start([
          '-a',
          sockets[i]!,
          '-c',
          await writeConfig(name, join(agents.files.root, name)),
        ]);
        await agent.waitFor(listening, 'that it listens');
        return agent;
      }),
    );
    for (const socket of sockets) {
      await callMethod(client(socket) as never, 'LoadModel', {
        url: agents.packageOf('tiny'),
        handle: 'tiny',
      });
      await servesTiny(socket);
    }
    expect(pair.map((agent) => agent.child.exitCode)).toEqual([null, null]);
  }, 60_000);
});
