import { lstat, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AgentDataType, slowModelInput, slowModelReference } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { bytesOf, callError, callMethod, referenceBytes, wireInputs } from '../grpc/helpers.js';
import { listening, useAgentScratch } from './process-helpers.js';

const agents = useAgentScratch('agent-process-', ['tiny', 'slow']);

async function writeConfig(name: string, config: Record<string, unknown>): Promise<string> {
  const path = join(agents.files.root, `${name}.json`);
  await writeFile(path, JSON.stringify({ edgefleet_inference_workers: 1, ...config }));
  return path;
}

const { start, client } = agents;

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

describe('the edgefleet-agent process', () => {
  it('starts with preloaded models, serves them, and on SIGTERM finishes the call in flight, removes its sockets and exits 0', async () => {
    const socket = join(agents.files.root, 'a.sock');
    const config = await writeConfig('preload', {
      sagemaker_edge_log_verbose: 'true',
      edgefleet_preload_models: [
        { url: agents.packageOf('tiny'), name: 'tiny' },
        { url: agents.packageOf('slow'), name: 'slow' },
      ],
    });
    const agent = start(['-a', socket, '-c', config]);
    const ready = await agent.waitFor(listening, 'that it listens');
    expect(ready).toMatchObject({
      grpc: `unix://${socket}`,
      rest: [`unix:${join(agents.files.root, 'a.rest.sock')}`],
      models: ['tiny', 'slow'],
    });
    expect((await lstat(socket)).mode & 0o777).toBe(0o660);

    const c = client(socket);
    const listed = await callMethod(c as never, 'ListModels', {});
    expect(listed.models.map((m) => m.handle)).toEqual(['tiny', 'slow']);
    const response = await callMethod(c as never, 'Predict', { handle: 'tiny', tensors: wireInputs('tiny') });
    expect(Buffer.compare(response.tensors[0]!.byteData!, referenceBytes('tiny').get('y')!.bytes)).toBe(0);

    const input = slowModelInput();
    const slowCall = callMethod(c as never, 'Predict', {
      handle: 'slow',
      tensors: [
        {
          tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: input.shape },
          byteData: bytesOf(input.data),
        },
      ],
    });
    const received = agent.lines.length;
    await agent.waitFor(
      (line) => line.event === 'call-received' && agent.lines.indexOf(line) >= received,
      'the slow Predict arriving',
    );
    agent.child.kill('SIGTERM');
    agent.child.kill('SIGTERM'); // supervisors may signal twice: the shutdown carries on
    const slow = await slowCall;
    expect(
      Buffer.compare(slow.tensors[0]!.byteData!, Buffer.from(bytesOf(slowModelReference(input).data))),
    ).toBe(0);
    expect(await agent.exited).toEqual({ code: 0, signal: null });
    expect(agent.lines.map((l) => l.event).filter(Boolean)).toEqual(
      expect.arrayContaining(['listening', 'stopping', 'stopped']),
    );
    expect(await exists(socket)).toBe(false);
    expect(await exists(join(agents.files.root, 'a.rest.sock'))).toBe(false);
  });

  it('after SIGKILL leaves a stale socket: refused without -f (exit 3), started with -f; a live agent’s socket is never taken', async () => {
    const socket = join(agents.files.root, 'b.sock');
    const config = await writeConfig('plain', {});
    const first = start(['-a', socket, '-c', config]);
    await first.waitFor(listening, 'that it listens');

    // Its own data root: on the first's it would stop at the data root's lock (data-root-lock.test.ts).
    const rival = start([
      '-a',
      socket,
      '-c',
      await writeConfig('rival', {
        sagemaker_edge_local_data_root_path: join(agents.files.root, 'rival-data'),
      }),
      '-f',
    ]);
    expect((await rival.exited).code).toBe(3);
    expect(rival.stderr()).toMatch(/a process is already serving on .*b\.sock/);

    first.child.kill('SIGKILL');
    await first.exited;
    expect((await lstat(socket)).isSocket()).toBe(true);

    const refused = start(['-a', socket, '-c', config]);
    expect((await refused.exited).code).toBe(3);
    expect(refused.stderr()).toMatch(/b\.sock already exists, and no process answers on it .*start with -f/);
    expect(refused.lines.find((l) => l.event === 'start-failed')).toMatchObject({ exitCode: 3 });

    const restarted = start(['-a', socket, '-c', config, '-f']);
    await restarted.waitFor(listening, 'that it listens');
    expect(restarted.lines.some((l) => /removed a stale socket file/.test(l.msg))).toBe(true);
    await callMethod(client(socket) as never, 'LoadModel', { url: agents.packageOf('tiny'), handle: 'tiny' });
    const response = await callMethod(client(socket) as never, 'Predict', {
      handle: 'tiny',
      tensors: wireInputs('tiny'),
    });
    expect(response.tensors).toHaveLength(1);
    restarted.child.kill('SIGINT');
    expect((await restarted.exited).code).toBe(0);
    expect(await exists(socket)).toBe(false);
  });

  it('-f does not remove a file that is not a socket (exit 3)', async () => {
    const path = join(agents.files.root, 'not-a-socket.sock');
    await writeFile(path, 'precious');
    const agent = start(['-a', path, '-c', await writeConfig('plain2', {}), '-f']);
    expect((await agent.exited).code).toBe(3);
    expect(agent.stderr()).toMatch(/exists and is not a socket \(a regular file\)/);
    expect((await lstat(path)).isFile()).toBe(true);
  });

  it('a broken config stops start-up with exit 2 and a message naming the key', async () => {
    const socket = join(agents.files.root, 'c.sock');
    const cases: Array<[string, RegExp]> = [
      [
        JSON.stringify({ sagemaker_edge_core_capture_data_buffer_size: 'lots' }),
        /sagemaker_edge_core_capture_data_buffer_size: expected a whole number/,
      ],
      [
        JSON.stringify({ edgefleet_socket_mode: '0666' }),
        /edgefleet_socket_mode: 0666 lets every user connect/,
      ],
      [
        JSON.stringify({ edgefleet_preload_models: [{ url: agents.packageOf('tiny'), name: 'bad_name' }] }),
        /edgefleet_preload_models: expected a list of \{"url"/,
      ],
      [
        JSON.stringify({ sagemaker_edge_core_root_certs_path: join(agents.files.root, 'no-certs-here') }),
        /sagemaker_edge_core_root_certs_path: .*does not exist/,
      ],
      ['{"sagemaker_edge_core_device_name": ', /is not valid JSON/],
    ];
    for (const [text, message] of cases) {
      const config = join(agents.files.root, 'broken.json');
      await writeFile(config, text);
      const agent = start(['-a', socket, '-c', config]);
      expect((await agent.exited).code, text).toBe(2);
      expect(agent.stderr(), text).toMatch(message);
      expect(agent.lines.at(-1)).toMatchObject({ event: 'start-failed', exitCode: 2 });
      expect(await exists(socket)).toBe(false);
    }
    const noConfig = start(['-a', socket]);
    expect((await noConfig.exited).code).toBe(2);
    expect(noConfig.stderr()).toMatch(/-c <config.json> is required/);
  });

  it('verifies signatures when root certificates are configured: an unsigned preloaded model is refused, the agent serves on', async () => {
    const certs = join(agents.files.root, 'certs');
    await mkdir(certs, { recursive: true });
    const { createRootCa } = await import('@edgefleet/core');
    await writeFile(
      join(certs, 'root.pem'),
      createRootCa({ commonName: 'Process Test Root', validityDays: 1, keyType: 'ecdsa-p256' })
        .certificatePem,
    );
    const socket = join(agents.files.root, 'd.sock');
    const config = await writeConfig('signed', {
      sagemaker_edge_core_root_certs_path: certs,
      edgefleet_preload_models: [{ url: agents.packageOf('tiny'), name: 'tiny' }],
    });
    const agent = start(['-a', socket, '-c', config]);
    const ready = await agent.waitFor(listening, 'that it listens');
    expect(ready.models).toEqual([]);
    expect(agent.lines.find((l) => l.model === 'tiny')).toMatchObject({
      level: 50,
      code: 'FAILED_PRECONDITION',
      msg: expect.stringMatching(/could not load "tiny" .*failed signature verification \(bundle-missing\)/),
    });
    const error = await callError(
      callMethod(client(socket) as never, 'LoadModel', { url: agents.packageOf('tiny'), handle: 'tiny' }),
    );
    expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(error.details).toMatch(/bundle-missing/);
    agent.child.kill('SIGTERM');
    expect((await agent.exited).code).toBe(0);
  });

  it('--help and --version print and exit 0', async () => {
    const help = start(['--help']);
    expect((await help.exited).code).toBe(0);
    expect(help.lines.map((l) => l.msg).join('\n')).toMatch(
      /-a, --address <socket>.*\n.*-c, --config <file>/s,
    );
    const version = start(['--version']);
    expect((await version.exited).code).toBe(0);
    expect(version.lines[0]?.msg).toMatch(/^\d+\.\d+\.\d+/);
  });
});
