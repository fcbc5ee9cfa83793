import { stat, writeFile } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import {
  CliError,
  EXIT,
  refuseArguments,
  formatBytes,
  prepareOutFile,
  table,
  type Output,
} from '../cli-io.js';
import {
  addServerOptions,
  fields,
  formatTime,
  intOption,
  withServer,
  type ConnectionFlags,
  type PackagingJob,
  type ServerClient,
} from '../server-client/index.js';

const STATUSES = ['STARTING', 'INPROGRESS', 'COMPLETED', 'FAILED'];
const POLL_MS = 500;

function describeJob(job: PackagingJob): string {
  return fields([
    ['job', job.name],
    ['model', `${job.modelName} ${job.modelVersion}`],
    ['status', job.status + (job.statusMessage ? `: ${job.statusMessage}` : '')],
    ['package', job.artifact?.location],
    ['size', job.artifact ? formatBytes(job.artifact.sizeBytes) : undefined],
    ['sha256', job.artifact?.sha256],
    ['signed', job.modelSignature ? 'yes (model.sig; --json shows the document)' : undefined],
    ['created', formatTime(job.createdAt)],
    ['updated', formatTime(job.updatedAt)],
  ]);
}

/**
 * Polls until the job is COMPLETED (returned) or FAILED (an error with its message), or `timeoutS` passes: then
 * exit 4, as every --wait that runs out while the work goes on (it may still complete).
 */
async function waitForJob(
  client: ServerClient,
  name: string,
  timeoutS: number,
  invocation: string,
): Promise<PackagingJob> {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const job = await client.getPackagingJob(name);
    if (job.status === 'COMPLETED') return job;
    if (job.status === 'FAILED')
      throw new CliError(`packaging job ${name} FAILED: ${job.statusMessage ?? 'no reason given'}`);
    if (Date.now() >= deadline)
      throw new CliError(
        `packaging job ${name} is still ${job.status} after ${timeoutS} s; check later with "${invocation} packaging describe ${name}"`,
        EXIT.waitRanOut,
      );
    await new Promise((done) => setTimeout(done, POLL_MS));
  }
}

export function registerPackagingCommands(program: Command, output: () => Output): void {
  const packaging = program
    .command('packaging')
    .description('packaging jobs on an EdgeFleet server: package and sign an uploaded model version');

  addServerOptions(
    packaging
      .command('create')
      .description('start a packaging job for an uploaded model version')
      .argument('<job>', 'job name (unique)')
      .requiredOption('--model <name>', 'the uploaded model')
      .requiredOption('--version <version>', 'its version')
      .option('--output <s3uri>', 'recorded with the job (SageMaker compatibility)')
      .option(
        '--wait',
        'wait until the job has COMPLETED (exit 1 if it FAILED, 4 if --timeout runs out first)',
      )
      .option(
        '--timeout <seconds>',
        'with --wait: give up after this long',
        intOption('--timeout', 1, 86_400),
        600,
      ),
  ).action(
    async (
      name: string,
      opts: ConnectionFlags & {
        model: string;
        version: string;
        output?: string;
        wait?: boolean;
        timeout: number;
      },
    ) => {
      const out = output();
      const job = await withServer(opts, async (client) => {
        const created = await client.createPackagingJob({
          name,
          modelName: opts.model,
          modelVersion: opts.version,
          ...(opts.output !== undefined && { outputS3Location: opts.output }),
        });
        return opts.wait ? waitForJob(client, name, opts.timeout, out.invocation) : created;
      });
      out.result(job, () => [
        opts.wait ? `Packaged ${job.modelName} ${job.modelVersion}` : `Started packaging job ${job.name}`,
        describeJob(job),
      ]);
    },
  );

  addServerOptions(
    refuseArguments(
      packaging.command('list'),
      output,
      (arg, invocation) =>
        `to list jobs in one state add --status ${arg}; one job: ${invocation} packaging describe ${arg}`,
    )
      .description('list packaging jobs')
      .addOption(new Option('--status <status>', 'only jobs in this state').choices(STATUSES))
      .option('--limit <n>', 'at most this many', intOption('--limit', 1, 1_000_000)),
  ).action(async (opts: ConnectionFlags & { status?: string; limit?: number }) => {
    const out = output();
    const jobs = await withServer(opts, (client) =>
      client.listPackagingJobs({ ...(opts.status && { status: opts.status }) }, opts.limit),
    );
    out.result({ jobs }, () =>
      jobs.length === 0
        ? 'no packaging jobs'
        : table(
            ['job', 'model', 'version', 'status', 'size', 'updated'],
            jobs.map((j) => [
              j.name,
              j.modelName,
              j.modelVersion,
              j.status,
              j.artifact ? formatBytes(j.artifact.sizeBytes) : '-',
              j.updatedAt,
            ]),
          ),
    );
  });

  addServerOptions(
    packaging
      .command('describe')
      .description('a packaging job: status, package, signature')
      .argument('<job>'),
  ).action(async (name: string, opts: ConnectionFlags) => {
    const out = output();
    const job = await withServer(opts, (client) => client.getPackagingJob(name));
    out.result(job, () => describeJob(job));
  });

  addServerOptions(
    packaging
      .command('download')
      .description(
        'download a completed job’s signed package (<model>-<version>.tar.gz), checking its SHA-256',
      )
      .argument('<job>')
      .option('--out <file>', 'where to write it (default: the package’s own name, here)')
      .option('--force', 'replace an existing file'),
  ).action(async (name: string, opts: ConnectionFlags & { out?: string; force?: boolean }) => {
    const out = output();
    const result = await withServer(opts, async (client) => {
      const job = await client.getPackagingJob(name);
      if (job.status !== 'COMPLETED' || job.artifact === undefined)
        throw new CliError(
          `packaging job ${name} is ${job.status}; its package can be downloaded once COMPLETED`,
        );
      const file = resolve(opts.out ?? basename(job.artifact.key));
      if (!opts.force && (await stat(file).catch(() => undefined)))
        throw new CliError(`${file} already exists; pass --force to replace it`, EXIT.usage);
      await prepareOutFile(file);
      const progress = out.progress('downloading');
      const written = await client
        .downloadPackage(name, file, {
          expectedSha256: job.artifact.sha256,
          onProgress: (done, total) => progress.update(done, total),
        })
        .finally(() => progress.done());
      return { file, ...written };
    });
    out.result(
      result,
      () => `Wrote ${result.file} (${formatBytes(result.bytes)}, sha256 ${result.sha256} checked)`,
    );
  });

  addServerOptions(
    packaging
      .command('root-certificate')
      .description('the root certificate packages are signed under (put it in devices’ root-certs folder)')
      .option('--out <file>', 'write the PEM here instead of printing it'),
  ).action(async (opts: ConnectionFlags & { out?: string }) => {
    const out = output();
    const root = await withServer(opts, (client) => client.signingRoot());
    if (opts.out !== undefined) {
      const file = await prepareOutFile(opts.out);
      await writeFile(file, root.certificatePem, { mode: 0o644 });
      out.result({ ...root, file }, () => `Wrote ${file} (SHA-256 ${root.fingerprintSha256})`);
    } else out.result(root, () => root.certificatePem.trimEnd());
  });
}
