import { expect, vi } from 'vitest';

/**
 * Waits, polling every millisecond, until `condition` holds; after `timeoutMs` (default 10 s) fails saying what
 * it waited for. For a state another thread or process reaches (a worker's queue, a request in flight).
 */
export async function waitUntil(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  await vi.waitFor(() => expect(condition(), `waited ${timeoutMs} ms for ${what}`).toBe(true), {
    timeout: timeoutMs,
    interval: 1,
  });
}
