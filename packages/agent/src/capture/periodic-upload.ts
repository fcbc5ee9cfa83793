import { readFile, readdir, rmdir, stat, unlink } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { LineLimiter } from '@edgefleet/core';
import type { UploadLedger } from '../state/index.js';
import type { CaptureLogger, CaptureMetrics } from './capture-metrics.js';
import type { ObjectStore, RefusedByStoreError } from './object-store.js';
import { fileKindOfKey } from './records.js';
import { UploadFailureLines, repeatsNote, storeRefusal, uploadFailureFields } from './upload-failure.js';

export interface PeriodicUploadOptions {
  /** `capture_data_disk_path`: keys are paths relative to it. */
  root: string;
  /** `folder_prefix`: only files under `<root>/<prefix>` are uploaded. */
  folderPrefix: string;
  store: ObjectStore;
  periodMs: number;
  /** Keep files after uploading them (marked in the ledger) instead of removing them. */
  keepFiles: boolean;
  ledger: UploadLedger;
  metrics?: CaptureMetrics;
  logger?: CaptureLogger;
  now?: () => number;
}

interface Candidate {
  path: string;
  key: string;
  /** A manifest (either format), from its key: its data-refs are rewritten, and it goes after the side files. */
  manifest: boolean;
  size: number;
  mtimeMs: number;
}

/**
 * Uploads Disk captures to the bucket every period, as plain copies under the same keys — except that `data-ref`
 * URLs in manifests are rewritten from file:// to the object's s3:// URL, so records in the bucket point into it.
 * Side files go before manifests, oldest first. A file is uploaded once: then removed, or (keepFiles) marked in
 * the ledger by path, size and mtime. A round stops at the first failure and the next round resumes where it
 * stopped; files are only ever seen complete (destinations write them under temporary names, skipped here).
 */
export class PeriodicUpload {
  readonly #options: PeriodicUploadOptions;
  readonly #now: () => number;
  readonly #base: string;
  readonly #rootUrl: string;
  /** Failed rounds since the last upload: logged first, then at most once a minute with the number left out. */
  readonly #failureLines: UploadFailureLines;
  /**
   * Files the store refused for good and kept (keepFiles, a refusal not about the file itself, or one that could not
   * be removed), key → the size and mtime refused: skipped while they stay as they are. In memory: after a restart each is tried (and logged) once more.
   */
  readonly #refused = new Map<string, { size: number; mtimeMs: number }>();
  /**
   * The lines of newly refused files: the first, then at most one a minute with the number left out, so that a
   * store refusing every file (a fleet output's prefix changed: 403 for all) writes a line a minute, not one per file.
   */
  readonly #refusedLines: LineLimiter;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #closed = false;

  constructor(options: PeriodicUploadOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#failureLines = new UploadFailureLines({ now: this.#now });
    this.#refusedLines = new LineLimiter({ now: this.#now });
    const prefix = options.folderPrefix.replace(/^\/+|\/+$/g, '');
    this.#base = prefix === '' ? options.root : join(options.root, ...prefix.split('/'));
    const url = pathToFileURL(options.root).href;
    this.#rootUrl = url.endsWith('/') ? url : `${url}/`;
  }

  start(): void {
    if (this.#closed || this.#timer) return;
    this.#timer = setInterval(() => void this.runOnce(), this.#options.periodMs);
  }

  /** One round (rounds never overlap: a call during a round waits for it). Returns files uploaded. */
  async runOnce(): Promise<number> {
    if (this.#running) {
      await this.#running;
      return 0;
    }
    let uploaded = 0;
    this.#running = (async () => {
      uploaded = await this.#round();
    })().finally(() => (this.#running = undefined));
    await this.#running;
    return uploaded;
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#running;
  }

  async #round(): Promise<number> {
    const candidates = await this.#scan();
    const { ledger, keepFiles } = this.#options;
    if (keepFiles) ledger.retain(new Set(candidates.map((c) => c.key)));
    // Forget refusals of files gone or changed: only the files still there, as they were refused, are skipped.
    const present = new Map(candidates.map((c) => [c.key, c]));
    for (const [key, refused] of this.#refused) {
      const now = present.get(key);
      if (now === undefined || now.size !== refused.size || now.mtimeMs !== refused.mtimeMs)
        this.#refused.delete(key);
    }
    const todo = candidates
      .filter((c) => !this.#refused.has(c.key))
      .filter((c) => !(keepFiles && ledger.isUploaded({ path: c.key, size: c.size, mtimeMs: c.mtimeMs })))
      .sort((a, b) => Number(a.manifest) - Number(b.manifest) || a.mtimeMs - b.mtimeMs);
    let uploaded = 0;
    for (const file of todo) {
      if (this.#closed) break;
      const began = performance.now();
      try {
        let body: Buffer = await readFile(file.path);
        if (file.manifest) body = this.#rewriteRefs(body);
        await this.#options.store.put(
          file.key,
          body,
          file.manifest ? 'application/jsonl' : 'application/octet-stream',
        );
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
        const refusal = storeRefusal(error);
        if (refusal !== undefined) {
          await this.#skipRefused(file, refusal);
          continue;
        }
        this.#options.metrics?.writeFailures.inc({ destination: 'periodic-upload' });
        const admitted = this.#failureLines.failed();
        if (admitted !== undefined) {
          this.#options.logger?.warn(
            {
              event: 'capture-upload-failed',
              ...uploadFailureFields(error),
              key: file.key,
              remaining: todo.length - uploaded,
              failures: this.#failureLines.failures,
              ...(admitted.leftOut > 0 && { failuresNotLogged: admitted.leftOut }),
            },
            `capture periodic upload: cannot upload to ${this.#options.store.description} (${(error as Error).message}); retrying next period (${repeatsNote(admitted.leftOut, 'failed round(s)')})`,
          );
        }
        break;
      }
      this.#failureLines.succeeded(
        this.#options.logger,
        this.#options.store.description,
        (failures) =>
          `capture periodic upload: the store is reachable again, after ${failures} failed round(s)`,
      );
      this.#options.metrics?.uploadDuration.observe({ via: 'periodic' }, (performance.now() - began) / 1000);
      this.#options.metrics?.uploadedFiles.inc({ via: 'periodic' });
      uploaded++;
      if (keepFiles) ledger.mark({ path: file.key, size: file.size, mtimeMs: file.mtimeMs }, this.#now());
      else {
        await unlink(file.path).catch(() => {});
        await this.#pruneEmptyFolders(file.path);
      }
    }
    return uploaded;
  }

  /**
   * A file the store refused for good is never sent again as it is: recorded (counted each; logged within
   * #refusedLines' limit), then, when the file can never be taken (storeRefusal's `givesUp`: the control
   * plane's own 413 PayloadTooLarge), removed like an uploaded file, so that such files do not fill the disk. Any
   * other refusal (a proxy's 413, a 403, the server's 400, which also answers settings such as a re-enrolled
   * device's name) may pass once a setting is fixed, and the Disk files are the user's copy: the file stays and is
   * skipped while it is unchanged (until a restart), as it does with keepFiles. A file that could not be removed is
   * skipped so too.
   * The files after it go on.
   */
  async #skipRefused(
    file: Candidate,
    { error, givesUp }: { error: RefusedByStoreError; givesUp: boolean },
  ): Promise<void> {
    const remove = !this.#options.keepFiles && givesUp;
    const removeError = remove
      ? await unlink(file.path).then(
          () => undefined,
          (e: unknown) => e,
        )
      : undefined;
    const removed = remove && removeError === undefined;
    if (!removed) this.#refused.set(file.key, { size: file.size, mtimeMs: file.mtimeMs });
    this.#options.metrics?.refusedFiles.inc({ via: 'periodic' });
    const admitted = this.#refusedLines.admit('refused');
    if (admitted !== undefined) {
      const kept = this.#options.keepFiles
        ? `it stays at ${file.path} (keep_uploaded_files)`
        : removeError !== undefined
          ? `it could not be removed from ${file.path} (${removeError instanceof Error ? removeError.message : String(removeError)})`
          : `it stays at ${file.path}, as a setting may be what the store refuses`;
      this.#options.logger?.warn(
        {
          event: 'capture-upload-refused',
          ...uploadFailureFields(error),
          key: file.key,
          path: file.path,
          ...(error.status !== undefined && { status: error.status }),
          removed,
          ...(removeError !== undefined && { removeError: String(removeError) }),
          ...(admitted.leftOut > 0 && { refusedNotLogged: admitted.leftOut }),
        },
        `capture periodic upload: ${this.#options.store.description} refused ${file.key} for good (${error.message}); ${
          removed
            ? `removed ${file.path}, as the store will never take it`
            : `${kept} and is not sent again while it is unchanged`
        } (${repeatsNote(admitted.leftOut, 'refused file(s)')})`,
      );
    }
    if (removed) await this.#pruneEmptyFolders(file.path);
  }

  async #scan(): Promise<Candidate[]> {
    const found: Candidate[] = [];
    const walk = async (folder: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(folder, { withFileTypes: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw error;
      }
      for (const entry of entries) {
        if (entry.name.startsWith('.')) continue;
        const path = join(folder, entry.name);
        if (entry.isDirectory()) await walk(path);
        else if (entry.isFile()) {
          const info = await stat(path).catch(() => undefined);
          if (!info) continue;
          const key = relative(this.#options.root, path).split(sep).join('/');
          found.push({
            path,
            key,
            manifest: fileKindOfKey(key) !== 'side',
            size: info.size,
            mtimeMs: info.mtimeMs,
          });
        }
      }
    };
    await walk(this.#base);
    return found;
  }

  /**
   * Manifests on disk reference side files by file:// URL; in the bucket they reference the objects. A textual
   * rewrite reaches the URLs in Edge records and those inside Model Monitor records' JSON strings alike (file
   * URLs are percent-encoded, and keys hold no quote or backslash: the settings refuse them).
   */
  #rewriteRefs(body: Buffer): Buffer {
    const text = body.toString('utf8');
    if (!text.includes(this.#rootUrl)) return body;
    const pattern = new RegExp(`${this.#rootUrl.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}([^"\\\\\\s]*)`, 'g');
    return Buffer.from(
      text.replace(pattern, (_match, rest: string) => this.#options.store.urlFor(decodeURIComponent(rest))),
      'utf8',
    );
  }

  /** Removes the folders a removed file leaves empty, up to (not including) the prefix folder. */
  async #pruneEmptyFolders(file: string): Promise<void> {
    let folder = file.slice(0, file.lastIndexOf(sep));
    while (folder.length > this.#base.length && folder.startsWith(this.#base)) {
      try {
        await rmdir(folder);
      } catch {
        return;
      }
      folder = folder.slice(0, folder.lastIndexOf(sep));
    }
  }
}
