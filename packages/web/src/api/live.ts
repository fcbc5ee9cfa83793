import { useEffect, useRef } from 'preact/hooks';

/** Topics the server's change feed names (server/src/console/change-feed.ts). */
export type ChangeTopic = 'fleets' | 'devices' | 'models' | 'packaging' | 'tokens' | 'deployments';

const EVENTS_ROUTE = '/api/v1/console/events';

type Listener = (topics: ChangeTopic[]) => void;

const ALL_TOPICS: ChangeTopic[] = ['fleets', 'devices', 'models', 'packaging', 'tokens', 'deployments'];

/** One EventSource per page, shared by every view that listens; it reconnects by itself. */
export class LiveUpdates {
  private source: EventSource | undefined;
  private readonly listeners = new Set<Listener>();
  connected = false;
  onStateChange: (connected: boolean) => void = () => {};

  start(): void {
    if (this.source) return;
    const source = new EventSource(EVENTS_ROUTE);
    let opened = false;
    source.addEventListener('open', () => {
      this.setConnected(true);
      // The server ends streams (after their lifetime, at a restart): changes made while reconnecting were
      // never sent, so every view reloads once after a reconnect.
      if (opened) this.notify(ALL_TOPICS);
      opened = true;
    });
    source.addEventListener('error', () => this.setConnected(false));
    source.addEventListener('change', (event) => {
      const { topics } = JSON.parse((event as MessageEvent<string>).data) as { topics: ChangeTopic[] };
      this.notify(topics);
    });
    this.source = source;
  }

  stop(): void {
    this.source?.close();
    this.source = undefined;
    this.setConnected(false);
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private notify(topics: ChangeTopic[]) {
    for (const listener of this.listeners) listener(topics);
  }

  private setConnected(connected: boolean) {
    this.connected = connected;
    this.onStateChange(connected);
  }
}

/** Calls `reload` whenever one of `topics` changes on the server. */
export function useLive(live: LiveUpdates, topics: ChangeTopic[], reload: () => void): void {
  const latest = useRef(reload);
  latest.current = reload;
  const key = topics.join(',');
  useEffect(
    () =>
      live.subscribe((changed) => {
        if (changed.some((topic) => key.split(',').includes(topic))) latest.current();
      }),
    [live, key],
  );
}
