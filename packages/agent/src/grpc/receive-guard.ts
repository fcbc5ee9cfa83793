import { constants as http2, type ServerHttp2Stream } from 'node:http2';
import {
  status,
  type ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { BodyBudget } from '../body-budget/index.js';

/** grpc-js's length prefix before each message: a compressed flag and a 4-byte big-endian length. */
const PREFIX_BYTES = 5;

/** How many sweeps make up one receive timeout: a call is cancelled between 1 and 1.25 timeouts after it began. */
const SWEEPS_PER_TIMEOUT = 4;

export interface ReceiveGuardOptions {
  budget: BodyBudget;
  /** A call whose request message is not complete this long after its headers is cancelled (DEADLINE_EXCEEDED). */
  receiveTimeoutMs: number;
  logger: Logger;
}

/**
 * What grpc-js does not bound by itself (docs/security.md#limits): it buffers each call's request message until
 * it is complete, up to `-m`, with no deadline. The guard watches each call's HTTP/2 stream from its headers on:
 * the message's length prefix takes that many bytes from the body budget shared with the REST door (given back
 * when the stream closes), and a call whose message is not complete within the receive timeout is cancelled.
 * Either refusal answers the call with a status and resets the stream, so grpc-js drops what it had buffered.
 * O(1) work per data chunk until the message is complete, then none.
 *
 * grpc-js (pinned exactly, see agent-service.ts) hands interceptors its call object, which holds the stream as
 * `stream`; receive-guard.test.ts fails if a new version stops doing so.
 */
export class ReceiveGuard {
  readonly #budget: BodyBudget;
  readonly #receiveTimeoutMs: number;
  readonly #logger: Logger;
  readonly #receiving = new Set<MessageReceipt>();
  readonly #sweeper: NodeJS.Timeout;
  #sweeps = 0;
  #warned = false;

  constructor(options: ReceiveGuardOptions) {
    this.#budget = options.budget;
    this.#receiveTimeoutMs = options.receiveTimeoutMs;
    this.#logger = options.logger;
    this.#sweeper = setInterval(
      () => this.#sweep(),
      Math.max(1, Math.floor(options.receiveTimeoutMs / SWEEPS_PER_TIMEOUT)),
    );
    this.#sweeper.unref();
  }

  /** The grpc-js server interceptor: watches the call and returns it unchanged (no wrapper on the hot path). */
  readonly interceptor: ServerInterceptor = (_method, call) => {
    const stream = (call as unknown as { stream?: ServerHttp2Stream }).stream;
    if (stream === undefined || typeof stream.on !== 'function') {
      if (!this.#warned) {
        this.#warned = true;
        this.#logger.error(
          'gRPC: the installed grpc-js no longer exposes its calls’ streams; request messages are not held to the body budget or the receive timeout',
        );
      }
    } else {
      const receipt = new MessageReceipt(this, call, stream, this.#sweeps);
      this.#receiving.add(receipt);
    }
    return call as ServerInterceptingCall;
  };

  /** Calls whose request message is still arriving. */
  get receiving(): number {
    return this.#receiving.size;
  }

  close(): void {
    clearInterval(this.#sweeper);
  }

  take(bytes: number): boolean {
    return this.#budget.take(bytes);
  }

  give(bytes: number): void {
    this.#budget.give(bytes);
  }

  describeRefusal(bytes: number): string {
    return this.#budget.describeRefusal(bytes, 'this call’s request message');
  }

  received(receipt: MessageReceipt): void {
    this.#receiving.delete(receipt);
  }

  #sweep(): void {
    const sweep = ++this.#sweeps;
    for (const receipt of this.#receiving) {
      if (sweep - receipt.sweep <= SWEEPS_PER_TIMEOUT) continue;
      receipt.refuse(
        status.DEADLINE_EXCEEDED,
        `the request (its message and the end of the client's stream) was not complete ${this.#receiveTimeoutMs} ms after the call began (edgefleet_grpc_receive_timeout_seconds); the call is cancelled. Expected the whole request promptly`,
      );
    }
  }
}

/**
 * One call's request as it arrives: its message's declared length and the budget it took, until the client ends
 * its side of the stream (a unary call's message is handled only then, so a client that sends the message and
 * never ends the stream is held to the receive timeout too).
 */
class MessageReceipt {
  #seen = 0;
  #declared = 0;
  #taken = 0;
  #counting = true;
  #receiving = true;

  constructor(
    private readonly guard: ReceiveGuard,
    private readonly call: ServerInterceptingCallInterface,
    private readonly stream: ServerHttp2Stream,
    /** The guard's sweep count when the call began. */
    readonly sweep: number,
  ) {
    stream.on('data', this.#onData);
    stream.once('end', this.#onEnd);
    stream.once('close', this.#onClose);
  }

  readonly #onData = (chunk: Buffer): void => {
    if (this.#seen >= PREFIX_BYTES) return this.#count(chunk.length);
    let i = 0;
    // The 4 length bytes follow the compressed flag; they may arrive split across chunks.
    for (; i < chunk.length && this.#seen < PREFIX_BYTES; i++, this.#seen++)
      if (this.#seen > 0) this.#declared = this.#declared * 256 + chunk[i]!;
    if (this.#seen < PREFIX_BYTES) return;
    // The whole message's bytes are taken at once, as a REST body's Content-Length is.
    const bytes = PREFIX_BYTES + this.#declared;
    if (!this.guard.take(bytes)) {
      this.refuse(status.RESOURCE_EXHAUSTED, `${this.guard.describeRefusal(bytes)}; retry shortly`);
      return;
    }
    this.#taken = bytes;
    this.#count(chunk.length - i);
  };

  #count(bytes: number): void {
    this.#seen += bytes;
    if (this.#seen >= PREFIX_BYTES + this.#declared) this.#stopCounting();
  }

  /** The message is in (or refused): no more chunks to look at. */
  #stopCounting(): void {
    if (!this.#counting) return;
    this.#counting = false;
    this.stream.removeListener('data', this.#onData);
  }

  /** The request is in (or refused, or gone): the receive timeout no longer applies. */
  #received(): void {
    this.#stopCounting();
    if (!this.#receiving) return;
    this.#receiving = false;
    this.guard.received(this);
  }

  readonly #onEnd = (): void => this.#received();

  readonly #onClose = (): void => {
    this.#received();
    this.guard.give(this.#taken);
    this.#taken = 0;
  };

  /** Answers the call with `code` and resets the stream, which frees whatever grpc-js had buffered for it. */
  refuse(code: status, details: string): void {
    this.#received();
    this.call.sendStatus({ code, details });
    // After the status (trailers) has gone out: RST_STREAM, so the client's remaining data is not read.
    setImmediate(() => {
      if (!this.stream.closed) this.stream.close(http2.NGHTTP2_CANCEL);
    });
  }
}
