import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  CAPTURE_FOLDER_MODE,
  eachLimit,
  stageFile,
  sweepTemporaryFiles,
  syncFolder,
  type StagedFile,
} from './atomic-files.js';

/** Files written (and fsynced) at the same time by the Disk destination. */
const DISK_WRITE_CONCURRENCY = 8;
import type { DiskQuota } from './disk-quota.js';
import { RefusedByStoreError, type ObjectStore } from './object-store.js';
import type { RenderedFile } from './records.js';

/**
 * Where batches go. Every destination writes the files in the order given (side files before the manifests
 * that reference them), each one atomically, and is idempotent: writing the same keys again replaces them.
 */
export interface CaptureDestination {
  readonly kind: 'disk' | 's3';
  /** For logs: the folder or bucket. */
  readonly description: string;
  /** The URL a record's `data-ref` gives for a key. */
  urlFor(key: string): string;
  write(files: readonly RenderedFile[]): Promise<void>;
  /** Called once by CaptureService.start, before any write. */
  open?(): Promise<void>;
  /**
   * Why nothing more can be written: undefined at once when not known full, else a check again (resolving to the
   * reason, or undefined when room came back).
   */
  fullReason?(): Promise<string | undefined> | undefined;
}

/** Disk: `<capture_data_disk_path>/<key>`, keys laid out as in the bucket. */
export class DiskDestination implements CaptureDestination {
  readonly kind = 'disk';
  readonly root: string;
  readonly description: string;
  readonly #quota: DiskQuota | undefined;

  /** With a quota, a write that would pass it throws CaptureDiskFullError and writes nothing. */
  constructor(root: string, options: { quota?: DiskQuota } = {}) {
    this.root = root;
    this.description = root;
    this.#quota = options.quota;
  }

  /**
   * Starts counting the bytes already under root (the quota's starting point) in the background: a folder of many
   * captures would otherwise hold up the agent's start. The first write waits for the count; a count that fails
   * is walked again by it.
   */
  async open(): Promise<void> {
    this.#quota?.rescan().catch(() => undefined);
  }

  /** Known full: checked again (the user may have collected and removed files), walking root at most so often. */
  fullReason(): Promise<string | undefined> | undefined {
    return this.#quota?.fullReason === undefined ? undefined : this.#quota.stillFull();
  }

  urlFor(key: string): string {
    return pathToFileURL(this.pathOf(key)).href;
  }

  /** Removes temporary files that writes interrupted by a crash or SIGKILL left; returns how many. */
  sweep(): Promise<number> {
    return sweepTemporaryFiles(this.root);
  }

  pathOf(key: string): string {
    return join(this.root, ...key.split('/'));
  }

  /** Checks the quota and free-space floor (CaptureDiskFullError: nothing written), then writes the files. */
  async write(files: readonly RenderedFile[]): Promise<void> {
    const folders = new Set(files.map((f) => dirname(this.pathOf(f.key))));
    for (const folder of folders) await mkdir(folder, { recursive: true, mode: CAPTURE_FOLDER_MODE });
    const bytes = files.reduce((sum, f) => sum + f.body.byteLength, 0);
    await this.#quota?.check(bytes);
    // Counted before writing (on the safe side if the write fails): a batch written meanwhile checks against it.
    this.#quota?.added(bytes);
    try {
      await this.#writeFiles(files);
    } finally {
      this.#quota?.finished(bytes);
    }
  }

  /**
   * Every file is written and fsynced under a temporary name first (several at a time: fsyncs are slow alone,
   * cheap together), then side files are renamed into place and their folders fsynced, and only then the
   * manifests: a manifest is never visible before the side files it references.
   */
  async #writeFiles(files: readonly RenderedFile[]): Promise<void> {
    const staged: StagedFile[] = new Array(files.length);
    try {
      await eachLimit([...files.keys()], DISK_WRITE_CONCURRENCY, async (i) => {
        staged[i] = await stageFile(this.pathOf(files[i]!.key), files[i]!.body);
      });
      const isManifest = (i: number) => files[i]!.kind !== 'side';
      for (const manifests of [false, true]) {
        const these = [...staged.keys()].filter((i) => isManifest(i) === manifests);
        await eachLimit(these, DISK_WRITE_CONCURRENCY, async (i) => {
          await rename(staged[i]!.temp, staged[i]!.path);
          staged[i] = { temp: '', path: staged[i]!.path };
        });
        await eachLimit(
          [...new Set(these.map((i) => dirname(staged[i]!.path)))],
          DISK_WRITE_CONCURRENCY,
          syncFolder,
        );
      }
    } finally {
      await Promise.all(staged.filter((f) => f?.temp).map((f) => rm(f.temp, { force: true })));
    }
  }
}

/** Any S3-compatible bucket. Side files are put a few at a time; manifests only after all of them. */
export class ObjectStoreDestination implements CaptureDestination {
  readonly kind = 's3';
  readonly description: string;
  readonly #store: ObjectStore;
  readonly #concurrency: number;

  constructor(store: ObjectStore, options: { concurrency?: number } = {}) {
    this.#store = store;
    this.description = store.description;
    this.#concurrency = Math.max(1, options.concurrency ?? 4);
  }

  urlFor(key: string): string {
    return this.#store.urlFor(key);
  }

  async write(files: readonly RenderedFile[]): Promise<void> {
    const manifests = files.filter((f) => f.kind !== 'side');
    const sideFiles = files.filter((f) => f.kind === 'side');
    await putAll(this.#store, sideFiles, this.#concurrency);
    await putAll(this.#store, manifests, this.#concurrency);
  }
}

/** What putEach needs of a file: where it goes and what it holds. */
type PutFile = Pick<RenderedFile, 'key' | 'body' | 'contentType'>;

/** Puts files with at most `concurrency` requests in flight; fails with the first error once those in flight end. */
export async function putAll(
  store: ObjectStore,
  files: readonly RenderedFile[],
  concurrency: number,
): Promise<void> {
  const { failure } = await putEach(store, files, concurrency, { collectRefusals: false });
  if (failure !== undefined) throw failure;
}

/**
 * Puts files with at most `concurrency` requests in flight. Any failure stops further puts (those in flight end)
 * and is returned as `failure`, with the file it was for (`failedFile`). With `collectRefusals`, a file the store
 * refuses (RefusedByStoreError) does not stop the others: it is returned with its refusal, beside the
 * failure if one came too. `stored` lists the files the store took.
 */
export async function putEach<F extends PutFile>(
  store: ObjectStore,
  files: readonly F[],
  concurrency: number,
  options: { collectRefusals: boolean },
): Promise<{
  refused: { file: F; error: RefusedByStoreError }[];
  stored: F[];
  failure?: unknown;
  failedFile?: F;
}> {
  let next = 0;
  let failure: { error: unknown; file: F } | undefined;
  const refused: { file: F; error: RefusedByStoreError }[] = [];
  const stored: F[] = [];
  const lane = async () => {
    while (failure === undefined && next < files.length) {
      const file = files[next++]!;
      try {
        await store.put(file.key, file.body, file.contentType);
        stored.push(file);
      } catch (error) {
        if (options.collectRefusals && error instanceof RefusedByStoreError) refused.push({ file, error });
        else failure ??= { error, file };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, files.length) }, lane));
  return {
    refused,
    stored,
    ...(failure !== undefined && { failure: failure.error, failedFile: failure.file }),
  };
}
