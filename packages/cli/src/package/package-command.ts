import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import {
  MANIFEST_FILE,
  MAX_MANIFEST_BYTES,
  PackageFileError,
  PackageManifestSchema,
  SIGNATURE_FILE,
  archiveFileName,
  createModelPackage,
  describeZodError,
  extractPackageArchive,
  jsonSyntaxErrorPosition,
  loadSigner,
  listRegularFiles,
  loadTrustFolder,
  packModelPackage,
  readPackageFile,
  signPackage,
  verifyPackage,
  type PackageManifest,
  type TrustPolicy,
  type VerifiedSignature,
} from '@edgefleet/core';
import { CliError, EXIT, formatBytes, makeFolder, prepareOutFile, table, type Output } from '../cli-io.js';

const isArchive = (path: string) => path.endsWith('.tar.gz') || path.endsWith('.tgz');

/** Runs `fn` on a package folder; an archive is first extracted (safely) into a temporary folder. */
async function withPackageFolder<T>(path: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const st = await stat(path).catch(() => undefined);
  if (!st) throw new CliError(`${path} does not exist; expected a package folder or a .tar.gz`);
  if (st.isDirectory()) return fn(resolve(path));
  if (!isArchive(path))
    throw new CliError(`${path} is a file but not a .tar.gz; expected a package folder or archive`);
  const scratch = await mkdtemp(join(tmpdir(), 'edgefleet-'));
  try {
    const dir = join(scratch, 'package');
    await extractPackageArchive(path, dir);
    return await fn(dir);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/**
 * The manifest of a package folder the user named, read as the agent and server read one (readPackageFile): at
 * most MAX_MANIFEST_BYTES, a regular file, never through a symlink; so a huge, linked or FIFO manifest is one
 * clear line, not a hang or a read of a file outside the folder.
 */
async function readManifest(dir: string): Promise<PackageManifest> {
  const label = join(dir, MANIFEST_FILE);
  const bytes = await readPackageFile(resolve(dir), MANIFEST_FILE, {
    maxBytes: MAX_MANIFEST_BYTES,
    label,
  }).catch((error: unknown) => {
    if (!(error instanceof PackageFileError)) throw error;
    if (error.problem === 'missing')
      throw new CliError(`${dir} has no ${MANIFEST_FILE}; is it a model package?`);
    throw new CliError(error.message);
  });
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new CliError(
      `${label} is not JSON${jsonSyntaxErrorPosition(error)}; expected the package manifest`,
    );
  }
  const parsed = PackageManifestSchema.safeParse(json);
  if (!parsed.success)
    throw new CliError(`${label} is not a valid manifest: ${describeZodError(parsed.error)}`);
  return parsed.data;
}

function parseLabels(values: string[]): Record<string, string> | undefined {
  if (values.length === 0) return undefined;
  const labels: Record<string, string> = {};
  for (const value of values) {
    const eq = value.indexOf('=');
    if (eq < 1) throw new CliError(`--label ${JSON.stringify(value)}: expected KEY=VALUE`, EXIT.usage);
    labels[value.slice(0, eq)] = value.slice(eq + 1);
  }
  return labels;
}

async function trustFrom(opts: { trust?: string; publicKey?: string }): Promise<TrustPolicy> {
  if (opts.trust && opts.publicKey) throw new CliError('give --trust or --public-key, not both', EXIT.usage);
  if (opts.trust) return loadTrustFolder(opts.trust);
  if (opts.publicKey) {
    const pem = await readFile(opts.publicKey, 'utf8').catch(() => {
      throw new CliError(`${opts.publicKey} does not exist or cannot be read; expected a PEM public key`);
    });
    return { publicKeysPem: [pem] };
  }
  throw new CliError(
    'say what to trust: --trust <folder of root certificates> or --public-key <pem>',
    EXIT.usage,
  );
}

function tensorRows(manifest: PackageManifest): string[][] {
  return [
    ...manifest.inputs.map((t) => ['input', t.name, t.dataType, `[${t.shape.join(', ')}]`]),
    ...manifest.outputs.map((t) => ['output', t.name, t.dataType, `[${t.shape.join(', ')}]`]),
  ];
}

export function describeSigner(sig: VerifiedSignature): string {
  const { signer } = sig;
  return signer.method === 'key'
    ? `${signer.keyType} key ${signer.fingerprint}`
    : `certificate ${signer.subject} (issued by ${signer.issuer}, valid until ${signer.notAfter})`;
}

export function registerPackageCommands(program: Command, output: () => Output): void {
  const pkg = program.command('package').description('build, sign, verify and inspect model packages');

  pkg
    .command('create')
    .description('build a package folder from an ONNX model, with tensor metadata read from the model')
    .argument('<model>', 'the .onnx file')
    .requiredOption('--name <name>', 'model name (letters, digits, hyphens)')
    .requiredOption('--version <version>', 'model version, e.g. 1.0')
    .option('--out <dir>', 'package folder to create (default: ./<name>-<version>)')
    .option('--description <text>', 'free text kept in the manifest')
    .option(
      '--label <key=value>',
      'a label kept in the manifest (repeatable)',
      (v: string, acc: string[]) => [...acc, v],
      [],
    )
    .option('--key <pem>', 'sign the package with this private key')
    .option('--cert <pem>', 'with --key: the signing certificate (leaf first, then intermediates)')
    .option(
      '--tar [file]',
      `also write the distributable archive (default: ${archiveFileName('<name>', '<version>')})`,
    )
    .action(
      async (
        model: string,
        raw: {
          name: string;
          version: string;
          out?: string;
          description?: string;
          label: string[];
          key?: string;
          cert?: string;
          tar?: string | boolean;
        },
      ) => {
        const out = output();
        if (!(await stat(model).catch(() => undefined)))
          throw new CliError(`${model} does not exist; expected an .onnx model file`);
        if (raw.cert && !raw.key)
          throw new CliError('--cert needs --key (the certificate’s private key)', EXIT.usage);
        const outDir = resolve(raw.out ?? `${raw.name}-${raw.version}`);
        await makeFolder(dirname(outDir), `--out ${outDir}`);
        const labels = parseLabels(raw.label);
        const created = await createModelPackage({
          modelPath: model,
          name: raw.name,
          version: raw.version,
          outDir,
          ...(raw.description !== undefined && { description: raw.description }),
          ...(labels && { labels }),
        });
        let signed: Awaited<ReturnType<typeof signPackage>> | undefined;
        if (raw.key) {
          const signer = await loadSigner({ keyPath: raw.key, ...(raw.cert && { certPath: raw.cert }) });
          const progress = out.progress('hashing');
          signed = await signPackage(outDir, signer, {
            onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal, p.file),
          });
          progress.done();
        }
        let archive: Awaited<ReturnType<typeof packModelPackage>> | undefined;
        if (raw.tar) {
          const file =
            typeof raw.tar === 'string'
              ? resolve(raw.tar)
              : join(dirname(outDir), archiveFileName(raw.name, raw.version));
          await prepareOutFile(file);
          const progress = out.progress('packing');
          await prepareOutFile(file);
          archive = await packModelPackage(outDir, file, {
            onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal, p.file),
          });
          progress.done();
        }
        out.result(
          { dir: created.dir, manifest: created.manifest, signed: signed ?? null, archive: archive ?? null },
          () => [
            `Created ${created.dir}`,
            table(['', 'tensor', 'type', 'shape'], tensorRows(created.manifest)),
            signed
              ? `Signed (${SIGNATURE_FILE}, ${signed.files.length} files)`
              : `Not signed: ${out.invocation} package sign ${created.dir} --key <pem> [--cert <pem>]`,
            ...(archive ? [`Archive ${archive.path} (${formatBytes(archive.bytes)})`] : []),
          ],
        );
      },
    );

  pkg
    .command('sign')
    .description(
      `sign every file of a package folder, writing ${SIGNATURE_FILE} (OpenSSF model signing v1.0)`,
    )
    .argument('<dir>', 'the package folder')
    .requiredOption('--key <pem>', 'private key (ECDSA P-256, P-384, P-521 or Ed25519)')
    .option('--cert <pem>', 'signing certificate, leaf first then intermediates (certificate method)')
    .action(async (dir: string, raw: { key: string; cert?: string }) => {
      const out = output();
      if (!(await stat(dir).catch(() => undefined))?.isDirectory())
        throw new CliError(`${dir} is not a folder; sign the package folder, then pack it`);
      const manifest = await readManifest(dir);
      const signer = await loadSigner({ keyPath: raw.key, ...(raw.cert && { certPath: raw.cert }) });
      const progress = out.progress('hashing');
      const summary = await signPackage(dir, signer, {
        modelName: manifest.name,
        onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal, p.file),
      });
      progress.done();
      out.result(
        summary,
        () =>
          `Signed ${resolve(dir)} (${summary.files.length} files, ${signer.method} method) → ${join(resolve(dir), SIGNATURE_FILE)}`,
      );
    });

  pkg
    .command('verify')
    .description('check a package’s signature, every file digest, and the signer against what you trust')
    .argument('<package>', 'package folder or .tar.gz')
    .option(
      '--trust <dir>',
      'folder of trusted root certificates / public keys (a device’s root-certs folder)',
    )
    .option('--public-key <pem>', 'trust exactly this public key (key method)')
    .action(async (path: string, raw: { trust?: string; publicKey?: string }) => {
      const out = output();
      const trust = await trustFrom(raw);
      await withPackageFolder(path, async (dir) => {
        const progress = out.progress('verifying');
        let verified: VerifiedSignature;
        try {
          verified = await verifyPackage(dir, trust, {
            onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal, p.file),
          });
        } catch (error) {
          progress.done();
          if ((error as Error).name === 'PackageVerificationError') {
            throw new CliError(`REFUSED ${path}: ${(error as Error).message}`, EXIT.refused);
          }
          throw error;
        }
        progress.done();
        out.result({ verified: true, ...verified }, () => [
          `OK ${path}`,
          `model   ${verified.modelName}`,
          `signer  ${describeSigner(verified)}`,
          `files   ${verified.files.length} verified`,
        ]);
      });
    });

  pkg
    .command('inspect')
    .description('print a package’s manifest, tensors, files and signature (without verifying it)')
    .argument('<package>', 'package folder or .tar.gz')
    .action(async (path: string) => {
      const out = output();
      await withPackageFolder(path, async (dir) => {
        const manifest = await readManifest(dir);
        const files = await listRegularFiles(dir);
        const signed = files.some((f) => f.path === SIGNATURE_FILE);
        out.result({ manifest, files, signed }, () => [
          `${manifest.name} ${manifest.version} (${manifest.framework}, created ${manifest.createdAt})`,
          ...(manifest.description ? [manifest.description] : []),
          ...(manifest.labels
            ? [
                Object.entries(manifest.labels)
                  .map(([k, v]) => `${k}=${v}`)
                  .join(' '),
              ]
            : []),
          '',
          table(['', 'tensor', 'type', 'shape'], tensorRows(manifest)),
          '',
          table(
            ['file', 'size'],
            files.map((f) => [f.path, formatBytes(f.size)]),
          ),
          '',
          signed
            ? `signed: ${SIGNATURE_FILE} present (run "${out.invocation} package verify" to check it)`
            : 'signed: no',
        ]);
      });
    });

  pkg
    .command('pack')
    .description('write a package folder as <name>-<version>.tar.gz')
    .argument('<dir>', 'the package folder')
    .option('--out <file>', 'archive to write')
    .action(async (dir: string, raw: { out?: string }) => {
      const out = output();
      const manifest = await readManifest(dir);
      const file = resolve(
        raw.out ?? join(dirname(resolve(dir)), archiveFileName(manifest.name, manifest.version)),
      );
      await prepareOutFile(file);
      const progress = out.progress('packing');
      const result = await packModelPackage(dir, file, {
        onProgress: (p) => progress.update(p.bytesDone, p.bytesTotal, p.file),
      });
      progress.done();
      out.result(result, () => `Wrote ${result.path} (${result.files} files, ${formatBytes(result.bytes)})`);
    });

  pkg
    .command('extract')
    .description('safely extract a package archive into a new folder (refuses traversal, links, tar bombs)')
    .argument('<archive>', 'the .tar.gz')
    .option('--out <dir>', 'folder to create (default: archive name without .tar.gz)')
    .action(async (archive: string, raw: { out?: string }) => {
      const dest = resolve(
        raw.out ?? join(dirname(resolve(archive)), basename(archive).replace(/\.(tar\.gz|tgz)$/, '')),
      );
      await makeFolder(dirname(dest), `--out ${dest}`);
      const result = await extractPackageArchive(archive, dest);
      output().result(
        result,
        () => `Extracted ${result.files} files (${formatBytes(result.bytes)}) into ${result.dir}`,
      );
    });
}
