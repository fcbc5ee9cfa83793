import type { ConnectionCaps, ConnectionRefusal } from './connection-limits.js';

/** The part of a logger (pino's shape) the refusal log writes to. */
export interface RefusalLogger {
  warn(fields: Record<string, unknown>, message: string): void;
}

/** Time and a one-shot timer, injected so that tests can move time on by hand. */
export interface RefusalClock {
  now(): number;
  /** Calls `callback` once after `ms`; the returned function cancels it. Must not keep the process alive. */
  after(ms: number, callback: () => void): () => void;
}

export const systemRefusalClock: RefusalClock = {
  now: () => Date.now(),
  after(ms, callback) {
    const timer = setTimeout(callback, ms);
    timer.unref();
    return () => clearTimeout(timer);
  },
};

export interface ConnectionRefusalLogOptions {
  /** The listener's name in the log line and the `listener` field: `operator`, `device`, `grpc`, `rest-tcp`… */
  listener: string;
  /** The caps in the line; a listener without a per-address cap (a Unix socket) leaves it out. */
  caps: Pick<ConnectionCaps, 'maxConnections'> & Partial<Pick<ConnectionCaps, 'maxConnectionsPerAddress'>>;
  logger: RefusalLogger;
  clock?: RefusalClock;
  /** At most one line per this long (default 60 s). */
  intervalMs?: number;
  /**
   * Every connection over a cap, as it happens (a metrics counter): refused, or let in by closing another
   * (`idleClosed`), which a counter of refusals must tell apart.
   */
  count?: (refusal: ConnectionRefusal) => void;
  /**
   * What a connection closed by `timedOut` failed to do, for the line (the gRPC socket: `sent no HTTP/2 preface
   * within 10 s`). Default `sent nothing in time`.
   */
  timeoutText?: string;
}

/** Address groups named one by one in a line; the rest are counted together (a flood from many need not grow it). */
const MAX_ADDRESSES = 8;
/** Addresses written into the message itself (all of MAX_ADDRESSES are in the `addresses` field). */
const ADDRESSES_IN_MESSAGE = 3;

/**
 * Logs the connections over a listener's caps (refused, or let in by closing another one, counted apart and
 * naming the closed one's address group: ConnectionRefusal), at
 * most one warn line per interval (`event: connections_refused`): a flood is refused thousands of times a minute,
 * and a line each would flood the log in turn. The first refusal after a quiet interval is logged at once, so that an operator sees a flood begin; those
 * after it are summed up when the interval ends.
 */
export class ConnectionRefusalLog {
  readonly #options: ConnectionRefusalLogOptions;
  readonly #clock: RefusalClock;
  readonly #intervalMs: number;
  #lastLineAt: number | undefined;
  #cancelFlush: (() => void) | undefined;
  #window = newWindow();

  constructor(options: ConnectionRefusalLogOptions) {
    this.#options = options;
    this.#clock = options.clock ?? systemRefusalClock;
    this.#intervalMs = options.intervalMs ?? 60_000;
  }

  /** For capConnections' `onRefused`. */
  readonly refused = (refusal: ConnectionRefusal): void => {
    this.#options.count?.(refusal);
    const window = this.#window;
    const address = refusal.address ?? 'unix socket';
    if (refusal.idleClosed === true) {
      // Let in: counted apart from refusals, naming whose connection was closed for it.
      window.evicted += 1;
      const closed = refusal.closedAddress ?? 'unix socket';
      if (window.closedAddresses.has(closed) || window.closedAddresses.size < MAX_ADDRESSES)
        window.closedAddresses.set(closed, (window.closedAddresses.get(closed) ?? 0) + 1);
      else window.otherClosedAddresses += 1;
    } else {
      window.refused += 1;
      window.byCap[refusal.refusedBy === 'total' ? 'total' : 'perAddress'] += 1;
    }
    this.#note(address);
  };

  /**
   * A connection the listener closed because it sent nothing in time (the gRPC socket's preface timeout): told in
   * the same line, at the same pace, as refusals (a flood of silent connections is closed thousands of times a
   * minute too). Counting is the caller's (no cap is involved).
   */
  readonly timedOut = (address?: string): void => {
    this.#window.timedOut += 1;
    this.#note(address ?? 'unix socket');
  };

  /** Writes what is pending now and stops the timer (the listener is closing). */
  close(): void {
    this.#cancelFlush?.();
    this.#cancelFlush = undefined;
    if (this.#window.refused + this.#window.evicted + this.#window.timedOut > 0) this.#flush();
  }

  /** Counts `address` in the window and writes the line now, or schedules it for the interval's end. */
  #note(address: string): void {
    const window = this.#window;
    if (window.addresses.has(address) || window.addresses.size < MAX_ADDRESSES) {
      window.addresses.set(address, (window.addresses.get(address) ?? 0) + 1);
    } else window.otherAddresses += 1;
    const now = this.#clock.now();
    if (this.#lastLineAt === undefined || now - this.#lastLineAt >= this.#intervalMs) this.#flush();
    else
      this.#cancelFlush ??= this.#clock.after(this.#lastLineAt + this.#intervalMs - now, () => this.#flush());
  }

  #flush(): void {
    this.#cancelFlush = undefined;
    const window = this.#window;
    this.#window = newWindow();
    if (window.refused + window.evicted + window.timedOut === 0) return;
    const { listener, caps } = this.#options;
    const since = this.#lastLineAt;
    this.#lastLineAt = this.#clock.now();
    const ranked = [...window.addresses].sort((a, b) => b[1] - a[1]);
    const named = ranked.slice(0, ADDRESSES_IN_MESSAGE).map(([address, n]) => `${address} (${n})`);
    const rest =
      ranked.slice(ADDRESSES_IN_MESSAGE).reduce((sum, [, n]) => sum + n, 0) + window.otherAddresses;
    const from = rest > 0 ? `${named.join(', ')} and ${rest} from other addresses` : named.join(', ');
    const closedRanked = [...window.closedAddresses].sort((a, b) => b[1] - a[1]);
    const closedRest =
      closedRanked.slice(ADDRESSES_IN_MESSAGE).reduce((sum, [, n]) => sum + n, 0) +
      window.otherClosedAddresses;
    const closedFrom =
      closedRanked
        .slice(0, ADDRESSES_IN_MESSAGE)
        .map(([closed, n]) => `${closed} (${n})`)
        .join(', ') + (closedRest > 0 ? ` and ${closedRest} of other addresses` : '');
    const capsText =
      (caps.maxConnectionsPerAddress === undefined
        ? ''
        : `per-address cap ${caps.maxConnectionsPerAddress} / `) + `total cap ${caps.maxConnections}`;
    const evictedText = `let in by closing another connection, of ${closedFrom}`;
    const period =
      since === undefined ? '' : ` in the last ${Math.round((this.#lastLineAt - since) / 1000)} s`;
    const timeoutText = this.#options.timeoutText ?? 'sent nothing in time';
    const timedOutText = window.timedOut > 0 ? ` (${window.timedOut} more closed: ${timeoutText})` : '';
    this.#options.logger.warn(
      {
        event: 'connections_refused',
        listener,
        refused: window.refused,
        refusedBy: window.byCap,
        addresses: Object.fromEntries(ranked),
        ...(window.otherAddresses > 0 && { otherAddresses: window.otherAddresses }),
        ...(window.evicted > 0 && {
          evicted: window.evicted,
          closedAddresses: Object.fromEntries(closedRanked),
        }),
        ...(window.otherClosedAddresses > 0 && { otherClosedAddresses: window.otherClosedAddresses }),
        ...(window.timedOut > 0 && { timedOut: window.timedOut }),
        ...(caps.maxConnectionsPerAddress !== undefined && { perAddressCap: caps.maxConnectionsPerAddress }),
        totalCap: caps.maxConnections,
      },
      window.refused > 0
        ? `${window.refused} connection(s) refused on the ${listener} listener from ${from}${period}: ${capsText}` +
            (window.evicted > 0 ? ` (${window.evicted} more ${evictedText})` : '') +
            timedOutText
        : window.evicted > 0
          ? `${window.evicted} connection(s) over a cap on the ${listener} listener from ${from}${period} ${evictedText}: ${capsText}${timedOutText}`
          : `${window.timedOut} connection(s) closed on the ${listener} listener from ${from}${period}: ${timeoutText}`,
    );
  }
}

function newWindow() {
  return {
    refused: 0,
    byCap: { perAddress: 0, total: 0 },
    addresses: new Map<string, number>(),
    otherAddresses: 0,
    evicted: 0,
    closedAddresses: new Map<string, number>(),
    otherClosedAddresses: 0,
    /** Closed for sending nothing in time (ConnectionRefusalLog.timedOut). */
    timedOut: 0,
  };
}
