import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { request, type Agent } from 'node:https';
import { join, resolve, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { extractPackageArchive, parsePackageUrl } from '@edgefleet/core';
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
  /** Largest package accepted when the server announces no size. Default 4 GiB. */
  maxPackageBytes?: number;
  /** Bytes received, for metrics. */
  onBytes?: (bytes: number) => void;
}

const DEFAULT_MAX_PACKAGE_BYTES = 4 * 1024 ** 3;

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
  readonly #onBytes: ((bytes: number) => void) | undefined;

  constructor(options: PackageStoreOptions) {
    this.root = resolve(options.root);
    this.#endpoint = new URL(options.endpoint);
    this.#agent = new CurrentTls(options.tls, deviceHttpsAgent, (agent) => agent.destroy());
    this.#timeoutMs = options.timeoutMs;
    this.#maxBytes = options.maxPackageBytes ?? DEFAULT_MAX_PACKAGE_BYTES;
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
   */
  async download(pkg: PackageDownload, signal?: AbortSignal): Promise<string> {
    const file = this.downloadPath(pkg.sha256);
    await mkdir(join(this.root, 'downloads'), { recursive: true, mode: 0o700 });
    const limit = pkg.size ?? this.#maxBytes;
    let have = (await stat(file).catch(() => undefined))?.size ?? 0;
    if (have > limit) {
      await rm(file, { force: true });
      have = 0;
    }
    if (pkg.size === undefined || have < pkg.size) await this.#fetch(pkg.url, file, have, limit, signal);
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

  /** Extracts a downloaded package into packageDir (replacing what an interrupted earlier attempt left). */
  async extract(file: string, dir: string): Promise<string> {
    await rm(dir, { recursive: true, force: true });
    const { dir: extracted } = await extractPackageArchive(file, dir);
    return extracted;
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

  #inside(path: string): boolean {
    return resolve(path).startsWith(this.root + sep);
  }

  async #fetch(path: string, file: string, have: number, limit: number, signal?: AbortSignal): Promise<void> {
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
            if (written > limit) {
              failure ??= new PackageDownloadError(
                'fail',
                `the package at ${path} is larger than ${limit} bytes`,
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
