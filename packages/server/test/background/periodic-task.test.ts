import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startPeriodicTask } from '../../src/background/periodic-task.js';

describe('startPeriodicTask', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('never starts a run while the last is under way, logs a failed run and runs again; stop waits for the run', async () => {
    vi.useFakeTimers();
    const logged: string[] = [];
    const logger = pino(
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          logged.push(chunk.toString('utf8'));
          done();
        },
      }),
    );
    let runs = 0;
    let pending: { resolve: () => void; reject: (error: Error) => void } | undefined;
    const task = startPeriodicTask(
      () => {
        runs += 1;
        return new Promise<void>((resolve, reject) => {
          pending = { resolve, reject };
        });
      },
      { intervalMs: 10, logger, failureMessage: 'test sweep failed; will retry' },
    );

    await vi.advanceTimersByTimeAsync(10);
    expect(runs).toBe(1);
    // Ten more ticks while the first run is under way start nothing.
    await vi.advanceTimersByTimeAsync(100);
    expect(runs).toBe(1);

    pending!.reject(new Error('database unreachable'));
    await vi.advanceTimersByTimeAsync(10);
    expect(runs).toBe(2);
    expect(logged.join('')).toContain('test sweep failed; will retry');
    expect(logged.join('')).toContain('database unreachable');

    let stopped = false;
    const stopping = task.stop().then(() => {
      stopped = true;
    });
    await vi.advanceTimersByTimeAsync(100);
    expect(stopped).toBe(false);
    pending!.resolve();
    await stopping;
    await vi.advanceTimersByTimeAsync(100);
    expect(runs).toBe(2);
  });
});
