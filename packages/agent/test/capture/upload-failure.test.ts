/**
 * A failed capture upload's log fields: an expected failure (the network, the store's answer) without a stack,
 * anything else (a bug, a local fault) with its error and stack.
 */
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { uploadFailureFields } from '../../src/capture/upload-failure.js';

async function caught(run: () => unknown): Promise<Error> {
  try {
    await run();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a failure');
}

/** A real ECONNREFUSED: a port that was listening, now closed. */
async function refusedConnection(): Promise<Error> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', resolve);
  });
}

describe('uploadFailureFields', () => {
  it('leaves the stack out for a network failure, wrapped or not', async () => {
    const refused = await refusedConnection();
    expect((refused as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
    expect(uploadFailureFields(refused)).toEqual({});
    expect(uploadFailureFields(new Error('upload of c/1 failed', { cause: refused }))).toEqual({});
    const undici = Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' });
    expect(uploadFailureFields(new TypeError('fetch failed', { cause: undici }))).toEqual({});
  });

  it('keeps the error and its stack for other errors that carry a code (a bug, a local file)', async () => {
    const missing = await caught(() => readFile(path.join(os.tmpdir(), 'edgefleet-no-such-capture-file')));
    expect((missing as NodeJS.ErrnoException).code).toBe('ENOENT');
    expect(uploadFailureFields(missing)).toEqual({ err: missing });
    const wrapped = new Error('upload of c/1 failed', { cause: missing });
    expect(uploadFailureFields(wrapped)).toEqual({ err: wrapped });
    const bug = await caught(() => Buffer.from(42 as unknown as string));
    expect((bug as NodeJS.ErrnoException).code).toBe('ERR_INVALID_ARG_TYPE');
    expect(uploadFailureFields(bug)).toEqual({ err: bug });
  });
});
