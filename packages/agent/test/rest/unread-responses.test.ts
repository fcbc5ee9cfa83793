import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { ResponseBudget } from '../../src/body-budget/index.js';
import { UnreadResponses } from '../../src/rest/unread-responses.js';
import { scratch } from './helpers.js';

const MiB = 1024 ** 2;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await delay(5);
}

/** An HTTP server on a Unix socket that answers every request at once with `answerBytes`, counted in `budget`. */
async function start(budget: ResponseBudget, answerBytes: number) {
  const files = await scratch('agent-unread-responses-');
  cleanups.push(() => files.cleanup());
  const unread = new UnreadResponses(budget);
  const answer = Buffer.alloc(answerBytes, 'a');
  const server: Server = createServer((req, res) => {
    unread.count(res);
    res.writeHead(200, { 'content-length': answer.length });
    res.end(answer);
  });
  const path = join(files.root, 'http.sock');
  await new Promise<void>((resolve) => server.listen(path, resolve));
  cleanups.push(() => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const open = async () => {
    const socket = connect({ path });
    cleanups.push(() => void socket.destroy());
    socket.on('error', () => undefined);
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    return socket;
  };
  return { open };
}

/** One request on a connection of its own, read in full. */
async function roundTrip(socket: Socket): Promise<void> {
  let received = '';
  socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
  socket.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  expect(received).toMatch(/^HTTP\/1\.1 200/);
}

describe('REST answers counted in the response budget', () => {
  it('counts the answers to pipelined requests queued behind an unread one, and gives them back once read (review F2)', async () => {
    const budget = new ResponseBudget(256 * MiB);
    const { open } = await start(budget, MiB);
    // Eight requests in one write on a connection that never reads: Node parses and answers them all at once,
    // the first on the socket, the other seven held apart from it until the first has gone.
    const pipelined = 8;
    const client = await open();
    client.pause();
    client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(pipelined));
    // Answered after them (the same event loop; each answer is written at once).
    await roundTrip(await open());
    // All eight are counted, less what the kernel took of the first (a socket buffer, well under 1 MiB).
    expect(budget.queuedBytes).toBeGreaterThan((pipelined - 1) * MiB);
    // Once the client reads, each is given back as its connection writes it out.
    let received = 0;
    client.on('data', (chunk: Buffer) => (received += chunk.length));
    client.resume();
    await until(() => received > pipelined * MiB && budget.queuedBytes === 0);
  });

  it('closes a pipelining connection whose answers pass the budget, and gives back what it held', async () => {
    const budget = new ResponseBudget(4 * MiB);
    const { open } = await start(budget, MiB);
    const client = await open();
    client.pause();
    client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(8));
    // (A paused client does not see its end; the budget says when it has closed the connection.)
    await until(() => budget.slowReadersClosed === 1);
    expect(budget.queuedBytes).toBe(0);
    await roundTrip(await open());
    expect(budget.queuedBytes).toBe(0);
  });
});
