import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { AgentError, GRPC_STATUS } from '../models/index.js';

/** What a handler answers on failure: a gRPC status code and a details string for the client. */
export type GrpcFailure = Pick<ServiceError, 'code' | 'details' | 'message' | 'metadata' | 'name'>;

/**
 * A failure whose gRPC code has no AgentError counterpart (PERMISSION_DENIED for a shared memory segment the
 * agent may not read, UNIMPLEMENTED for capture). The message says what was wrong and what was expected.
 */
export class GrpcStatusError extends Error {
  override readonly name = 'GrpcStatusError';
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
  }
}

/** An answer with this code and details. */
export function grpcFailure(code: status, details: string): GrpcFailure {
  return { name: 'GrpcFailure', code, details, message: details, metadata: new Metadata() };
}

/** The failure for an error: its own code, or INTERNAL for anything unexpected (never rethrown). */
export function toGrpcFailure(error: unknown, method: string): GrpcFailure {
  if (error instanceof AgentError) return grpcFailure(GRPC_STATUS[error.code], error.message);
  if (error instanceof GrpcStatusError) return grpcFailure(error.code, error.message);
  const message = error instanceof Error ? error.message : String(error);
  return grpcFailure(status.INTERNAL, `unexpected failure in ${method}: ${message}`);
}

export const UNIMPLEMENTED_CODE = status.UNIMPLEMENTED;
export const INTERNAL_CODE = status.INTERNAL;
