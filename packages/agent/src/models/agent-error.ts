/**
 * The codes the agent's in-process API fails with: gRPC status names, as the SageMaker Edge agent used them
 * (spec section 4). Adapters translate them: GRPC_STATUS / HTTP_STATUS below are the standard mappings.
 */
export const AGENT_ERROR_CODES = [
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'INVALID_ARGUMENT',
  'FAILED_PRECONDITION',
  'RESOURCE_EXHAUSTED',
  'OUT_OF_RANGE',
  'INTERNAL',
  'UNAVAILABLE',
] as const;
export type AgentErrorCode = (typeof AGENT_ERROR_CODES)[number];

/** gRPC numeric status for each code (grpc-js `status`). */
export const GRPC_STATUS: Readonly<Record<AgentErrorCode, number>> = {
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  OUT_OF_RANGE: 11,
  INTERNAL: 13,
  UNAVAILABLE: 14,
};

/** HTTP status for each code (the mapping google.rpc.Code documents). */
export const HTTP_STATUS: Readonly<Record<AgentErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  FAILED_PRECONDITION: 400,
  OUT_OF_RANGE: 400,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  RESOURCE_EXHAUSTED: 429,
  INTERNAL: 500,
  UNAVAILABLE: 503,
};

/** The one error the agent's API throws. The message says what was wrong and what was expected. */
export class AgentError extends Error {
  override readonly name = 'AgentError';
  constructor(
    readonly code: AgentErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isAgentError(error: unknown): error is AgentError {
  return error instanceof AgentError;
}
