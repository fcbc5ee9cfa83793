import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probeTlsPort } from '../../src/server-client/device-port-probe.js';

describe('probeTlsPort', () => {
  // A peer that starts a TLS handshake (a ServerHello announced at 16 KiB) and then sends one byte of it every 50 ms,
  // never finishing it.
  let trickler: net.Server;
  const sockets = new Set<net.Socket>();
  beforeAll(async () => {
    trickler = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.write(Buffer.from([0x16, 0x03, 0x03, 0x40, 0x00, 0x02, 0x00, 0x3f, 0xfc]));
      const drip = setInterval(() => socket.write(Buffer.from([0])), 50);
      socket.on('close', () => {
        clearInterval(drip);
        sockets.delete(socket);
      });
    });
    await new Promise<void>((resolve) => trickler.listen(0, '127.0.0.1', resolve));
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => trickler.close(resolve));
  });

  it('gives up on a peer that keeps sending without completing a handshake (N8)', async () => {
    const port = (trickler.address() as net.AddressInfo).port;
    await expect(probeTlsPort(`https://127.0.0.1:${port}`, 300)).resolves.toBeUndefined();
    // The probe closed its connection.
    await expect.poll(() => sockets.size).toBe(0);
  }, 15_000);
});
