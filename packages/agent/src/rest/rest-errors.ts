import { HTTP_STATUS, isAgentError } from '../models/index.js';

/**
 * A request the REST adapter itself refuses before it reaches the registry (malformed JSON, a bad header, a
 * binary part that does not add up, …), with the HTTP status to answer. The message says what was wrong and
 * what was expected.
 */
export class RestError extends Error {
  override readonly name = 'RestError';
  constructor(
    readonly statusCode: number,
    message: string,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }
}

export interface HttpFailure {
  statusCode: number;
  /** Writable: an adapter may say more about a framework error than the framework does. */
  message: string;
  headers: Readonly<Record<string, string>>;
  /** True for failures of the agent itself (5xx), which are logged as errors. */
  internal: boolean;
}

/**
 * The HTTP answer for anything a route throws: AgentError codes by HTTP_STATUS (the models capability's one
 * mapping), RestError as given, Fastify's own client errors (bad URL encoding, …) by their status, and
 * anything else as 500.
 */
export function httpFailureOf(error: unknown): HttpFailure {
  if (isAgentError(error)) {
    const statusCode = HTTP_STATUS[error.code];
    return { statusCode, message: error.message, headers: {}, internal: statusCode >= 500 };
  }
  if (error instanceof RestError) {
    return {
      statusCode: error.statusCode,
      message: error.message,
      headers: error.headers,
      internal: error.statusCode >= 500,
    };
  }
  const statusCode = (error as { statusCode?: unknown } | null)?.statusCode;
  const message = error instanceof Error ? error.message : String(error);
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    return { statusCode, message, headers: {}, internal: false };
  }
  return {
    statusCode: 500,
    message: `unexpected failure in the REST API: ${message}`,
    headers: {},
    internal: true,
  };
}

export const JSON_TYPE = 'application/json';

/** The protocol's error body. */
export function errorBody(message: string): string {
  return JSON.stringify({ error: message });
}
