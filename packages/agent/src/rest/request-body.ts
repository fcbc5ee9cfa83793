import type { Readable } from 'node:stream';
import { RestError } from './rest-errors.js';

/**
 * A request body as the socket delivered it: the chunks, not concatenated. Node gives each chunk its own
 * memory, so keeping them is safe; parts are viewed in place where they lie in one chunk, and binary tensors
 * are copied exactly once, into memory of their own that can then be handed to a worker without another copy.
 */
export class RequestBody {
  constructor(
    readonly chunks: readonly Buffer[],
    readonly length: number,
  ) {}

  /** Bytes [start, end): a view when they lie in one chunk, else a copy. For reading, not for keeping. */
  view(start: number, end: number): Uint8Array {
    let offset = 0;
    for (const chunk of this.chunks) {
      const chunkEnd = offset + chunk.length;
      if (start >= offset && end <= chunkEnd) return chunk.subarray(start - offset, end - offset);
      if (chunkEnd > start) break;
      offset = chunkEnd;
    }
    return this.copy(start, end);
  }

  /** Bytes [start, end) copied into a fresh ArrayBuffer of exactly that size (transferable to a worker). */
  copy(start: number, end: number): Uint8Array {
    const out = new Uint8Array(end - start);
    let offset = 0;
    let written = 0;
    for (const chunk of this.chunks) {
      const chunkEnd = offset + chunk.length;
      if (chunkEnd > start && offset < end) {
        const from = Math.max(start, offset) - offset;
        const to = Math.min(end, chunkEnd) - offset;
        out.set(chunk.subarray(from, to), written);
        written += to - from;
      }
      if (chunkEnd >= end) break;
      offset = chunkEnd;
    }
    return out;
  }
}

/** What a body may hold: JSON only, or a JSON part followed by binary tensor data. */
export interface BodyLimit {
  bytes: number;
  /** Names the limit and says what to do instead, for the 413 message. */
  advice: string;
}

/** Bodies above the limit are refused with this status (and the connection closed: the client may go on sending). */
export function bodyTooLarge(received: string, limit: BodyLimit): RestError {
  return new RestError(
    413,
    `the request body is ${received}; this agent accepts at most ${limit.bytes} bytes ${limit.advice}`,
    { connection: 'close' },
  );
}

/** A counted body's share of the body budget: grows by each chunk as it arrives; a message when it cannot. */
export interface BodyGrowth {
  grow(bytes: number): string | undefined;
}

/**
 * Reads a request body into a RequestBody, refusing it (413) as soon as it is known to exceed `limit`: at once
 * from a Content-Length, or when the bytes received pass it; and (429) when a chunk would not fit `reservation`.
 */
export function readRequestBody(
  stream: Readable,
  contentLength: string | undefined,
  limit: BodyLimit,
  done: (error: Error | null, body?: RequestBody) => void,
  reservation?: BodyGrowth,
): void {
  if (contentLength !== undefined && Number(contentLength) > limit.bytes) {
    done(bodyTooLarge(`${contentLength} bytes (Content-Length)`, limit));
    return;
  }
  const chunks: Buffer[] = [];
  let length = 0;
  const cleanup = () => {
    stream.removeListener('data', onData);
    stream.removeListener('end', onEnd);
    stream.removeListener('error', onError);
  };
  const onData = (chunk: Buffer | string) => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    length += bytes.length;
    if (length > limit.bytes) {
      cleanup();
      done(bodyTooLarge(`more than ${limit.bytes} bytes`, limit));
      return;
    }
    if (reservation !== undefined) {
      const refused = reservation.grow(bytes.length);
      if (refused !== undefined) {
        cleanup();
        done(
          new RestError(429, `${refused}; retry shortly, or send smaller requests`, {
            connection: 'close',
          }),
        );
        return;
      }
    }
    chunks.push(bytes);
  };
  const onEnd = () => {
    cleanup();
    done(null, new RequestBody(chunks, length));
  };
  const onError = (error: Error) => {
    cleanup();
    done(new RestError(400, `the request body could not be read: ${error.message}`));
  };
  stream.on('data', onData);
  stream.on('end', onEnd);
  stream.on('error', onError);
  stream.resume();
}
