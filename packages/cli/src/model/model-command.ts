import { stat } from 'node:fs/promises';
import type { Command } from 'commander';
import { CliError, EXIT, refuseArguments, formatBytes, table, type Output } from '../cli-io.js';
import {
  addServerOptions,
  fields,
  formatTime,
  intOption,
  withServer,
  type ConnectionFlags,
  type ModelVersion,
} from '../server-client/index.js';

export function tensorTable(version: Pick<ModelVersion, 'inputs' | 'outputs'>): string {
  return table(
    ['', 'tensor', 'type', 'shape'],
    [
      ...version.inputs.map((t) => ['input', t.name, t.dataType, `[${t.shape.join(', ')}]`]),
      ...version.outputs.map((t) => ['output', t.name, t.dataType, `[${t.shape.join(', ')}]`]),
    ],
  );
}

function describeVersion(version: ModelVersion): string[] {
  return [
    fields([
      ['model', version.modelName],
      ['version', version.version],
      ['uploaded as', version.sourceKind === 'package' ? 'package archive' : 'ONNX model'],
      ['size', formatBytes(version.sizeBytes)],
      ['sha256', version.sha256],
      ['created', formatTime(version.createdAt)],
    ]),
    '',
    tensorTable(version),
  ];
}

export function registerModelCommands(program: Command, output: () => Output): void {
  const model = program.command('model').description('models and their versions on an EdgeFleet server');

  addServerOptions(
    model
      .command('upload')
      .description(
        'upload a model version: an .onnx file, or a package archive (.tar.gz) made by "package create --tar"',
      )
      .argument('<file>', 'the .onnx or .tar.gz')
      .requiredOption('--name <model>', 'model name (letters, digits, inner hyphens)')
      .requiredOption('--version <version>', 'model version, e.g. 1.0')
      .option('--description <text>', 'kept with the model'),
  ).action(
    async (file: string, opts: ConnectionFlags & { name: string; version: string; description?: string }) => {
      const out = output();
      const st = await stat(file).catch(() => undefined);
      if (!st?.isFile())
        throw new CliError(`${file} is not a file; expected an .onnx model or a .tar.gz package`);
      const progress = out.progress('uploading');
      const uploaded = await withServer(opts, (client) =>
        client.uploadModelVersion(opts.name, opts.version, file, {
          ...(opts.description !== undefined && { description: opts.description }),
          onProgress: (done, total) => progress.update(done, total),
        }),
      ).finally(() => progress.done());
      out.result(uploaded, () => [
        `Uploaded ${uploaded.modelName} ${uploaded.version}`,
        ...describeVersion(uploaded),
        ...(uploaded.warning !== undefined ? [`warning: ${uploaded.warning}`] : []),
      ]);
    },
  );

  addServerOptions(
    refuseArguments(
      model.command('list'),
      output,
      (arg, invocation) => `one model and its versions: ${invocation} model describe ${arg}`,
    )
      .description('list models')
      .option('--limit <n>', 'at most this many', intOption('--limit', 1, 1_000_000)),
  ).action(async (opts: ConnectionFlags & { limit?: number }) => {
    const out = output();
    const models = await withServer(opts, (client) => client.listModels(opts.limit));
    out.result({ models }, () =>
      models.length === 0
        ? 'no models'
        : table(
            ['name', 'versions', 'latest', 'description'],
            models.map((m) => [m.name, String(m.versionCount), m.latestVersion ?? '-', m.description ?? '']),
          ),
    );
  });

  addServerOptions(
    model
      .command('describe')
      .description('a model and its versions, or one version with its tensors (--version)')
      .argument('<name>')
      .option('--version <version>', 'this version only'),
  ).action(async (name: string, opts: ConnectionFlags & { version?: string }) => {
    const out = output();
    if (opts.version !== undefined) {
      const version = await withServer(opts, (client) => client.getModelVersion(name, opts.version!));
      out.result(version, () => describeVersion(version));
      return;
    }
    const [found, versions] = await withServer(opts, (client) =>
      Promise.all([client.getModel(name), client.listModelVersions(name)]),
    );
    out.result({ ...found, versions }, () => [
      fields([
        ['name', found.name],
        ['description', found.description],
        ['versions', found.versionCount],
        ['latest', found.latestVersion],
        ['created', formatTime(found.createdAt)],
      ]),
      '',
      versions.length === 0
        ? 'no versions'
        : table(
            ['version', 'uploaded as', 'size', 'created'],
            versions.map((v) => [v.version, v.sourceKind, formatBytes(v.sizeBytes), v.createdAt]),
          ),
    ]);
  });

  addServerOptions(
    model
      .command('delete')
      .description('delete a model version (packages already built from it stay)')
      .argument('<name>')
      .requiredOption('--version <version>', 'the version to delete'),
  ).action(async (name: string, opts: ConnectionFlags & { version: string }) => {
    const out = output();
    if (opts.version === '') throw new CliError('--version needs a value', EXIT.usage);
    await withServer(opts, (client) => client.deleteModelVersion(name, opts.version));
    out.result({ deleted: { model: name, version: opts.version } }, () => `Deleted ${name} ${opts.version}`);
  });
}
