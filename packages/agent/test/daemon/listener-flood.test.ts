import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { AgentDataType } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentClient, modelPackage } from '../capture/helpers.js';
import { scratch } from '../rest/helpers.js';
import { buildAgent, listening, spawnAgent, writeAgentConfig, type AgentProcess } from './process-helpers.js';

// Issue 15 item 4: slow or idle connections on the REST TCP port used up the agent's descriptors, and gRPC
// Predict on the Unix socket failed UNAVAILABLE. Reproduced with a small open file limit, so that a bounded
// number of loopback connections is a flood.

const OPEN_FILE_LIMIT = 200;
const FLOOD = 220;

let files: Awaited<ReturnType<typeof scratch>>;
let tiny: string;
const running: AgentProcess[] = [];
const sockets: Socket[] = [];

beforeAll(async () => {
  buildAgent();
  files = await scratch('edgefleet-flood-');
  tiny = await modelPackage(files.root, 'tiny');
}, 180_000);
afterAll(async () => {
  sockets.forEach((socket) => socket.destroy());
  for (const agent of running) agent.child.kill('SIGKILL');
  await files?.cleanup();
});

/** Opens a connection that sends headers and one byte of a 1000-byte body, then nothing; resolves once connected. */
function slowBody(port: number): Promise<Socket> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.on('error', () => {});
    socket.once('connect', () => {
      // A route that reads its body (an inference request for a model not loaded is refused before its body).
      socket.write('POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{');
      resolve(socket);
    });
    socket.once('close', () => resolve(socket));
  });
}

describe('a flood on the REST TCP port (real agent process, low open file limit)', () => {
  it('leaves gRPC Predict and the REST Unix socket working', async () => {
    const socket = join(files.root, 'agent.sock');
    const config = join(files.root, 'agent.json');
    // Management on TCP: the flood's slow bodies go to the repository index, a route that reads its body there.
    await writeAgentConfig(config, {
      edgefleet_inference_workers: 1,
      edgefleet_rest_tcp: '127.0.0.1:0',
      edgefleet_rest_tcp_management: true,
    });
    const agent = spawnAgent(['-a', socket, '-c', config], files.root, { openFileLimit: OPEN_FILE_LIMIT });
    running.push(agent);
    const line = await agent.waitFor(listening, 'listening');
    const tcp = (line.rest as string[]).find((address) => address.startsWith('http://'))!;
    const port = Number(new URL(tcp).port);

    for (let i = 0; i < FLOOD; i++) sockets.push(await slowBody(port));
    const client = agentClient(`unix://${socket}`);
    try {
      await client.call('LoadModel', { url: tiny, handle: 'tiny' });
      const answer = await client.call('Predict', {
        name: 'tiny',
        tensors: [
          {
            tensorMetadata: { name: Buffer.from('x'), dataType: AgentDataType.FLOAT32, shape: [1, 16] },
            byteData: Buffer.from(new Float32Array(16).fill(1).buffer),
          },
        ],
      });
      expect(answer.tensors.length).toBeGreaterThan(0);
    } finally {
      client.close();
    }
    const restSocket = (line.rest as string[]).find((address) => address.startsWith('unix:'))!.slice(5);
    const ready = await fetchOverUnix(restSocket, '/v2/health/live');
    expect(ready).toMatch(/^HTTP\/1\.1 200/);
    // The caps were fitted to the low limit (said in a warning), and the flood got no further than them.
    const warning = agent.lines.find((l) => /open file limit \(200\) is low/.test(l.msg));
    expect(warning?.maxConnections).toBeLessThan(OPEN_FILE_LIMIT / 2);
    const open = sockets.filter((s) => !s.destroyed).length;
    expect(open).toBeLessThanOrEqual(warning!.maxConnections as number);
  });
});

function fetchOverUnix(path: string, url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('error', reject);
    socket.on('close', () => resolve(text));
    socket.write(`GET ${url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  });
}
