import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { extname, resolve } from 'node:path';
import type { Command } from 'commander';
import {
  AgentCaptureDataStatus,
  AgentEncoding,
  connectAgent,
  dataTypeFromWire,
  type AgentConnection,
  type AuxiliaryData,
  type Model,
  type Tensor,
} from '@edgefleet/core';
import { CliError, EXIT, refuseArguments, describeFsError, table, type Output } from '../cli-io.js';
import { fetchAgentStatus, printAgentStatus } from './agent-status.js';
import { agentTimedOut } from './agent-timeout.js';
import { resolveInput } from './input-shape.js';
import { decodeTensor, encodeTensor, jsonNumbers, numbersText } from './tensor-values.js';

const GRPC_CODE_NAMES: Record<number, string> = {
  3: 'INVALID_ARGUMENT',
  4: 'DEADLINE_EXCEEDED',
  5: 'NOT_FOUND',
  6: 'ALREADY_EXISTS',
  8: 'RESOURCE_EXHAUSTED',
  9: 'FAILED_PRECONDITION',
  11: 'OUT_OF_RANGE',
  12: 'UNIMPLEMENTED',
  13: 'INTERNAL',
  14: 'UNAVAILABLE',
};

/**
 * How long each call waits for the agent by default: read-only calls (list, describe, capture status) answer at
 * once from a healthy agent, so a stopped or wedged one is said soon; a load or a prediction may take long.
 */
export const READ_TIMEOUT_SECONDS = 10;
export const WORK_TIMEOUT_SECONDS = 60;

/** The commands' `--timeout <seconds>` (whole seconds, 1 to 3600). */
export function parseTimeout(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 3600)
    throw new CliError(
      `--timeout ${JSON.stringify(value)}: expected whole seconds from 1 to 3600`,
      EXIT.usage,
    );
  return n;
}

const timeoutOption = (defaultSeconds: number) =>
  [
    '--timeout <seconds>',
    'how long to wait for each answer of the agent', // commander adds "(default: N)"
    parseTimeout,
    defaultSeconds,
  ] as const;

/** Runs calls against the agent, each waiting at most `timeoutSeconds`, turning gRPC failures into one clear line. */
async function withAgent<T>(
  socket: string | undefined,
  timeoutSeconds: number,
  fn: (agent: AgentConnection) => Promise<T>,
): Promise<T> {
  const path = socket ?? process.env.EDGEFLEET_AGENT_SOCKET;
  if (!path) throw new CliError('say which agent: --socket <path> or EDGEFLEET_AGENT_SOCKET', EXIT.usage);
  const connection = connectAgent(path.startsWith('unix:') ? path : `unix://${resolve(path)}`);
  const agent: AgentConnection = {
    call: (method, request) => connection.call(method, request, timeoutSeconds * 1000),
    close: () => connection.close(),
  };
  try {
    return await fn(agent);
  } catch (error) {
    const { code, details } = error as { code?: number; details?: string };
    if (code === 14) throw new CliError(`no agent answers on ${path} (is it running? is the path right?)`);
    // grpc-js's own deadline (its details list its internal phases); the agent's own DEADLINE_EXCEEDED says more.
    if (code === 4 && details?.startsWith('Deadline exceeded')) throw agentTimedOut(path, timeoutSeconds);
    if (code !== undefined)
      throw new CliError(`agent: ${GRPC_CODE_NAMES[code] ?? `status ${code}`}: ${details}`);
    throw error;
  } finally {
    connection.close();
  }
}

const tensorText = (t: { name: Buffer; dataType: number; shape: number[] }) =>
  `${t.name.toString()} ${dataTypeFromWire(t.dataType) ?? t.dataType} [${t.shape.join(', ')}]`;

function modelJson(model: Model) {
  const tensors = (list: Model['inputTensorMetadatas']) =>
    list.map((t) => ({
      name: t.name.toString(),
      dataType: dataTypeFromWire(t.dataType) ?? t.dataType,
      shape: t.shape,
    }));
  return {
    name: model.handle || model.name,
    url: model.url,
    inputs: tensors(model.inputTensorMetadatas),
    outputs: tensors(model.outputTensorMetadatas),
  };
}

async function describeModel(agent: AgentConnection, name: string): Promise<Model> {
  const { model } = await agent.call('DescribeModel', { name, handle: name });
  if (!model) throw new CliError(`agent described no model for ${name}`);
  return model;
}

export function registerAgentCommands(program: Command, output: () => Output): void {
  const agent = program
    .command('agent')
    .description('talk to a local agent over its SageMaker Edge gRPC socket (ours or the original)');
  const socketOption = [
    '--socket <path>',
    'the agent’s Unix socket (default: $EDGEFLEET_AGENT_SOCKET)',
  ] as const;

  agent
    .command('status')
    .description('what the agent runs and what its update engine is doing (its REST socket)')
    .option(
      '--socket <path>',
      'the agent’s gRPC Unix socket: asks the REST socket beside it (agent.sock → agent.rest.sock), the agent’s default (default: $EDGEFLEET_AGENT_SOCKET)',
    )
    .option(
      '--rest-socket <path>',
      'the agent’s REST Unix socket, when edgefleet_rest_socket_path moved it (default: $EDGEFLEET_AGENT_REST_SOCKET)',
    )
    .option(...timeoutOption(READ_TIMEOUT_SECONDS))
    .action(async (raw: { socket?: string; restSocket?: string; timeout: number }) => {
      printAgentStatus(
        await fetchAgentStatus({
          restSocket: raw.restSocket,
          socket: raw.socket,
          timeoutSeconds: raw.timeout,
        }),
        output(),
      );
    });

  refuseArguments(
    agent.command('list'),
    output,
    (arg, invocation) => `one loaded model: ${invocation} agent describe ${arg}`,
  )
    .description('models the agent has loaded')
    .option(...socketOption)
    .option(...timeoutOption(READ_TIMEOUT_SECONDS))
    .action(async (raw: { socket?: string; timeout: number }) => {
      const models = await withAgent(
        raw.socket,
        raw.timeout,
        async (a) => (await a.call('ListModels', {})).models,
      );
      output().result(models.map(modelJson), () =>
        models.length === 0
          ? 'no models loaded'
          : table(
              ['model', 'inputs', 'outputs', 'url'],
              models.map((m) => [
                m.handle || m.name,
                m.inputTensorMetadatas.map(tensorText).join('; '),
                m.outputTensorMetadatas.map(tensorText).join('; '),
                m.url,
              ]),
            ),
      );
    });

  agent
    .command('describe')
    .description('one loaded model and its tensors')
    .argument('<model>', 'the model’s name (handle)')
    .option(...socketOption)
    .option(...timeoutOption(READ_TIMEOUT_SECONDS))
    .action(async (name: string, raw: { socket?: string; timeout: number }) => {
      const model = await withAgent(raw.socket, raw.timeout, (a) => describeModel(a, name));
      output().result(modelJson(model), () => [
        `${model.handle || model.name}  (${model.url})`,
        ...model.inputTensorMetadatas.map((t) => `  input  ${tensorText(t)}`),
        ...model.outputTensorMetadatas.map((t) => `  output ${tensorText(t)}`),
      ]);
    });

  agent
    .command('load')
    .description('load an extracted package folder under a name')
    .argument('<model>', 'name to serve it under')
    .argument('<package-dir>', 'the extracted package folder (as the agent sees the path)')
    .option(...socketOption)
    .option(...timeoutOption(WORK_TIMEOUT_SECONDS))
    .action(async (name: string, dir: string, raw: { socket?: string; timeout: number }) => {
      const response = await withAgent(raw.socket, raw.timeout, (a) =>
        a.call('LoadModel', { url: resolve(dir), name, handle: name }),
      );
      output().result(
        response.model ? modelJson(response.model) : null,
        () => `Loaded ${name} from ${resolve(dir)}`,
      );
    });

  agent
    .command('unload')
    .description('unload a model')
    .argument('<model>', 'the model’s name (handle)')
    .option(...socketOption)
    .option(...timeoutOption(WORK_TIMEOUT_SECONDS))
    .action(async (name: string, raw: { socket?: string; timeout: number }) => {
      await withAgent(raw.socket, raw.timeout, (a) => a.call('UnLoadModel', { name, handle: name }));
      output().result({ unloaded: name }, () => `Unloaded ${name}`);
    });

  agent
    .command('predict')
    .description(
      'run one inference; inputs as JSON: {"<input>": [values…]} or {"<input>": {"shape": […], "data": […]}}',
    )
    .argument('<model>', 'the model’s name (handle)')
    .requiredOption('--input <json|@file>', 'the inputs, as JSON text or @path/to/file.json')
    .option('--capture', 'also capture the inputs and outputs (CaptureData) and print the capture id')
    .option('--capture-id <id>', 'with --capture: the capture id (default: a new cli-<uuid>)')
    .option(...socketOption)
    .option(...timeoutOption(WORK_TIMEOUT_SECONDS))
    .action(
      async (
        name: string,
        raw: { input: string; capture?: boolean; captureId?: string; socket?: string; timeout: number },
      ) => {
        if (raw.captureId !== undefined && !raw.capture)
          throw new CliError('--capture-id goes with --capture', EXIT.usage);
        const given = await readTensorJson('--input', raw.input);
        const result = await withAgent(raw.socket, raw.timeout, async (a) => {
          const model = await describeModel(a, name);
          const tensors = buildTensors('--input', model.inputTensorMetadatas, given);
          const outputs = (await a.call('Predict', { name, handle: name, tensors })).tensors;
          if (!raw.capture) return { outputs };
          const captureId = raw.captureId ?? `cli-${randomUUID()}`;
          try {
            await a.call('CaptureData', captureRequest(name, captureId, tensors, outputs));
          } catch (error) {
            const { code, details } = error as { code?: number; details?: string };
            // The prediction ran: it is printed, and the refusal after it.
            if (code === undefined || code === 4 || code === 14) throw error;
            return { outputs, captureRefused: `${GRPC_CODE_NAMES[code] ?? `status ${code}`}: ${details}` };
          }
          return { outputs, capture: await captureStatus(a, captureId) };
        });
        const decoded = result.outputs.map((t) => ({
          name: t.tensorMetadata?.name.toString() ?? '',
          dataType: dataTypeFromWire(t.tensorMetadata?.dataType ?? -1) ?? t.tensorMetadata?.dataType,
          shape: t.tensorMetadata?.shape ?? [],
          data: decodeTensor(t.tensorMetadata?.dataType ?? -1, t.byteData ?? Buffer.alloc(0)),
        }));
        const out = output();
        out.result(
          {
            outputs: decoded.map((t) => ({ ...t, data: jsonNumbers(t.data) })),
            ...(result.capture && { capture: result.capture }),
            ...(result.captureRefused !== undefined && { captureRefused: result.captureRefused }),
          },
          () => [
            ...decoded.map((t) => `${t.name} ${t.dataType} [${t.shape.join(', ')}]: ${numbersText(t.data)}`),
            ...(result.capture ? [captureLine(result.capture, out.invocation)] : []),
          ],
        );
        if (result.captureRefused !== undefined)
          throw new CliError(
            `the prediction ran (its outputs are above), but the agent refused its capture: ${result.captureRefused}`,
          );
      },
    );

  const capture = agent
    .command('capture')
    .description('capture inference data on the agent (CaptureData) and ask how a capture is doing');

  capture
    .command('send')
    .description(
      'send a CaptureData: tensors as JSON like predict’s --input, auxiliary data (e.g. the image) from files',
    )
    .argument('<model>', 'the model’s name (handle); its tensor types come from DescribeModel')
    .option('--input <json|@file>', 'input tensors, keyed by the model’s input names')
    .option('--output <json|@file>', 'output tensors, keyed by the model’s output names')
    .option(
      '--aux-input <[type=]@file>',
      'auxiliary input data from a file, recorded with content type TYPE (Edge Manager’s AuxilaryData.name; the items are named Input-1, Input-2, …): jpg=@frame.jpg, or @frame.jpg to take the type from the file’s extension (repeatable; .json/.csv are sent as JSON/CSV)',
      (value: string, previous: string[]) => [...previous, value],
      [],
    )
    .option(
      '--aux-output <[type=]@file>',
      'auxiliary output data from a file, as --aux-input (named Output-1, …; repeatable)',
      (value: string, previous: string[]) => [...previous, value],
      [],
    )
    .option('--id <capture-id>', 'the capture id (default: a new cli-<uuid>)')
    .option(
      '--wait <seconds>',
      'wait until the capture is written (SUCCESS) or given up (FAILURE)',
      parseWait,
    )
    .option(...socketOption)
    .option(...timeoutOption(WORK_TIMEOUT_SECONDS))
    .action(
      async (
        name: string,
        raw: {
          timeout: number;
          input?: string;
          output?: string;
          auxInput: string[];
          auxOutput: string[];
          id?: string;
          wait?: number;
          socket?: string;
        },
      ) => {
        if (!raw.input && !raw.output && raw.auxInput.length === 0 && raw.auxOutput.length === 0)
          throw new CliError(
            'nothing to capture: give --input, --output, --aux-input or --aux-output',
            EXIT.usage,
          );
        const inputs = raw.input ? await readTensorJson('--input', raw.input) : undefined;
        const outputs = raw.output ? await readTensorJson('--output', raw.output) : undefined;
        const auxInputs = await Promise.all(raw.auxInput.map((v) => readAux('--aux-input', v)));
        const auxOutputs = await Promise.all(raw.auxOutput.map((v) => readAux('--aux-output', v)));
        const captureId = raw.id ?? `cli-${randomUUID()}`;
        const status = await withAgent(raw.socket, raw.timeout, async (a) => {
          const model = await describeModel(a, name);
          await a.call('CaptureData', {
            ...captureRequest(
              name,
              captureId,
              inputs ? buildTensors('--input', model.inputTensorMetadatas, inputs) : [],
              outputs ? buildTensors('--output', model.outputTensorMetadatas, outputs) : [],
            ),
            inputs: auxInputs,
            outputs: auxOutputs,
          });
          return captureStatus(a, captureId, raw.wait);
        });
        const out = output();
        out.result(status, () => captureLine(status, out.invocation));
        if (status.status === 'FAILURE')
          throw new CliError(`capture ${captureId} failed: the agent gave up writing it (see its log)`);
        refuseRanOut(status, raw.wait, out.invocation);
      },
    );

  capture
    .command('status')
    .description('how a capture is doing: IN_PROGRESS, SUCCESS (written), FAILURE, or NOT_FOUND')
    .argument('<capture-id>')
    .option('--wait <seconds>', 'wait until it is SUCCESS or FAILURE', parseWait)
    .option(...socketOption)
    .option(...timeoutOption(READ_TIMEOUT_SECONDS))
    .action(async (captureId: string, raw: { wait?: number; socket?: string; timeout: number }) => {
      const status = await withAgent(raw.socket, raw.timeout, (a) => captureStatus(a, captureId, raw.wait));
      const out = output();
      out.result(status, () => captureLine(status, out.invocation));
      if (status.status === 'NOT_FOUND')
        throw new CliError(
          `the agent knows no capture ${captureId} (never sent, or its status was forgotten)`,
        );
      if (status.status === 'FAILURE')
        throw new CliError(`capture ${captureId} failed (see the agent's log)`);
      refuseRanOut(status, raw.wait, out.invocation);
    });
}

/** `--input @file`: a file that cannot be read is named with the reason and what the file should hold. */
async function readTensorFile(flag: string, file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    throw new CliError(
      `${flag} @${file}: cannot read ${file}: ${describeFsError(error)}; expected a JSON file holding an ` +
        `object keyed by tensor name, as ${flag} takes inline, e.g. {"<tensor>": [[1, 2, 3]]}`,
    );
  }
}

async function readTensorJson(flag: string, value: string): Promise<Record<string, unknown>> {
  const text = value.startsWith('@') ? await readTensorFile(flag, value.slice(1)) : value;
  let given: unknown;
  try {
    given = JSON.parse(text);
  } catch (error) {
    throw new CliError(`${flag} is not JSON: ${(error as Error).message}`, EXIT.usage);
  }
  if (typeof given !== 'object' || given === null || Array.isArray(given))
    throw new CliError(`${flag} must be a JSON object keyed by tensor name`, EXIT.usage);
  return given as Record<string, unknown>;
}

/** One tensor per declared input (or output) of the model, from the JSON given for it. */
function buildTensors(
  flag: string,
  metas: Model['inputTensorMetadatas'],
  given: Record<string, unknown>,
): Tensor[] {
  const names = metas.map((t) => t.name.toString());
  const unknown = Object.keys(given).filter((k) => !names.includes(k));
  if (unknown.length > 0)
    throw new CliError(
      `${flag} names ${unknown.join(', ')}, which the model does not have; it has ${names.join(', ')}`,
      EXIT.usage,
    );
  return metas.map((meta) => {
    const tensorName = meta.name.toString();
    const value = given[tensorName];
    if (value === undefined)
      throw new CliError(`${flag} has no "${tensorName}"; the model takes ${names.join(', ')}`, EXIT.usage);
    const dataType = dataTypeFromWire(meta.dataType);
    if (!dataType)
      throw new CliError(`${tensorName} has data type ${meta.dataType}, which this CLI cannot write`);
    const { shape, values } = resolveInput(tensorName, meta.shape, value);
    return {
      tensorMetadata: { name: meta.name, dataType: meta.dataType, shape },
      byteData: encodeTensor(tensorName, dataType, shape, values),
    };
  });
}

const AUX_ENCODINGS: Record<string, number> = { '.json': AgentEncoding.JSON, '.csv': AgentEncoding.CSV };

/**
 * `type=@file` or `@file` → auxiliary data with the file's bytes (JSON/CSV by extension, else NONE: raw bytes).
 * The type goes into AuxilaryData.name, which Edge Manager (and the agent) record as the item's content type, not
 * as a name; without one it is the file's extension (`@frame.jpg` → `jpg`).
 */
async function readAux(flag: string, value: string): Promise<AuxiliaryData> {
  const expected = `expected TYPE=@FILE (TYPE is recorded as the content type, e.g. jpg=@frame.jpg) or @FILE (the type is the file's extension)`;
  const match = /^(?:([^=@]+)=)?@(.+)$/.exec(value);
  if (!match) throw new CliError(`${flag} ${JSON.stringify(value)}: ${expected}`, EXIT.usage);
  const file = match[2]!;
  const extension = extname(file).toLowerCase();
  const type = match[1] ?? extension.slice(1);
  if (type === '')
    throw new CliError(
      `${flag} ${JSON.stringify(value)}: ${file} has no extension to take the content type from; ${expected}`,
      EXIT.usage,
    );
  const encoding = AUX_ENCODINGS[extension] ?? AgentEncoding.NONE;
  return { name: type, encoding, byteData: await readFile(file), data: 'byteData' };
}

function captureRequest(model: string, captureId: string, inputs: Tensor[], outputs: Tensor[]) {
  return {
    modelName: model,
    modelHandle: model,
    captureId,
    inferenceTimestamp: null,
    inputTensors: inputs,
    outputTensors: outputs,
    inputs: [],
    outputs: [],
  };
}

const STATUS_NAMES = Object.fromEntries(Object.entries(AgentCaptureDataStatus).map(([k, v]) => [v, k]));

interface CaptureStatus {
  captureId: string;
  status: string;
}

/** GetCaptureDataStatus; with `waitSeconds`, asked again until the capture is no longer IN_PROGRESS. */
async function captureStatus(
  agent: AgentConnection,
  captureId: string,
  waitSeconds = 0,
): Promise<CaptureStatus> {
  const deadline = Date.now() + waitSeconds * 1000;
  for (;;) {
    const { status } = await agent.call('GetCaptureDataStatus', { captureId });
    const name = STATUS_NAMES[status] ?? `status ${status}`;
    if (name !== 'IN_PROGRESS' || Date.now() >= deadline) return { captureId, status: name };
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** With --wait, a capture still IN_PROGRESS when the wait ran out is not a success: it exits 4, saying so. */
function refuseRanOut(status: CaptureStatus, waitSeconds: number | undefined, invocation: string): void {
  if (waitSeconds === undefined || status.status !== 'IN_PROGRESS') return;
  throw new CliError(
    `--wait ${waitSeconds} ran out: capture ${status.captureId} is still IN_PROGRESS (not yet written to the ` +
      `agent's destination; it may still be); ask again: ${invocation} agent capture status ${status.captureId} --wait <seconds>`,
    EXIT.waitRanOut,
  );
}

const captureLine = (c: CaptureStatus, invocation: string) =>
  `capture ${c.captureId}: ${c.status}${c.status === 'IN_PROGRESS' ? ` (ask again: ${invocation} agent capture status ${c.captureId})` : ''}`;

function parseWait(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 3600)
    throw new CliError(`--wait ${JSON.stringify(value)}: expected whole seconds from 0 to 3600`, EXIT.usage);
  return n;
}
