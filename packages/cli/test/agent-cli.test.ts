import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { edgefleet } from './run-cli.js';

const agentBin = join(import.meta.dirname, '..', '..', 'agent', 'dist', 'main.js');
let work: string;
let socket: string;
let agent: ChildProcess;

/** `edgefleet agent <args> --socket <the test agent's socket>`. */
const agentCli = (...args: string[]) => edgefleet('agent', ...args, '--socket', socket);

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ef-agent-cli-'));
  expect((await edgefleet('demo', '--dir', join(work, 'demo'))).code).toBe(0);
  socket = join(work, 'agent.sock');
  const config = join(work, 'agent.json');
  await writeFile(
    config,
    JSON.stringify({
      sagemaker_edge_core_device_name: 'cli-test',
      sagemaker_edge_core_root_certs_path: join(work, 'demo', 'pki', 'trust'),
      edgefleet_rest_socket_path: 'none',
      sagemaker_edge_core_capture_data_destination: 'Disk',
      sagemaker_edge_core_capture_data_disk_path: join(work, 'captures'),
      sagemaker_edge_core_capture_data_push_period_seconds: 1,
      edgefleet_preload_models: [
        { url: join(work, 'demo', 'device', 'models', 'demo-classifier'), name: 'demo' },
      ],
    }),
  );
  agent = await startAgent(socket, config);
}, 60_000);

afterAll(async () => {
  await stopAgent(agent);
  await rm(work, { recursive: true, force: true });
});

/** A real agent on `socket`, once it listens. */
async function startAgent(socket: string, config: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [agentBin, '-a', socket, '-c', config], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`agent exited with ${code}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.includes('"event":"listening"')) resolve();
    });
  });
  return child;
}

async function stopAgent(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

describe('edgefleet agent', () => {
  it('lists and describes the loaded model with its tensors', async () => {
    const list = await agentCli('list', '--json');
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([
      expect.objectContaining({
        name: 'demo',
        inputs: [{ name: 'features', dataType: 'FLOAT32', shape: [-1, 4] }],
        outputs: [{ name: 'probabilities', dataType: 'FLOAT32', shape: [-1, 3] }],
      }),
    ]);
    const described = await agentCli('describe', 'demo');
    expect(described.stdout).toContain('input  features FLOAT32 [-1, 4]');
  });

  it('predicts: a virginica-like flower scores highest on the third class', async () => {
    const r = await agentCli(
      'predict',
      'demo',
      '--json',
      '--input',
      '{"features": {"shape": [1, 4], "data": [6.7, 3.0, 5.2, 2.3]}}',
    );
    expect(r.stderr).toBe('');
    const [probabilities] = (
      JSON.parse(r.stdout) as { outputs: { name: string; shape: number[]; data: number[] }[] }
    ).outputs;
    expect(probabilities).toMatchObject({ name: 'probabilities', shape: [1, 3] });
    expect(probabilities!.data.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    expect(Math.max(...probabilities!.data)).toBe(probabilities!.data[2]);
  });

  it('predicts from nested lists (shape from the nesting) and bare numbers for one-value inputs', async () => {
    const batch = await agentCli(
      'predict',
      'demo',
      '--json',
      '--input',
      '{"features": [[6.7, 3.0, 5.2, 2.3], [5.1, 3.5, 1.4, 0.2]]}',
    );
    expect(batch.stderr).toBe('');
    expect(JSON.parse(batch.stdout).outputs[0]).toMatchObject({ name: 'probabilities', shape: [2, 3] });

    // A model with an INT64 [-1] input, signed with the demo's PKI: a bare number is a one-value tensor.
    const onnx = await writeTestModel('int-types', join(work, 'int-types'));
    const pkg = join(work, 'ints-1');
    const created = await edgefleet(
      'package',
      'create',
      onnx,
      '--name',
      'ints',
      '--version',
      '1',
      '--out',
      pkg,
      '--key',
      join(work, 'demo', 'pki', 'signing.key'),
      '--cert',
      join(work, 'demo', 'pki', 'signing.pem'),
    );
    expect(created.stderr).toBe('');
    expect((await agentCli('load', 'ints', pkg)).code).toBe(0);
    const scalar = await agentCli(
      'predict',
      'ints',
      '--json',
      '--input',
      '{"counts": 41, "bytes": [1, 2, 3, 4]}',
    );
    expect(scalar.stderr).toBe('');
    expect(JSON.parse(scalar.stdout).outputs).toContainEqual(
      expect.objectContaining({ name: 'counts_plus_one', shape: [1], data: [42] }),
    );
    await agentCli('unload', 'ints');
  });

  it('captures: agent capture send/status, and predict --capture', async () => {
    const frame = join(work, 'frame.jpg');
    await writeFile(frame, Buffer.from([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]));
    const note = join(work, 'note');
    await writeFile(note, 'a person at the door');
    const sent = await agentCli(
      'capture',
      'send',
      'demo',
      '--id',
      'cli-capture-1',
      '--input',
      '{"features": [6.7, 3.0, 5.2, 2.3]}',
      '--output',
      '{"probabilities": [0.1, 0.2, 0.7]}',
      '--aux-input',
      `@${frame}`,
      '--aux-output',
      `text/plain=@${note}`,
      '--wait',
      '30',
    );
    expect(sent.stderr).toBe('');
    expect(sent.stdout).toBe('capture cli-capture-1: SUCCESS\n');
    const status = await agentCli('capture', 'status', 'cli-capture-1', '--json');
    expect(JSON.parse(status.stdout)).toEqual({ captureId: 'cli-capture-1', status: 'SUCCESS' });
    const again = await agentCli(
      'capture',
      'send',
      'demo',
      '--id',
      'cli-capture-1',
      '--input',
      '{"features": [6.7, 3.0, 5.2, 2.3]}',
    );
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/ALREADY_EXISTS/);
    const unknown = await agentCli('capture', 'status', 'never-sent');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/NOT_FOUND: no capture with capture_id "never-sent"/);

    const predicted = await agentCli(
      'predict',
      'demo',
      '--json',
      '--capture',
      '--input',
      '{"features": [[6.7, 3.0, 5.2, 2.3]]}',
    );
    expect(predicted.stderr).toBe('');
    const { capture } = JSON.parse(predicted.stdout);
    expect(capture.captureId).toMatch(/^cli-[0-9a-f-]{36}$/);
    const written = await agentCli('capture', 'status', capture.captureId, '--wait', '30');
    expect(written.stdout).toBe(`capture ${capture.captureId}: SUCCESS\n`);
    // On disk, in Edge Manager's record format: the capture ids are in the written files.
    const files = (await readdir(join(work, 'captures'), { recursive: true })).map(String);
    const text = (
      await Promise.all(
        files.filter((f) => f.endsWith('.jsonl')).map((f) => readFile(join(work, 'captures', f), 'utf8')),
      )
    ).join('');
    expect(text).toContain(capture.captureId);
    const record = text
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line))
      .find((r) => r.eventMetadata.eventId === 'cli-capture-1');
    // The type given (or the file's extension) is the content type recorded; the items are numbered.
    expect(record.deviceFleetAuxiliaryInputs).toEqual([
      expect.objectContaining({ name: 'Input-1', observedContentType: 'jpg', encoding: 'NONE' }),
    ]);
    expect(record.deviceFleetAuxiliaryOutputs).toEqual([
      expect.objectContaining({ name: 'Output-1', observedContentType: 'text/plain', encoding: 'NONE' }),
    ]);
    const noType = await agentCli('capture', 'send', 'demo', '--aux-input', `@${note}`);
    expect(noType.code).toBe(2);
    expect(noType.stderr).toMatch(/has no extension to take the content type from; expected TYPE=@FILE/);
  });

  it('capture --wait that runs out while the capture is still IN_PROGRESS says so and exits 4', async () => {
    // An agent that writes a lone capture only after a day: it stays IN_PROGRESS for the whole test.
    const slowSocket = join(work, 'slow.sock');
    const slowConfig = join(work, 'slow.json');
    await writeFile(
      slowConfig,
      JSON.stringify({
        sagemaker_edge_core_device_name: 'cli-test-slow',
        sagemaker_edge_core_root_certs_path: join(work, 'demo', 'pki', 'trust'),
        sagemaker_edge_local_data_root_path: join(work, 'slow-data'),
        edgefleet_rest_socket_path: 'none',
        sagemaker_edge_core_capture_data_destination: 'Disk',
        sagemaker_edge_core_capture_data_disk_path: join(work, 'slow-captures'),
        sagemaker_edge_core_capture_data_push_period_seconds: 86_400,
        edgefleet_preload_models: [
          { url: join(work, 'demo', 'device', 'models', 'demo-classifier'), name: 'demo' },
        ],
      }),
    );
    const slow = await startAgent(slowSocket, slowConfig);
    try {
      const slowCli = (...args: string[]) => edgefleet('agent', ...args, '--socket', slowSocket);
      const args = ['--id', 'cli-slow-1', '--input', '{"features": [6.7, 3.0, 5.2, 2.3]}'];
      const sent = await slowCli('capture', 'send', 'demo', ...args, '--wait', '1');
      expect(sent.code).toBe(4);
      expect(sent.stdout).toMatch(/^capture cli-slow-1: IN_PROGRESS/);
      expect(sent.stderr).toMatch(
        /^edgefleet: --wait 1 ran out: capture cli-slow-1 is still IN_PROGRESS .*agent capture status cli-slow-1 --wait <seconds>\n$/,
      );
      const status = await slowCli('capture', 'status', 'cli-slow-1', '--wait', '0', '--json');
      expect(status.code).toBe(4);
      expect(JSON.parse(status.stdout)).toEqual({ captureId: 'cli-slow-1', status: 'IN_PROGRESS' });
      expect(status.stderr).toMatch(/--wait 0 ran out/);
      // Without --wait, IN_PROGRESS is the answer asked for: exit 0.
      const once = await slowCli('capture', 'status', 'cli-slow-1');
      expect([once.code, once.stderr]).toEqual([0, '']);
    } finally {
      await stopAgent(slow);
    }
  });

  it('unloads and loads again; errors name the gRPC status and the reason', async () => {
    expect((await agentCli('unload', 'demo')).code).toBe(0);
    const missing = await agentCli('describe', 'demo');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/NOT_FOUND/);
    const loaded = await agentCli('load', 'demo', join(work, 'demo', 'device', 'models', 'demo-classifier'));
    expect(loaded.code).toBe(0);
    const again = await agentCli('load', 'demo', join(work, 'demo', 'device', 'models', 'demo-classifier'));
    expect(again.stderr).toMatch(/ALREADY_EXISTS/);
    // The tampered copy the demo made is refused: the agent verifies signatures.
    const tampered = await agentCli('load', 'evil', join(work, 'demo', 'device', 'tampered'));
    expect(tampered.stderr).toMatch(/FAILED_PRECONDITION.*model\.onnx/);
  });

  it('says clearly when no agent answers, or the input is wrong', async () => {
    const none = await edgefleet('agent', 'list', '--socket', join(work, 'nothing.sock'));
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('no agent answers');
    const bad = await agentCli('predict', 'demo', '--input', '{"features": [1, 2]}');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe(
      'edgefleet: input features: given 2 values of shape [2], but the model expects [-1, 4] (-1: any size); ' +
        'nest the list to the shape, or give {"shape": […], "data": […]}\n',
    );
    // `--input @inputs.json` before writing the file (the README's last step): what is missing, and what it holds.
    const missing = join(work, 'inputs.json');
    const noFile = await agentCli('predict', 'demo', '--input', `@${missing}`);
    expect(noFile.code).toBe(1);
    expect(noFile.stderr).toBe(
      `edgefleet: --input @${missing}: cannot read ${missing}: no such file or folder; expected a JSON file ` +
        'holding an object keyed by tensor name, as --input takes inline, e.g. {"<tensor>": [[1, 2, 3]]}\n',
    );
  });

  it('predict --capture with a used capture id prints the prediction, then says the capture was refused', async () => {
    const input = '{"features": [6.7, 3.0, 5.2, 2.3]}';
    const first = await agentCli('predict', 'demo', '--input', input, '--capture', '--capture-id', 'dup-1');
    expect(first.code).toBe(0);
    const again = await agentCli('predict', 'demo', '--input', input, '--capture', '--capture-id', 'dup-1');
    expect(again.code).toBe(1);
    expect(again.stdout).toMatch(/^probabilities FLOAT32 \[1, 3\]: \[[-\d.e,]+\]\n$/);
    expect(again.stderr).toMatch(
      /^edgefleet: the prediction ran \(its outputs are above\), but the agent refused its capture: ALREADY_EXISTS: capture_id "dup-1" was used already/,
    );
    const json = await agentCli(
      'predict',
      'demo',
      '--input',
      input,
      '--capture',
      '--capture-id',
      'dup-1',
      '--json',
    );
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({
      outputs: [{ name: 'probabilities', shape: [1, 3] }],
      captureRefused: expect.stringMatching(/^ALREADY_EXISTS: /),
    });
  });

  it('FLOAT32: an input outside its range is refused; NaN outputs print as NaN (--json: "NaN")', async () => {
    const outside = await agentCli('predict', 'demo', '--input', '{"features": [1e39, 2, 3, 4]}');
    expect(outside.code).toBe(2);
    expect(outside.stderr).toBe(
      "edgefleet: input features[0] is 1e+39, outside FLOAT32's range (±3.4028235e38); expected a value FLOAT32 holds\n",
    );
    // In range (3.4028235e38 is FLOAT32's maximum as numpy prints it, and rounds to it), but large enough that
    // the model's arithmetic overflows: its outputs are NaN.
    const big = '{"features": [3.4028235e38, -3e38, 3e38, -3e38]}';
    const text = await agentCli('predict', 'demo', '--input', big);
    expect(text.code).toBe(0);
    expect(text.stdout).toBe('probabilities FLOAT32 [1, 3]: [NaN,NaN,NaN]\n');
    const json = await agentCli('predict', 'demo', '--input', big, '--json');
    expect(JSON.parse(json.stdout).outputs[0].data).toEqual(['NaN', 'NaN', 'NaN']);
  });
});

describe('edgefleet agent against a hung agent, and agent status finding the REST socket', () => {
  let dir: string;
  let grpcSocket: string;
  let hung: ChildProcess;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ef-agent-cli-hung-'));
    grpcSocket = join(dir, 'agent.sock');
    const config = join(dir, 'agent.json');
    // The REST socket is the agent's default: agent.rest.sock beside agent.sock.
    await writeFile(
      config,
      JSON.stringify({
        sagemaker_edge_core_device_name: 'cli-hung',
        sagemaker_edge_local_data_root_path: dir,
      }),
    );
    hung = await startAgent(grpcSocket, config);
  }, 60_000);
  afterAll(async () => {
    hung?.kill('SIGCONT');
    await stopAgent(hung);
    await rm(dir, { recursive: true, force: true });
  });

  it('agent status: --socket and EDGEFLEET_AGENT_SOCKET find the REST socket beside the gRPC one', async () => {
    const bySocket = await edgefleet('agent', 'status', '--socket', grpcSocket);
    expect(bySocket.stderr).toBe('');
    expect(bySocket.stdout).toMatch(/^edgefleet-agent \S+\n\nno models loaded\n/);
    const before = process.env.EDGEFLEET_AGENT_SOCKET;
    process.env.EDGEFLEET_AGENT_SOCKET = grpcSocket;
    try {
      const byEnv = await edgefleet('agent', 'status', '--json');
      expect(byEnv.code).toBe(0);
      expect(JSON.parse(byEnv.stdout)).toMatchObject({ models: [] });
    } finally {
      if (before === undefined) delete process.env.EDGEFLEET_AGENT_SOCKET;
      else process.env.EDGEFLEET_AGENT_SOCKET = before;
    }
    // The gRPC socket given as the REST one: said so, with the REST socket's path.
    const mistaken = await edgefleet('agent', 'status', '--rest-socket', grpcSocket);
    expect(mistaken.code).toBe(1);
    expect(mistaken.stderr).toBe(
      `edgefleet: ${grpcSocket} answers, but not in HTTP/1.1: it is the agent's gRPC socket (-a), not its REST socket; the REST socket is ${join(dir, 'agent.rest.sock')} unless edgefleet_rest_socket_path says otherwise (--socket ${grpcSocket} finds it)\n`,
    );
  }, 60_000); // four CLI processes: slow beside a full parallel run

  it('a stopped agent (SIGSTOP): list, describe and status say it did not answer within the wait', async () => {
    hung.kill('SIGSTOP');
    try {
      const said = (seconds: number) =>
        `the agent on ${grpcSocket} accepted the connection but did not answer within ${seconds} s (is it stopped or overloaded? --timeout <seconds> waits longer)`;
      const list = await edgefleet('agent', 'list', '--socket', grpcSocket, '--timeout', '1');
      expect(list.code).toBe(1);
      expect(list.stderr).toBe(`edgefleet: ${said(1)}\n`);
      const described = await edgefleet('agent', 'describe', 'x', '--socket', grpcSocket, '--timeout', '2');
      expect(described.stderr).toBe(`edgefleet: ${said(2)}\n`);
      // Read-only calls wait 10 s by default, not a load's 60.
      const byDefault = await edgefleet('agent', 'list', '--socket', grpcSocket);
      expect(byDefault.stderr).toBe(`edgefleet: ${said(10)}\n`);
      const status = await edgefleet('agent', 'status', '--socket', grpcSocket, '--timeout', '1');
      expect(status.code).toBe(1);
      expect(status.stderr).toBe(
        `edgefleet: the agent on ${join(dir, 'agent.rest.sock')} accepted the connection but did not answer within 1 s (is it stopped or overloaded? --timeout <seconds> waits longer)\n`,
      );
      const bad = await edgefleet('agent', 'list', '--socket', grpcSocket, '--timeout', '0');
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('--timeout "0": expected whole seconds from 1 to 3600');
    } finally {
      hung.kill('SIGCONT');
    }
  }, 60_000);
});
