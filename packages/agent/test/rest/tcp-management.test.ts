import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpClient, jsonInputs, scratch, startAgent, targetOf } from './helpers.js';

// Loopback TCP tells nothing of who is calling, so every local user could manage models through it: the model
// repository and the agent status answer only on the Unix socket unless edgefleet_rest_tcp_management is set.

let files: Awaited<ReturnType<typeof scratch>>;
let tiny: string;

beforeAll(async () => {
  files = await scratch('agent-rest-tcp-management-');
  tiny = await files.catalogue('tiny');
});

afterAll(async () => {
  await files?.cleanup();
});

/** A pino logger whose lines are kept, parsed. */
function capturingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level: 'info' }, sink), lines };
}

async function agentOnBoth(name: string, tcpManagement?: boolean) {
  const { logger, lines } = capturingLogger();
  const agent = await startAgent({
    socketPath: join(files.root, `${name}.sock`),
    tcp: true,
    logger,
    ...(tcpManagement !== undefined && { tcpManagement }),
  });
  const [unixAddress, tcpAddress] = agent.server.addresses as [string, string];
  return {
    agent,
    lines,
    tcpAddress,
    unix: new HttpClient(targetOf(unixAddress)),
    tcp: new HttpClient(targetOf(tcpAddress)),
  };
}

describe('the REST TCP listener by default (real sockets)', () => {
  let both: Awaited<ReturnType<typeof agentOnBoth>>;
  beforeAll(async () => {
    both = await agentOnBoth('default');
    const loaded = await both.unix.postJson('/v2/repository/models/tiny/load', { parameters: { url: tiny } });
    expect(loaded.status, loaded.text()).toBe(200);
  });
  afterAll(async () => {
    both?.unix.close();
    both?.tcp.close();
    await both?.agent.stop();
  });

  it.each([
    ['POST', '/v2/repository/models/tiny/unload', undefined],
    ['POST', '/v2/repository/models/other/load', JSON.stringify({ parameters: { url: '/nonexistent' } })],
    ['POST', '/v2/repository/index', '{}'],
    // Percent-encoded and with a trailing slash: refused by the route matched, not by the text of the URL.
    ['POST', '/v2/%72epository/models/tiny/unload/', undefined],
    ['GET', '/edgefleet/v1/status', undefined],
  ])('refuses %s %s with 403 saying why and how', async (method, path, body) => {
    const result = await both.tcp.request({
      method,
      path,
      ...(body !== undefined && { headers: { 'content-type': 'application/json' }, body }),
    });
    expect(result.status, result.text()).toBe(403);
    const { error } = result.json() as { error: string };
    expect(error).toMatch(/served only on the agent's Unix socket/);
    expect(error).toMatch(/edgefleet_rest_tcp_management/);
    // The model is still loaded and serving.
    expect((await both.unix.get('/v2/models/tiny/ready')).status).toBe(200);
  });

  it('serves health, server and model metadata, readiness, inference and metrics', async () => {
    for (const path of [
      '/v2/health/live',
      '/v2/health/ready',
      '/v2',
      '/v2/models/tiny',
      '/v2/models/tiny/ready',
    ])
      expect((await both.tcp.get(path)).status, path).toBe(200);
    const inferred = await both.tcp.postJson('/v2/models/tiny/infer', { inputs: jsonInputs('tiny') });
    expect(inferred.status, inferred.text()).toBe(200);
    expect((await both.tcp.get('/metrics')).status).toBe(200);
    // The server metadata lists only what TCP serves; the socket lists the repository too.
    expect(((await both.tcp.get('/v2')).json() as { extensions: string[] }).extensions).toEqual([
      'binary_tensor_data',
    ]);
    expect(((await both.unix.get('/v2')).json() as { extensions: string[] }).extensions).toContain(
      'model_repository',
    );
  });

  it('serves the repository and the status on the Unix socket', async () => {
    expect((await both.unix.get('/edgefleet/v1/status')).status).toBe(200);
    const index = await both.unix.postJson('/v2/repository/index', {});
    expect(index.json()).toContainEqual({ name: 'tiny', version: '1.0', state: 'READY' });
  });

  it('does not warn of management on TCP', () => {
    expect(both.lines.some((line) => String(line.msg).includes('edgefleet_rest_tcp_management'))).toBe(false);
  });
});

describe('the REST TCP listener with tcpManagement (edgefleet_rest_tcp_management)', () => {
  it('serves the repository and the status on TCP, and warns at start who can', async () => {
    const both = await agentOnBoth('managed', true);
    try {
      const load = await both.tcp.postJson('/v2/repository/models/tiny/load', { parameters: { url: tiny } });
      expect(load.status, load.text()).toBe(200);
      expect(((await both.tcp.get('/v2')).json() as { extensions: string[] }).extensions).toContain(
        'model_repository',
      );
      expect((await both.tcp.get('/edgefleet/v1/status')).status).toBe(200);
      const unload = await both.tcp.request({ method: 'POST', path: '/v2/repository/models/tiny/unload' });
      expect(unload.status).toBe(200);
      const warning = both.lines.find(
        (line) => line.level === 40 && line.option === 'edgefleet_rest_tcp_management',
      );
      expect(warning?.msg).toBe(
        `edgefleet_rest_tcp_management is true: everyone who can reach ${new URL(both.tcpAddress).host} can load and unload models and read the agent status (TCP tells nothing of who is calling, so loads over TCP are not checked against the caller's rights: a model loads from any folder the agent can read)`,
      );
    } finally {
      both.unix.close();
      both.tcp.close();
      await both.agent.stop();
    }
  });
});
