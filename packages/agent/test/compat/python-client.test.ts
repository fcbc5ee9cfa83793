/**
 * An independent client against a real edgefleet-agent process: Python with gRPC C-core (Debian's python3-grpcio)
 * and stubs protoc generates from agent.proto at test time, as SageMaker Edge Manager applications run. The cases
 * are in sme_agent_cases.py (it prints what each call answered; this file asserts); the example in
 * docs/python-client.md is run as written. Without the tools the file is skipped, and fails in CI (.ci/run installs
 * them).
 */
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TEST_MODELS, signPackage } from '@edgefleet/core';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { listening, spawnAgent, useAgentScratch, writeAgentConfig } from '../daemon/process-helpers.js';
import { devPki, trustFolder } from '../support/dev-pki.js';
import {
  PYTHON_GRPC_PACKAGES,
  findPythonGrpcTools,
  generateStubs,
  runPython,
  type PythonGrpcTools,
  type PythonRun,
} from './python-grpc.js';

const CASES_SCRIPT = fileURLToPath(new URL('./sme_agent_cases.py', import.meta.url));
const DOCS_EXAMPLE = fileURLToPath(new URL('../../docs/python-client.md', import.meta.url));
/** The agent's -m: small, so that an oversized request is cheap to build. */
const MAX_MESSAGE_BYTES = 65536;

const found = findPythonGrpcTools();
if ('missing' in found) {
  const message = `Python gRPC client tests: ${found.missing.join(', ')} not found; install them with \`apt-get install -y ${PYTHON_GRPC_PACKAGES}\`.`;
  if (process.env.CI) throw new Error(message);
  console.warn(`${message} Skipping them (they fail in CI).`);
}

/** The python ```-fenced blocks of a Markdown text. */
function pythonBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```python\n([\s\S]*?)^```$/gm)].map((match) => match[1]!);
}

/** The JSON a script printed; fails with its output when it did not exit 0. */
function printedJson(run: PythonRun): Record<string, unknown> {
  if (run.code !== 0)
    throw new Error(
      `python exited ${run.code ?? run.signal}\nstderr:\n${run.stderr}\nstdout:\n${run.stdout}`,
    );
  return JSON.parse(run.stdout) as Record<string, unknown>;
}

describe.skipIf('missing' in found)('a Python SageMaker Edge client (grpcio, protoc stubs)', () => {
  const tools = (found as { tools: PythonGrpcTools }).tools;
  const agents = useAgentScratch('agent-python-client-', ['tiny', 'mlp', 'multi-io', 'int-types']);
  let stubsDir: string;
  let config: string;
  let captureDir: string;
  let unsignedPackage: string;
  let pythonRuns: AbortController;

  beforeAll(async () => {
    const { root } = agents.files;
    stubsDir = join(root, 'stubs');
    await generateStubs(tools, stubsDir);
    // Every package the agent loads must be signed under the root in its trust folder.
    const pki = devPki('Python Client Test Root', 'Python Client Test Publisher');
    const certs = join(root, 'certs');
    await trustFolder(certs, pki.root);
    for (const model of ['tiny', 'mlp', 'multi-io', 'int-types'] as const)
      await signPackage(agents.packageOf(model), pki.signer);
    unsignedPackage = await agents.files.catalogue('tiny', 'unsigned');
    captureDir = join(root, 'capture');
    config = join(root, 'agent.json');
    await writeAgentConfig(config, {
      edgefleet_inference_workers: 1,
      sagemaker_edge_core_root_certs_path: certs,
      sagemaker_edge_local_data_root_path: join(root, 'data'),
      sagemaker_edge_core_capture_data_destination: 'Disk',
      sagemaker_edge_core_capture_data_disk_path: captureDir,
      // Batches of 2 and no timed flush: a first capture stays IN_PROGRESS until a second one comes.
      sagemaker_edge_core_capture_data_buffer_size: 10,
      sagemaker_edge_core_capture_data_batch_size: 2,
      sagemaker_edge_core_capture_data_push_period_seconds: 86400,
    });
  });
  beforeEach(() => {
    pythonRuns = new AbortController();
  });
  afterEach(() => pythonRuns.abort());

  async function startAgent(socketName: string): Promise<string> {
    const socket = join(agents.files.root, socketName);
    const agent = spawnAgent(
      ['-a', socket, '-c', config, '-m', String(MAX_MESSAGE_BYTES)],
      agents.files.root,
    );
    agents.running.push(agent);
    await agent.waitFor(listening, 'that it listens');
    return socket;
  }

  it('drives every method through unix:<socket>, with the status codes and details of the spec', async () => {
    const socket = await startAgent('cases.sock');
    const multiIo = TEST_MODELS['multi-io'].sampleInputs();
    const ints = TEST_MODELS['int-types'].sampleInputs();
    const inputs = {
      'multi-io': { a: [...multiIo.a!.data], b: [...multiIo.b!.data] },
      'int-types': {
        counts: [...(ints.counts!.data as BigInt64Array)].map(String),
        bytes: [...ints.bytes!.data],
      },
    };
    const run = await runPython(tools, CASES_SCRIPT, {
      stubsDir,
      signal: pythonRuns.signal,
      env: {
        EF_TARGET: `unix:${socket}`,
        EF_PACKAGES: JSON.stringify({
          'multi-io': agents.packageOf('multi-io'),
          'int-types': agents.packageOf('int-types'),
          unsigned: unsignedPackage,
        }),
        EF_INPUTS: JSON.stringify(inputs),
        EF_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES),
      },
    });
    const results = printedJson(run);

    const multiIoModel = {
      handle: 'multi-io',
      url: agents.packageOf('multi-io'),
      inputs: [
        { name: 'a', data_type: 'FLOAT32', shape: [2, 2] },
        { name: 'b', data_type: 'FLOAT32', shape: [2, 2] },
      ],
      outputs: [
        { name: 'sum', data_type: 'FLOAT32', shape: [2, 2] },
        { name: 'product', data_type: 'FLOAT32', shape: [2, 2] },
      ],
    };
    const intsModel = {
      handle: 'ints',
      url: agents.packageOf('int-types'),
      inputs: [
        { name: 'counts', data_type: 'INT64', shape: [-1] },
        { name: 'bytes', data_type: 'UINT8', shape: [4] },
      ],
      outputs: [
        { name: 'counts_plus_one', data_type: 'INT64', shape: [-1] },
        { name: 'bytes_out', data_type: 'UINT8', shape: [4] },
      ],
    };
    expect(results.list_empty).toEqual([]);
    expect(results.load_multi_io).toMatchObject(multiIoModel);
    expect(results.load_ints).toMatchObject(intsModel);
    expect(results.list).toMatchObject([multiIoModel, intsModel]);
    expect(results.describe).toMatchObject(multiIoModel);

    const failures: Array<[string, string, RegExp]> = [
      ['load_again', 'ALREADY_EXISTS', /"multi-io" is already loaded/],
      ['load_unsigned', 'FAILED_PRECONDITION', /failed signature verification \(bundle-missing\)/],
      ['load_bad_name', 'INVALID_ARGUMENT', /"multi_io" is not valid; expected letters and digits/],
      ['describe_absent', 'NOT_FOUND', /"absent".*multi-io/],
      ['predict_wrong_shape', 'INVALID_ARGUMENT', /shape \[4, 1\] does not fit/],
      ['predict_wrong_type', 'INVALID_ARGUMENT', /is FLOAT64; the model expects FLOAT32/],
      ['predict_absent', 'NOT_FOUND', /"absent"/],
      [
        'predict_oversized',
        'RESOURCE_EXHAUSTED',
        new RegExp(
          `^the request message is \\d+ bytes, larger than the agent's limit of ${MAX_MESSAGE_BYTES} bytes \\(its -m / --max-message-size option\\)`,
        ),
      ],
      ['capture_duplicate', 'ALREADY_EXISTS', /capture-python-1/],
      ['capture_future', 'OUT_OF_RANGE', /in the future/],
      ['capture_absent_model', 'NOT_FOUND', /"absent"/],
      ['status_unknown', 'NOT_FOUND', /never-sent/],
      ['unload_again', 'NOT_FOUND', /"multi-io"/],
      ['predict_unloaded', 'NOT_FOUND', /"multi-io"/],
    ];
    for (const [key, code, details] of failures) {
      expect(results[key], key).toMatchObject({ code });
      expect((results[key] as { details: string }).details, key).toMatch(details);
    }
    expect(results.oversized_bytes).toBeGreaterThan(MAX_MESSAGE_BYTES);

    // Predict: values as the client decodes them, against the catalogue's reference.
    const multiIoReference = TEST_MODELS['multi-io'].reference(multiIo);
    expect(results.predict_multi_io).toEqual({
      tensors: ['sum', 'product'].map((name) => ({
        name,
        data_type: 'FLOAT32',
        shape: [2, 2],
        values: [...multiIoReference[name]!.data],
        bytes: 16,
      })),
    });
    const intsReference = TEST_MODELS['int-types'].reference(ints);
    const intsPredicted = {
      tensors: [
        {
          name: 'counts_plus_one',
          data_type: 'INT64',
          shape: [5],
          values: [...(intsReference.counts_plus_one!.data as BigInt64Array)].map(String),
          bytes: 40,
        },
        { name: 'bytes_out', data_type: 'UINT8', shape: [4], values: [0, 1, 128, 255], bytes: 4 },
      ],
    };
    expect(results.predict_ints).toEqual(intsPredicted);
    expect(results.predict_after_oversized).toEqual(intsPredicted);

    // CaptureData: waits for its batch, then SUCCESS, and the records are on disk.
    expect(results.capture_first).toEqual({ ok: true });
    expect(results.status_first_waiting).toBe('IN_PROGRESS');
    expect(results.capture_second).toEqual({ ok: true });
    expect(results.status_final).toEqual({ 'capture-python-1': 'SUCCESS', 'abc-1685563523430': 'SUCCESS' });
    const records = await captureRecords(captureDir);
    expect(records.map((r) => r.eventMetadata.eventId).sort()).toEqual([
      'abc-1685563523430',
      'capture-python-1',
    ]);
    const first = records.find((r) => r.eventMetadata.eventId === 'capture-python-1')!;
    expect(first.eventMetadata).toMatchObject({
      deviceFleetName: 'fleet-a',
      deviceId: 'device-1',
      modelName: 'multi-io',
      inferenceTime: new Date(Number(results.capture_first_seconds) * 1000).toISOString().slice(0, 19),
    });
    expect(first.deviceFleetInputs.map((i) => [i.name, i.observedContentType])).toEqual([
      ['b', 'Tensor[FLOAT32; 2, 2]'],
      ['a', 'Tensor[FLOAT32; 2, 2]'],
    ]);
    expect(first.deviceFleetOutputs.map((o) => o.name)).toEqual(['sum', 'product']);
    expect(first.deviceFleetAuxiliaryInputs).toEqual([
      expect.objectContaining({
        name: 'Input-1',
        observedContentType: 'json',
        encoding: 'JSON',
        data: Buffer.from('{"camera":"front"}').toString('base64'),
      }),
    ]);

    expect(results.unload).toEqual({ ok: true });
    expect(results.list_after_unload).toEqual(['ints']);
  });

  it('runs the example of docs/python-client.md as written: loads, predicts, and loads again (ALREADY_EXISTS)', async () => {
    const blocks = pythonBlocks(await readFile(DOCS_EXAMPLE, 'utf8'));
    expect(blocks, 'docs/python-client.md should hold exactly one python block, the example').toHaveLength(1);
    const example = join(stubsDir, 'example.py');
    await writeFile(example, blocks[0]!);
    const socket = await startAgent('example.sock');

    // A fixed shape ([1, 16]), and the demo model's dynamic batch ([-1, 4]), which the example sends as [1, 4].
    const tinyX = Float32Array.from({ length: 16 }, (_, i) => 0.5 * i);
    const mlpX = Float32Array.from({ length: 4 }, (_, i) => 0.5 * i);
    const cases = [
      {
        model: 'tiny' as const,
        name: 'demo',
        output: 'y',
        shape: [1, 16],
        expected: TEST_MODELS.tiny.reference({ x: { dataType: 'FLOAT32', shape: [1, 16], data: tinyX } }).y!,
      },
      {
        model: 'mlp' as const,
        name: 'demo-batch',
        output: 'probabilities',
        shape: [1, 3],
        expected: TEST_MODELS.mlp.reference({
          features: { dataType: 'FLOAT32', shape: [1, 4], data: mlpX },
        }).probabilities!,
      },
    ];
    for (const { model, name, output, shape, expected } of cases) {
      for (const attempt of ['first', 'again']) {
        const run = await runPython(tools, example, {
          args: [socket, agents.packageOf(model), name],
          stubsDir,
          signal: pythonRuns.signal,
        });
        expect(run.code, `${model} ${attempt}: ${run.stderr}`).toBe(0);
        const printed = /^(\S+) (\[[^\]]*\]) (\[.*\])\n$/.exec(run.stdout);
        expect(printed, `${model} ${attempt}: ${run.stdout}`).not.toBeNull();
        expect(printed![1]).toBe(output);
        expect(JSON.parse(printed![2]!)).toEqual(shape);
        const values = JSON.parse(printed![3]!) as number[];
        expect(values).toHaveLength(expected.data.length);
        values.forEach((value, i) =>
          expect(value, `${model} ${output}[${i}]`).toBeCloseTo(Number(expected.data[i]), 5),
        );
      }
    }
  });
});

interface CaptureRecord {
  eventMetadata: Record<string, string>;
  deviceFleetInputs: Array<Record<string, string>>;
  deviceFleetOutputs: Array<Record<string, string>>;
  deviceFleetAuxiliaryInputs: Array<Record<string, string>>;
}

/** Every record of every .jsonl manifest under `dir`. */
async function captureRecords(dir: string): Promise<CaptureRecord[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const manifests = entries.filter((e) => e.isFile() && e.name.endsWith('.jsonl'));
  const records: CaptureRecord[] = [];
  for (const manifest of manifests) {
    const text = await readFile(join(manifest.parentPath, manifest.name), 'utf8');
    for (const line of text.split('\n').filter(Boolean)) records.push(JSON.parse(line) as CaptureRecord);
  }
  return records;
}
