import { randomBytes } from 'node:crypto';
import { LOCAL_ACTOR, type Actor, type FleetEventLog } from '../audit/index.js';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import {
  extractPackageArchive,
  openModelPackage,
  readOnnxModelInfo,
  type TensorMetadata,
} from '@edgefleet/core';
import type { Kysely } from 'kysely';
import type { BlobStore } from '../blobs/index.js';
import { conflict, DomainError, notFound } from '../errors/index.js';
import { isUniqueViolation, type DatabaseSchema, type ModelVersionsTable } from '../storage/index.js';
import {
  checkDeviceTrust,
  deviceTrustFactsSchema,
  deviceTrustWarningAt,
  type DeviceTrustFacts,
} from './device-trust.js';
import { spoolUpload } from './upload.js';

export type ModelSourceKind = 'onnx' | 'package';

export interface ModelTensors {
  inputs: TensorMetadata[];
  outputs: TensorMetadata[];
}

export interface ModelVersionRecord {
  modelName: string;
  version: string;
  sourceKind: ModelSourceKind;
  blobKey: string;
  sizeBytes: number;
  sha256: string;
  tensors: ModelTensors;
  /** What the upload's signature check found; null: not a checked package upload (see device-trust.ts). */
  deviceTrust: DeviceTrustFacts | null;
  createdAt: number;
}

export interface ModelRecord {
  name: string;
  description: string | null;
  versionCount: number;
  latestVersion: string | null;
  createdAt: number;
  updatedAt: number;
}

export interface ModelStoreOptions {
  blobs: BlobStore;
  /** Where uploads are spooled and inspected. */
  workDir: string;
  maxUploadBytes: number;
  /**
   * The server's package-signing root certificate: what devices enrolled by this server trust. An uploaded
   * package whose signature does not lead to it is still accepted (an operator may give devices their own
   * root too), with a warning in the answer; one altered after it was signed is refused (device-trust.ts).
   */
  deviceTrustRootPem?: string;
  now?: () => number;
  /** The operator's log of fleet events (model version uploaded, deleted). */
  events?: FleetEventLog;
}

/** An upload the server accepted, with what the operator should know about it. */
export interface UploadedModelVersion extends ModelVersionRecord {
  /** Why devices enrolled by this server will refuse the package, and what to do about it. */
  warning?: string;
}

function toVersion(row: ModelVersionsTable): ModelVersionRecord {
  return {
    modelName: row.model_name,
    version: row.version,
    sourceKind: row.source_kind as ModelSourceKind,
    blobKey: row.blob_key,
    sizeBytes: row.size_bytes,
    sha256: row.sha256,
    tensors: JSON.parse(row.tensors) as ModelTensors,
    deviceTrust: storedTrustFacts(row.device_trust),
    createdAt: row.created_at,
  };
}

/** The kept facts, or null (none kept, or a shape this build does not know: treated as not checked). */
function storedTrustFacts(text: string | null): DeviceTrustFacts | null {
  if (text === null) return null;
  try {
    const parsed = deviceTrustFactsSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

/**
 * Turns the core library's model and package errors (reason-coded) into 400 answers. Their messages name files
 * by path; the server's own scratch paths (`scratchDir`) are replaced by "the upload" so they never reach clients.
 */
function asValidationError(error: unknown, scratchDir: string): never {
  const name = (error as Error | undefined)?.name ?? '';
  if (
    ['OnnxModelError', 'PackageInvalidError', 'PackageArchiveError', 'PackageNotFoundError'].includes(name)
  ) {
    const scratchPath = new RegExp(`${scratchDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[^\\s:,;'"]*`, 'g');
    const message = (error as Error).message.replace(scratchPath, 'the upload');
    throw new DomainError('ValidationError', message, {
      reason: (error as { reason?: string }).reason ?? name,
    });
  }
  throw error;
}

/** Uploaded models: ONNX files or ready packages, with the tensor metadata read from them, in the blob store. */
export class ModelStore {
  private readonly now: () => number;

  constructor(
    private readonly db: Kysely<DatabaseSchema>,
    private readonly options: ModelStoreOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  /**
   * Accepts an upload (streamed, size-limited), reads its tensor metadata (refusing anything that is not a
   * self-contained ONNX model or a valid package of this name and version), and stores it.
   */
  async upload(
    input: {
      name: string;
      version: string;
      kind: ModelSourceKind;
      body: Readable;
      description?: string;
    },
    by: Actor = LOCAL_ACTOR,
  ): Promise<UploadedModelVersion> {
    if (await this.findVersion(input.name, input.version)) {
      input.body.resume();
      throw conflict(`model ${input.name} version ${input.version} already exists`, {
        model: input.name,
        version: input.version,
      });
    }
    const spooled = await spoolUpload(input.body, {
      dir: this.options.workDir,
      maxBytes: this.options.maxUploadBytes,
    });
    try {
      const { tensors, warning, deviceTrust } = await this.inspect(spooled.file, input).catch(
        (error: unknown) => asValidationError(error, this.options.workDir),
      );
      const blobKey = `models/${input.name}/${input.version.replace(/ /g, '_')}/${randomBytes(4).toString('hex')}-${
        input.kind === 'onnx' ? 'model.onnx' : 'package.tar.gz'
      }`;
      await this.options.blobs.put(blobKey, createReadStream(spooled.file), {
        contentLength: spooled.size,
        contentType: input.kind === 'onnx' ? 'application/octet-stream' : 'application/gzip',
      });
      const at = this.now();
      const row: ModelVersionsTable = {
        model_name: input.name,
        version: input.version,
        source_kind: input.kind,
        blob_key: blobKey,
        size_bytes: spooled.size,
        sha256: spooled.sha256,
        tensors: JSON.stringify(tensors),
        device_trust: deviceTrust !== undefined ? JSON.stringify(deviceTrust) : null,
        created_at: at,
      };
      try {
        await this.db.transaction().execute(async (trx) => {
          await trx
            .insertInto('models')
            .values({
              name: input.name,
              description: input.description ?? null,
              created_at: at,
              updated_at: at,
            })
            .onConflict((oc) =>
              oc.column('name').doUpdateSet({
                updated_at: at,
                ...(input.description !== undefined ? { description: input.description } : {}),
              }),
            )
            .execute();
          await trx.insertInto('model_versions').values(row).execute();
        });
      } catch (error) {
        await this.options.blobs.delete(blobKey);
        if (isUniqueViolation(error)) {
          throw conflict(`model ${input.name} version ${input.version} already exists`, {
            model: input.name,
            version: input.version,
          });
        }
        throw error;
      }
      this.options.events?.info(by, {
        event: 'model_version_uploaded',
        outcome: 'uploaded',
        object: {
          model: input.name,
          version: input.version,
          kind: input.kind,
          bytes: spooled.size,
          sha256: spooled.sha256,
        },
        message: `model ${input.name} version ${input.version} uploaded (${input.kind === 'onnx' ? 'ONNX' : 'package'}, ${spooled.size} bytes, SHA-256 ${spooled.sha256})`,
      });
      return { ...toVersion(row), ...(warning !== undefined && { warning }) };
    } finally {
      await spooled.remove();
    }
  }

  private async inspect(
    file: string,
    input: { name: string; version: string; kind: ModelSourceKind },
  ): Promise<{ tensors: ModelTensors; warning?: string; deviceTrust?: DeviceTrustFacts }> {
    if (input.kind === 'onnx') {
      const info = await readOnnxModelInfo(file);
      return { tensors: { inputs: info.inputs, outputs: info.outputs } };
    }
    const dir = await mkdtemp(path.join(this.options.workDir, 'inspect-'));
    try {
      const extracted = path.join(dir, 'package');
      await extractPackageArchive(file, extracted, { maxTotalBytes: this.options.maxUploadBytes * 4 });
      const opened = await openModelPackage(extracted, { trust: null });
      if (opened.manifest.name !== input.name || opened.manifest.version !== input.version) {
        throw new DomainError(
          'ValidationError',
          `the package is ${opened.manifest.name} version ${opened.manifest.version}, but was uploaded as ` +
            `${input.name} version ${input.version}`,
        );
      }
      const tensors = { inputs: opened.manifest.inputs, outputs: opened.manifest.outputs };
      const root = this.options.deviceTrustRootPem;
      if (root === undefined) return { tensors };
      const { facts, warning } = await checkDeviceTrust(extracted, input, root, new Date(this.now()));
      return { tensors, deviceTrust: facts, ...(warning !== undefined && { warning }) };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * Why devices enrolled by this server will refuse an uploaded package now (as the upload's warning said, at
   * `now`: a signing certificate may have expired since), or undefined when they will take it, or it is not
   * an uploaded package (ONNX; packaging jobs' packages are the server's own signing). Built from the facts
   * the upload kept, with no package read, so plan create and version listings cost nothing more. A version
   * uploaded before the facts were kept says it was not checked.
   */
  deviceTrustWarningFor(version: ModelVersionRecord): string | undefined {
    const root = this.options.deviceTrustRootPem;
    if (root === undefined || version.sourceKind !== 'package') return undefined;
    const input = { name: version.modelName, version: version.version };
    if (version.deviceTrust === null)
      return (
        `package ${input.name} ${input.version} was uploaded before this server kept what its signature check ` +
        'found, so whether devices enrolled by this server will take it was not checked; they verify it when ' +
        'they install it'
      );
    return deviceTrustWarningAt(version.deviceTrust, input, root, new Date(this.now()));
  }

  async findVersion(name: string, version: string): Promise<ModelVersionRecord | undefined> {
    const row = await this.db
      .selectFrom('model_versions')
      .selectAll()
      .where('model_name', '=', name)
      .where('version', '=', version)
      .executeTakeFirst();
    return row === undefined ? undefined : toVersion(row);
  }

  async getVersion(name: string, version: string): Promise<ModelVersionRecord> {
    const found = await this.findVersion(name, version);
    if (found === undefined) throw notFound(`model ${name} version ${version}`, { model: name, version });
    return found;
  }

  async listVersions(
    name: string,
    options: { limit: number; after?: string },
  ): Promise<ModelVersionRecord[]> {
    await this.get(name);
    let query = this.db
      .selectFrom('model_versions')
      .selectAll()
      .where('model_name', '=', name)
      .orderBy('version')
      .limit(options.limit);
    if (options.after !== undefined) query = query.where('version', '>', options.after);
    return (await query.execute()).map(toVersion);
  }

  async get(name: string): Promise<ModelRecord> {
    const [model] = await this.list({ limit: 1, only: name });
    if (model === undefined) throw notFound(`model ${name}`, { model: name });
    return model;
  }

  async list(options: { limit: number; after?: string; only?: string }): Promise<ModelRecord[]> {
    let query = this.db.selectFrom('models').selectAll().orderBy('name').limit(options.limit);
    if (options.after !== undefined) query = query.where('name', '>', options.after);
    if (options.only !== undefined) query = query.where('name', '=', options.only);
    const models = await query.execute();
    if (models.length === 0) return [];
    const versions = await this.db
      .selectFrom('model_versions')
      .select(['model_name', 'version', 'created_at'])
      .where(
        'model_name',
        'in',
        models.map((m) => m.name),
      )
      .orderBy('created_at')
      .orderBy('version')
      .execute();
    return models.map((m) => {
      const own = versions.filter((v) => v.model_name === m.name);
      return {
        name: m.name,
        description: m.description,
        versionCount: own.length,
        latestVersion: own[own.length - 1]?.version ?? null,
        createdAt: m.created_at,
        updatedAt: m.updated_at,
      };
    });
  }

  /** Deletes a version and its blob (packages already built from it stay). */
  async deleteVersion(name: string, version: string, by: Actor = LOCAL_ACTOR): Promise<void> {
    const found = await this.getVersion(name, version);
    await this.db
      .deleteFrom('model_versions')
      .where('model_name', '=', name)
      .where('version', '=', version)
      .execute();
    this.options.events?.info(by, {
      event: 'model_version_deleted',
      outcome: 'deleted',
      object: { model: name, version },
      message: `model ${name} version ${version} deleted`,
    });
    await this.options.blobs.delete(found.blobKey);
  }

  /** Streams the stored upload. */
  async openSource(version: ModelVersionRecord): Promise<Readable> {
    return this.options.blobs.get(version.blobKey);
  }
}

export function defaultWorkDir(dataDir: string | undefined): string {
  return dataDir !== undefined ? path.join(dataDir, 'tmp') : path.join(os.tmpdir(), 'edgefleet-server');
}
