import { constants as http2, type ServerHttp2Stream } from 'node:http2';
import {
  status,
  type Metadata,
  type ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { BodyBudget, ResponseBudget } from '../body-budget/index.js';

/** grpc-js's length prefix before each message: a compressed flag and a 4-byte big-endian length. */
const PREFIX_BYTES = 5;

/** How many sweeps make up one receive timeout: a call is cancelled between 1 and 1.25 timeouts after it began. */
const SWEEPS_PER_TIMEOUT = 4;

/** What grpc-js tells a call's listener (the type is not exported by name). */
type CallListener = Parameters<ServerInterceptingCallInterface['start']>[0];
type CallStatus = Parameters<ServerInterceptingCallInterface['sendStatus']>[0];

export interface ReceiveGuardOptions {
  budget: BodyBudget;
  /**
   * A call whose request is not complete this long after its headers (its message, and the end of the client's
   * side of the stream) is cancelled (DEADLINE_EXCEEDED).
   */
  receiveTimeoutMs: number;
  /**
   * `-m`: a message announced larger is refused here, before grpc-js sees its bytes, with a status that names the
   * option (grpc-js's own check, which stays, would say only "Received message larger than max (X vs Y)").
   */
  maxMessageBytes: number;
  logger: Logger;
  /**
   * Counts each response message from when it is handed to the stream until it is written out (the client has
   * taken it, within its HTTP/2 flow-control window) or the stream is gone; absent: not counted.
   */
  responseBudget?: ResponseBudget;
}

/**
 * What grpc-js does not bound by itself (docs/security.md#limits): it buffers each call's request message until
 * it is complete, up to `-m`, with no deadline, and the handler then holds it until it answers, whether or not
 * the client is still there. The guard watches each call's HTTP/2 stream from its headers on: the message's
 * bytes are taken from the body budget shared with the REST door as they arrive (at most its length prefix's
 * worth), and given back once the stream has closed and the handler, if it was started, has answered; a call
 * whose request (its message and the end of the client's stream) is not complete within the receive timeout is
 * cancelled. Either refusal answers the call with a status and resets the stream, so grpc-js drops what it had
 * buffered. O(1) work and no allocation per data chunk until the message is complete, then none.
 *
 * grpc-js (pinned exactly, see agent-service.ts) hands interceptors its call object, which holds the stream as
 * `stream`; receive-guard.test.ts fails if a new version stops doing so.
 */
export class ReceiveGuard {
  readonly #budget: BodyBudget;
  readonly #receiveTimeoutMs: number;
  readonly maxMessageBytes: number;
  readonly #logger: Logger;
  readonly #responseBudget: ResponseBudget | undefined;
  readonly #receiving = new Set<MessageReceipt>();
  readonly #sweeper: NodeJS.Timeout;
  #sweeps = 0;
  #warned = false;

  constructor(options: ReceiveGuardOptions) {
    this.#budget = options.budget;
    this.#receiveTimeoutMs = options.receiveTimeoutMs;
    this.maxMessageBytes = options.maxMessageBytes;
    this.#logger = options.logger;
    this.#responseBudget = options.responseBudget;
    this.#sweeper = setInterval(
      () => this.#sweep(),
      Math.max(1, Math.floor(options.receiveTimeoutMs / SWEEPS_PER_TIMEOUT)),
    );
    this.#sweeper.unref();
  }

  /**
   * The grpc-js server interceptor: the call's receipt stands in for the call (one object per call, no
   * ServerInterceptingCall wrapper with its listener and responder objects), so that it sees when the handler
   * is started and when it answers.
   */
  readonly interceptor: ServerInterceptor = (_method, call) => {
    const stream = (call as unknown as { stream?: ServerHttp2Stream }).stream;
    if (stream === undefined || typeof stream.on !== 'function') {
      if (!this.#warned) {
        this.#warned = true;
        this.#logger.error(
          'gRPC: the installed grpc-js no longer exposes its calls’ streams; request messages are not held to the body budget or the receive timeout',
        );
      }
      return call as ServerInterceptingCall;
    }
    const receipt = new MessageReceipt(this, call, stream, this.#sweeps);
    this.#receiving.add(receipt);
    return receipt as unknown as ServerInterceptingCall;
  };

  /** Calls under the receive timeout: request still arriving, or refused (-m) while the client sends on (as of the last sweep for those whose stream has ended since). */
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

  describeRefusal(bytes: number, taken: number): string {
    return this.#budget.describeRefusal(
      `the next ${bytes} bytes of this call’s request message (after ${taken} taken for it)`,
    );
  }

  /**
   * `bytes` of a response wait on `stream` for its client; returns what gives them back. Should the budget be
   * full, the connection whose oldest unread answer has waited longest (maybe this one) is closed.
   */
  responseQueued(stream: ServerHttp2Stream, bytes: number): () => void {
    const session = stream.session;
    if (this.#responseBudget === undefined || session === undefined) return () => undefined;
    return this.#responseBudget.queued(session, 'grpc', () => session.destroy(), bytes);
  }

  received(receipt: MessageReceipt): void {
    this.#receiving.delete(receipt);
  }

  #sweep(): void {
    const sweep = ++this.#sweeps;
    for (const receipt of this.#receiving) {
      // The client ended its side: the request is complete (checked here rather than by an 'end' listener per call).
      if (receipt.ended) receipt.received();
      else if (sweep - receipt.sweep > SWEEPS_PER_TIMEOUT) {
        receipt.refuse(
          status.DEADLINE_EXCEEDED,
          `the request (its message and the end of the client's stream) was not complete ${this.#receiveTimeoutMs} ms after the call began (edgefleet_grpc_receive_timeout_seconds); the call is cancelled. Expected the whole request promptly`,
        );
      }
    }
  }
}

/**
 * One call's request message and the budget it holds: counted as it arrives until the length prefix's worth is
 * in (a compressed message, or any byte after the message, is refused: every method takes one), and given back once the stream has closed and the handler, if grpc-js started it, has answered (a client
 * that cancels a call whose message its handler still holds leaves the budget taken until then). Stands in for
 * grpc-js's call (every method passed on) and, towards it, for the call's listener, to see both.
 */
class MessageReceipt implements ServerInterceptingCallInterface, CallListener {
  /** Bytes of the length prefix seen (0 to PREFIX_BYTES). */
  #prefixSeen = 0;
  #declared = 0;
  /** The prefix's compressed flag was set. */
  #compressed = false;
  /** Bytes of the message (with its prefix) still to be counted once the prefix is known. */
  #remaining = 0;
  #taken = 0;
  #counting = true;
  #receiving = true;
  #listener: CallListener | undefined;
  /** grpc-js has handed the request to the handler (on the client's half-close). */
  #handling = false;
  #answered = false;
  #closed = false;
  /** Gives back the response bytes still waiting for the client when the stream closes. */
  #releaseResponse: (() => void) | undefined;

  constructor(
    private readonly guard: ReceiveGuard,
    private readonly call: ServerInterceptingCallInterface,
    private readonly stream: ServerHttp2Stream,
    /** The guard's sweep count when the call began. */
    readonly sweep: number,
  ) {
    // Before grpc-js's own listener (added when it made the call): each chunk is counted (or refused) before grpc-js
    // buffers it, and a length prefix over -m is answered here, with the option named, before grpc-js's check.
    stream.prependListener('data', this.#onData);
    stream.on('close', this.#onClose);
  }

  /** The client has ended its side of the stream. */
  get ended(): boolean {
    return this.stream.readableEnded;
  }

  readonly #onData = (chunk: Buffer): void => {
    let bytes = chunk.length;
    if (this.#prefixSeen < PREFIX_BYTES) {
      let i = 0;
      // The 4 length bytes follow the compressed flag; they may arrive split across chunks.
      for (; i < chunk.length && this.#prefixSeen < PREFIX_BYTES; i++, this.#prefixSeen++) {
        if (this.#prefixSeen === 0) this.#compressed = chunk[i] !== 0;
        else this.#declared = this.#declared * 256 + chunk[i]!;
      }
      if (this.#prefixSeen < PREFIX_BYTES) return;
      // A compressed message holds up to -m once inflated, however few bytes it took to send.
      if (this.#compressed)
        return this.refuse(
          status.UNIMPLEMENTED,
          'compressed request messages are not accepted (the agent holds request bytes to a budget as they arrive, and an inflated message would hold more than it sent); expected the message uncompressed',
        );
      // Refused before a byte is held: the status (trailers only) marks grpc-js's call cancelled, so it drops the
      // rest of the message as it arrives, as it does after its own check. No reset now: nothing is buffered to
      // free, and a client still sending (grpcio) would report the reset (CANCELLED) instead of this status. The
      // call stays in the sweep: grpc-js goes on reading (and dropping) what the client sends, so a client that
      // does not end its side is reset at the receive timeout like any other.
      if (this.#declared > this.guard.maxMessageBytes) {
        this.#stopCounting();
        this.call.sendStatus({
          code: status.RESOURCE_EXHAUSTED,
          details: `the request message is ${this.#declared} bytes, larger than the agent's limit of ${this.guard.maxMessageBytes} bytes (its -m / --max-message-size option); expected a smaller message (tensors in shared memory do not count), or an agent started with a larger -m`,
        });
        return;
      }
      this.#remaining = PREFIX_BYTES + this.#declared;
      bytes = PREFIX_BYTES + chunk.length - i;
    }
    // grpc-js goes on reading a unary call after its message, and would buffer a second one (up to -m) uncounted:
    // the listener stays until the client ends its side, and a byte past the message is refused.
    if (bytes > this.#remaining)
      return this.refuse(
        status.INVALID_ARGUMENT,
        'the call sent more after its request message; expected one request message per call',
      );
    // As they arrive, never past the announced length: an announcement alone takes nothing.
    if (!this.guard.take(bytes)) {
      this.refuse(
        status.RESOURCE_EXHAUSTED,
        `${this.guard.describeRefusal(bytes, this.#taken)}; retry shortly`,
      );
      return;
    }
    this.#taken += bytes;
    this.#remaining -= bytes;
  };

  /** The message is in (or refused): no more chunks to look at. */
  #stopCounting(): void {
    if (!this.#counting) return;
    this.#counting = false;
    this.stream.removeListener('data', this.#onData);
  }

  /** The request is in (or refused, or gone): the receive timeout no longer applies. */
  received(): void {
    this.#stopCounting();
    if (!this.#receiving) return;
    this.#receiving = false;
    this.guard.received(this);
  }

  readonly #onClose = (): void => {
    this.#closed = true;
    this.#releaseResponse?.();
    this.received();
    this.#settle();
  };

  /** Gives the budget back once nothing holds the message: the stream is closed, and no handler runs with it. */
  #settle(): void {
    if (!this.#closed || (this.#handling && !this.#answered)) return;
    const taken = this.#taken;
    // Zeroed first: a second settle (close, then the answer) gives back nothing.
    this.#taken = 0;
    this.guard.give(taken);
  }

  /** The handler has answered (a message or a status): it holds the request no more. */
  #answer(): void {
    if (this.#answered) return;
    this.#answered = true;
    this.#settle();
  }

  /** Answers the call with `code` and resets the stream, which frees whatever grpc-js had buffered for it. */
  refuse(code: status, details: string): void {
    this.received();
    this.call.sendStatus({ code, details });
    // After the status (trailers) has gone out: RST_STREAM, so the client's remaining data is not read.
    setImmediate(() => {
      if (!this.stream.closed) this.stream.close(http2.NGHTTP2_CANCEL);
    });
  }

  // --- towards grpc-js: the listener of the call --------------------------------------------------------------

  onReceiveMetadata(metadata: Metadata): void {
    this.#listener!.onReceiveMetadata(metadata);
  }

  onReceiveMessage(message: unknown): void {
    this.#listener!.onReceiveMessage(message);
  }

  onReceiveHalfClose(): void {
    // A unary handler is started here, and holds the message until it answers.
    this.#handling = true;
    this.#listener!.onReceiveHalfClose();
  }

  onCancel(): void {
    this.#listener!.onCancel();
  }

  // --- towards the handler: the call ----------------------------------------------------------------------------

  start(listener: CallListener): void {
    this.#listener = listener;
    this.call.start(this);
  }

  sendMetadata(metadata: Metadata): void {
    this.call.sendMetadata(metadata);
  }

  sendMessage(message: unknown, callback: () => void): void {
    // Marked before it is passed on: on a cancelled call grpc-js drops the message and never sends the status.
    this.#answer();
    // grpc-js serializes and writes the message at once; what the stream holds more afterwards is the response,
    // held until the stream's write callback (the bytes went out, within the client's flow-control window) or
    // its close.
    const before = this.stream.writableLength;
    // The write callback comes later (the stream's write never completes at once): by then `release` is known.
    const written: { release?: () => void } = {};
    this.call.sendMessage(message, () => {
      written.release?.();
      callback();
    });
    const queued = this.stream.writableLength - before;
    if (queued <= 0 || this.stream.closed) return;
    const release = this.guard.responseQueued(this.stream, queued);
    written.release = release;
    // Every agent method answers once; should one answer more, the close gives back all (each release is once).
    const earlier = this.#releaseResponse;
    this.#releaseResponse = earlier === undefined ? release : () => (earlier(), release());
  }

  sendStatus(callStatus: CallStatus): void {
    this.#answer();
    this.call.sendStatus(callStatus);
  }

  startRead(): void {
    this.call.startRead();
  }

  getPeer(): string {
    return this.call.getPeer();
  }

  getDeadline() {
    return this.call.getDeadline();
  }

  getHost(): string {
    return this.call.getHost();
  }

  getAuthContext() {
    return this.call.getAuthContext();
  }

  getConnectionInfo() {
    return this.call.getConnectionInfo();
  }

  getMetricsRecorder() {
    return this.call.getMetricsRecorder();
  }
}
