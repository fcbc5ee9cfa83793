import { randomBytes } from 'node:crypto';
import { LineLimiter } from '@edgefleet/core';
import type { Registry } from 'prom-client';
import { AgentError, isAgentError, type PredictObserver } from '../models/index.js';
import {
  MemoryUploadLedger,
  type FolderLock,
  type ModelActivity,
  type UploadLedger,
} from '../state/index.js';
import { backoffDelay } from '../retry/index.js';
import { AutoCapture } from './auto-capture.js';
import type { CaptureItem } from './capture-item.js';
import { CaptureMetrics, type CaptureLogger } from './capture-metrics.js';
import type { CaptureQueue, FormedBatch, StatusRecord } from './capture-queue.js';
import {
  captureItemFromRequest,
  checkCaptureId,
  type CaptureModelCatalog,
  type CaptureRequest,
} from './capture-request.js';
import type { CaptureDestination } from './destinations.js';
import { CaptureDiskFullError, type StatFs } from './disk-quota.js';
import type { ObjectStore } from './object-store.js';
import { PeriodicUpload } from './periodic-upload.js';
import { renderBatch, type RenderContext, type RenderedBatch } from './records.js';
import { defaultCaptureBufferBytes, type CaptureSettings } from './settings.js';
import { captureBytes } from './capture-item.js';
import { CaptureSpool, CaptureSpoolFullError } from './spool.js';
import { repeatsNote, uploadFailureFields } from './upload-failure.js';

export interface CaptureServiceOptions {
  settings: CaptureSettings;
  /** The loaded models (ModelRegistry). */
  models: CaptureModelCatalog;
  queue: CaptureQueue;
  destination: CaptureDestination;
  /**
   * The bucket. With a Cloud destination: where the offline spool uploads to (normally the destination's own
   * store). With Disk and periodic upload: where Disk captures are copied to.
   */
  store?: ObjectStore;
  /** Marks of kept files the periodic upload has uploaded; default in memory. */
  ledger?: UploadLedger;
  /** The agent's Prometheus registry (AgentMetrics.registry). */
  metricsRegistry?: Registry;
  /** Counts captured samples per model for the heartbeat. */
  activity?: ModelActivity;
  logger?: CaptureLogger;
  /**
   * The Disk folder's lock (lockCaptureFolder), held by the caller: checked with the periodic status pruning, so
   * that a lock file removed or replaced under it (which lets a second agent in) is reported.
   */
  folderLock?: FolderLock;
  now?: () => number;
  random?: () => number;
  /** Reads the free space of the spool's file system (default node's statfs). */
  statfs?: StatFs;
}

interface Batch {
  batchId: string;
  items: CaptureItem[];
  attempts: number;
}

/**
 * Capture, as the SageMaker Edge agent's CaptureData and GetCaptureDataStatus, plus automatic capture of Predict
 * traffic. Every front door is a thin adapter over this class.
 *
 * A capture is checked, copied, and held in the queue (durably, with the local database) before `capture`
 * resolves; at most `bufferSize` are held (RESOURCE_EXHAUSTED beyond). A batch is formed when `batchSize` are
 * waiting, or `pushPeriodSeconds` after the first of them arrived, whichever comes first, and written to the
 * destination: files named from the batch id, so a batch written again after a crash replaces itself. A Cloud
 * batch the bucket will not take goes to the offline spool, which retries it with backoff until it is taken or
 * the spool's quota pushes it out. Statuses: IN_PROGRESS until written (or uploaded from the spool), then
 * SUCCESS; FAILURE when given up.
 */
export class CaptureService {
  readonly settings: CaptureSettings;
  /** Register with ModelRegistry.observe to capture Predict traffic by the settings' rules. */
  readonly autoCapture: PredictObserver;
  readonly metrics: CaptureMetrics | undefined;
  readonly #models: CaptureModelCatalog;
  readonly #queue: CaptureQueue;
  readonly #destination: CaptureDestination;
  readonly #spool: CaptureSpool | undefined;
  readonly #periodic: PeriodicUpload | undefined;
  readonly #activity: ModelActivity | undefined;
  readonly #logger: CaptureLogger | undefined;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #render: RenderContext;
  /** Accepted and not yet written, spooled or given up (includes those being committed). */
  #held = 0;
  /** The bytes of the captures accepted by this process and still held (those recovered at start count 0). */
  #heldBytes = 0;
  /**
   * Automatic captures taken by a rule and waiting on the room check (#roomRefusal: a statfs), and their bytes:
   * copies in memory already, so they count against the buffer's cap while they wait (#bufferFull, CaptureData's
   * checks), or a slow check would let any number pile up.
   */
  #waitingAutomatic = 0;
  #waitingAutomaticBytes = 0;
  readonly #bytesOf = new Map<string, number>();
  readonly #bufferBytes: number;
  /** Committed and not yet in a batch. */
  #pending = 0;
  /** Ids being committed: not yet visible in the queue's statuses. */
  readonly #reserved = new Set<string>();
  #flushTimer: NodeJS.Timeout | undefined;
  #pruneTimer: NodeJS.Timeout | undefined;
  /** Comes back for the interrupted batches set aside at start (see CaptureQueue.retrySetAside) at their next try. */
  #setAsideTimer: NodeJS.Timeout | undefined;
  readonly #batches: Batch[] = [];
  readonly #retryTimers = new Set<NodeJS.Timeout>();
  /** Batches being formed: taken from the queue, their captures being read back (large ones from files). */
  #forming = 0;
  #writing = 0;
  #idleWaiters: (() => void)[] = [];
  #started = false;
  #closed = false;
  /** When the last "destination full" warning was logged, and the batches refused since. */
  #fullWarnedAt = Number.NEGATIVE_INFINITY;
  /**
   * Direct writes that failed into the spool: until the spool's own attempt fails (then new batches go to it at
   * once), every batch formed meets the outage here. The first line, then at most one a minute with a count.
   */
  readonly #directFailureLines: LineLimiter;
  #fullUnwarned = 0;
  readonly #folderLock: FolderLock | undefined;
  /** What the last check found of the folder lock's file (undefined: still the file locked). */
  #folderLockChange: string | undefined;

  constructor(options: CaptureServiceOptions) {
    const { settings } = options;
    this.settings = settings;
    this.#models = options.models;
    this.#queue = options.queue;
    this.#destination = options.destination;
    this.#activity = options.activity;
    this.#logger = options.logger;
    this.#folderLock = options.folderLock;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#directFailureLines = new LineLimiter({ now: this.#now });
    this.#bufferBytes = settings.bufferBytes ?? defaultCaptureBufferBytes(settings.maxCaptureBytes);
    this.metrics =
      options.metricsRegistry &&
      new CaptureMetrics(options.metricsRegistry, {
        queueDepth: () => this.#held,
        spoolBytes: () => this.#spool?.bytes ?? 0,
        spoolBatches: () => this.#spool?.batches ?? 0,
      });
    this.#render = {
      folderPrefix: settings.folderPrefix,
      fleetName: settings.fleetName,
      deviceName: settings.deviceName,
      base64EmbedLimit: settings.base64EmbedLimit,
      modelMonitorFormat: settings.modelMonitorFormat,
      urlFor: (key) => this.#destination.urlFor(key),
    };
    if ((settings.destination === 'Cloud' || settings.destination === 'EdgeFleet') && options.store) {
      this.#spool = new CaptureSpool({
        dir: settings.spool.dir,
        quotaBytes: settings.spool.quotaBytes,
        minFreeBytes: settings.spool.minFreeBytes,
        ...(options.statfs && { statfs: options.statfs }),
        store: options.store,
        retry: { initialMs: settings.spool.retryInitialMs, maxMs: settings.spool.retryMaxMs },
        onDelivered: (ids) => this.#queue.setStatuses(ids, 'SUCCESS'),
        onDropped: (ids, detail) => this.#queue.setStatuses(ids, 'FAILURE', detail),
        ...(this.metrics && { metrics: this.metrics }),
        ...(this.#logger && { logger: this.#logger }),
        random: this.#random,
      });
    }
    if (settings.destination === 'Disk' && settings.periodicUpload && options.store) {
      this.#periodic = new PeriodicUpload({
        root: settings.diskPath,
        folderPrefix: settings.folderPrefix,
        store: options.store,
        periodMs: settings.periodicUploadPeriodSeconds * 1000,
        keepFiles: settings.keepUploadedFiles,
        ledger: options.ledger ?? new MemoryUploadLedger(),
        ...(this.metrics && { metrics: this.metrics }),
        ...(this.#logger && { logger: this.#logger }),
        now: this.#now,
      });
    }
    this.autoCapture = new AutoCapture({
      rules: settings.autoCapture,
      take: (item) => this.#takeAutomatic(item),
      random: this.#random,
      now: this.#now,
    });
  }

  /** Captures held: accepted and not yet written or spooled (the buffer's fill). */
  get held(): number {
    return this.#held;
  }

  /** Resumes what an earlier run left (queued captures, interrupted batches, the spool) and starts the timers. */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    await this.#destination.open?.();
    await this.#spool?.open();
    const recovered = await this.#queue.recover();
    if (recovered.orphansRemoved > 0) {
      this.#logger?.info(
        { files: recovered.orphansRemoved },
        'capture: removed payload files of captures that were never queued, or already written, before the restart',
      );
    }
    for (const problem of recovered.problems) this.#logger?.warn({}, `capture: ${problem}`);
    this.#pending = recovered.pending;
    this.#held = recovered.pending;
    // What the queue holds counts in the byte cap again (it bounds the payload folder's disk use too).
    for (const [captureId, bytes] of recovered.pendingBytes) this.#holdBytes(captureId, bytes);
    // Interrupted batches set aside whole (see recover): still on disk, so still held until tried again.
    this.#held += recovered.heldAside.size;
    for (const [captureId, bytes] of recovered.heldAside) this.#holdBytes(captureId, bytes);
    const spooled = this.#spool?.captureIds() ?? new Set<string>();
    for (const batch of recovered.openBatches) {
      if (batch.items.every((item) => spooled.has(item.captureId))) {
        // Spooled just before a crash, not yet recorded: the spool has it.
        this.#queue.completeBatch(batch.batchId, null);
        continue;
      }
      this.#held += batch.items.length;
      for (const item of batch.items) this.#holdBytes(item.captureId, captureBytes(item));
      this.#batches.push({ batchId: batch.batchId, items: batch.items, attempts: 0 });
    }
    const outside = this.#queue.inProgressOutsideQueue().filter((id) => !spooled.has(id));
    // A batch set aside just before a crash, its captures not yet marked: they are in set-aside/, not gone.
    const setAside = this.#spool?.setAsideDetails() ?? new Map<string, string>();
    const bySetAsideDetail = new Map<string, string[]>();
    for (const id of outside) {
      const detail = setAside.get(id);
      if (detail !== undefined) bySetAsideDetail.set(detail, [...(bySetAsideDetail.get(detail) ?? []), id]);
    }
    for (const [detail, ids] of bySetAsideDetail) {
      this.#queue.setStatuses(ids, 'FAILURE', detail);
      this.metrics?.dropped.inc({ reason: 'set-aside' }, ids.length);
      this.#logger?.warn(
        { event: 'capture-spool-set-aside-recovered', captures: ids.length },
        `capture: ${detail}; marked FAILURE now`,
      );
    }
    const lost = outside.filter((id) => !setAside.has(id));
    if (lost.length > 0) {
      this.#queue.setStatuses(
        lost,
        'FAILURE',
        'the spooled batch holding this capture is gone (removed from the spool folder)',
      );
      this.#logger?.warn(
        { captures: lost.length },
        'capture: captures handed to the spool are no longer there; marked FAILURE',
      );
    }
    if (this.#held > 0) {
      this.#logger?.info(
        { waiting: this.#pending, interruptedBatches: this.#batches.length },
        'capture: resuming captures queued before the restart',
      );
    }
    this.#pruneTimer = setInterval(() => this.#prune(), 60_000);
    this.#pruneTimer.unref();
    this.#periodic?.start();
    this.#armSetAsideTimer();
    this.#schedule();
    this.#drive();
  }

  /**
   * CaptureData, as the front door decoded it: checks the request, copies its data, and holds it for the next
   * batch. Resolves once held (durably, with the local database): the capture is then acknowledged. Errors
   * (AgentError): INVALID_ARGUMENT (bad capture_id, tensor or auxiliary data), ALREADY_EXISTS (capture_id in
   * use), NOT_FOUND (model not loaded), OUT_OF_RANGE (inference_timestamp in the future), RESOURCE_EXHAUSTED
   * (larger than maxCaptureBytes, the buffer full by count or bytes, the Disk destination known full: its quota or
   * free-space floor, or the offline spool's file system at its floor: #roomRefusal), UNAVAILABLE (shutting down),
   * INTERNAL.
   * The size is checked on the request's views (inline bytes, shared memory mapped) before anything is copied.
   */
  async capture(request: CaptureRequest): Promise<void> {
    let item: CaptureItem;
    try {
      // First, as it may await (checking a full destination or the spool's file system): every check below runs
      // after it, unbroken.
      const noRoom = await this.#roomRefusal(requestBytes(request));
      if (noRoom !== undefined) {
        throw new AgentError(
          'RESOURCE_EXHAUSTED',
          `capture ${JSON.stringify(request.captureId)} was not taken: ${noRoom.reason}`,
        );
      }
      if (!this.#started || this.#closed) {
        throw new AgentError(
          'UNAVAILABLE',
          this.#closed
            ? 'the agent is shutting down; capture is closed'
            : 'capture has not started yet; retry shortly',
        );
      }
      const captureId = checkCaptureId(request.captureId);
      if (this.#reserved.has(captureId) || this.#queue.status(captureId) !== undefined) {
        throw new AgentError(
          'ALREADY_EXISTS',
          `capture_id ${JSON.stringify(captureId)} was used already; expected a new id for each capture`,
        );
      }
      if (this.#held + this.#waitingAutomatic >= this.settings.bufferSize) {
        throw new AgentError(
          'RESOURCE_EXHAUSTED',
          `the capture buffer is full (${this.#held + this.#waitingAutomatic} of ${this.settings.bufferSize} captures waiting to be written to ${this.#destination.description}); retry later, or raise sagemaker_edge_core_capture_data_buffer_size`,
        );
      }
      const bytes = requestBytes(request);
      if (bytes > this.settings.maxCaptureBytes) {
        throw new AgentError(
          'RESOURCE_EXHAUSTED',
          `capture ${JSON.stringify(captureId)} holds ${bytes} bytes of tensors and auxiliary data (inline and in shared memory); this agent captures at most ${this.settings.maxCaptureBytes} bytes at once (edgefleet_capture_max_bytes, by default the larger of -m and 64 MiB); nothing was captured. Expected a smaller capture`,
        );
      }
      if (this.#heldBytes + this.#waitingAutomaticBytes + bytes > this.#bufferBytes) {
        throw new AgentError(
          'RESOURCE_EXHAUSTED',
          `the capture buffer is full (${this.#heldBytes + this.#waitingAutomaticBytes} bytes of captures waiting to be written to ${this.#destination.description}; ${bytes} more would pass its ${this.#bufferBytes} bytes, edgefleet_capture_buffer_bytes); retry later`,
        );
      }
      item = captureItemFromRequest(request, {
        models: this.#models,
        now: this.#now(),
        futureToleranceMs: this.settings.futureToleranceMs,
      });
    } catch (error) {
      this.metrics?.rejected.inc({ code: isAgentError(error) ? error.code : 'INTERNAL' });
      throw error;
    }
    await this.#admit(item);
  }

  /** GetCaptureDataStatus. NOT_FOUND for an id never seen (or whose status has been forgotten). */
  status(captureId: string): StatusRecord {
    const id = checkCaptureId(captureId);
    if (this.#reserved.has(id)) return { status: 'IN_PROGRESS', updatedAt: this.#now() };
    const record = this.#queue.status(id);
    if (!record) {
      const { maxAgeMs, maxEntries } = this.settings.statusRetention;
      throw new AgentError(
        'NOT_FOUND',
        `no capture with capture_id ${JSON.stringify(id)} is known; expected the id of a CaptureData call (statuses are kept ${Math.round(maxAgeMs / 3600_000)} h after they finish, at most ${maxEntries})`,
      );
    }
    return record;
  }

  /** Forms batches of everything waiting now and resolves when every batch is written, spooled or given up. */
  async flush(): Promise<void> {
    this.#formBatches(true);
    await this.whenIdle();
  }

  /** Resolves when no batch is being written or waiting to be (captures still short of a batch may wait). */
  async whenIdle(): Promise<void> {
    this.#drive();
    if (this.#idle()) return;
    await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * Writes what is buffered (a write that fails is not retried: with the database its captures stay queued for
   * the next start), then stops. The spool keeps what it holds for the next start.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#flushTimer);
    clearInterval(this.#pruneTimer);
    clearTimeout(this.#setAsideTimer);
    for (const timer of this.#retryTimers) clearTimeout(timer);
    this.#retryTimers.clear();
    if (this.#started) await this.flush();
    await this.#spool?.close();
    await this.#periodic?.close();
    await this.#queue.close();
  }

  /** The periodic upload, for an immediate round (tests, shutdown hooks). */
  async uploadNow(): Promise<number> {
    return (await this.#periodic?.runOnce()) ?? 0;
  }

  /** Spool state, for tests and diagnostics. */
  spoolState(): { batches: number; bytes: number; unreachable: boolean } | undefined {
    return (
      this.#spool && {
        batches: this.#spool.batches,
        bytes: this.#spool.bytes,
        unreachable: this.#spool.unreachable,
      }
    );
  }

  // -----------------------------------------------------------------------------------------------------------

  async #admit(item: CaptureItem): Promise<void> {
    this.#reserved.add(item.captureId);
    this.#held++;
    this.#holdBytes(item.captureId, captureBytes(item));
    try {
      await this.#queue.enqueue(item, item.source === 'api');
    } catch (error) {
      this.#held--;
      this.#releaseBytes(item.captureId);
      // The database or the payload file's file system is full (or over the user's disk quota).
      const full = ['SQLITE_FULL', 'ENOSPC', 'EDQUOT'].includes((error as { code?: string }).code ?? '');
      const failure = new AgentError(
        full ? 'RESOURCE_EXHAUSTED' : 'INTERNAL',
        `capture ${JSON.stringify(item.captureId)} could not be queued in the local database: ${(error as Error).message}`,
        { cause: error },
      );
      this.metrics?.rejected.inc({ code: failure.code });
      throw failure;
    } finally {
      this.#reserved.delete(item.captureId);
    }
    this.metrics?.accepted.inc({ model: item.model, source: item.source });
    this.#activity?.sample(item.model, item.inferenceTime);
    this.#pending++;
    this.#schedule();
  }

  #takeAutomatic(item: CaptureItem): void {
    if (!this.#started || this.#closed) return;
    // Checked before the room (a statfs) as well as after it: a full buffer costs nothing to refuse.
    if (this.#bufferFull(item)) {
      this.metrics?.autoSkipped.inc({ model: item.model, reason: 'buffer-full' });
      return;
    }
    const checkingFull = this.#destination.fullReason?.();
    // Nothing to check (the destination not known full, no spool in use: the usual case): taken at once.
    if (checkingFull === undefined && !this.#spool?.inUse) {
      this.#admitAutomatic(item);
      return;
    }
    const bytes = captureBytes(item);
    this.#waitingAutomatic++;
    this.#waitingAutomaticBytes += bytes;
    const stopWaiting = () => {
      this.#waitingAutomatic--;
      this.#waitingAutomaticBytes -= bytes;
    };
    void this.#roomRefusal(bytes, checkingFull).then(
      (noRoom) => {
        // No longer waiting: admitted now (held), or not taken.
        stopWaiting();
        if (noRoom !== undefined) {
          // As CaptureData would be refused (RESOURCE_EXHAUSTED): not taken, counted by why.
          this.metrics?.autoSkipped.inc({ model: item.model, reason: noRoom.why });
          return;
        }
        if (!this.#started || this.#closed) return;
        if (this.#bufferFull(item)) {
          this.metrics?.autoSkipped.inc({ model: item.model, reason: 'buffer-full' });
          return;
        }
        this.#admitAutomatic(item);
      },
      (error: unknown) => {
        stopWaiting();
        this.#automaticNotQueued(item, error);
      },
    );
  }

  #admitAutomatic(item: CaptureItem): void {
    this.#admit(item).catch((error: unknown) => this.#automaticNotQueued(item, error));
  }

  #automaticNotQueued(item: CaptureItem, error: unknown): void {
    this.metrics?.autoSkipped.inc({ model: item.model, reason: 'queue-failed' });
    this.#logger?.warn(
      { err: error, model: item.model },
      'capture: an automatic capture could not be queued',
    );
  }

  #bufferFull(item: CaptureItem): boolean {
    return (
      this.#held + this.#waitingAutomatic >= this.settings.bufferSize ||
      this.#heldBytes + this.#waitingAutomaticBytes + captureBytes(item) > this.#bufferBytes
    );
  }

  /**
   * Why a capture of `bytes` is not to be taken for lack of room, checked at the door for CaptureData and
   * automatic captures alike: the Disk destination known full (its quota or free-space floor), or, while batches go
   * to the offline spool, the spool's file system left under edgefleet_capture_min_free_bytes. Undefined: room.
   */
  async #roomRefusal(
    bytes: number,
    checkingFull = this.#destination.fullReason?.(),
  ): Promise<{ why: 'destination-full' | 'spool-full'; reason: string } | undefined> {
    const full = checkingFull && (await checkingFull);
    if (full !== undefined) return { why: 'destination-full', reason: full };
    if (!this.#spool?.inUse) return undefined;
    // Each byte still to be written on the spool's file system, once: the free space read already holds the queued
    // copies of the captures held (in the database or its payload files), so they count once more, for their spooled
    // copy; this capture counts for its queued copy (with the database) and its spooled one.
    const queued = this.#queue.durable ? bytes : 0;
    const reason = await this.#spool.admissionRefusal(this.#heldBytes + queued + bytes);
    return reason === undefined ? undefined : { why: 'spool-full', reason };
  }

  /**
   * Batch now when batchSize are waiting, not counting those the queue passes over (deferred, before their next
   * try); otherwise make sure the push-period timer runs while any wait.
   */
  #schedule(): void {
    if (this.#ready() >= this.settings.batchSize) this.#formBatches(false);
    this.#armFlushTimer();
    this.#drive();
  }

  #armFlushTimer(): void {
    if (this.#pending > 0 && this.#flushTimer === undefined && !this.#closed) {
      this.#flushTimer = setTimeout(() => {
        this.#flushTimer = undefined;
        this.#formBatches(true);
      }, this.settings.pushPeriodSeconds * 1000);
    }
  }

  /** Waiting captures a batch would take now: deferred ones before their next try are passed over. */
  #ready(): number {
    return Math.max(0, this.#pending - this.#queue.passedOver());
  }

  #formBatches(all: boolean): void {
    const size = this.settings.batchSize;
    for (let ready = this.#ready(); ready >= size || (all && ready > 0); ready = this.#ready()) {
      // Counted out now: the queue reads them back, then records the batch.
      const limit = Math.min(size, ready);
      this.#pending -= limit;
      this.#forming++;
      void this.#formBatch(limit).finally(() => {
        this.#forming--;
        this.#drive();
        this.#notifyIdle();
      });
    }
    if (this.#pending === 0 && this.#flushTimer !== undefined) {
      clearTimeout(this.#flushTimer);
      this.#flushTimer = undefined;
    }
    // Captures passed over stay counted: the timer comes back for them at the next push period.
    this.#armFlushTimer();
    if (this.#queue.nextSetAsideTryInMs() === 0) this.#retrySetAside();
    this.#drive();
  }

  #armSetAsideTimer(): void {
    clearTimeout(this.#setAsideTimer);
    this.#setAsideTimer = undefined;
    const delay = this.#queue.nextSetAsideTryInMs();
    if (delay === undefined || this.#closed) return;
    this.#setAsideTimer = setTimeout(() => {
      this.#setAsideTimer = undefined;
      this.#retrySetAside();
    }, delay);
  }

  /**
   * Tries the set-aside interrupted batches due a try: those readable now go to be written under their own ids;
   * captures given up (marked FAILURE) give back their place and bytes.
   */
  #retrySetAside(): void {
    this.#forming++;
    void this.#queue
      .retrySetAside()
      .then(
        (retried) => {
          for (const { batchId, items, damaged } of retried) {
            this.#held -= damaged.length;
            for (const captureId of damaged) this.#releaseBytes(captureId);
            const batch = { batchId, items, attempts: 0 };
            // Spooled just before the crash, not yet recorded: the spool has it (as at start).
            const spooled = this.#spool?.captureIds() ?? new Set<string>();
            if (items.length > 0 && items.every((item) => spooled.has(item.captureId)))
              this.#complete(batch, null);
            else if (items.length > 0) this.#batches.push(batch);
            this.#logger?.info(
              { batchId, captures: items.length, givenUp: damaged.length },
              'capture: an interrupted batch set aside at start was read again whole; writing what is left of it under its own id',
            );
          }
        },
        (error: unknown) => {
          this.#logger?.error({ err: error }, 'capture: cannot try again the interrupted batches set aside');
        },
      )
      .finally(() => {
        this.#forming--;
        this.#armSetAsideTimer();
        this.#drive();
        this.#notifyIdle();
      });
  }

  async #formBatch(limit: number): Promise<void> {
    const batchId = randomBytes(16).toString('hex');
    let formed: FormedBatch;
    try {
      formed = await this.#queue.formBatch(batchId, limit);
    } catch (error) {
      // Nothing was taken (one transaction): they wait for the next push period.
      this.#pending += limit;
      this.#logger?.error({ err: error }, 'capture: cannot take a batch from the local database');
      this.#armFlushTimer();
      return;
    }
    const { items, damaged, deferred, untaken } = formed;
    // Dropped as unreadable (marked FAILURE): nothing holds them, bytes included.
    this.#held -= damaged.length;
    for (const captureId of damaged) this.#releaseBytes(captureId);
    if (items.length > 0) this.#batches.push({ batchId, items, attempts: 0 });
    // Not taken: passed over (deferred captures before their next try) or no longer waiting; counted again.
    this.#pending += untaken;
    if (deferred.length > 0) {
      // Not known to be damaged (too many open files, an I/O error, …): waiting again, passed over by the batches
      // formed until their next try (after a growing delay; marked FAILURE after a bounded number of tries).
      this.#pending += deferred.length;
      this.#logger?.warn(
        { err: deferred[0]!.error, captures: deferred.map((d) => d.captureId) },
        'capture: queued captures could not be read back from their payload files now; tried again later, after a growing delay',
      );
    }
    if (untaken > 0 || deferred.length > 0) this.#armFlushTimer();
  }

  #drive(): void {
    while (this.#writing < this.settings.writeConcurrency && this.#batches.length > 0) {
      const batch = this.#batches.shift()!;
      this.#writing++;
      void this.#write(batch).finally(() => {
        this.#writing--;
        this.#drive();
        this.#notifyIdle();
      });
    }
  }

  #idle(): boolean {
    return (
      this.#batches.length === 0 && this.#forming === 0 && this.#writing === 0 && this.#retryTimers.size === 0
    );
  }

  #notifyIdle(): void {
    if (!this.#idle()) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  async #write(batch: Batch): Promise<void> {
    let rendered: RenderedBatch;
    try {
      rendered = renderBatch(batch.batchId, batch.items, this.#render);
    } catch (error) {
      this.#giveUp(batch, `the capture could not be rendered as records: ${(error as Error).message}`, error);
      return;
    }
    if (this.#spool?.unreachable) {
      await this.#toSpool(batch, rendered);
      return;
    }
    const began = performance.now();
    try {
      await this.#destination.write(rendered.files);
    } catch (error) {
      this.metrics?.writeFailures.inc({ destination: this.#destination.kind });
      if (error instanceof CaptureDiskFullError) {
        // Not retried: the captures fail with the reason, and nothing the user has is removed to make room.
        this.#refuseFull(batch, error);
        return;
      }
      if (this.#spool) {
        const admitted = this.#directFailureLines.admit('direct');
        if (admitted !== undefined) {
          this.#logger?.warn(
            {
              event: 'capture-write-spooled',
              ...uploadFailureFields(error),
              batchId: batch.batchId,
              captures: batch.items.length,
              ...(admitted.leftOut > 0 && { batchesNotLogged: admitted.leftOut }),
            },
            `capture: cannot write to ${this.#destination.description} (${(error as Error).message}); keeping the batch in the offline spool (${repeatsNote(admitted.leftOut, 'batch(es)')})`,
          );
        }
        await this.#toSpool(batch, rendered);
      } else {
        this.#retryOrGiveUp(batch, error, `cannot write to ${this.#destination.description}`);
      }
      return;
    }
    // Written: the next failure starts a new run of lines.
    this.#directFailureLines.forget('direct');
    this.#directFailureLines.forget('retry');
    if (this.#destination.kind === 's3')
      this.metrics?.uploadDuration.observe({ via: 'direct' }, (performance.now() - began) / 1000);
    this.#complete(batch, 'SUCCESS');
    this.metrics?.written.inc({ destination: this.#destination.kind }, batch.items.length);
  }

  async #toSpool(batch: Batch, rendered: RenderedBatch): Promise<void> {
    try {
      await this.#spool!.add(rendered);
    } catch (error) {
      // A full file system passes: with the local database the captures stay queued there, so they are tried
      // again (with backoff) until the spool has room, never given up for it once acknowledged.
      const full =
        error instanceof CaptureSpoolFullError ||
        ['ENOSPC', 'EDQUOT'].includes((error as { code?: string }).code ?? '');
      this.#retryOrGiveUp(
        batch,
        error,
        `cannot keep the batch in the offline spool ${this.settings.spool.dir}`,
        full && this.#queue.durable,
      );
      return;
    }
    this.#complete(batch, null);
  }

  /** keepTrying: no limit on attempts (the failure passes and the captures are kept meanwhile). */
  #retryOrGiveUp(batch: Batch, error: unknown, what: string, keepTrying = false): void {
    batch.attempts++;
    const detail = `${what}: ${(error as Error).message}`;
    if (this.#closed) {
      if (this.#queue.durable) {
        // Stays queued in the database; the next start writes it again.
        this.#held -= batch.items.length;
        for (const item of batch.items) this.#releaseBytes(item.captureId);
        return;
      }
      this.#giveUp(batch, `${detail} (the agent was shutting down)`, error);
      return;
    }
    if (!keepTrying && batch.attempts >= this.settings.maxDiskWriteAttempts) {
      this.#giveUp(batch, `${detail} (after ${batch.attempts} attempts)`, error);
      return;
    }
    const delay = backoffDelay(
      { initialMs: this.settings.spool.retryInitialMs, maxMs: this.settings.spool.retryMaxMs },
      batch.attempts,
      this.#random,
    );
    // Retried without end while the database keeps the batch: the first line, then one a minute with a count,
    // whatever the number of batches waiting (a full disk may hold the log too).
    const admitted = this.#directFailureLines.admit('retry');
    if (admitted !== undefined)
      this.#logger?.warn(
        {
          event: 'capture-write-retry',
          ...uploadFailureFields(error),
          batchId: batch.batchId,
          captures: batch.items.length,
          attempt: batch.attempts,
          retryInMs: delay,
          ...(admitted.leftOut > 0 && { retriesNotLogged: admitted.leftOut }),
        },
        `capture: ${what}; retrying (${repeatsNote(admitted.leftOut, 'retries')})`,
      );
    const timer = setTimeout(() => {
      this.#retryTimers.delete(timer);
      this.#batches.push(batch);
      this.#drive();
      this.#notifyIdle();
    }, delay);
    this.#retryTimers.add(timer);
  }

  #giveUp(batch: Batch, detail: string, error: unknown): void {
    this.#logger?.error(
      {
        event: 'capture-batch-given-up',
        err: error,
        batchId: batch.batchId,
        dropped: batch.items.length,
        reason: 'write-failed',
      },
      `capture: giving up a batch: ${detail}; its ${batch.items.length} capture(s) are marked FAILURE`,
    );
    this.metrics?.dropped.inc({ reason: 'write-failed' }, batch.items.length);
    this.#complete(batch, 'FAILURE', detail);
  }

  #refuseFull(batch: Batch, error: CaptureDiskFullError): void {
    this.metrics?.dropped.inc({ reason: 'destination-full' }, batch.items.length);
    this.#complete(batch, 'FAILURE', error.message);
    // Rate-limited: a client capturing in a loop would otherwise log every batch.
    this.#fullUnwarned++;
    if (this.#now() - this.#fullWarnedAt < FULL_WARNING_INTERVAL_MS) return;
    this.#logger?.warn(
      { batches: this.#fullUnwarned, batchId: batch.batchId, captures: batch.items.length },
      `capture: batches not written (marked FAILURE): ${error.message}`,
    );
    this.#fullWarnedAt = this.#now();
    this.#fullUnwarned = 0;
  }

  #complete(batch: Batch, status: 'SUCCESS' | 'FAILURE' | null, detail?: string): void {
    try {
      this.#queue.completeBatch(batch.batchId, status, detail);
    } catch (error) {
      // The records are out; with the database the batch is written again at the next start (same keys).
      this.#logger?.error(
        { err: error, batchId: batch.batchId },
        'capture: cannot record a finished batch in the local database',
      );
    }
    this.#held -= batch.items.length;
    for (const item of batch.items) this.#releaseBytes(item.captureId);
  }

  #holdBytes(captureId: string, bytes: number): void {
    this.#heldBytes += bytes;
    this.#bytesOf.set(captureId, bytes);
  }

  #releaseBytes(captureId: string): void {
    const bytes = this.#bytesOf.get(captureId);
    if (bytes === undefined) return;
    this.#bytesOf.delete(captureId);
    this.#heldBytes -= bytes;
  }

  #prune(): void {
    try {
      this.#queue.pruneStatuses(this.settings.statusRetention);
    } catch (error) {
      this.#logger?.warn({ err: error }, 'capture: cannot prune old capture statuses');
    }
    this.#checkFolderLock();
  }

  /** Reports the Disk folder's lock file removed or replaced, once per change (it stays so until a restart). */
  #checkFolderLock(): void {
    const lock = this.#folderLock;
    if (lock === undefined) return;
    const change = lock.lockFileChange();
    if (change !== undefined && change !== this.#folderLockChange) {
      this.#logger?.error(
        { folder: lock.folder, lockFile: lock.path },
        `capture: the Disk capture folder's lock file ${lock.path} was ${change} while this agent holds the folder: another agent can now lock the folder too and write, upload and count its files alongside this one. Restart this agent to lock the folder again, and keep the lock file out of clean-ups of the capture folder (it must stay)`,
      );
    }
    this.#folderLockChange = change;
  }
}

/** At most one "destination full" warning this often. */
const FULL_WARNING_INTERVAL_MS = 60_000;

/** The bytes a capture request carries, as the front door found them (views: nothing copied yet). */
function requestBytes(request: CaptureRequest): number {
  let bytes = 0;
  for (const list of [request.inputTensors, request.outputTensors, request.inputs, request.outputs])
    for (const entry of list ?? []) bytes += entry.data.byteLength;
  return bytes;
}
