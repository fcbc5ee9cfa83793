import { useEffect, useRef } from 'preact/hooks';
import { coalesced } from './coalesce.js';

/** Topics the server's change feed names (server/src/console/change-feed.ts). */
export type ChangeTopic = 'fleets' | 'devices' | 'models' | 'packaging' | 'tokens' | 'deployments';

const EVENTS_ROUTE = '/api/v1/console/events';

/** `everything`: a new stream is ready, so every view reloads at once (changes before it were not sent). */
type Listener = (topics: ChangeTopic[], everything: boolean) => void;

const ALL_TOPICS: ChangeTopic[] = ['fleets', 'devices', 'models', 'packaging', 'tokens', 'deployments'];

/** Whether this browser's console session still holds: false once the server answers 401 (signed out). */
export type SessionCheck = () => Promise<boolean>;

/**
 * How long a refused stream waits before it is opened again: 30-60 s, jittered, so that tabs refused together
 * (a full server, a token over its stream cap) do not all come back at once.
 */
export function refusedRetryDelayMs(random: () => number = Math.random): number {
  return 30_000 + Math.floor(30_000 * random());
}

/**
 * One EventSource per page, shared by every view that listens. The browser reconnects it by itself after a
 * network error or the end of a stream; an answer other than 200 (429 when the server or the token holds its
 * most streams, 401) closes it for good, so then the page opens a new one after `refusedRetryDelayMs`, unless
 * the session has ended (401 from the session route): then it stays offline.
 */
export class LiveUpdates {
  private source: EventSource | undefined;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private readonly listeners = new Set<Listener>();
  connected = false;
  onStateChange: (connected: boolean) => void = () => {};
  /**
   * Why the stream is refused, in the server's words (429: too many streams for the token or the server), or
   * undefined once one is open again. Without it a refused tab shows only "offline" while everything else works.
   */
  onRefusal: (reason: string | undefined) => void = () => {};

  constructor(private readonly sessionHolds: SessionCheck) {}

  start(): void {
    if (this.source) return;
    const source = new EventSource(EVENTS_ROUTE);
    source.addEventListener('open', () => {
      this.setConnected(true);
      this.onRefusal(undefined);
    });
    // From this event on, every change is sent. What changed before it (since the page loaded, or while
    // reconnecting after the server ended a stream) was not: every view reloads once.
    source.addEventListener('ready', () => this.notify(ALL_TOPICS, true));
    source.addEventListener('error', () => {
      this.setConnected(false);
      if (source.readyState === EventSource.CLOSED && this.source === source) this.refused(source);
    });
    source.addEventListener('change', (event) => {
      const { topics } = JSON.parse((event as MessageEvent<string>).data) as { topics: ChangeTopic[] };
      this.notify(topics);
    });
    this.source = source;
  }

  stop(): void {
    clearTimeout(this.retry);
    this.retry = undefined;
    this.source?.close();
    this.source = undefined;
    this.setConnected(false);
  }

  /** The browser gave `source` up (a non-200 answer): open a new one later, unless the session has ended. */
  private refused(source: EventSource): void {
    source.close();
    void this.sessionHolds()
      .catch(() => true) // the server is unreachable: try again later all the same
      .then((holds) => {
        if (this.source !== source) return; // stopped (or restarted) meanwhile
        if (!holds) return; // signed out: stays offline; the next API call shows the sign-in page
        void this.whyRefused().then((reason) => {
          if (this.source === source && reason !== undefined) this.onRefusal(reason);
        });
        this.retry = setTimeout(() => {
          this.retry = undefined;
          if (this.source !== source) return;
          this.source = undefined;
          this.start();
        }, refusedRetryDelayMs());
      });
  }

  /**
   * EventSource does not tell why it was refused; one plain request to the same route does (the 429's message).
   * It is aborted at once, so an accepted one (a place freed meanwhile) holds its place only for a moment.
   */
  private async whyRefused(): Promise<string | undefined> {
    const controller = new AbortController();
    try {
      const response = await fetch(EVENTS_ROUTE, { signal: controller.signal, credentials: 'same-origin' });
      if (response.status !== 429) return undefined;
      const body = (await response.json().catch(() => undefined)) as { message?: unknown } | undefined;
      return typeof body?.message === 'string' ? body.message : 'the server refused the live-update stream';
    } catch {
      return undefined; // unreachable: "offline" says it
    } finally {
      controller.abort();
    }
  }

  /** Every view reloads (after signing in again: what they loaded meanwhile failed). */
  reloadAll(): void {
    this.notify(ALL_TOPICS, true);
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private notify(topics: ChangeTopic[], everything = false) {
    for (const listener of this.listeners) listener(topics, everything);
  }

  private setConnected(connected: boolean) {
    this.connected = connected;
    this.onStateChange(connected);
  }
}

/**
 * Calls `reload` whenever one of `topics` changes on the server; with `minIntervalMs`, at most once per that
 * interval (changes within it are folded into one reload at its end: see coalesced).
 */
export function useLive(
  live: LiveUpdates,
  topics: ChangeTopic[],
  reload: () => void,
  options: { minIntervalMs?: number } = {},
): void {
  const latest = useRef(reload);
  latest.current = reload;
  const key = topics.join(',');
  const minIntervalMs = options.minIntervalMs ?? 0;
  useEffect(() => {
    const reloads = coalesced(() => latest.current(), minIntervalMs);
    const unsubscribe = live.subscribe((changed, everything) => {
      // A new stream's reload is not held back: nothing pending is left to fire later on its own.
      if (everything) reloads.now();
      else if (changed.some((topic) => key.split(',').includes(topic))) reloads.trigger();
    });
    return () => {
      unsubscribe();
      reloads.cancel();
    };
  }, [live, key, minIntervalMs]);
}
