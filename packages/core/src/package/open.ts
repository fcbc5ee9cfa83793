import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join, posix, resolve } from 'node:path';
import {
  PackageVerificationError,
  verifyPackage,
  type TrustPolicy,
  type VerifiedSignature,
} from '../signing/index.js';
import { PackageInvalidError, PackageNotFoundError } from './errors.js';
import { MANIFEST_FILE, PackageManifestSchema, describeZodError, type PackageManifest } from './manifest.js';

export interface OpenedModelPackage {
  /** Absolute path of the package folder. */
  dir: string;
  manifest: PackageManifest;
  /** Absolute path of the ONNX file. */
  modelPath: string;
  /** Present when the package was verified against a trust policy. */
  signature?: VerifiedSignature;
}

/**
 * Opens a package folder for use. With a trust policy, the signature is verified *before* anything in the
 * package is parsed, so nothing from an unverified package reaches the rest of the program. Without one
 * (development only: `trust: null`), the manifest is still validated.
 */
export async function openModelPackage(
  dir: string,
  opts: { trust: TrustPolicy | null; now?: Date },
): Promise<OpenedModelPackage> {
  const absolute = resolve(dir);
  const st = await stat(absolute).catch(() => undefined);
  if (!st) throw new PackageNotFoundError(absolute, 'the folder does not exist');
  if (!st.isDirectory())
    throw new PackageNotFoundError(absolute, 'it is a file; expected an extracted package folder');
  const manifestBytes = await readFile(join(absolute, MANIFEST_FILE)).catch(() => undefined);
  if (manifestBytes === undefined) throw new PackageNotFoundError(absolute, `it has no ${MANIFEST_FILE}`);

  const signature = opts.trust
    ? await verifyPackage(absolute, opts.trust, opts.now ? { now: opts.now } : {})
    : undefined;
  // The manifest was read before verification: what is parsed must be what was verified.
  if (signature) checkVerifiedBytes(signature, MANIFEST_FILE, manifestBytes);

  let json: unknown;
  try {
    json = JSON.parse(manifestBytes.toString('utf8'));
  } catch (error) {
    throw new PackageInvalidError(absolute, `${MANIFEST_FILE} is not JSON (${(error as Error).message})`);
  }
  const parsed = PackageManifestSchema.safeParse(json);
  if (!parsed.success)
    throw new PackageInvalidError(absolute, `${MANIFEST_FILE}: ${describeZodError(parsed.error)}`);
  const manifest = parsed.data;
  const modelPath = join(absolute, ...manifest.model.file.split('/'));
  const modelStat = await stat(modelPath).catch(() => undefined);
  if (!modelStat?.isFile())
    throw new PackageInvalidError(
      absolute,
      `the model file ${manifest.model.file} named by ${MANIFEST_FILE} is missing`,
    );
  return { dir: absolute, manifest, modelPath, ...(signature && { signature }) };
}

/** A package's model in memory: what ONNX Runtime is given, so that it runs exactly the bytes that were checked. */
export interface PackageModelBytes {
  /** The ONNX file's bytes. */
  model: Uint8Array;
  /** The manifest's external data files, each named as the model refers to it (relative to the model file). */
  externalData: Array<{ path: string; data: Uint8Array }>;
}

/**
 * Reads the model file and its external data files into memory. For a verified package (`opened.signature`),
 * each file's bytes must have the SHA-256 the signature lists; a file changed since it was verified is refused
 * (PackageVerificationError 'file-modified'), so whoever can write the package folder cannot swap a file between
 * verification and use. Errors: PackageInvalidError (a file missing or unreadable), PackageVerificationError.
 */
export async function readPackageModel(opened: OpenedModelPackage): Promise<PackageModelBytes> {
  const modelFile = opened.manifest.model.file;
  const read = async (path: string): Promise<Uint8Array> => {
    const bytes = await readFile(join(opened.dir, ...path.split('/'))).catch((error: unknown) => {
      throw new PackageInvalidError(
        opened.dir,
        `cannot read ${path} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`,
      );
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
