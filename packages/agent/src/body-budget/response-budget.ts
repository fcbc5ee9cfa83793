import type { Logger } from 'pino';

/** The door a connection came in by, as metrics and logs name it. */
export type ResponseDoor = 'grpc' | 'rest';

export interface ResponseBudgetOptions {
  /** Called when a connection is closed because its unread answers had waited longest when the budget was full. */
  onSlowReaderClosed?: (door: ResponseDoor, unreadBytes: number) => void;
}

interface Reader {
  door: ResponseDoor;
  close: () => void;
  /** Its answers waiting, each by its size. */
  answers: Set<Answer>;
}

interface Answer {
  reader: Reader;
  connection: object;
  bytes: number;
}

/** The budget when none is configured: that of request bodies (defaultBodyBudgetBytes), for the same reason. */
export { defaultBodyBudgetBytes as defaultResponseBudgetBytes } from './body-budget.js';

/**
 * One byte budget for answers (gRPC response messages, REST response bodies) handed to a connection but not yet
 * taken by its client, across both doors (docs/security.md#limits). A client that sends requests and never reads
 * the answers leaves them in the agent's memory: without a bound, connections × calls × the largest answer.
 * The bytes are already in memory when they are counted, so nothing is refused here: when an answer takes the
 * count past the limit, the connection whose oldest unread answer has waited longest is closed (its answers
 * dropped, its client sees the connection go), then the next, until the count is back within it. A client that
 * reads takes each answer as it comes, so the answers a flood leaves unread are older than its own: it is
 * closed only if the flood queues the whole budget while one of its answers is still in transit. Not by size:
 * one answer in transit to a reader may well be larger than what each of many flooding connections holds. O(1)
 * per answer; closing a connection, O(its answers).
 */
export class ResponseBudget {
  readonly limitBytes: number;
  readonly #onSlowReaderClosed: ResponseBudgetOptions['onSlowReaderClosed'];
  #queuedBytes = 0;
  #slowReadersClosed = 0;
  /** Answers waiting, oldest first (a Set keeps insertion order). */
  readonly #answers = new Set<Answer>();
  /** Connections (an HTTP/2 session, a socket) with answers waiting, by the object that stands for each. */
  readonly #readers = new Map<object, Reader>();
  /** Connections closed by the budget: what they still report is not counted again. */
  readonly #closed = new WeakSet<object>();

  constructor(limitBytes: number, options: ResponseBudgetOptions = {}) {
    if (!Number.isSafeInteger(limitBytes) || limitBytes <= 0)
      throw new RangeError(`a response budget must be a positive whole number of bytes, not ${limitBytes}`);
    this.limitBytes = limitBytes;
    this.#onSlowReaderClosed = options.onSlowReaderClosed;
  }

  /** Bytes of answers handed to connections and not yet taken by their clients. */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** Connections closed so far because their answers had waited longest when the budget was full. */
  get slowReadersClosed(): number {
    return this.#slowReadersClosed;
  }

  /**
   * `bytes` of an answer were handed to `connection` (its key: the same object for all its answers) and wait for
   * its client. Returns the function to call once they are taken (written out) or dropped (the stream or
   * connection closed); calling it again does nothing. `close` closes the connection, should it be the one to go.
   */
  queued(connection: object, door: ResponseDoor, close: () => void, bytes: number): () => void {
    if (bytes <= 0 || this.#closed.has(connection)) return () => undefined;
    let reader = this.#readers.get(connection);
    if (reader === undefined) {
      reader = { door, close, answers: new Set() };
      this.#readers.set(connection, reader);
    }
    const answer: Answer = { reader, connection, bytes };
    reader.answers.add(answer);
    this.#answers.add(answer);
    this.#queuedBytes += bytes;
    if (this.#queuedBytes > this.limitBytes) this.#closeSlowestReaders();
    return () => {
      // Taken, dropped, or its connection closed by the budget (its bytes were given back then).
      if (!this.#answers.delete(answer)) return;
      this.#queuedBytes -= answer.bytes;
      answer.reader.answers.delete(answer);
      if (answer.reader.answers.size === 0) this.#readers.delete(connection);
    };
  }

  /** Closes the connections whose answers have waited longest until the count is within the limit. */
  #closeSlowestReaders(): void {
    while (this.#queuedBytes > this.limitBytes) {
      const oldest = this.#answers.values().next();
      if (oldest.done === true) return;
      const { reader, connection } = oldest.value;
      let unread = 0;
      for (const answer of reader.answers) {
        this.#answers.delete(answer);
        unread += answer.bytes;
      }
      this.#queuedBytes -= unread;
      this.#readers.delete(connection);
      this.#closed.add(connection);
      this.#slowReadersClosed++;
      this.#onSlowReaderClosed?.(reader.door, unread);
      reader.close();
    }
  }

  /** What the log says when a connection is closed. */
  static describeClosing(door: ResponseDoor, unreadBytes: number, limitBytes: number): string {
    return `closed a ${door === 'grpc' ? 'gRPC' : 'REST'} connection whose client left ${unreadBytes} bytes of answers unread: answers waiting for their clients passed the agent's budget of ${limitBytes} bytes for them (edgefleet_max_responses_queued_bytes), and its had waited longest; expected clients to read their answers`;
  }
}

/**
 * Why a configured response budget is too small, when it is smaller than the largest gRPC message (`-m`): an
 * answer that size, in transit to a client that reads, would close its own connection every time. Undefined
 * when it is large enough.
 */
export function responseBudgetWarning(limitBytes: number, maxMessageBytes: number): string | undefined {
  if (limitBytes >= maxMessageBytes) return undefined;
  return `edgefleet_max_responses_queued_bytes (${limitBytes} bytes) is smaller than the largest answer the agent sends, a gRPC message of up to -m (${maxMessageBytes} bytes): a larger answer closes its own connection, even to a client that reads; expected at least a few times ${maxMessageBytes} bytes, or leave it unset`;
}

/** How long after a logged closing the next ones are only counted, then logged as one line. */
const SLOW_READER_LOG_INTERVAL_MS = 60_000;

/**
 * What the agent does when the budget closes a connection: a warning naming the budget and its key, and `count`
 * (the metric). A flood may close connection after connection: the first is logged, the ones in the next minute
 * are logged as one line then (event slow_readers_closed, with how many), so that the log cannot be flooded.
 */
export function slowReaderLog(
  logger: Logger,
  limitBytes: number,
  count?: (door: ResponseDoor) => void,
): NonNullable<ResponseBudgetOptions['onSlowReaderClosed']> {
  let quiet: NodeJS.Timeout | undefined;
  let suppressed = 0;
  return (door, unreadBytes) => {
    count?.(door);
    if (quiet !== undefined) {
      suppressed++;
      return;
    }
    logger.warn(
      { event: 'slow_reader_closed', door },
      ResponseBudget.describeClosing(door, unreadBytes, limitBytes),
    );
    quiet = setTimeout(() => {
      quiet = undefined;
      if (suppressed > 0)
        logger.warn(
          { event: 'slow_readers_closed', count: suppressed },
          `closed ${suppressed} more connections whose clients left answers unread past the agent's budget of ${limitBytes} bytes for them (edgefleet_max_responses_queued_bytes)`,
        );
      suppressed = 0;
    }, SLOW_READER_LOG_INTERVAL_MS);
    quiet.unref();
  };
}
