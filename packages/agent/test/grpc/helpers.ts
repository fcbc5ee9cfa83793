import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  AGENT_SERVICE_NAME,
  DATA_TYPES,
  TEST_MODELS,
  createAgentServiceDefinition,
  type AgentClient,
  type AgentMethodName,
  type AgentRequest,
  type AgentResponse,
  type MessageInit,
  type Tensor,
  type TestModelName,
  type TestModelTensor,
  type TestModelTensors,
} from '@edgefleet/core';
import { pino } from 'pino';
import { afterAll, beforeAll } from 'vitest';
import { startGrpcServer, type RunningGrpcServer } from '../../src/grpc/index.js';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry, type ModelRegistryOptions } from '../../src/models/index.js';
import { SharedMemoryReader, loadSysvShmAddon } from '../../src/shm/index.js';
import { bytesOf, scratch } from '../support/model-packages.js';

export { bytesOf, scratch };

export const silentLogger = pino({ level: 'silent' });

export interface TestAgent {
  server: RunningGrpcServer;
  registry: ModelRegistry;
  target: string;
  client: AgentClient;
  /** Resolves with the response or rejects with the grpc ServiceError. */
  call<M extends AgentMethodName>(
    method: M,
    request: MessageInit<AgentRequest<M>>,
  ): Promise<AgentResponse<M>>;
  close(): Promise<void>;
}

/**
 * The gRPC adapter over a real registry and worker pool, listening on a real Unix socket in `dir`, with a
 * generic client of the shared service definition.
 */
export async function startTestAgent(options: {
  pool: InferencePool;
  dir: string;
  socketName?: string;
  maxMessageBytes?: number;
  registry?: Partial<ModelRegistryOptions>;
  sharedMemory?: SharedMemoryReader | null;
}): Promise<TestAgent> {
  const registry = new ModelRegistry({
    pool: options.pool,
    trust: null,
    cwd: options.dir,
    ...options.registry,
  });
  const socketPath = join(options.dir, options.socketName ?? 'agent.sock');
  const maxMessageBytes = options.maxMessageBytes ?? 64 * 1024 * 1024;
  const server = await startGrpcServer({
    registry,
    sharedMemory:
      options.sharedMemory === undefined
        ? new SharedMemoryReader({ addon: loadSysvShmAddon() })
        : options.sharedMemory,
    logger: silentLogger,
    socketPath,
    maxMessageBytes,
  });
  const client = newClient(server.address, maxMessageBytes);
  return {
    server,
    registry,
    target: server.address,
    client,
    call: (method, request) => callMethod(client, method, request),
    async close() {
      client.close();
      await server.close(5000);
      await registry.close();
    },
  };
}

export type Scratch = Awaited<ReturnType<typeof scratch>>;
export type TestAgentOptions = Omit<Parameters<typeof startTestAgent>[0], 'pool' | 'dir'>;

/** What most gRPC test files run on: a scratch folder, an inference pool, and a test agent serving from the folder. */
export interface AgentTestBed {
  files: Scratch;
  pool: InferencePool;
  agent: TestAgent;
}

/**
 * Starts a test bed before the file's tests and closes it (agent, pool, folder) after them. `agent` gives the
 * agent's options and may prepare the folder for them (a trust folder, say); `ready` gets the bed, for the file
 * to keep and to load its models.
 */
export function useAgentTestBed(options: {
  prefix: string;
  workers: number;
  agent?: (files: Scratch) => TestAgentOptions | Promise<TestAgentOptions>;
  ready: (bed: AgentTestBed) => Promise<void> | void;
}): void {
  const bed: Partial<AgentTestBed> = {};
  beforeAll(async () => {
    const files = (bed.files = await scratch(options.prefix));
    const pool = (bed.pool = await startPool(options.workers));
    bed.agent = await startTestAgent({ pool, dir: files.root, ...(await options.agent?.(files)) });
    await options.ready(bed as AgentTestBed);
  });
  afterAll(async () => {
    // Each step runs even if one before it fails, so a failing close leaks neither the pool nor the folder.
    try {
      await bed.agent?.close();
    } finally {
      try {
        await bed.pool?.close();
      } finally {
        await bed.files?.cleanup();
      }
    }
  });
}

export function newClient(target: string, maxMessageBytes = 64 * 1024 * 1024): AgentClient {
  const Client = grpc.makeGenericClientConstructor(createAgentServiceDefinition(), AGENT_SERVICE_NAME);
  return new Client(target, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
  }) as unknown as AgentClient;
}

export function callMethod<M extends AgentMethodName>(
  client: AgentClient,
  method: M,
  request: MessageInit<AgentRequest<M>>,
): Promise<AgentResponse<M>> {
  return new Promise((resolve, reject) => {
    (client[method] as (r: unknown, cb: grpc.requestCallback<AgentResponse<M>>) => void)(
      request,
      (error, response) => (error ? reject(error) : resolve(response!)),
    );
  });
}

/** The grpc ServiceError a call fails with (fails the test if the call succeeds). */
export async function callError(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  const outcome = await promise.then(
    (response) => ({ ok: true as const, response }),
    (error: unknown) => ({ ok: false as const, error }),
  );
  if (outcome.ok)
    throw new Error(`expected the call to fail, it answered ${JSON.stringify(outcome.response)}`);
  return outcome.error as grpc.ServiceError;
}

/** Sends raw bytes to a method through a client whose serializers are the identity. */
export function callRaw(
  target: string,
  method: string,
  body: Buffer,
  maxMessageBytes?: number,
): Promise<Buffer> {
  const raw = new grpc.Client(target, grpc.credentials.createInsecure(), {
    ...(maxMessageBytes !== undefined && { 'grpc.max_send_message_length': maxMessageBytes }),
  });
  const identity = (b: Buffer): Buffer => b;
  return new Promise<Buffer>((resolve, reject) => {
    raw.makeUnaryRequest(`/${AGENT_SERVICE_NAME}/${method}`, identity, identity, body, (error, response) =>
      error ? reject(error) : resolve(response!),
    );
  }).finally(() => raw.close());
}

export function startPool(workers = 2): Promise<InferencePool> {
  return InferencePool.start({ workers, session: DEFAULT_ORT_SESSION_CONFIG });
}

/** Catalogue inputs as wire Tensors (byte_data), in the model's input order. */
export function wireInputs(
  model: TestModelName,
  inputs: TestModelTensors = TEST_MODELS[model].sampleInputs(),
): MessageInit<Tensor>[] {
  return TEST_MODELS[model].inputs.map((declared) => {
    const tensor = inputs[declared.name]!;
    return {
      tensorMetadata: {
        name: Buffer.from(declared.name),
        dataType: DATA_TYPES[tensor.dataType].wire,
        shape: tensor.shape,
      },
      byteData: bytesOf(tensor.data),
    };
  });
}

/** The reference outputs of a catalogue model, as the bytes a Predict response must carry, by output name. */
export function referenceBytes(
  model: TestModelName,
  inputs: TestModelTensors = TEST_MODELS[model].sampleInputs(),
): Map<string, { shape: number[]; bytes: Buffer; reference: TestModelTensor }> {
  const reference = TEST_MODELS[model].reference(inputs);
  return new Map(
    Object.entries(reference).map(([name, tensor]) => [
      name,
      { shape: tensor.shape, bytes: Buffer.from(bytesOf(tensor.data)), reference: tensor },
    ]),
  );
}
