import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { SYSV_SHM_ADDON_PATH, loadSysvShmAddon } from '../../src/shm/sysv-shm-addon.js';

const addon = loadSysvShmAddon();
const created: number[] = [];

function createSegment(size: number): number {
  const { shmid } = addon.create(size);
  created.push(shmid);
  return shmid;
}

afterEach(() => {
  for (const shmid of created.splice(0)) {
    try {
      addon.remove(shmid);
    } catch {
      // removed by the test itself
    }
  }
});

/** Runs a script in a separate Node process (optionally as another user) with the addon loaded as `addon`. */
function runChild(script: string, options: { uid?: number; gid?: number; nodeOptions?: string[] } = {}) {
  const { nodeOptions = [], ...spawnOptions } = options;
  return spawnSync(
    process.execPath,
    [...nodeOptions, '-e', `const addon = require(${JSON.stringify(SYSV_SHM_ADDON_PATH)});\n${script}`],
    { encoding: 'utf8', ...spawnOptions },
  );
}

describe('sysv_shm addon', () => {
  it('creates a private segment, reports it through IPC_STAT, changes its mode and removes it', () => {
    const shmid = createSegment(10_000);
    expect(addon.segmentSize(shmid)).toBe(10_000);
    expect(addon.stat(shmid)).toMatchObject({
      size: 10_000,
      mode: 0o600,
      attachCount: 0,
      creatorPid: process.pid,
      markedForRemoval: false,
    });
    addon.setMode(shmid, 0o400);
    expect(addon.stat(shmid).mode).toBe(0o400);
    addon.remove(shmid);
    expect(() => addon.stat(shmid)).toThrow(
      expect.objectContaining({ code: 'EINVAL', syscall: `shmctl(${shmid}, IPC_STAT)` }),
    );
  });

  it('attaches the whole segment, exactly its size, shared between read-write and read-only mappings', () => {
    const shmid = createSegment(5000);
    const writable = addon.attachReadWrite(shmid);
    new Uint8Array(writable).set([1, 2, 3], 4997);
    addon.setMode(shmid, 0o400);
    const readable = addon.attachReadOnly(shmid);
    expect(readable.byteLength).toBe(5000);
    expect([...new Uint8Array(readable, 4997)]).toEqual([1, 2, 3]);
    expect(addon.stat(shmid).attachCount).toBe(2);
    addon.detach(writable);
    addon.detach(readable);
    expect(addon.stat(shmid).attachCount).toBe(0);
  });

  it('empties every view before unmapping, so a detached segment is never touched', () => {
    const shmid = createSegment(4096);
    const attachment = addon.attachReadOnly(shmid);
    const view = new Float32Array(attachment, 8, 4);
    const buffer = Buffer.from(attachment);
    expect(addon.detach(attachment)).toBe(true);
    expect(attachment.byteLength).toBe(0);
    expect(view.length).toBe(0);
    expect(buffer.length).toBe(0);
    expect(view[0]).toBeUndefined();
    expect(addon.stat(shmid).attachCount).toBe(0);
    expect(addon.detach(attachment)).toBe(false);
    expect(() => addon.detach(new ArrayBuffer(8))).toThrow(/returned by attachReadOnly/);
  });

  it('maps read-only for real: a write kills the writing process with SIGSEGV', () => {
    const shmid = createSegment(4096);
    const child = runChild(`new Uint8Array(addon.attachReadOnly(${shmid}))[0] = 1; console.log('wrote');`);
    expect(child.signal).toBe('SIGSEGV');
    expect(child.stdout).not.toContain('wrote');
  });

  it('refuses shmids that are not int-range integers before calling the kernel', () => {
    for (const bad of [-1, 1.5, 2 ** 31, 2 ** 40, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => addon.stat(bad), String(bad)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      expect(() => addon.attachReadOnly(bad), String(bad)).toThrow(/not a valid System V shmid/);
    }
    expect(() => addon.stat('1' as unknown as number)).toThrow(TypeError);
  });

  it('reports an unknown or removed segment as EINVAL and an unreadable one as EACCES', () => {
    const shmid = createSegment(64);
    addon.remove(shmid);
    expect(() => addon.attachReadOnly(shmid)).toThrow(expect.objectContaining({ code: 'EINVAL', errno: 22 }));

    const locked = createSegment(64);
    addon.setMode(locked, 0o400);
    const isRoot = process.getuid?.() === 0;
    if (isRoot) {
      // root bypasses IPC permissions (CAP_IPC_OWNER): ask as nobody, from a real second process.
      const child = runChild(
        `try { addon.attachReadOnly(${locked}); console.log('attached'); } catch (e) { console.log(e.code); }`,
        { uid: 65534, gid: 65534 },
      );
      expect(child.stdout.trim()).toBe('EACCES');
    } else {
      addon.setMode(locked, 0o000);
      expect(() => addon.attachReadOnly(locked)).toThrow(expect.objectContaining({ code: 'EACCES' }));
    }
  });

  it('unmaps an attachment dropped without detach once it is garbage-collected', () => {
    const shmid = createSegment(4096);
    const child = runChild(
      `let attachment = addon.attachReadOnly(${shmid});
       console.log(addon.stat(${shmid}).attachCount);
       attachment = undefined;
       // Finalizers run on a later turn after a collection; give them a bounded number of turns.
       let turns = 0;
       const check = () => {
         gc();
         const count = addon.stat(${shmid}).attachCount;
         if (count === 0 || ++turns === 50) console.log(count);
         else setImmediate(check);
       };
       setImmediate(check);`,
      { nodeOptions: ['--expose-gc'] },
    );
    expect(child.stdout.trim().split('\n')).toEqual(['1', '0']);
  });

  it('works in a worker thread, and a worker that exits without detaching leaves nothing mapped', async () => {
    const shmid = createSegment(4096);
    const writable = addon.attachReadWrite(shmid);
    new Uint8Array(writable).set([7, 8, 9]);
    addon.detach(writable);
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const addon = require(workerData.path);
       const attachment = addon.attachReadOnly(workerData.shmid);
       parentPort.postMessage([...new Uint8Array(attachment, 0, 3)]);`,
      { eval: true, workerData: { path: SYSV_SHM_ADDON_PATH, shmid } },
    );
    // Listen for both at once: the worker may exit in the same turn as its message arrives.
    const message = once(worker, 'message');
    const exit = once(worker, 'exit');
    const [bytes] = (await message) as [number[]];
    expect(bytes).toEqual([7, 8, 9]);
    await exit;
    expect(addon.stat(shmid).attachCount).toBe(0);
  });
});

describe('the addon’s thread CPU clock', () => {
  it('counts the CPU the calling thread spends, not the time it waits', () => {
    const clock = addon.threadCpuNanos!.bind(addon);
    // Spinning until the clock shows 20 ms of CPU, not for 20 ms of wall time: a thread preempted on a busy
    // machine spends less CPU than the wall time it spins (the wall-time bound only ends a clock that never moves).
    const start = clock();
    const giveUpAt = performance.now() + 10_000;
    while (clock() - start < 20e6 && performance.now() < giveUpAt);
    const busy = clock() - start;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
    const waited = clock() - start - busy;
    expect(busy).toBeGreaterThanOrEqual(20e6);
    expect(waited).toBeLessThan(10e6);
  });
});

describe('the addon’s malloc thresholds', () => {
  it('refuses a threshold that is not a whole number of bytes an int holds, before setting any', () => {
    const set = addon.setMallocThresholds!.bind(addon);
    for (const bad of [-1, 0.5, 2 ** 31, Number.NaN, Infinity])
      expect(() => set(bad, 0, 0)).toThrow(/mmap threshold must be a whole number of bytes, 0\.\.2147483647/);
    expect(() => set(0, 2 ** 31, 0)).toThrow(/trim threshold must be/);
    expect(() => (set as (...args: unknown[]) => unknown)(0, 0, '1')).toThrow(/top pad must be/);
  });

  it('applies them on glibc, and says so (in a process of its own: the setting is process-wide)', () => {
    // 'refused' (some glibc versions refuse an mmap threshold over HEAP_MAX_SIZE / 2) is covered with a stand-in in
    // test/daemon/keep-freed-memory.test.ts: the glibc here accepts any.
    const child = runChild(
      `console.log(addon.setMallocThresholds(16 * 1024 * 1024, 32 * 1024 * 1024, 32 * 1024 * 1024))`,
    );
    expect(child.stderr).toBe('');
    const glibc = Boolean(
      (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header
        ?.glibcVersionRuntime,
    );
    expect(child.stdout.trim()).toBe(glibc ? 'applied' : 'unsupported');
  });
});
