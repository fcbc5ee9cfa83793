import { mkdir, mkdtemp, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CaptureSpool, S3ObjectStore, type ObjectStore } from '../../src/capture/index.js';
import { RefusedByStoreError, RetryLaterError } from '../../src/capture/object-store.js';
import { writeFileAtomic, type WriteFileOptions } from '../../src/capture/atomic-files.js';
import { renderBatch, type RenderedBatch } from '../../src/capture/records.js';
import {
  captureCounters,
  captureItem,
  plantRendering,
  s3FaultProxy,
  startS3,
  takenAt,
  type TestS3,
} from './helpers.js';

// The offline spool does not let one batch hold back the others: a batch the store keeps failing, one whose files
// went missing, one that cannot be written back to this disk. The bucket is s3rver over real HTTP; the spool's
// folder is a real one; the backoff's timers are run when the test chooses, and the line limits' clock is the test's.

let work: string;
let s3: TestS3;
let s3Store: S3ObjectStore;

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'ef-spool-progress-'));
  s3 = await startS3(join(work, 's3'));
  s3Store = new S3ObjectStore({
    bucket: s3.bucket,
    region: 'us-east-1',
    endpoint: s3.endpoint,
    credentials: s3.credentials,
    maxAttempts: 1,
  });
});
afterEach(async () => {
  s3Store.close();
  await s3.close();
  await rm(work, { recursive: true, force: true });
});

const HOUR = 3_600_000;
const T = Date.UTC(2026, 11, 7, 5);

/**
 * A batch of captures taken at `hour` hours after T (its age in the spool): each a 256-byte tensor, a side file
 * over the 64-byte embed limit.
 */
function batchOf(id: string, captureIds: string[], hour: number): RenderedBatch {
  const items = captureIds.map((captureId, i) =>
    takenAt(captureItem(captureId, Buffer.alloc(256, i + 1)), T + hour * HOUR + i),
  );
  return renderBatch(id.repeat(32), items, plantRendering(s3Store));
}

type Line = { level: string; fields: Record<string, unknown>; message: string };

function spoolUnderTest(options: {
  store: ObjectStore;
  setAsideAfterFailures?: number;
  setAsideMaxBatches?: number;
  setAsideMaxBytes?: number;
  uploadConcurrency?: number;
  now?: () => number;
  writeFile?: (path: string, body: Uint8Array, options?: WriteFileOptions) => Promise<void>;
}) {
  const lines: Line[] = [];
  const line = (level: string) => (fields: Record<string, unknown>, message: string) =>
    lines.push({ level, fields, message });
  const registry = new Registry();
  const scheduled: { run: () => void; ms: number }[] = [];
  const delivered: string[] = [];
  const dropped: { ids: readonly string[]; detail: string }[] = [];
  const dir = join(work, 'spool');
  const spool = new CaptureSpool({
    dir,
    quotaBytes: 1024 * 1024,
    store: options.store,
    retry: { initialMs: 1000, maxMs: 60_000 },
    onDelivered: (ids) => delivered.push(...ids),
    onDropped: (ids, detail) => dropped.push({ ids, detail }),
    metrics: captureCounters(registry),
    logger: { info: line('info'), warn: line('warn'), error: line('error') },
    // A cleared timer never runs, as with clearTimeout.
    timers: {
      set: (run, ms) => {
        const timer = { run, ms };
        scheduled.push(timer);
        return timer;
      },
      clear: (handle) => {
        const index = scheduled.indexOf(handle as (typeof scheduled)[number]);
        if (index >= 0) scheduled.splice(index, 1);
      },
    },
    ...(options.now && { now: options.now }),
    ...(options.writeFile && { writeFile: options.writeFile }),
    ...(options.setAsideAfterFailures !== undefined && {
      setAsideAfterFailures: options.setAsideAfterFailures,
    }),
    ...(options.setAsideMaxBatches !== undefined && { setAsideMaxBatches: options.setAsideMaxBatches }),
    ...(options.setAsideMaxBytes !== undefined && { setAsideMaxBytes: options.setAsideMaxBytes }),
    ...(options.uploadConcurrency !== undefined && { uploadConcurrency: options.uploadConcurrency }),
  });
  /** Runs the backoff timers set so far (each once), as their time coming would. */
  const runTimers = () => {
    for (const timer of scheduled.splice(0)) timer.run();
  };
  const metric = async (name: string) => (await registry.getSingleMetricAsString(name)) ?? '';
  return { spool, dir, lines, scheduled, delivered, dropped, runTimers, metric };
}

/** Polls until the check passes (real time; no assertion is on time). */
async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`${what}: not met`);
}

/**
 * The store, failing every put of the keys in `failing` with a lasting answer: S3's 403 AccessDenied for those keys
 * (a bucket policy denying them), as the S3 SDK's error says it.
 */
function failingFor(
  store: ObjectStore,
  failing: () => ReadonlySet<string>,
  puts: string[] = [],
): ObjectStore {
  return {
    description: store.description,
    urlFor: (key) => store.urlFor(key),
    put: async (key, body, contentType) => {
      puts.push(key);
      if (failing().has(key))
        throw Object.assign(new Error(`AccessDenied: access denied (${key})`), {
          name: 'AccessDenied',
          $metadata: { httpStatusCode: 403 },
        });
      return store.put(key, body, contentType);
    },
  };
}

/**
 * A proxy in front of the real s3rver that answers the PUTs of the keys in `timingOut` as S3 answers a body that
 * comes too slowly (400 RequestTimeout, which s3rver never sends), counting them; every other request goes to
 * s3rver unchanged (the SDK's signature covers the Host it sent, which is kept).
 */
async function timingOutS3Proxy(target: string, timingOut: () => ReadonlySet<string>) {
  const state = { timedOut: 0 };
  const proxy = await s3FaultProxy(target, (request, key) => {
    if (request.method !== 'PUT' || !timingOut().has(key)) return undefined;
    state.timedOut += 1;
    return {
      status: 400,
      code: 'RequestTimeout',
      message:
        'Your socket connection to the server was not read from or written to within the timeout period. Idle connections will be closed.',
    };
  });
  return { state, ...proxy };
}

const keysOf = (...batches: RenderedBatch[]) => new Set(batches.flatMap((b) => b.files.map((f) => f.key)));
const idsIn = async (s3Records: TestS3) =>
  (await s3Records.records()).map((r) => r.record.eventMetadata.eventId as string).sort();

describe('capture spool: a batch that fails does not hold back the others', () => {
  it('uploads the newer batches while the oldest one fails, retries it on its own backoff, and sets it aside when it keeps failing while others go', async () => {
    const bad = batchOf('a', ['bad-1', 'bad-2'], 0);
    const goods = [batchOf('b', ['b-1'], 1), batchOf('c', ['c-1'], 2)];
    let failing = keysOf(bad);
    const t = spoolUnderTest({
      store: failingFor(s3Store, () => failing),
      setAsideAfterFailures: 2,
    });
    await t.spool.open();
    try {
      // The oldest data first: the bad batch is met first, and every newer batch goes all the same.
      await t.spool.add(bad);
      for (const good of goods) await t.spool.add(good);
      await until(() => t.delivered.length === 2, 'the newer batches are delivered');
      expect(t.delivered.sort()).toEqual(['b-1', 'c-1']);
      expect(await idsIn(s3)).toEqual(['b-1', 'c-1']);
      // Only the failing batch waits, on its own timer.
      expect(t.scheduled).toHaveLength(1);
      expect(t.spool.batches).toBe(1);
      const failed = t.lines.filter((l) => l.fields.event === 'capture-upload-failed');
      expect(failed[0]!.fields).toMatchObject({ batchFailures: 1 });

      // It keeps failing while the store takes other batches: its own failures, counted to the limit (2).
      await t.spool.add(batchOf('d', ['d-1'], 3));
      await until(() => t.delivered.includes('d-1'), 'd delivered');
      t.runTimers();
      await until(() => t.scheduled.length === 1, 'the bad batch failed again');
      expect(t.dropped).toEqual([]);
      await t.spool.add(batchOf('e', ['e-1'], 4));
      await until(() => t.delivered.includes('e-1'), 'e delivered');
      t.runTimers();
      await until(
        () => t.lines.some((l) => l.fields.event === 'capture-spool-set-aside'),
        'the bad batch is set aside',
      );

      const aside = join(t.dir, 'set-aside', bad.batchId);
      expect(t.dropped[0]!.ids).toEqual(['bad-1', 'bad-2']);
      expect(t.dropped[0]!.detail).toMatch(
        new RegExp(
          `could never be uploaded to .* \\(3 failed attempts, the last: AccessDenied.*set aside in ${aside}$`,
        ),
      );
      expect(t.spool.batches).toBe(0);
      expect(t.spool.setAsideBatches).toBe(1);
      // The folder as it was, with a note of why, for the operator to look at.
      const files = await readdir(aside);
      expect(files).toEqual(expect.arrayContaining(['batch.json', 'set-aside.json']));
      const note = JSON.parse(await readFile(join(aside, 'set-aside.json'), 'utf8')) as Record<
        string,
        unknown
      >;
      expect(note).toMatchObject({ failures: 3, captureIds: ['bad-1', 'bad-2'] });
      const line = t.lines.find((l) => l.fields.event === 'capture-spool-set-aside');
      expect(line).toMatchObject({ level: 'error', fields: { path: aside, captures: 2, failures: 3 } });
      expect(await t.metric('edgefleet_capture_dropped_total')).toContain(
        'edgefleet_capture_dropped_total{reason="set-aside"} 2',
      );
      // Not retried any more.
      expect(t.scheduled).toEqual([]);
    } finally {
      await t.spool.close();
    }

    // A restart keeps the set-aside folder as it is: never read as a batch, never uploaded, never removed.
    failing = new Set();
    const again = spoolUnderTest({ store: s3Store });
    await again.spool.open();
    try {
      expect(again.spool.batches).toBe(0);
      expect(again.spool.setAsideBatches).toBe(1);
      expect((await stat(join(again.dir, 'set-aside', bad.batchId, 'batch.json'))).isFile()).toBe(true);
    } finally {
      await again.spool.close();
    }
  });

  it('sets aside a batch whose lasting 4xx moves from file to file while the store takes the others', async () => {
    // Two side files a bucket policy denies (403 AccessDenied), put at once: which answer comes first changes from
    // attempt to attempt (here: the first file's on odd attempts, the second's on even ones).
    const bad = batchOf('a', ['alt-1', 'alt-2'], 0);
    const [first, second] = bad.files.filter((f) => f.kind === 'side').map((f) => f.key);
    let attempts = 0;
    const failedFirst: string[] = [];
    const store: ObjectStore = {
      description: s3Store.description,
      urlFor: (key) => s3Store.urlFor(key),
      put: async (key, body, contentType) => {
        if (key !== first && key !== second) return s3Store.put(key, body, contentType);
        if (key === first) attempts++;
        const leading = attempts % 2 === 1 ? first : second;
        // The other answer comes after this attempt's first failure is taken (a later turn of the event loop).
        if (key !== leading) await new Promise((resolve) => setImmediate(resolve));
        else failedFirst.push(key);
        throw Object.assign(new Error(`AccessDenied: access denied (${key})`), {
          name: 'AccessDenied',
          $metadata: { httpStatusCode: 403 },
        });
      },
    };
    const t = spoolUnderTest({ store, setAsideAfterFailures: 3 });
    await t.spool.open();
    try {
      await t.spool.add(bad);
      await until(() => t.scheduled.length === 1, 'the first attempt failed');
      for (let round = 1; round <= 6 && t.spool.setAsideBatches === 0; round++) {
        await t.spool.add(batchOf(round.toString(16).padStart(2, '0'), [`ok-${round}`], round));
        await until(() => t.delivered.includes(`ok-${round}`), `ok-${round} delivered`);
        t.runTimers();
        await until(
          () => t.scheduled.length === 1 || t.spool.setAsideBatches === 1,
          `the bad batch failed again (${round})`,
        );
      }
      expect(failedFirst.slice(0, 4)).toEqual([first, second, first, second]);
      // The first attempt, then three own failures while the store took others (the limit here is 3).
      expect(t.spool.setAsideBatches).toBe(1);
      expect(attempts).toBe(4);
      expect(t.dropped).toEqual([
        { ids: ['alt-1', 'alt-2'], detail: expect.stringMatching(/could never be uploaded .*AccessDenied/) },
      ]);
    } finally {
      await t.spool.close();
    }
  });

  it('never sets aside a batch that stores files at each attempt, though each meets a 403 on another file while the store takes the others', async () => {
    // A bucket policy just changed to allow the device's keys reaches S3's front ends one by one: each side file
    // is denied once (403 AccessDenied), then taken. One put at a time: each attempt stores the file denied last
    // time, then meets the next denial. The batch gets on at every attempt: it is not stuck.
    const big = batchOf('a', ['big-1', 'big-2', 'big-3', 'big-4'], 0);
    const sides = big.files.filter((f) => f.kind === 'side').map((f) => f.key);
    expect(sides).toHaveLength(4);
    const denied = new Set<string>();
    const puts: string[] = [];
    const store: ObjectStore = {
      description: s3Store.description,
      urlFor: (key) => s3Store.urlFor(key),
      put: async (key, body, contentType) => {
        puts.push(key);
        if (sides.includes(key) && !denied.has(key)) {
          denied.add(key);
          throw Object.assign(new Error(`AccessDenied: access denied (${key})`), {
            name: 'AccessDenied',
            $metadata: { httpStatusCode: 403 },
          });
        }
        return s3Store.put(key, body, contentType);
      },
    };
    const t = spoolUnderTest({ store, setAsideAfterFailures: 2, uploadConcurrency: 1 });
    await t.spool.open();
    try {
      await t.spool.add(big);
      await until(() => t.scheduled.length === 1, 'the first attempt failed');
      for (let round = 1; round <= 5 && !t.delivered.includes('big-1'); round++) {
        await t.spool.add(batchOf(round.toString(16).padStart(2, '0'), [`ok-${round}`], round));
        await until(() => t.delivered.includes(`ok-${round}`), `ok-${round} delivered`);
        t.runTimers();
        await until(
          () => t.scheduled.length === 1 || t.spool.setAsideBatches === 1 || t.delivered.includes('big-1'),
          `the large batch tried again (${round})`,
        );
      }
      expect(t.spool.setAsideBatches).toBe(0);
      expect(t.dropped).toEqual([]);
      expect(t.delivered).toEqual(expect.arrayContaining(['big-1', 'big-2', 'big-3', 'big-4']));
      // Each side file denied once, then put once more: none sent again after the store took it.
      for (const key of sides) expect(puts.filter((k) => k === key)).toHaveLength(2);
      expect(await idsIn(s3)).toEqual(expect.arrayContaining(['big-1', 'big-2', 'big-3', 'big-4']));
    } finally {
      await t.spool.close();
    }
  });

  it('while the store is down, makes one attempt per pause, each of a batch tried least, sets none aside, and sends them all once it is back', async () => {
    const batches = ['a', 'b', 'c', 'd', 'e'].map((id, hour) => batchOf(id, [`${id}-1`], hour));
    // Each batch is one side file and its manifest: an attempt in the outage puts the side file alone.
    const puts: string[] = [];
    let down = true;
    const everything = keysOf(...batches);
    const t = spoolUnderTest({
      store: failingFor(s3Store, () => (down ? everything : new Set()), puts),
      setAsideAfterFailures: 2,
    });
    const batchOfKey = (key: string) => batches.findIndex((b) => b.files.some((f) => f.key === key));
    await t.spool.open();
    try {
      for (const batch of batches) await t.spool.add(batch);
      // The oldest fails and waits on its own; the next fails too: the store looks down, and everything waits.
      await until(() => t.scheduled.length === 2, 'two batches met the outage');
      expect(puts.map(batchOfKey)).toEqual([0, 1]);
      for (let round = 1; round <= 4; round++) {
        t.runTimers();
        await until(() => puts.length === 2 + round && t.scheduled.length === 1, `probe ${round} failed`);
        // The pause grows with the attempts failed in a row (2 + round: at least half of 1 s doubled each time),
        // whichever batch the probe was.
        expect(t.scheduled[0]!.ms).toBeGreaterThanOrEqual(1000 * 2 ** round);
      }
      // Each probe a batch tried least: no batch retried while another has not been tried, none set aside for it.
      expect(puts.map(batchOfKey)).toEqual([0, 1, 2, 3, 4, 0]);
      expect(t.dropped).toEqual([]);
      expect(t.spool.setAsideBatches).toBe(0);
      expect(t.spool.unreachable).toBe(true);

      down = false;
      t.runTimers();
      await until(() => t.delivered.length === 5, 'everything delivered');
      expect(await idsIn(s3)).toEqual(['a-1', 'b-1', 'c-1', 'd-1', 'e-1']);
      expect(t.spool.batches).toBe(0);
      expect(t.spool.unreachable).toBe(false);
      expect(await readdir(t.dir)).toEqual([]);
    } finally {
      await t.spool.close();
    }
  });

  it('once the store is back, sends the oldest data first again, the batches that served as probes before newer ones', async () => {
    const batches = ['a', 'b', 'c', 'd'].map((id, hour) => batchOf(id, [`${id}-1`], hour));
    let down = true;
    const everything = keysOf(...batches);
    const t = spoolUnderTest({ store: failingFor(s3Store, () => (down ? everything : new Set())) });
    await t.spool.open();
    try {
      for (const batch of batches) await t.spool.add(batch);
      // a and b meet the outage; then every batch waits.
      await until(() => t.scheduled.length === 2, 'two batches met the outage');
      down = false;
      t.runTimers();
      await until(() => t.delivered.length === 4, 'everything delivered');
      // The probe is a batch never tried (c); then the oldest first: a and b, which failed, before d.
      expect(t.delivered).toEqual(['c-1', 'a-1', 'b-1', 'd-1']);
    } finally {
      await t.spool.close();
    }
  });

  it('drops a file missing from a batch with the records that need it, counts and logs it (a line a minute), and delivers the rest', async () => {
    // Spooled while the store was down, then files removed from their folders (by hand, a disk fault).
    await s3.stop();
    const batches = [batchOf('a', ['a-1', 'a-2'], 0), batchOf('b', ['b-1'], 1), batchOf('c', ['c-1'], 2)];
    const first = spoolUnderTest({ store: s3Store });
    await first.spool.open();
    for (const batch of batches) await first.spool.add(batch);
    await first.spool.close();
    const removeSide = async (batch: RenderedBatch, captureId: string) => {
      const index = batch.files.findIndex((f) => f.kind === 'side' && f.key.includes(`/${captureId}-`));
      await rm(join(first.dir, batch.batchId, String(index)));
    };
    await removeSide(batches[0]!, 'a-2');
    await removeSide(batches[1]!, 'b-1');
    await s3.restart();

    let now = T;
    const t = spoolUnderTest({ store: s3Store, now: () => now });
    await t.spool.open();
    try {
      await until(() => t.spool.batches === 0, 'every batch uploaded');
      expect(t.delivered.sort()).toEqual(['a-1', 'c-1']);
      expect(t.dropped.map((d) => d.ids)).toEqual([['a-2'], ['b-1']]);
      expect(t.dropped[0]!.detail).toMatch(
        /lost files on this device's disk \(.*a-2-input-1\.bin: missing\)/,
      );
      const missing = () => t.lines.filter((l) => l.fields.event === 'capture-spool-file-missing');
      // One line for both (the second within the minute), each file and capture counted.
      expect(missing()).toHaveLength(1);
      expect(missing()[0]).toMatchObject({ level: 'warn', fields: { dropped: 1, captures: 1 } });
      expect(await t.metric('edgefleet_capture_spool_missing_files_total')).toContain(
        'edgefleet_capture_spool_missing_files_total 2',
      );
      expect(await t.metric('edgefleet_capture_dropped_total')).toContain(
        'edgefleet_capture_dropped_total{reason="missing"} 2',
      );
      expect(await idsIn(s3)).toEqual(['a-1', 'c-1']);
      expect(await readdir(t.dir)).toEqual([]);

      // A minute later, a batch whose manifest went missing: its line says the one left out.
      now += 61_000;
      await s3.stop();
      const d = batchOf('d', ['d-1'], 3);
      await t.spool.add(d);
      await until(() => t.scheduled.length === 1, 'd met the outage');
      await rm(join(t.dir, d.batchId, String(d.files.findIndex((f) => f.kind === 'manifest'))));
      await s3.restart();
      t.runTimers();
      await until(() => t.spool.batches === 0, 'd gone');
      expect(t.dropped.at(-1)).toMatchObject({ ids: ['d-1'] });
      expect(missing()).toHaveLength(2);
      expect(missing()[1]!.fields).toMatchObject({ linesNotLogged: 1, dropped: 1, captures: 0 });
      expect(await t.metric('edgefleet_capture_spool_missing_files_total')).toContain(
        'edgefleet_capture_spool_missing_files_total 3',
      );
      // Its side file, named by no record left, was not sent.
      expect(await idsIn(s3)).toEqual(['a-1', 'c-1']);

      // A batch whose whole folder is gone: its captures failed and counted (its line within the minute left out).
      await s3.stop();
      const e = batchOf('e', ['e-1', 'e-2'], 4);
      await t.spool.add(e);
      await until(() => t.scheduled.length === 1, 'e met the outage');
      await rm(join(t.dir, e.batchId), { recursive: true });
      await s3.restart();
      t.runTimers();
      await until(() => t.spool.batches === 0, 'e gone');
      expect(t.dropped.at(-1)).toEqual({
        ids: ['e-1', 'e-2'],
        detail: `the spooled batch ${join(t.dir, e.batchId)} is gone (removed from the spool folder)`,
      });
      expect(await t.metric('edgefleet_capture_dropped_total')).toContain(
        'edgefleet_capture_dropped_total{reason="missing"} 5',
      );
      expect(missing()).toHaveLength(2);
    } finally {
      await t.spool.close();
    }
  });

  it('uploads the other batches while one cannot be written back to this disk, and sends it once it can', async () => {
    const bad = batchOf('a', ['r-1', 'r-2'], 0);
    const good = batchOf('b', ['g-1'], 1);
    // The store refuses r-1's side file for good (the control plane's own 413): the batch must be written back
    // without it.
    const refusedKey = bad.files.find((f) => f.kind === 'side' && f.key.includes('/r-1-'))!.key;
    let refuse = false;
    const refusing: ObjectStore = {
      description: s3Store.description,
      urlFor: (key) => s3Store.urlFor(key),
      put: async (key, body, contentType) => {
        if (refuse && key === refusedKey)
          throw new RefusedByStoreError(`413 too large: ${key}`, { status: 413, code: 'PayloadTooLarge' });
        return s3Store.put(key, body, contentType);
      },
    };
    const t = spoolUnderTest({ store: refusing });
    await t.spool.open();
    try {
      // Spooled while the store was down; then a real local fault: batch.json cannot be replaced (a folder holding
      // a file stands at its name).
      await s3.stop();
      await t.spool.add(bad);
      await until(() => t.scheduled.length === 1, 'the outage is met');
      const batchFile = join(t.dir, bad.batchId, 'batch.json');
      const saved = await readFile(batchFile);
      await rm(batchFile);
      await mkdir(join(batchFile, 'blocker'), { recursive: true });
      refuse = true;
      await s3.restart();
      t.runTimers();
      await until(
        () => t.lines.some((l) => l.fields.event === 'capture-spool-rewrite-failed'),
        'the rewrite failed',
      );
      // It waits its own backoff; a newer batch goes at once.
      await until(() => t.scheduled.length === 1, 'the batch waits its own backoff');
      await t.spool.add(good);
      await until(() => t.delivered.includes('g-1'), 'the newer batch is delivered');
      expect(t.spool.batches).toBe(1);

      await rm(batchFile, { recursive: true });
      await writeFile(batchFile, saved);
      t.runTimers();
      await until(() => t.spool.batches === 0, 'the rest of it is delivered');
      expect(t.delivered.sort()).toEqual(['g-1', 'r-2']);
      expect(await idsIn(s3)).toEqual(['g-1', 'r-2']);
    } finally {
      await t.spool.close();
    }
  });

  it('retries a batch whose smaller copy finds the disk full on its own backoff, never setting it aside for that, and sets aside one the disk fails otherwise', async () => {
    const bad = batchOf('a', ['r-1', 'r-2'], 0);
    const failing = batchOf('c', ['q-1', 'q-2'], 2);
    // The store refuses r-1's and q-1's side files for good (the control plane's own 413): each batch must be
    // written back without it.
    const refused = new Set(
      [bad, failing].map((b) => b.files.find((f) => f.kind === 'side' && /\/[rq]-1-/.test(f.key))!.key),
    );
    const refusing: ObjectStore = {
      description: s3Store.description,
      urlFor: (key) => s3Store.urlFor(key),
      put: async (key, body, contentType) => {
        if (refused.has(key))
          throw new RefusedByStoreError(`413 too large: ${key}`, { status: 413, code: 'PayloadTooLarge' });
        return s3Store.put(key, body, contentType);
      },
    };
    // The disk, as the spool's writes meet it: full (ENOSPC) for the one batch's rewrite, failing (EIO) for the
    // other's.
    let full = true;
    const writeFile = async (path: string, body: Uint8Array, options?: WriteFileOptions) => {
      if (full && path.endsWith(join(bad.batchId, 'batch.json')))
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      if (path.endsWith(join(failing.batchId, 'batch.json')))
        throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
      return writeFileAtomic(path, body, options);
    };
    const t = spoolUnderTest({ store: refusing, writeFile, setAsideAfterFailures: 1 });
    await t.spool.open();
    try {
      await t.spool.add(bad);
      await until(() => t.scheduled.length === 1, 'the rewrite met the full disk');
      await t.spool.add(batchOf('b', ['g-1'], 1));
      await until(() => t.delivered.includes('g-1'), 'the newer batch is delivered');
      // Lack of space passes: not the batch's own failure, however often (the limit here is 1).
      t.runTimers();
      await until(() => t.scheduled.length === 1, 'the rewrite met the full disk again');
      expect(t.spool.setAsideBatches).toBe(0);
      expect(t.spool.batches).toBe(1);
      full = false;
      t.runTimers();
      await until(() => t.delivered.includes('r-2'), 'the rest of it is delivered once there is room');
      expect(t.spool.batches).toBe(0);

      // Any other failure of this disk is the batch's own: set aside at the limit.
      await t.spool.add(failing);
      await until(
        () => t.lines.some((l) => l.fields.event === 'capture-spool-set-aside'),
        'the batch the disk fails is set aside',
      );
      expect(t.dropped.at(-1)).toMatchObject({
        ids: ['q-1', 'q-2'],
        detail: expect.stringMatching(/the last: cannot rewrite the spooled batch .*EIO/),
      });
      expect(t.spool.setAsideBatches).toBe(1);
      expect(await idsIn(s3)).toEqual(['g-1', 'r-2']);
    } finally {
      await t.spool.close();
    }
  });

  it('keeps the set-aside folder within its bounds: the oldest set-aside batch is removed, logged', async () => {
    const bads = [batchOf('a', ['x-1'], 0), batchOf('b', ['y-1'], 1)];
    const t = spoolUnderTest({
      store: failingFor(s3Store, () => keysOf(...bads)),
      setAsideAfterFailures: 1,
      setAsideMaxBatches: 1,
    });
    await t.spool.open();
    try {
      for (const bad of bads) await t.spool.add(bad);
      await until(() => t.scheduled.length === 2, 'both failed once');
      // The store looks down: the pause's probe is the batch tried least, delivered; the failures of the others
      // after it are their own.
      await t.spool.add(batchOf('c', ['z-1'], 2));
      t.runTimers();
      await until(
        () => t.lines.some((l) => l.fields.event === 'capture-spool-set-aside-removed'),
        'both set aside, the oldest removed',
      );
      expect(t.dropped.map((d) => d.ids)).toEqual([['x-1'], ['y-1']]);
      expect(t.delivered).toEqual(['z-1']);
      expect(await readdir(join(t.dir, 'set-aside'))).toEqual([bads[1]!.batchId]);
      expect(t.spool.setAsideBatches).toBe(1);
      const removed = t.lines.find((l) => l.fields.event === 'capture-spool-set-aside-removed');
      expect(removed).toMatchObject({
        level: 'warn',
        fields: { batchId: bads[0]!.batchId, maxBatches: 1 },
      });
    } finally {
      await t.spool.close();
    }
  });

  it('on a lossy link, never sets aside a large batch that fails more often than the small ones, and puts each of its files once', async () => {
    // Every third put fails with no answer: a batch of many files fails most attempts, small ones mostly go.
    const big = batchOf(
      'a',
      Array.from({ length: 10 }, (_, i) => `big-${i}`),
      0,
    );
    let puts = 0;
    const storedTimes = new Map<string, number>();
    const lossy: ObjectStore = {
      description: s3Store.description,
      urlFor: (key) => s3Store.urlFor(key),
      put: async (key, body, contentType) => {
        if (++puts % 3 === 0) throw new Error(`socket hang up (${key})`);
        await s3Store.put(key, body, contentType);
        storedTimes.set(key, (storedTimes.get(key) ?? 0) + 1);
      },
    };
    // The default limit of own failures.
    const t = spoolUnderTest({ store: lossy });
    await t.spool.open();
    try {
      await t.spool.add(big);
      for (let round = 0; round < 100 && !t.delivered.includes('big-0'); round++) {
        if (t.dropped.length > 0) break;
        const small = `s${round}`;
        await t.spool.add(batchOf(round.toString(16).padStart(2, '0'), [small], round + 1));
        await until(() => t.scheduled.length > 0 || t.spool.batches === 0, `round ${round} settled`);
        t.runTimers();
      }
      // However the rounds interleaved with the attempts (a loaded machine), the pauses keep coming to an end.
      await until(() => {
        t.runTimers();
        return t.delivered.includes('big-0') || t.dropped.length > 0;
      }, 'the large batch is settled');
      expect(t.dropped).toEqual([]);
      expect(t.spool.setAsideBatches).toBe(0);
      expect(t.delivered).toEqual(expect.arrayContaining(big.captureIds));
      // What the store took is not put again: each file of the large batch stored once.
      for (const file of big.files) expect(storedTimes.get(file.key)).toBe(1);
    } finally {
      await t.spool.close();
    }
  });

  it('never sets aside a batch the store keeps answering 429 (Retry-After) while it takes the others', async () => {
    const later = batchOf('a', ['later-1'], 0);
    const laterKeys = keysOf(later);
    let busy = true;
    let laterPuts = 0;
    const store: ObjectStore = {
      description: s3Store.description,
      urlFor: (key) => s3Store.urlFor(key),
      put: async (key, body, contentType) => {
        if (laterKeys.has(key)) {
          laterPuts++;
          if (busy)
            throw new RetryLaterError(`${key}: HTTP 429 TooManyRequests: over the daily quota`, 60_000);
        }
        return s3Store.put(key, body, contentType);
      },
    };
    const t = spoolUnderTest({ store, setAsideAfterFailures: 2 });
    await t.spool.open();
    try {
      await t.spool.add(later);
      await until(() => laterPuts === 1 && t.scheduled.length === 1, 'told to wait');
      for (let round = 1; round <= 5; round++) {
        // The pause ends: a new small batch goes first, then the one told to wait is told so again.
        await t.spool.add(batchOf(String(round), [`small-${round}`], round));
        t.runTimers();
        await until(
          () => t.delivered.includes(`small-${round}`) && laterPuts === round + 1 && t.scheduled.length === 1,
          `round ${round}: the others taken, the batch told to wait again`,
        );
      }
      expect(t.dropped).toEqual([]);
      expect(t.spool.setAsideBatches).toBe(0);
      busy = false;
      t.runTimers();
      await until(() => t.delivered.includes('later-1'), 'delivered once the store takes it');
      expect(t.dropped).toEqual([]);
    } finally {
      await t.spool.close();
    }
  });

  it('never sets aside a batch whose large file S3 keeps answering 400 RequestTimeout (a slow link) while it takes the others', async () => {
    // The large file of one batch times out on every attempt; the small batches go. The SDK calls RequestTimeout
    // transient, whatever its 400: it says nothing lasting of the file.
    const big = batchOf('a', ['big-1'], 0);
    const side = big.files.find((f) => !f.key.endsWith('.jsonl'))!;
    let timingOut = new Set([side.key]);
    const proxy = await timingOutS3Proxy(s3.endpoint, () => timingOut);
    const store = new S3ObjectStore({
      bucket: s3.bucket,
      region: 'us-east-1',
      endpoint: proxy.endpoint,
      credentials: s3.credentials,
      maxAttempts: 1,
    });
    const t = spoolUnderTest({ store, setAsideAfterFailures: 3 });
    await t.spool.open();
    try {
      await t.spool.add(big);
      await until(
        () => proxy.state.timedOut === 1 && t.scheduled.length === 1,
        'the first attempt timed out',
      );
      for (let round = 1; round <= 6; round++) {
        // The pause ends: a new small batch goes, then the large file times out again.
        await t.spool.add(batchOf(String(round), [`small-${round}`], round));
        t.runTimers();
        await until(
          () =>
            t.dropped.length > 0 ||
            (t.delivered.includes(`small-${round}`) &&
              proxy.state.timedOut === round + 1 &&
              t.scheduled.length === 1),
          `round ${round}: the others taken, the large file timed out again`,
        );
        expect(t.dropped).toEqual([]);
      }
      const failed = t.lines.filter((l) => l.fields.event === 'capture-upload-failed');
      expect(failed.at(-1)!.message).toMatch(/not read from or written to within the timeout period/);
      expect(t.dropped).toEqual([]);
      expect(t.spool.setAsideBatches).toBe(0);
      // The link gets better: the batch goes.
      timingOut = new Set();
      t.runTimers();
      await until(() => t.delivered.includes('big-1'), 'delivered once the file gets through');
      expect(t.dropped).toEqual([]);
      expect(await idsIn(s3)).toContain('big-1');
    } finally {
      await t.spool.close();
      store.close();
      await proxy.close();
    }
  });

  it('never removes the batch just set aside for the byte bound, nor the older ones for a batch over it alone, and counts removals', async () => {
    const small = batchOf('a', ['x-1'], 0);
    const large = batchOf(
      'b',
      Array.from({ length: 6 }, (_, i) => `y-${i}`),
      1,
    );
    const bytesOf = (b: RenderedBatch) => b.files.reduce((n, f) => n + f.body.byteLength, 0);
    // Room for the small batch, not for the large one alone.
    const maxBytes = bytesOf(small) + 64;
    expect(bytesOf(large)).toBeGreaterThan(maxBytes);
    const last = batchOf('c', ['z-1'], 2);
    const t = spoolUnderTest({
      store: failingFor(s3Store, () => keysOf(small, large, last)),
      setAsideAfterFailures: 1,
      setAsideMaxBytes: maxBytes,
    });
    const aside = () => readdir(join(t.dir, 'set-aside')).then((names) => names.sort());
    await t.spool.open();
    try {
      await t.spool.add(small);
      await t.spool.add(large);
      await until(() => t.scheduled.length === 2, 'both failed once');
      // The probe after the pause is delivered; the two fail again after it: their own failures.
      await t.spool.add(batchOf('d', ['g-1'], 3));
      t.runTimers();
      await until(() => t.spool.setAsideBatches === 2, 'both set aside');
      // The large one is over the bound alone: kept, and the small one is not removed for it.
      expect(await aside()).toEqual([small.batchId, large.batchId].sort());
      expect(t.lines.filter((l) => l.fields.event === 'capture-spool-set-aside-removed')).toEqual([]);
      const line = t.lines.find(
        (l) => l.fields.event === 'capture-spool-set-aside' && l.fields.batchId === large.batchId,
      );
      expect(line?.fields).toMatchObject({ overMaxBytes: maxBytes });
      expect(line?.message).toMatch(/alone is over the set-aside folder's bound/);
      expect(await t.metric('edgefleet_capture_spool_set_aside_removed_total')).toMatch(
        /edgefleet_capture_spool_set_aside_removed_total 0/,
      );

      // Another set aside: the older ones go, oldest first, until the folder is within its bound.
      await t.spool.add(last);
      await t.spool.add(batchOf('e', ['g-2'], 4));
      // The store still looks down: the last fails after the pause, then the next probe is delivered and the last
      // fails again after it.
      await until(() => {
        t.runTimers();
        return t.spool.setAsideBatches === 1;
      }, 'the last set aside');
      // The older ones are removed from the folder once counted out.
      await until(async () => (await aside()).length === 1, 'the set-aside folder within its bound');
      expect(await aside()).toEqual([last.batchId]);
      expect(
        t.lines
          .filter((l) => l.fields.event === 'capture-spool-set-aside-removed')
          .map((l) => l.fields.batchId),
      ).toEqual([small.batchId, large.batchId]);
      expect(await t.metric('edgefleet_capture_spool_set_aside_removed_total')).toMatch(
        /edgefleet_capture_spool_set_aside_removed_total 2/,
      );
    } finally {
      await t.spool.close();
    }
  });
});

describe('capture spool: set-aside batches an earlier run left', () => {
  it('at start, keeps the batch set aside last though it has no note (a disk too full for it), removes the older one for the bound, and names each as it is', async () => {
    const dir = join(work, 'spool');
    const aside = join(dir, 'set-aside');
    const older = 'b'.repeat(32);
    const newer = 'a'.repeat(32);
    const batchJson = (batchId: string, captureIds: string[]) =>
      JSON.stringify({ v: 1, batchId, createdAt: T, captureIds, files: [] });
    // Set aside an hour ago, its captures marked then; its note says so.
    await mkdir(join(aside, older), { recursive: true });
    await writeFile(join(aside, older, 'batch.json'), batchJson(older, ['old-1']));
    await writeFile(
      join(aside, older, 'set-aside.json'),
      JSON.stringify({ reason: 'AccessDenied', failures: 10, captureIds: ['old-1'] }),
    );
    const anHourAgo = new Date(Date.now() - HOUR);
    await utimes(join(aside, older, 'set-aside.json'), anHourAgo, anHourAgo);
    // Set aside just before a stop, on a disk too full to take the note: batch.json alone.
    await mkdir(join(aside, newer), { recursive: true });
    await writeFile(join(aside, newer, 'batch.json'), batchJson(newer, ['new-1']));

    const t = spoolUnderTest({ store: s3Store, setAsideMaxBatches: 1 });
    await t.spool.open();
    try {
      expect(await readdir(aside)).toEqual([newer]);
      expect(t.spool.setAsideBatches).toBe(1);
      const removed = t.lines.filter((l) => l.fields.event === 'capture-spool-set-aside-removed');
      expect(removed.map((l) => l.fields.batchId)).toEqual([older]);
      const details = t.spool.setAsideDetails();
      expect(details.get('new-1')).toMatch(
        new RegExp(`why: not recorded\\); set aside in ${join(aside, newer)} `),
      );
      // Its folder is gone: not named.
      expect(details.get('old-1')).toMatch(
        /10 failed attempts, the last: AccessDenied\); set aside, then removed to keep the set-aside bound/,
      );
      expect(details.get('old-1')).not.toContain(older);
    } finally {
      await t.spool.close();
    }
  });
});

describe('capture spool: progress across a restart', () => {
  /** A batch whose side files went and whose manifest the store denied (403), left by a run that then stopped. */
  async function leftHalfSent() {
    const batch = batchOf('a', ['p-1', 'p-2'], 0);
    const manifests = new Set(batch.files.filter((f) => f.kind !== 'side').map((f) => f.key));
    const sides = batch.files.filter((f) => f.kind === 'side').map((f) => f.key);
    const first = spoolUnderTest({ store: failingFor(s3Store, () => manifests) });
    await first.spool.open();
    await first.spool.add(batch);
    await until(() => first.scheduled.length === 1, 'the manifest was denied');
    await first.spool.close();
    return { batch, sides, dir: first.dir };
  }

  it('does not send again after a restart the files an earlier run stored', async () => {
    const { batch, sides, dir } = await leftHalfSent();
    const progress = JSON.parse(await readFile(join(dir, batch.batchId, 'progress.json'), 'utf8'));
    expect(progress).toEqual({ v: 1, storedKeys: expect.arrayContaining(sides) });

    const puts: string[] = [];
    const t = spoolUnderTest({ store: failingFor(s3Store, () => new Set(), puts) });
    await t.spool.open();
    try {
      await until(() => t.delivered.length === 2, 'delivered after the restart');
      expect(puts.filter((key) => sides.includes(key))).toEqual([]);
      expect(puts).toEqual(batch.files.filter((f) => f.kind !== 'side').map((f) => f.key));
      expect(await idsIn(s3)).toEqual(['p-1', 'p-2']);
      expect(await readdir(t.dir)).toEqual([]);
    } finally {
      await t.spool.close();
    }
  });

  it('fails nothing when progress.json cannot be written: the batch is retried as before, and a restart sends its files again', async () => {
    const batch = batchOf('a', ['p-1', 'p-2'], 0);
    const manifests = new Set(batch.files.filter((f) => f.kind !== 'side').map((f) => f.key));
    const sides = batch.files.filter((f) => f.kind === 'side').map((f) => f.key);
    const progressWrites: string[] = [];
    // A disk that takes the batch, then is full when the progress is written.
    const writeFile = async (path: string, body: Uint8Array, options?: WriteFileOptions) => {
      if (path.endsWith('progress.json')) {
        progressWrites.push(path);
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      }
      return writeFileAtomic(path, body, options);
    };
    const first = spoolUnderTest({ store: failingFor(s3Store, () => manifests), writeFile });
    await first.spool.open();
    await first.spool.add(batch);
    await until(() => first.scheduled.length === 1, 'the manifest was denied');
    await first.spool.close();
    expect(progressWrites).toEqual([join(first.dir, batch.batchId, 'progress.json')]);
    // The attempt failed for the store's 403 alone: no disk failure, nothing dropped, nothing set aside.
    expect(first.dropped).toEqual([]);
    expect(first.spool.batches).toBe(1);
    expect(first.spool.setAsideBatches).toBe(0);
    expect(first.lines.filter((l) => l.level === 'error')).toEqual([]);
    const failed = first.lines.filter((l) => l.fields.event === 'capture-upload-failed');
    expect(failed.map((l) => l.message)).toEqual([expect.stringMatching(/AccessDenied/)]);
    // Nothing of the failed write is left in the batch's folder.
    const left = await readdir(join(first.dir, batch.batchId));
    expect(left.filter((name) => name.includes('progress'))).toEqual([]);

    const puts: string[] = [];
    const t = spoolUnderTest({ store: failingFor(s3Store, () => new Set(), puts) });
    await t.spool.open();
    try {
      await until(() => t.delivered.length === 2, 'delivered after the restart');
      // No progress was kept: the side files are sent again, which the store answers as stored.
      expect(puts.filter((key) => sides.includes(key)).sort()).toEqual([...sides].sort());
      expect(await idsIn(s3)).toEqual(['p-1', 'p-2']);
      expect(t.dropped).toEqual([]);
    } finally {
      await t.spool.close();
    }
  });

  it('fails no capture for a stored file that went missing here since: it is in the bucket', async () => {
    const { batch, sides, dir } = await leftHalfSent();
    const spooled = JSON.parse(await readFile(join(dir, batch.batchId, 'batch.json'), 'utf8'));
    const entry = spooled.files.find((f: { key: string }) => f.key === sides[0]);
    await rm(join(dir, batch.batchId, entry.file));

    const t = spoolUnderTest({ store: s3Store });
    await t.spool.open();
    try {
      await until(() => t.delivered.length === 2, 'delivered after the restart');
      expect(t.dropped).toEqual([]);
      expect(await idsIn(s3)).toEqual(['p-1', 'p-2']);
      expect(t.lines.filter((l) => l.fields.event === 'capture-spool-file-missing')).toEqual([]);
    } finally {
      await t.spool.close();
    }
  });

  it('fails only the lost manifest when a stored side file went missing too: the record naming that side file is delivered', async () => {
    // p-1 at hour 0, p-2 at hour 1: two manifests, each with its capture's side file.
    const items = ['p-1', 'p-2'].map((captureId, i) =>
      takenAt(captureItem(captureId, Buffer.alloc(256, i + 1)), T + i * HOUR),
    );
    const batch = renderBatch('e'.repeat(32), items, plantRendering(s3Store));
    const manifestFiles = batch.files.filter((f) => f.kind !== 'side');
    expect(manifestFiles).toHaveLength(2);
    const manifests = new Set(manifestFiles.map((f) => f.key));
    const first = spoolUnderTest({ store: failingFor(s3Store, () => manifests) });
    await first.spool.open();
    await first.spool.add(batch);
    await until(() => first.scheduled.length === 1, 'the manifests were denied');
    await first.spool.close();
    const dir = first.dir;
    const p1Manifest = manifestFiles.find((f) => f.body.toString().includes('p-1'))!;
    const p2Manifest = manifestFiles.find((f) => f.body.toString().includes('p-2'))!;
    const p1Side = batch.files.find(
      (f) => f.kind === 'side' && p1Manifest.body.toString().includes(s3Store.urlFor(f.key)),
    )!;
    // p-1's side file is in the bucket; p-2's manifest was never sent. Both go missing here.
    const spooled = JSON.parse(await readFile(join(dir, batch.batchId, 'batch.json'), 'utf8'));
    for (const key of [p1Side.key, p2Manifest.key]) {
      const entry = spooled.files.find((f: { key: string }) => f.key === key);
      await rm(join(dir, batch.batchId, entry.file));
    }

    const puts: string[] = [];
    const t = spoolUnderTest({ store: failingFor(s3Store, () => new Set(), puts) });
    await t.spool.open();
    try {
      await until(
        () => t.delivered.length + t.dropped.flatMap((d) => d.ids).length >= 2,
        'each capture delivered or failed',
      );
      expect(t.delivered).toEqual(['p-1']);
      expect(t.dropped).toEqual([
        {
          ids: ['p-2'],
          detail: expect.stringContaining(`(${p2Manifest.key}: missing)`),
        },
      ]);
      expect(await idsIn(s3)).toEqual(['p-1']);
      // The stored side file is neither sent again nor named lost.
      expect(puts).toEqual([p1Manifest.key]);
      const missing = t.lines.filter((l) => l.fields.event === 'capture-spool-file-missing');
      expect(missing.map((l) => l.fields.missingKeys)).toEqual([[p2Manifest.key]]);
      expect(await readdir(t.dir)).toEqual([]);
    } finally {
      await t.spool.close();
    }
  });

  it('does not bring back a batch folder removed during an attempt: the batch is said to be gone', async () => {
    const batch = batchOf('a', ['r-1'], 0);
    const manifests = new Set(batch.files.filter((f) => f.kind !== 'side').map((f) => f.key));
    const dir = join(work, 'spool');
    let removed = false;
    const store: ObjectStore = {
      description: s3Store.description,
      urlFor: (key) => s3Store.urlFor(key),
      put: async (key, body, contentType) => {
        // An operator removes the batch's folder while its side file is on its way.
        if (!removed) {
          removed = true;
          await rm(join(dir, batch.batchId), { recursive: true, force: true });
        }
        if (manifests.has(key))
          throw Object.assign(new Error(`AccessDenied: access denied (${key})`), {
            name: 'AccessDenied',
            $metadata: { httpStatusCode: 403 },
          });
        return s3Store.put(key, body, contentType);
      },
    };
    const t = spoolUnderTest({ store });
    await t.spool.open();
    try {
      await t.spool.add(batch);
      await until(() => t.scheduled.length === 1, 'the manifest was denied');
      expect(await readdir(dir)).toEqual([]);
      t.runTimers();
      await until(() => t.dropped.length === 1, 'the batch is found gone');
      expect(t.dropped).toEqual([
        { ids: ['r-1'], detail: expect.stringMatching(/is gone \(removed from the spool folder\)/) },
      ]);
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await t.spool.close();
    }
  });

  it('ignores a torn progress file, says so, and sends every file again: no record is lost', async () => {
    const { batch, sides, dir } = await leftHalfSent();
    // Cut short, as by a crash in a write that was not atomic, or a disk fault.
    await writeFile(join(dir, batch.batchId, 'progress.json'), `{"v":1,"storedKeys":["${sides[0]}`);

    const puts: string[] = [];
    const t = spoolUnderTest({ store: failingFor(s3Store, () => new Set(), puts) });
    await t.spool.open();
    try {
      await until(() => t.delivered.length === 2, 'delivered after the restart');
      expect(puts.sort()).toEqual(batch.files.map((f) => f.key).sort());
      expect(await idsIn(s3)).toEqual(['p-1', 'p-2']);
      const ignored = t.lines.filter((l) => l.fields.event === 'capture-spool-progress-ignored');
      expect(ignored).toHaveLength(1);
      expect(ignored[0]).toMatchObject({ level: 'warn', fields: { batchId: batch.batchId } });
      expect(t.dropped).toEqual([]);
    } finally {
      await t.spool.close();
    }
  });
});
