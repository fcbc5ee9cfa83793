/** The door a connection came in by, as metrics and logs name it. */
export type ResponseDoor = 'grpc' | 'rest';

export interface ResponseBudgetOptions {
  /** Called when a connection is closed for holding the most unread response bytes while the budget was full. */
  onSlowReaderClosed?: (door: ResponseDoor, unreadBytes: number) => void;
}

interface Reader {
  door: ResponseDoor;
  bytes: number;
  close: () => void;
}

/** The budget when none is configured: that of request bodies (defaultBodyBudgetBytes), for the same reason. */
export { defaultBodyBudgetBytes as defaultResponseBudgetBytes } from './body-budget.js';

/**
 * One byte budget for answers (gRPC response messages, REST response bodies) handed to a connection but not yet
 * taken by its client, across both doors (docs/security.md#limits). A client that sends requests and never reads
 * the answers leaves them in the agent's memory: without a bound, connections × calls × the largest answer.
 * The bytes are already in memory when they are counted, so nothing is refused here: when an answer takes the
 * count past the limit, the connection holding the most unread bytes is closed (its answers dropped, its client
 * sees the connection go) until the count is back within it. A client that reads its answers holds at most the
 * one in transit, so a flood never closes it unless it holds more than every flooding connection. Counting is
 * O(1) per answer; finding whom to close, O(connections holding unread bytes), only when the limit is passed.
 */
export class ResponseBudget {
  readonly limitBytes: number;
  readonly #onSlowReaderClosed: ResponseBudgetOptions['onSlowReaderClosed'];
  #queuedBytes = 0;
  #slowReadersClosed = 0;
  /** Connections (an HTTP/2 session, a socket) with unread answers, by the object that stands for each. */
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

  /** Connections closed so far because they held the most unread bytes when the budget was full. */
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
      reader = { door, bytes: 0, close };
      this.#readers.set(connection, reader);
    }
    reader.bytes += bytes;
    this.#queuedBytes += bytes;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      // Closed by the budget meanwhile: its bytes were taken off then.
      if (this.#readers.get(connection) !== reader) return;
      reader.bytes -= bytes;
      this.#queuedBytes -= bytes;
      if (reader.bytes === 0) this.#readers.delete(connection);
    };
    if (this.#queuedBytes > this.limitBytes) this.#closeSlowestReaders(connection);
    return release;
  }

  /** Closes the connections holding the most unread bytes until the count is within the limit. */
  #closeSlowestReaders(newest: object): void {
    while (this.#queuedBytes > this.limitBytes && this.#readers.size > 0) {
      let slowest: [object, Reader] | undefined;
      for (const entry of this.#readers) {
        // On a tie, another connection goes before the one whose answer passed the limit just now.
        const more = slowest === undefined || entry[1].bytes > slowest[1].bytes;
        const tieAgainstNewest = slowest !== undefined && entry[1].bytes === slowest[1].bytes && slowest[0] === newest;
        if (more || tieAgainstNewest) slowest = entry;
      }
      const [connection, reader] = slowest!;
      this.#readers.delete(connection);
      this.#closed.add(connection);
      this.#queuedBytes -= reader.bytes;
      this.#slowReadersClosed++;
      this.#onSlowReaderClosed?.(reader.door, reader.bytes);
      reader.close();
    }
  }

  /** What the log says when a connection is closed. */
  static describeClosing(door: ResponseDoor, unreadBytes: number, limitBytes: number): string {
    return `closed a ${door === 'grpc' ? 'gRPC' : 'REST'} connection whose client left ${unreadBytes} bytes of answers unread: answers waiting for their clients passed the agent's budget of ${limitBytes} bytes for them (edgefleet_max_responses_queued_bytes), and it held the most; expected clients to read their answers`;
  }
}
