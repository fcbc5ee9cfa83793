/**
 * A failed capture upload's log fields: an expected failure (the network, the store's answer) without a stack,
 * anything else (a bug, a local fault) with its error and stack.
 */
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { MissingCredentialsError } from '../../src/capture/object-store.js';
import { UploadFailureLines, repeatsNote, uploadFailureFields } from '../../src/capture/upload-failure.js';

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

  it('leaves the stack out when the device has no AWS credentials (the message says what to set)', () => {
    const sdk = Object.assign(new Error('Could not load credentials from any providers'), {
      name: 'CredentialsProviderError',
    });
    expect(uploadFailureFields(new MissingCredentialsError('bucket b', { cause: sdk, env: {} }))).toEqual({});
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

describe('UploadFailureLines', () => {
  it('admits the first failure of a run, then one a minute counting those left out, and ends the run on success', () => {
    let now = 0;
    const lines = new UploadFailureLines({ now: () => now });
    const resumed: { fields: Record<string, unknown>; message: string }[] = [];
    const logger = {
      info: (fields: object, message: string) =>
        resumed.push({ fields: fields as Record<string, unknown>, message }),
      warn: () => undefined,
      error: () => undefined,
    };
    lines.succeeded(logger, 'store', () => 'never');
    expect(resumed).toEqual([]);
    expect(lines.failed()).toEqual({ leftOut: 0 });
    expect(lines.failed()).toBeUndefined();
    expect(lines.failed({ logged: false })).toBeUndefined();
    now += 60_000;
    expect(lines.failed()).toEqual({ leftOut: 1 });
    expect(repeatsNote(1, 'failed round(s)')).toBe('1 more failed round(s) since the last line, not logged');
    expect(repeatsNote(0, 'failed round(s)')).toBe('repeats logged at most once a minute');
    expect(lines.failed()).toBeUndefined();
    expect(lines.failures).toBe(5);
    lines.succeeded(logger, 'store', (failures) => `back after ${failures}`);
    expect(resumed).toEqual([
      {
        fields: { event: 'capture-upload-resumed', store: 'store', failures: 5, failuresNotLogged: 1 },
        message: 'back after 5',
      },
    ]);
    expect(lines.failures).toBe(0);
    // A new run: its first failure is logged at once.
    expect(lines.failed()).toEqual({ leftOut: 0 });
  });
});
