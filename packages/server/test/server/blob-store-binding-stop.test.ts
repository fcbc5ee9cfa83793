/**
 * Stopping the server while the background blob-store check runs (server/blob-store-binding.ts): the check is
 * waited for and writes nothing more, so nothing is written to the store or the database after stop returns
 * (they close next). A real folder store and a real SQLite database; the check is held at its marker read. And a
 * real S3 store whose endpoint accepts connections and never answers: stop aborts the marker read, and gives up
 * waiting for a check that does not end when aborted.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBlobStore, S3BlobStore, type BlobStore } from '../../src/blobs/index.js';
import {
  BLOB_STORE_MARKER_KEY,
  blobStoreBinder,
  watchBlobStoreBinding,
} from '../../src/server/blob-store-binding.js';
import type { ServerDatabase } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';

const [sqlite] = await databaseEngines();

/** Lets the event loop run a few turns: long enough for a stop that does not wait to have returned. */
async function turns(count = 10): Promise<void> {
  for (let i = 0; i < count; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe('stopping the background blob-store check', () => {
  let dir: string;
  let database: ServerDatabase;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-binding-stop-'));
    database = await openFreshDatabase(sqlite!);
  });
  afterAll(async () => {
    await database?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('waits for a check in flight, which then writes nothing to the store or the database', async () => {
    const store = new LocalBlobStore(path.join(dir, 'blobs'));
    const events: string[] = [];
    let markerRead!: () => void;
    const markerReadStarted = new Promise<void>((resolve) => (markerRead = resolve));
    let answer!: () => void;
    const storeAnswers = new Promise<void>((resolve) => (answer = resolve));
    // The store answers the marker read only when the test says (a fresh store: no marker yet, so the check
    // would write one and record it).
    const held: BlobStore = Object.assign(Object.create(store) as BlobStore, {
      get: async (key: string, range?: { start: number; end: number }) => {
        if (key === BLOB_STORE_MARKER_KEY) {
          markerRead();
          await storeAnswers;
        }
        return store.get(key, range);
      },
      put: (...args: Parameters<BlobStore['put']>) => {
        events.push(`put ${args[0]}`);
        return store.put(...args);
      },
    });
    const binder = blobStoreBinder(database.db, held, 'file:///test-store');
    const watch = watchBlobStoreBinding(() => binder.bind(), {
      onMismatch: () => events.push('mismatch'),
      initialDelayMs: 1,
    });
    await markerReadStarted;

    // As the server stops: the binder, then the watch.
    const stopped = (async () => {
      await binder.stop();
      await watch.stop();
      events.push('stopped');
    })();
    await turns();
    expect(events, 'stop returned while the check was still running').toEqual([]);

    answer();
    await stopped;
    await turns();
    expect(events).toEqual(['stopped']);
    expect(await store.head(BLOB_STORE_MARKER_KEY)).toBeUndefined();
    expect(await database.db.selectFrom('server_settings').select('key').execute()).toEqual([]);
    // A check asked for after stop (a late readiness poll) is refused, and writes nothing either.
    await expect(binder.bind()).rejects.toThrow(/the server is stopping/);
    expect(await store.head(BLOB_STORE_MARKER_KEY)).toBeUndefined();
  });

  describe('an S3 endpoint that accepts connections and never answers', () => {
    let endpoint: net.Server;
    let endpointUrl: string;
    const sockets = new Set<net.Socket>();
    /** Resolved at each request's first bytes; reset by the test. */
    let requested: () => void = () => undefined;
    /** Resolved when a connection closes: the client ended it (the request aborted). */
    let closedByClient: () => void = () => undefined;
    beforeAll(async () => {
      endpoint = net.createServer((socket) => {
        sockets.add(socket);
        socket.once('data', () => requested());
        socket.once('close', () => {
          sockets.delete(socket);
          closedByClient();
        });
      });
      await new Promise<void>((resolve) => endpoint.listen(0, '127.0.0.1', resolve));
      endpointUrl = `http://127.0.0.1:${(endpoint.address() as net.AddressInfo).port}`;
    });
    afterAll(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => endpoint?.close(resolve));
    });

    function silentStore(): S3BlobStore {
      return new S3BlobStore({
        endpoint: endpointUrl,
        bucket: 'edgefleet',
        prefix: '',
        credentials: { accessKeyId: 'test', secretAccessKey: 'test-secret' },
        maxAttempts: 1,
      });
    }

    it('stop aborts the marker read in flight: the request ends and stop returns without giving up', async () => {
      const store = silentStore();
      const abandoned: number[] = [];
      const markerRequested = new Promise<void>((resolve) => (requested = resolve));
      const requestClosed = new Promise<void>((resolve) => (closedByClient = resolve));
      // A bound no check would reach here if the abort ended it: giving up means the read was not aborted.
      const binder = blobStoreBinder(database.db, store, 's3://edgefleet/', {
        stopWaitMs: 10_000,
        onAbandoned: (waitedMs) => abandoned.push(waitedMs),
      });
      const bind = binder.bind();
      await markerRequested;
      await binder.stop();
      await requestClosed;
      expect(abandoned).toEqual([]);
      await expect(bind).rejects.toThrow();
      expect(await database.db.selectFrom('server_settings').select('key').execute()).toEqual([]);
      await store.close();
    });

    it('stop gives up waiting for a check that does not end when aborted, and ends every bind waiting on it', async () => {
      const store = silentStore();
      // The marker read as a store that does not pass the abort on would make it: it never ends.
      const deaf: BlobStore = Object.assign(Object.create(store) as BlobStore, {
        get: (key: string, range?: { start: number; end?: number }) => store.get(key, range),
      });
      const abandoned: number[] = [];
      const markerRequested = new Promise<void>((resolve) => (requested = resolve));
      const binder = blobStoreBinder(database.db, deaf, 's3://edgefleet/', {
        stopWaitMs: 50,
        onAbandoned: (waitedMs) => abandoned.push(waitedMs),
      });
      const watch = watchBlobStoreBinding(() => binder.bind(), {
        onMismatch: () => abandoned.push(-1),
        initialDelayMs: 1,
      });
      await markerRequested;
      await binder.stop();
      await watch.stop();
      expect(abandoned).toEqual([50]);
      await expect(binder.bind()).rejects.toThrow(/the server is stopping/);
      expect(await database.db.selectFrom('server_settings').select('key').execute()).toEqual([]);
      await store.close();
    });
  });
});
