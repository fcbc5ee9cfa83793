import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { connectAgent, dataTypeFromWire, type AgentConnection, type Model } from '@edgefleet/core';
import { CliError, EXIT, table, type Output } from '../cli-io.js';
import { resolveInput } from './input-shape.js';
import { decodeTensor, encodeTensor } from './tensor-values.js';

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

/** Runs one call against the agent, turning gRPC failures into one clear line. */
async function withAgent<T>(
  socket: string | undefined,
  fn: (agent: AgentConnection) => Promise<T>,
): Promise<T> {
  const path = socket ?? process.env.EDGEFLEET_AGENT_SOCKET;
  if (!path) throw new CliError('say which agent: --socket <path> or EDGEFLEET_AGENT_SOCKET', EXIT.usage);
  const agent = connectAgent(path.startsWith('unix:') ? path : `unix://${resolve(path)}`);
  try {
    return await fn(agent);
  } catch (error) {
    const { code, details } = error as { code?: number; details?: string };
    if (code === 14) throw new CliError(`no agent answers on ${path} (is it running? is the path right?)`);
    if (code !== undefined)
      throw new CliError(`agent: ${GRPC_CODE_NAMES[code] ?? `status ${code}`}: ${details}`);
    throw error;
  } finally {
    agent.close();
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
    .command('list')
    .description('models the agent has loaded')
    .option(...socketOption)
    .action(async (raw: { socket?: string }) => {
      const models = await withAgent(raw.socket, async (a) => (await a.call('ListModels', {})).models);
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
    .action(async (name: string, raw: { socket?: string }) => {
      const model = await withAgent(raw.socket, (a) => describeModel(a, name));
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
    .action(async (name: string, dir: string, raw: { socket?: string }) => {
      const response = await withAgent(raw.socket, (a) =>
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
    .action(async (name: string, raw: { socket?: string }) => {
      await withAgent(raw.socket, (a) => a.call('UnLoadModel', { name, handle: name }));
      output().result({ unloaded: name }, () => `Unloaded ${name}`);
    });

  agent
    .command('predict')
    .description(
      'run one inference; inputs as JSON: {"<input>": [values…]} or {"<input>": {"shape": […], "data": […]}}',
    )
    .argument('<model>', 'the model’s name (handle)')
    .requiredOption('--input <json|@file>', 'the inputs, as JSON text or @path/to/file.json')
    .option(...socketOption)
    .action(async (name: string, raw: { input: string; socket?: string }) => {
      const text = raw.input.startsWith('@') ? await readFile(raw.input.slice(1), 'utf8') : raw.input;
      let given: Record<string, unknown>;
      try {
        given = JSON.parse(text) as Record<string, unknown>;
      } catch (error) {
        throw new CliError(`--input is not JSON: ${(error as Error).message}`, EXIT.usage);
      }
      if (typeof given !== 'object' || given === null || Array.isArray(given)) {
        throw new CliError('--input must be a JSON object keyed by input name', EXIT.usage);
      }
      const outputs = await withAgent(raw.socket, async (a) => {
        const model = await describeModel(a, name);
        const tensors = model.inputTensorMetadatas.map((meta) => {
          const inputName = meta.name.toString();
          const value = given[inputName];
          if (value === undefined)
            throw new CliError(
              `--input has no "${inputName}"; the model takes ${model.inputTensorMetadatas.map((t) => t.name.toString()).join(', ')}`,
              EXIT.usage,
            );
          const dataType = dataTypeFromWire(meta.dataType);
          if (!dataType)
            throw new CliError(
              `input ${inputName} has data type ${meta.dataType}, which this CLI cannot write`,
            );
          const { shape, values } = resolveInput(inputName, meta.shape, value);
          return {
            tensorMetadata: { name: meta.name, dataType: meta.dataType, shape },
            byteData: encodeTensor(inputName, dataType, shape, values),
          };
        });
        return (await a.call('Predict', { name, handle: name, tensors })).tensors;
      });
      const decoded = outputs.map((t) => ({
        name: t.tensorMetadata?.name.toString() ?? '',
        dataType: dataTypeFromWire(t.tensorMetadata?.dataType ?? -1) ?? t.tensorMetadata?.dataType,
        shape: t.tensorMetadata?.shape ?? [],
        data: decodeTensor(t.tensorMetadata?.dataType ?? -1, t.byteData ?? Buffer.alloc(0)),
      }));
      output().result({ outputs: decoded }, () =>
        decoded.map((t) => `${t.name} ${t.dataType} [${t.shape.join(', ')}]: ${JSON.stringify(t.data)}`),
      );
    });
}
