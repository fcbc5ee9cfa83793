import type { Command } from 'commander';
import { CliError, EXIT, refuseArguments, table, type Output } from '../cli-io.js';
import {
  addServerOptions,
  addTagUpdateOptions,
  clearedIfEmpty,
  collect,
  descriptionAndTagPatch,
  fields,
  formatTags,
  formatTime,
  intOption,
  parseTags,
  requireChange,
  withServer,
  type ConnectionFlags,
  type DescriptionAndTagFlags,
  type Fleet,
  type FleetReport,
  type UpdateFleetInput,
} from '../server-client/index.js';

function describeFleet(fleet: Fleet): string {
  return fields([
    ['name', fleet.name],
    ['description', fleet.description],
    ['output', fleet.outputConfig.s3OutputLocation],
    ['kms key', fleet.outputConfig.kmsKeyId],
    ['role', fleet.roleArn],
    ['tags', formatTags(fleet.tags)],
    ['devices', fleet.deviceCount],
    ['created', formatTime(fleet.createdAt)],
    ['updated', formatTime(fleet.updatedAt)],
  ]);
}

/** The server's warnings on a create or update (e.g. captures kept in its local folder, not in the bucket). */
function warningLines(fleet: Fleet): string[] {
  return (fleet.warnings ?? []).map((warning) => `warning: ${warning}`);
}

export function describeReport(report: FleetReport): string[] {
  const { connectedDeviceCount, registeredDeviceCount, neverSeenDeviceCount } = report.deviceStats;
  return [
    fields([
      ['fleet', report.fleetName],
      ['generated', formatTime(report.reportGenerated)],
      [
        'devices',
        `${connectedDeviceCount} connected of ${registeredDeviceCount} registered` +
          (neverSeenDeviceCount ? ` (${neverSeenDeviceCount} never seen)` : ''),
      ],
      ['output', report.outputOutage?.message ?? report.outputConfig.s3OutputLocation],
    ]),
    '',
    report.agentVersions.length === 0
      ? 'agents: none has reported yet'
      : table(
          ['agent version', 'devices'],
          report.agentVersions.map((v) => [v.version, String(v.agentCount)]),
        ),
    '',
    report.modelStats.length === 0
      ? 'models: none reported'
      : table(
          ['model', 'version', 'connected', 'offline', 'active', 'sampling'],
          report.modelStats.map((m) => [
            m.modelName,
            m.modelVersion,
            String(m.connectedDeviceCount),
            String(m.offlineDeviceCount),
            String(m.activeDeviceCount),
            String(m.samplingDeviceCount),
          ]),
        ),
  ];
}

export function registerFleetCommands(program: Command, output: () => Output): void {
  const fleet = program.command('fleet').description('device fleets on an EdgeFleet server');

  addServerOptions(
    fleet
      .command('create')
      .description('create a fleet')
      .argument('<name>', 'fleet name (letters, digits, inner hyphens)')
      .requiredOption('--output <s3uri>', 'where devices upload captured data, e.g. s3://bucket/prefix')
      .option('--kms-key <id>', 'KMS key for captured data')
      .option('--description <text>', 'free text')
      .option('--role-arn <arn>', 'IAM role (kept for SageMaker compatibility)')
      .option('--tag <key=value>', 'a tag (repeatable)', collect, []),
  ).action(
    async (
      name: string,
      opts: ConnectionFlags & {
        output: string;
        kmsKey?: string;
        description?: string;
        roleArn?: string;
        tag: string[];
      },
    ) => {
      const out = output();
      const created = await withServer(opts, (client) =>
        client.createFleet({
          name,
          outputConfig: { s3OutputLocation: opts.output, ...(opts.kmsKey && { kmsKeyId: opts.kmsKey }) },
          ...(opts.description !== undefined && { description: opts.description }),
          ...(opts.roleArn !== undefined && { roleArn: opts.roleArn }),
          tags: parseTags(opts.tag),
        }),
      );
      out.result(created, () => [
        `Created fleet ${created.name}`,
        describeFleet(created),
        ...warningLines(created),
      ]);
    },
  );

  addServerOptions(
    refuseArguments(
      fleet.command('list'),
      output,
      (arg, invocation) =>
        `to find fleets by name add --name-contains ${arg}; one fleet: ${invocation} fleet describe ${arg}`,
    )
      .description('list fleets')
      .option('--name-contains <text>', 'only fleets whose name contains this')
      .option('--limit <n>', 'at most this many', intOption('--limit', 1, 1_000_000)),
  ).action(async (opts: ConnectionFlags & { nameContains?: string; limit?: number }) => {
    const out = output();
    const fleets = await withServer(opts, (client) =>
      client.listFleets({ ...(opts.nameContains && { nameContains: opts.nameContains }) }, opts.limit),
    );
    out.result({ fleets }, () =>
      fleets.length === 0
        ? 'no fleets'
        : table(
            ['name', 'devices', 'output', 'description'],
            fleets.map((f) => [
              f.name,
              String(f.deviceCount),
              f.outputConfig.s3OutputLocation,
              f.description ?? '',
            ]),
          ),
    );
  });

  addServerOptions(fleet.command('describe').description('show a fleet').argument('<name>')).action(
    async (name: string, opts: ConnectionFlags) => {
      const out = output();
      const found = await withServer(opts, (client) => client.getFleet(name));
      out.result(found, () => describeFleet(found));
    },
  );

  addServerOptions(
    addTagUpdateOptions(
      fleet
        .command('update')
        .description('change a fleet’s description, output, role or tags')
        .argument('<name>')
        .option('--description <text>', 'new description ("" clears it)')
        .option('--output <s3uri>', 'new output location')
        .option('--kms-key <id>', 'with --output: KMS key')
        .option('--role-arn <arn>', 'new role ("" clears it)'),
    ),
  ).action(
    async (
      name: string,
      opts: ConnectionFlags & DescriptionAndTagFlags & { output?: string; kmsKey?: string; roleArn?: string },
    ) => {
      const out = output();
      if (opts.kmsKey !== undefined && opts.output === undefined)
        throw new CliError('--kms-key goes with --output (the output location it encrypts)', EXIT.usage);
      const patch: UpdateFleetInput = requireChange(
        {
          ...descriptionAndTagPatch(opts),
          ...(opts.output !== undefined && {
            outputConfig: { s3OutputLocation: opts.output, ...(opts.kmsKey && { kmsKeyId: opts.kmsKey }) },
          }),
          ...(opts.roleArn !== undefined && { roleArn: clearedIfEmpty(opts.roleArn) }),
        },
        '--description, --output, --role-arn, --tag or --clear-tags',
      );
      const updated = await withServer(opts, (client) => client.updateFleet(name, patch));
      out.result(updated, () => [
        `Updated fleet ${updated.name}`,
        describeFleet(updated),
        ...warningLines(updated),
      ]);
    },
  );

  addServerOptions(
    fleet.command('delete').description('delete a fleet (refused while it has devices)').argument('<name>'),
  ).action(async (name: string, opts: ConnectionFlags) => {
    const out = output();
    await withServer(opts, (client) => client.deleteFleet(name));
    out.result({ deleted: name }, () => `Deleted fleet ${name}`);
  });

  addServerOptions(
    fleet
      .command('report')
      .description('connected and registered devices, agent versions, and per-model device counts')
      .argument('<name>'),
  ).action(async (name: string, opts: ConnectionFlags) => {
    const out = output();
    const report = await withServer(opts, (client) => client.fleetReport(name));
    out.result(report, () => describeReport(report));
  });
}
