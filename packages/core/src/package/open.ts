import { createHash } from 'node:crypto';
import { lstat, stat } from 'node:fs/promises';
import { join, posix, resolve } from 'node:path';
import type { ListingLimits, PackageFolderCheck } from '../signing/digest.js';
import {
  PackageVerificationError,
  verifyPackage,
  type TrustPolicy,
  type VerifiedSignature,
} from '../signing/index.js';
import { PackageFileError, PackageInvalidError, PackageNotFoundError } from './errors.js';
import { edgeManagerPackageDetail, edgeManagerPackageFiles, notAFolderDetail } from './foreign-package.js';
import { MANIFEST_FILE, PackageManifestSchema, describeZodError, type PackageManifest } from './manifest.js';
import {
  MAX_MANIFEST_BYTES,
  type PackageFileCheck,
  jsonSyntaxErrorPosition,
  packageFileSize,
  readPackageFile,
} from './package-file.js';

export interface OpenedModelPackage {
  /** Absolute path of the package folder. */
  dir: string;
  manifest: PackageManifest;
  /** Absolute path of the ONNX file. */
  modelPath: string;
  /** Present when the package was verified against a trust policy. */
  signature?: VerifiedSignature;
  /** How messages name the folder where `dir` is no name for people (see OpenModelPackageOptions); else absent. */
  shownDir?: string;
  /** Asked about every file read from the package, readPackageModel's too (see OpenModelPackageOptions). */
  fileCheck?: PackageFileCheck;
}

export interface OpenModelPackageOptions {
  trust: TrustPolicy | null;
  now?: Date;
  /**
   * How errors (and later readPackageModel's) name the folder, where `dir` is no name for people: a held
   * descriptor's /proc/self/fd path, read through for the folder a caller named. Default: `dir`, made absolute.
   */
  shownDir?: string;
  /**
   * Asked about each file the package is read from (manifest, signature bundle, every file hashed, and later
   * readPackageModel's), on its descriptor before it is read: for a load on someone's behalf, only files they
   * could read themselves. Default: none.
   */
  fileCheck?: PackageFileCheck;
  /** Given to verification's listing: asked about each folder listed (see listFiles). Default: none. */
  folderCheck?: PackageFolderCheck;
  /** Bounds on verification's listing. Default: none. */
  listingLimits?: ListingLimits;
}

/**
 * Opens a package folder for use. With a trust policy, the signature is verified *before* anything in the
 * package is parsed, so nothing from an unverified package reaches the rest of the program. Without one
 * (development only: `trust: null`), the manifest is still validated.
 */
export async function openModelPackage(
  dir: string,
  opts: OpenModelPackageOptions,
): Promise<OpenedModelPackage> {
  const absolute = resolve(dir);
  const shown = opts.shownDir ?? absolute;
  // The folder itself may be a symlink (e.g. models/current -> models/v3): whoever names it could name its
  // target as well, so a link reaches nothing more. What is refused is any link below it, to a file or a folder,
  // and any file that is not a regular one (readPackageFile).
  const st = await lstat(absolute)
    .then((found) => (found.isSymbolicLink() ? stat(absolute) : found))
    .catch(() => undefined);
  if (!st) throw new PackageNotFoundError(shown, 'the folder does not exist');
  if (!st.isDirectory()) throw new PackageNotFoundError(shown, notAFolderDetail(shown));
  const manifestBytes = await readPackageFile(absolute, MANIFEST_FILE, {
    maxBytes: MAX_MANIFEST_BYTES,
    ...(opts.fileCheck && { fileCheck: opts.fileCheck }),
  }).catch(async (error: unknown) => {
    if (error instanceof PackageFileError && error.problem === 'missing') {
      // A package, but Edge Manager's: it is there and cannot be loaded (not "no package at": a client that
      // reads NOT_FOUND as "not downloaded yet" would download it again and again).
      const edgeManager = await edgeManagerPackageFiles(absolute);
      if (edgeManager.length > 0) throw new PackageInvalidError(shown, edgeManagerPackageDetail(edgeManager));
      throw new PackageNotFoundError(shown, `it has no ${MANIFEST_FILE}`);
    }
    throw packageFileFailure(shown, error);
  });

  const signature = opts.trust
    ? await verifyPackage(absolute, opts.trust, {
        ...(opts.now && { now: opts.now }),
        ...(opts.shownDir !== undefined && { shownDir: opts.shownDir }),
        ...(opts.fileCheck && { fileCheck: opts.fileCheck }),
        ...(opts.folderCheck && { folderCheck: opts.folderCheck }),
        ...(opts.listingLimits && { listingLimits: opts.listingLimits }),
      })
    : undefined;
  // The manifest was read before verification: what is parsed must be what was verified.
  if (signature) checkVerifiedBytes(signature, MANIFEST_FILE, manifestBytes);

  let json: unknown;
  try {
    json = JSON.parse(manifestBytes.toString('utf8'));
  } catch (error) {
    throw new PackageInvalidError(
      shown,
      `${MANIFEST_FILE} is not JSON${jsonSyntaxErrorPosition(error)}; expected the package manifest`,
    );
  }
  const parsed = PackageManifestSchema.safeParse(json);
  if (!parsed.success)
    throw new PackageInvalidError(shown, `${MANIFEST_FILE}: ${describeZodError(parsed.error)}`);
  const manifest = parsed.data;
  const modelPath = join(absolute, ...manifest.model.file.split('/'));
  await packageFileSize(absolute, manifest.model.file, manifest.model.file, opts.fileCheck).catch(
    (error: unknown) => {
      if (!(error instanceof PackageFileError)) throw error;
      throw new PackageInvalidError(
        shown,
        error.problem === 'missing'
          ? `the model file ${manifest.model.file} named by ${MANIFEST_FILE} is missing`
          : `the model file ${manifest.model.file} named by ${MANIFEST_FILE} is not a regular file of the package: ${error.message}`,
      );
    },
  );
  return {
    dir: absolute,
    manifest,
    modelPath,
    ...(signature && { signature }),
    ...(opts.shownDir !== undefined && { shownDir: opts.shownDir }),
    ...(opts.fileCheck && { fileCheck: opts.fileCheck }),
  };
}

/** A package's model in memory: what ONNX Runtime is given, so that it runs exactly the bytes that were checked. */
export interface PackageModelBytes {
  /** The ONNX file's bytes. */
  model: Uint8Array;
  /** The manifest's external data files, each named as the model refers to it (relative to the model file). */
  externalData: Array<{ path: string; data: Uint8Array }>;
}

export interface ReadPackageModelOptions {
  /**
   * Most bytes to read of each file, by package-relative path (e.g. the sizes a memory check accepted); a file
   * now larger is refused before it is read. A file not listed is read up to its size when opened.
   */
  maxBytes?: ReadonlyMap<string, number>;
}

/**
 * Reads the model file and its external data files into memory, each through readPackageFile (regular files
 * only, no symlink to a file or on the way to one, never more than `maxBytes` allows). For a verified package (`opened.signature`), each
 * file's bytes must have the SHA-256 the signature lists; a file changed since it was verified is refused
 * (PackageVerificationError 'file-modified'), so whoever can write the package folder cannot swap a file between
 * verification and use. Errors: PackageInvalidError (a file missing, unreadable, not a regular file, or larger
 * than allowed), PackageVerificationError.
 */
export async function readPackageModel(
  opened: OpenedModelPackage,
  options: ReadPackageModelOptions = {},
): Promise<PackageModelBytes> {
  const modelFile = opened.manifest.model.file;
  const read = async (path: string): Promise<Uint8Array> => {
    const bytes = await readPackageFile(opened.dir, path, {
      maxBytes: options.maxBytes?.get(path) ?? Number.MAX_SAFE_INTEGER,
      ...(opened.fileCheck && { fileCheck: opened.fileCheck }),
    }).catch((error: unknown) => {
      throw packageFileFailure(opened.shownDir ?? opened.dir, error);
    });
    if (opened.signature) checkVerifiedBytes(opened.signature, path, bytes);
    return bytes;
  };
  const model = await read(modelFile);
  const externalData: PackageModelBytes['externalData'] = [];
  for (const file of opened.manifest.model.externalData) {
    externalData.push({ path: file, data: await read(posix.join(posix.dirname(modelFile), file)) });
  }
  return { model, externalData };
}

/** A package file that could not be read, as the package's error (the message never holds file bytes). */
function packageFileFailure(dir: string, error: unknown): unknown {
  if (error instanceof PackageFileError) return new PackageInvalidError(dir, error.message);
  return error;
}

function checkVerifiedBytes(signature: VerifiedSignature, path: string, bytes: Uint8Array): void {
  const listed = signature.files.find((f) => f.path === path);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  if (!listed || listed.sha256 !== sha256) {
    throw new PackageVerificationError(
      'file-modified',
      `file ${path} changed after the package was verified: its SHA-256 is now ${sha256}, the signature expects ${listed?.sha256 ?? 'no such file'}; expected a package folder that nothing else writes while it is loaded`,
      { path },
    );
  }
}
