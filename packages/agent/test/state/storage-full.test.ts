/** A full disk said to the server (the heartbeat) in words that name no file of the device. */
import { describe, expect, it } from 'vitest';
import { isStorageFull, storageFullWords } from '../../src/state/index.js';

describe('storageFullWords', () => {
  it("says ENOSPC, EDQUOT and SQLITE_FULL without the failed write's path, through wrappers", () => {
    const enospc = Object.assign(
      new Error("ENOSPC: no space left on device, write '/var/lib/edgefleet/agent/agent.db-wal'"),
      { code: 'ENOSPC' },
    );
    const wrapped = new Error('saving the update failed', { cause: enospc });
    expect(isStorageFull(wrapped)).toBe(true);
    expect(storageFullWords(wrapped)).toBe('no space left on the device');
    expect(storageFullWords(Object.assign(new Error('x'), { code: 'EDQUOT' }))).toBe('disk quota exceeded');
    expect(
      storageFullWords(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' })),
    ).toBe('database or disk is full');
  });
});
