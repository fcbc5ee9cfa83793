/**
 * PostgreSQL reached over a network path that goes silent (no RST: a cable pulled, a firewall dropping packets):
 * a real PostgreSQL behind a real TCP relay in this process, which can stop passing bytes either way while
 * keeping both sockets open. Without bounds a connection attempt, and the readiness ping on a connection that
 * hung, would wait for ever; and Readiness does not start a check again until the one running settles, so one
 * hung ping would keep /readyz failing after PostgreSQL answered again.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, pingDatabase, type ServerDatabase } from '../../src/storage/index.js';
import { startTestPostgres, type TestPostgres } from '../support/postgres.js';

const postgres = await startTestPostgres();

/** A TCP relay to `target` whose path can be made silent: bytes are then held, neither passed nor refused. */
async function startRelay(target: URL) {
  let silent = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(Number(target.port), target.hostname);
    for (const socket of [inbound, outbound]) {
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => sockets.delete(socket));
    }
    inbound.on('data', (chunk) => void (silent || outbound.write(chunk)));
    outbound.on('data', (chunk) => void (silent || inbound.write(chunk)));
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    urlFor: (url: string) => {
      const relayed = new URL(url);
      relayed.hostname = '127.0.0.1';
      relayed.port = String(port);
      return relayed.toString();
    },
    setSilent: (value: boolean) => void (silent = value),
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe.skipIf(postgres === undefined)(
  'PostgreSQL over a path that goes silent',
  { timeout: 60_000 },
  () => {
    let url: string;
    let relay: Awaited<ReturnType<typeof startRelay>>;
    beforeAll(async () => {
      url = await (postgres as TestPostgres).createDatabase();
      relay = await startRelay(new URL(url));
    });
    afterAll(async () => {
      await relay?.close();
      await postgres?.stop();
    });

    it('the ping fails within its bound, and the next one, on a new connection, passes once the path is back', async () => {
      const database: ServerDatabase = await openDatabase(
        { engine: 'postgres', url: relay.urlFor(url) },
        { maxConnections: 2, connectTimeoutMs: 500 },
      );
      try {
        await pingDatabase(database, 300);
        relay.setSilent(true);
        await expect(pingDatabase(database, 300)).rejects.toThrow(/did not answer a ping within 300 ms/);
        relay.setSilent(false);
        // The hung connection was destroyed, not handed out again: a fresh one answers.
        await pingDatabase(database, 300);
      } finally {
        relay.setSilent(false);
        await database.close();
      }
    });

    it('refuses to open within the connection bound when nothing answers', async () => {
      relay.setSilent(true);
      try {
        await expect(
          openDatabase({ engine: 'postgres', url: relay.urlFor(url) }, { connectTimeoutMs: 300 }),
        ).rejects.toThrow(/cannot connect to PostgreSQL/);
      } finally {
        relay.setSilent(false);
      }
    });
  },
);
