import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { verifyPackage, type TrustPolicy, type VerifiedSignature } from '../signing/index.js';
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
  const manifestText = await readFile(join(absolute, MANIFEST_FILE), 'utf8').catch(() => undefined);
  if (manifestText === undefined) throw new PackageNotFoundError(absolute, `it has no ${MANIFEST_FILE}`);

  const signature = opts.trust
    ? await verifyPackage(absolute, opts.trust, opts.now ? { now: opts.now } : {})
    : undefined;

  let json: unknown;
  try {
    json = JSON.parse(manifestText);
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
