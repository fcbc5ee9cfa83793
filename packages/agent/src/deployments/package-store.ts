import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rm, stat, statfs } from 'node:fs/promises';
import { request, type Agent } from 'node:https';
import { join, resolve, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import {
  DEFAULT_ARCHIVE_LIMITS,
  PackageArchiveError,
  extractPackageArchive,
  parsePackageUrl,
} from '@edgefleet/core';
import { CurrentTls, deviceHttpsAgent, type DeviceTlsIdentity } from '../fleet/index.js';

/** Why a download did not complete: `retry` (no answer, 5xx, cut off: try again later), `fail` (give up). */
export class PackageDownloadError extends Error {
  constructor(
    readonly outcome: 'retry' | 'fail',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'PackageDownloadError';
  }
}

export interface PackageDownload {
  url: string;
  sha256: string;
  size?: number;
}

export interface PackageStoreOptions {
  /** The store's folder (under sagemaker_edge_local_data_root_path). */
  root: string;
  /** Where PackageUrl paths are resolved (the device API's origin). */
  endpoint: string;
  /** The device's certificate files as they are now (read before each download: a renewal is used at once). */
  tls: () => Promise<DeviceTlsIdentity>;
  timeoutMs: number;
  /**
   * Largest package downloaded (edgefleet_deployment_max_package_bytes): a deployment announcing a larger Size is
   * refused before anything is downloaded; one announcing none is cut off there. Default 4 GiB.
   */
  maxPackageBytes?: number;
  /**
   * Free space kept on the store's file system (edgefleet_deployment_min_free_bytes): a download or extraction
   * that would leave less is refused, so a package cannot starve the database and capture. Default 64 MiB.
   */
  minFreeBytes?: number;
  /** Bytes received, for metrics. */
  onBytes?: (bytes: number) => void;
}

export const DEFAULT_MAX_PACKAGE_BYTES = 4 * 1024 ** 3;
export const DEFAULT_MIN_FREE_BYTES = 64 * 1024 ** 2;

/**
 * Extraction runs before the signature check (the signature covers the extracted files), so what an unverified
 * archive may expand to is bounded by its own size: models compress little (float weights), so this many times
 * the compressed size, plus some slack for small packages, is generous for real ones and stops a gzip bomb early.
 */
export const EXTRACTION_FACTOR = 16;
export const EXTRACTION_SLACK_BYTES = 16 * 1024 ** 2;

/**
 * The agent's package store: downloads (resumable), and extracted package folders, versioned per model handle:
 *
 *   <root>/downloads/<sha256>.tar.gz        a download in progress or complete (checked against its SHA-256)
 *   <root>/packages/<handle>/<version>-<sha256 prefix>/   an extracted, verified package (what the registry loads)
 *
 * Nothing here decides what to keep: `collectGarbage(keep)` removes every folder and download not named in keep.
 */
export class PackageStore {
  readonly root: string;
  readonly #endpoint: URL;
  readonly #agent: CurrentTls<Agent>;
  readonly #timeoutMs: number;
  readonly #maxBytes: number;
  readonly #minFreeBytes: number;
  readonly #onBytes: ((bytes: number) => void) | undefined;

  constructor(options: PackageStoreOptions) {
    this.root = resolve(options.root);
    this.#endpoint = new URL(options.endpoint);
    this.#agent = new CurrentTls(options.tls, deviceHttpsAgent, (agent) => agent.destroy());
    this.#timeoutMs = options.timeoutMs;
    this.#maxBytes = options.maxPackageBytes ?? DEFAULT_MAX_PACKAGE_BYTES;
    this.#minFreeBytes = options.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES;
    this.#onBytes = options.onBytes;
  }

  downloadPath(sha256: string): string {
    return join(this.root, 'downloads', `${sha256}.tar.gz`);
  }

  packageDir(handle: string, version: string, sha256: string): string {
    const safeVersion = version.replace(/[^A-Za-z0-9._-]/g, '_');
    return join(this.root, 'packages', handle, `${safeVersion}-${sha256.slice(0, 16)}`);
  }

  /**
   * Downloads the package to downloadPath(sha256), resuming a partial file with an HTTP Range request, and
   * checks its size and SHA-256. A file that does not match is removed (fail). Resolves with its path.
   * A package announced larger than maxPackageBytes, or larger than the free space above minFreeBytes, is
   * refused (fail) before a byte is downloaded: the deployment's Size never raises the agent's own cap. One
   * announcing no Size is cut off (fail) where it passes either bound.
   */
  async download(pkg: PackageDownload, signal?: AbortSignal): Promise<string> {
    if (pkg.size !== undefined && pkg.size > this.#maxBytes) {
      throw new PackageDownloadError(
        'fail',
        `the deployment announces a package of ${pkg.size} bytes; this agent downloads packages of at most ${this.#maxBytes} bytes (edgefleet_deployment_max_package_bytes); nothing was downloaded`,
      );
    }
    const file = this.downloadPath(pkg.sha256);
    await mkdir(join(this.root, 'downloads'), { recursive: true, mode: 0o700 });
    const announced = Math.min(pkg.size ?? this.#maxBytes, this.#maxBytes);
    let have = (await stat(file).catch(() => undefined))?.size ?? 0;
    if (have > announced) {
      await rm(file, { force: true });
      have = 0;
    }
    const room = await this.#room();
    const freeSpace = `the file system of ${this.root} has ${room} bytes free above the ${this.#minFreeBytes} bytes the agent keeps free (edgefleet_deployment_min_free_bytes)`;
    if (pkg.size !== undefined && pkg.size - have > room) {
      throw new PackageDownloadError(
        'fail',
        `the package at ${pkg.url} needs ${pkg.size - have} more bytes; ${freeSpace}; nothing was downloaded`,
      );
    }
    // A deployment without a Size (the contract allows it) is cut off at the free space too, not only at the cap.
    const limit = Math.min(announced, have + room);
    const bound =
      limit < announced
        ? freeSpace
        : pkg.size === undefined
          ? 'edgefleet_deployment_max_package_bytes'
          : "the deployment's Size";
    if (pkg.size === undefined || have < pkg.size)
      await this.#fetch(pkg.url, file, have, { bytes: limit, bound }, signal);
    const size = (await stat(file)).size;
    if (pkg.size !== undefined && size !== pkg.size) {
      await rm(file, { force: true });
      throw new PackageDownloadError(
        'fail',
        `the package at ${pkg.url} is ${size} bytes; the deployment announced ${pkg.size}`,
      );
    }
    const digest = await sha256File(file);
    if (digest !== pkg.sha256) {
      await rm(file, { force: true });
      throw new PackageDownloadError(
        'fail',
        `the package at ${pkg.url} has SHA-256 ${digest}; the deployment announced ${pkg.sha256} (corrupted or replaced on the server)`,
      );
    }
    return file;
  }

  /**
   * Extracts a downloaded package into packageDir (replacing what an interrupted earlier attempt left). It may
   * expand to at most EXTRACTION_FACTOR times its compressed size (plus EXTRACTION_SLACK_BYTES), and never into
   * the free space the agent keeps (minFreeBytes): extraction comes before the signature check.
   */
  async extract(file: string, dir: string): Promise<string> {
    await rm(dir, { recursive: true, force: true });
    const compressed = (await stat(file)).size;
    const proportionate = Math.min(
      EXTRACTION_FACTOR * compressed + EXTRACTION_SLACK_BYTES,
      DEFAULT_ARCHIVE_LIMITS.maxTotalBytes,
    );
    const room = await this.#room();
    const limit = Math.min(proportionate, room);
    try {
      const { dir: extracted } = await extractPackageArchive(file, dir, {
        maxTotalBytes: limit,
        maxEntryBytes: limit,
      });
      return extracted;
    } catch (error) {
      if (
        error instanceof PackageArchiveError &&
        (error.reason === 'too-large' || error.reason === 'entry-too-large')
      ) {
        // Two causes, two messages: the device's free space (an operator frees some), or a package that
        // expands past its proportion (a compression bomb, or a package made wrong).
        if (limit < proportionate)
          throw new Error(
            `the device's disk has too little free space to unpack it: it needs more than ${limit} bytes (${error.message}), and the file system of ${this.root} has ${room} bytes free above the ${this.#minFreeBytes} bytes the agent keeps free (edgefleet_deployment_min_free_bytes); free space there, or lower edgefleet_deployment_min_free_bytes`,
            { cause: error },
          );
        throw new Error(
          `it expands to more than ${limit} bytes (${EXTRACTION_FACTOR} times its ${compressed} compressed bytes plus ${EXTRACTION_SLACK_BYTES}): ${error.message}; expected a model package that compresses no more than that`,
          { cause: error },
        );
      }
      throw error;
    }
  }

  /** Removes a download and a package folder (what a failed deployment leaves), ignoring missing ones. */
  async discard(paths: readonly (string | null | undefined)[]): Promise<void> {
    for (const path of paths)
      if (path && this.#inside(path)) await rm(path, { recursive: true, force: true });
  }

  /** Removes every package folder and download not in `keep` (absolute paths), and leftovers of extractions. */
  async collectGarbage(keep: ReadonlySet<string>): Promise<string[]> {
    const removed: string[] = [];
    const downloads = join(this.root, 'downloads');
    for (const name of await readdir(downloads).catch(() => [] as string[])) {
      const path = join(downloads, name);
      if (!keep.has(path)) {
        await rm(path, { recursive: true, force: true });
        removed.push(path);
      }
    }
    const packages = join(this.root, 'packages');
    for (const handle of await readdir(packages).catch(() => [] as string[])) {
      const folder = join(packages, handle);
      const versions = await readdir(folder).catch(() => [] as string[]);
      for (const version of versions) {
        const path = join(folder, version);
        if (!keep.has(path)) {
          await rm(path, { recursive: true, force: true });
          removed.push(path);
        }
      }
      if (versions.every((v) => !keep.has(join(folder, v))))
        await rm(folder, { recursive: true, force: true });
    }
    return removed;
  }

  close(): void {
    this.#agent.close();
  }

  /** Bytes the store's file system has free for it, above the space the agent keeps free (0 or more). */
  async #room(): Promise<number> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
    const fs = await statfs(this.root);
    return Math.max(0, fs.bavail * fs.bsize - this.#minFreeBytes);
  }

  #inside(path: string): boolean {
    return resolve(path).startsWith(this.root + sep);
  }

  /** `limit.bound` says what set the limit, for the message of a download cut off there. */
  async #fetch(
    path: string,
    file: string,
    have: number,
    limit: { bytes: number; bound: string },
    signal?: AbortSignal,
  ): Promise<void> {
    // Only the server's package routes, never a path that climbs out of them (a row saved by an older agent
    // is checked here too, not only GetDeployments answers).
    const parsed = parsePackageUrl(path);
    if ('error' in parsed) throw new PackageDownloadError('fail', parsed.error);
    const url = new URL(path, this.#endpoint);
    if (url.origin !== this.#endpoint.origin || url.pathname !== path)
      throw new PackageDownloadError('fail', `the package URL ${path} is not on the device API`);
    let agent: Agent;
    try {
      agent = await this.#agent.get();
    } catch (error) {
      throw new PackageDownloadError(
        'retry',
        `cannot read the device certificate: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
    return new Promise<void>((resolvePromise, reject) => {
      const retry = (message: string, cause?: unknown) =>
        reject(new PackageDownloadError('retry', message, { cause }));
      const req = request(
        url,
        {
          method: 'GET',
          agent,
          timeout: this.#timeoutMs,
          headers: have > 0 ? { range: `bytes=${have}-` } : {},
          ...(signal ? { signal } : {}),
        },
        (res) => {
          const status = res.statusCode ?? 0;
          if (status === 416 && have > 0) {
            // The partial file is already whole (or longer than the package): the checksum decides.
            res.resume();
            return resolvePromise();
          }
          if (status !== 200 && status !== 206) {
            res.resume();
            const message = `downloading ${path} failed with HTTP ${status}`;
            if (status >= 500 || status === 429) return retry(message);
            return reject(new PackageDownloadError('fail', message));
          }
          const append = status === 206;
          let written = append ? have : 0;
          let failure: Error | undefined;
          // Every byte received is on disk before the outcome is decided, so a cut-off download resumes from it.
          const out = createWriteStream(file, { flags: append ? 'a' : 'w', mode: 0o600 });
          res.on('data', (chunk: Buffer) => {
            written += chunk.length;
            this.#onBytes?.(chunk.length);
            if (written > limit.bytes) {
              failure ??= new PackageDownloadError(
                'fail',
                `the package at ${path} is larger than ${limit.bytes} bytes (${limit.bound}); the download was stopped there`,
              );
              res.destroy();
              return;
            }
            if (!out.write(chunk)) {
              res.pause();
              out.once('drain', () => res.resume());
            }
          });
          res.on('error', (error) => (failure ??= error));
          res.on('close', () => out.end());
          out.on('error', (error) => {
            failure ??= error;
            res.destroy();
          });
          out.on('close', () => {
            if (failure instanceof PackageDownloadError) return reject(failure);
            const code = (failure as NodeJS.ErrnoException | undefined)?.code;
            if (code === 'ENOSPC' || code === 'EDQUOT')
              return reject(
                new PackageDownloadError('fail', `no space left on the device for ${path} (${code})`, {
                  cause: failure,
                }),
              );
            if (failure && 'syscall' in failure && (failure as NodeJS.ErrnoException).syscall !== 'read')
              return reject(
                new PackageDownloadError('fail', `cannot write ${file}: ${failure.message}`, {
                  cause: failure,
                }),
              );
            if (!res.complete || failure)
              return retry(
                `the download of ${path} was cut off${failure ? `: ${failure.message}` : ''}`,
                failure,
              );
            resolvePromise();
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.#timeoutMs} ms`)));
      req.on('error', (error) => retry(`downloading ${path}: ${(error as Error).message}`, error));
      req.end();
    });
  }
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}
