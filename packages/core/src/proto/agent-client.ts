import * as grpc from '@grpc/grpc-js';
import type { MessageInit } from './agent-messages.js';
import {
  AGENT_SERVICE_NAME,
  createAgentServiceDefinition,
  type AgentClient,
  type AgentRequest,
  type AgentResponse,
} from './agent-service.js';
import type { AgentMethodName } from './agent-messages.js';

/** A promise-style client of a SageMaker Edge agent (ours or the original), e.g. on `unix:///tmp/agent.sock`. */
export interface AgentConnection {
  call<M extends AgentMethodName>(
    method: M,
    request: MessageInit<AgentRequest<M>>,
    timeoutMs?: number,
  ): Promise<AgentResponse<M>>;
  close(): void;
}

/** Connects lazily (the first call dials); `target` is a gRPC target such as `unix:///path/to/agent.sock`. */
export function connectAgent(target: string, opts: { maxMessageBytes?: number } = {}): AgentConnection {
  const Client = grpc.makeGenericClientConstructor(createAgentServiceDefinition(), AGENT_SERVICE_NAME);
  const max = opts.maxMessageBytes ?? 64 * 1024 * 1024;
  const client = new Client(target, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': max,
    'grpc.max_send_message_length': max,
  }) as unknown as AgentClient;
  return {
    call(method, request, timeoutMs = 60_000) {
      return new Promise((resolve, reject) => {
        const invoke = client[method] as unknown as (
          r: unknown,
          options: Partial<grpc.CallOptions>,
          cb: grpc.requestCallback<AgentResponse<typeof method>>,
        ) => void;
        invoke.call(client, request, { deadline: Date.now() + timeoutMs }, (error, response) =>
          error ? reject(error) : resolve(response as never),
        );
      });
    },
    close: () => client.close(),
  };
}
