import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { CliError, EXIT, refuseArguments, table, type Output } from '../cli-io.js';
import {
  addServerOptions,
  collect,
  fields,
  formatTime,
  intOption,
  ServerApiError,
  ServerResponseError,
  ServerUnreachableError,
  withServer,
  type ConnectionFlags,
  type DeploymentPlan,
  type DeploymentStage,
  type ServerClient,
  type StageDevice,
} from '../server-client/index.js';

const FINISHED = new Set(['DEPLOYED', 'FAILED', 'STOPPED']);
/** The longest pause between reads of a --watch whose server does not answer. */
const MAX_WATCH_RETRY_DELAY_MS = 30_000;
/** What a TLS proxy answers while the server behind it restarts; Fastify answers 503 while it closes. */
const SERVER_AWAY_STATUSES = new Set([502, 503, 504]);

/** Whether a read failed because the server is away for now (restarting, a network blip), not for good. */
function serverAway(error: unknown): error is Error {
  if (error instanceof ServerUnreachableError) return true;
  return (
    (error instanceof ServerApiError || error instanceof ServerResponseError) &&
    error.status !== undefined &&
    SERVER_AWAY_STATUSES.has(error.status)
  );
}

/**
 * `--stage <name>:<rule>[:<option>…]`: rule `percentage=<n>`, `devices=<a,b,…>` or `name-contains=<text>`;
 * options `tag=<key>=<value>` (repeatable) and `policy=ROLLBACK_ON_FAILURE|DO_NOTHING`.
 */
export function parseStage(spec: string): Record<string, unknown> {
  const [name, rule, ...options] = spec.split(':');
  const usage =
    `--stage ${spec}: expected <name>:<rule>[:<option>…] with rule percentage=<n>, devices=<a,b> or ` +
    'name-contains=<text>, and options tag=<key>=<value> or policy=ROLLBACK_ON_FAILURE|DO_NOTHING';
  if (!name || !rule) throw new CliError(usage, EXIT.usage);
  const at = rule.indexOf('=');
  const [kind, value] = [rule.slice(0, at), rule.slice(at + 1)];
  let deviceSelection: Record<string, unknown>;
  if (kind === 'percentage' && /^\d+$/.test(value)) {
    deviceSelection = { subsetType: 'PERCENTAGE', percentage: Number(value) };
  } else if (kind === 'devices' && value !== '') {
    deviceSelection = { subsetType: 'SELECTION', deviceNames: value.split(',') };
  } else if (kind === 'name-contains' && value !== '') {
    deviceSelection = { subsetType: 'NAMECONTAINS', deviceNameContains: value };
  } else {
    throw new CliError(usage, EXIT.usage);
  }
  const stage: Record<string, unknown> = { name, deviceSelection };
  const tags: Record<string, string> = {};
  for (const option of options) {
    if (option.startsWith('tag=')) {
      const [key, ...rest] = option.slice(4).split('=');
      if (!key) throw new CliError(usage, EXIT.usage);
      // A bare key would select only devices whose tag is empty, not every device with the key: say it as key=.
      if (rest.length === 0) {
        throw new CliError(
          `--stage ${spec}: tag=${key}: expected tag=<key>=<value> (tag=${key}= selects devices whose ${key} tag is empty)`,
          EXIT.usage,
        );
      }
      tags[key] = rest.join('=');
    } else if (option === 'policy=ROLLBACK_ON_FAILURE' || option === 'policy=DO_NOTHING') {
      stage.failureHandlingPolicy = option.slice(7);
    } else {
      throw new CliError(usage, EXIT.usage);
    }
  }
  if (Object.keys(tags).length > 0) deviceSelection.tags = tags;
  return stage;
}

/** `--package <handle>=<model>@<version>`: an uploaded package. */
function parseUploadedPackage(spec: string): Record<string, unknown> {
  const match = /^([^=]+)=([^@]+)@(.+)$/.exec(spec);
  if (match === null) {
    throw new CliError(`--package ${spec}: expected <model-handle>=<model>@<version>`, EXIT.usage);
  }
  return { modelHandle: match[1], modelName: match[2], modelVersion: match[3] };
}

/** `--model <handle>=<packaging-job>`. */
function parseModel(spec: string): Record<string, unknown> {
  const [handle, job, extra] = spec.split('=');
  if (!handle || !job || extra !== undefined) {
    throw new CliError(`--model ${spec}: expected <model-handle>=<packaging-job>`, EXIT.usage);
  }
  return { modelHandle: handle, packagingJobName: job };
}

function selectionText(stage: DeploymentStage): string {
  const s = stage.deviceSelection;
  const rule =
    s.subsetType === 'PERCENTAGE'
      ? `${s.percentage ?? 0}%`
      : s.subsetType === 'SELECTION'
        ? `devices ${(s.deviceNames ?? []).join(',')}`
        : `name contains "${s.deviceNameContains ?? ''}"`;
  const tags = Object.entries(s.tags ?? {}).map(([k, v]) => `${k}=${v}`);
  return tags.length > 0 ? `${rule} tagged ${tags.join(',')}` : rule;
}

export function describePlan(plan: DeploymentPlan): string[] {
  return [
    fields([
      ['plan', plan.name],
      ['fleet', plan.fleetName],
      [
        'models',
        plan.modelConfigs
          .map((c) =>
            c.state === 'UNDEPLOY'
              ? `${c.modelHandle}: undeploy`
              : `${c.modelHandle}: ${c.modelName ?? '?'} ${c.modelVersion ?? '?'} (${c.packagingJobName ?? 'uploaded package'})`,
          )
          .join('; '),
      ],
      ['devices', `${plan.successCount} deployed, ${plan.pendingCount} pending, ${plan.failedCount} failed`],
      ['created', formatTime(plan.createdAt)],
    ]),
    '',
    plan.stages.length === 0
      ? 'stages: none'
      : table(
          ['stage', 'selection', 'policy', 'status', 'deployed', 'pending', 'failed', 'stopped', 'message'],
          plan.stages.map((s) => [
            s.name,
            selectionText(s),
            s.failureHandlingPolicy,
            s.status,
            String(s.successCount),
            String(s.pendingCount),
            String(s.failedCount),
            String(s.stoppedCount),
            s.statusMessage ?? '',
          ]),
        ),
  ];
}

/** Deployment statuses a stage's device can be in (the server's `status` filter). */
const DEVICE_STATUSES = ['READYTODEPLOY', 'INPROGRESS', 'DEPLOYED', 'FAILED', 'STOPPED'] as const;

function devicesTable(devices: StageDevice[]): string {
  return devices.length === 0
    ? 'no devices'
    : table(
        ['device', 'status', 'attempts', 'started', 'last seen', 'message'],
        devices.map((d) => [
          d.deviceName,
          d.status,
          String(d.attempts),
          d.startedAt ? formatTime(d.startedAt) : '',
          d.lastSeenAt ? formatTime(d.lastSeenAt) : 'never',
          d.statusMessage ?? '',
        ]),
      );
}

function stageOf(plan: DeploymentPlan, stageName: string): DeploymentStage {
  const stage = plan.stages.find((s) => s.name === stageName);
  if (stage === undefined) {
    throw new CliError(
      `plan ${plan.name} has no stage ${stageName} (it has: ${plan.stages.map((s) => s.name).join(', ')})`,
    );
  }
  return stage;
}

const DEVICE_FINISHED = new Set(['DEPLOYED', 'FAILED', 'STOPPED']);
const NAMES_SHOWN = 5;

function someNames(names: string[]): string {
  const more = names.length - NAMES_SHOWN;
  return `${names.slice(0, NAMES_SHOWN).join(', ')}${more > 0 ? ` and ${more} more` : ''}`;
}

/**
 * Which devices a stage under way waits for, and which of them never sent a heartbeat: a device that was
 * registered but never enrolled, or whose agent is not running, keeps a stage waiting (no timeout applies before
 * it asks for the deployment), and the counts alone do not say so.
 */
function waitingFor(devices: StageDevice[]): string {
  const pending = devices.filter((d) => !DEVICE_FINISHED.has(d.status));
  if (pending.length === 0) return '';
  const neverSeen = pending.filter((d) => d.lastSeenAt === undefined).map((d) => d.deviceName);
  return (
    `; waiting for ${someNames(pending.map((d) => d.deviceName))}` +
    (neverSeen.length === 0
      ? ''
      : `; never seen (no heartbeat yet: is it enrolled, is its agent running?): ${someNames(neverSeen)}`)
  );
}

/**
 * `devices --watch`: polls until the stage finishes. On a terminal the view is redrawn in place; elsewhere
 * (logs, pipes) and under --json one line is printed per change. Exit status 1 when the stage ends FAILED.
 */
async function watchStage(
  client: ServerClient,
  out: Output,
  io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream },
  plan: string,
  stageName: string,
  timing: { intervalMs: number; retryForMs: number },
): Promise<DeploymentStage> {
  const { stdout } = io;
  const tty = !out.json && (stdout as NodeJS.WriteStream).isTTY === true;
  let last = '';
  // A restart or a network blip must not end the watch: reads that get no answer (or a proxy's 502-504) are
  // retried, backing off, until the server has not answered for retryForMs (then the last failure is the
  // command's). Only once a read has succeeded: before that, a wrong --server fails at once, as in any command.
  let answered = false;
  let outageStart: number | undefined;
  let retryDelayMs = timing.intervalMs;
  for (;;) {
    let described: Awaited<ReturnType<ServerClient['getDeploymentPlan']>>;
    let devices: Awaited<ReturnType<ServerClient['stageDevices']>>;
    try {
      described = await client.getDeploymentPlan(plan);
      devices = await client.stageDevices(plan, stageName);
    } catch (error) {
      if (!answered || !serverAway(error)) throw error;
      outageStart ??= Date.now();
      const leftMs = outageStart + timing.retryForMs - Date.now();
      if (leftMs <= 0) throw error;
      const waitMs = Math.min(retryDelayMs, leftMs);
      io.stderr.write(
        `edgefleet: ${error.message}; retrying in ${Math.ceil(waitMs / 1000)} s (gives up after ${Math.round(timing.retryForMs / 1000)} s without an answer)\n`,
      );
      await new Promise((resolve) => setTimeout(resolve, waitMs));
      retryDelayMs = Math.min(retryDelayMs * 2, MAX_WATCH_RETRY_DELAY_MS);
      continue;
    }
    answered = true;
    if (outageStart !== undefined) io.stderr.write('edgefleet: the server answers again\n');
    outageStart = undefined;
    retryDelayMs = timing.intervalMs;
    const stage = stageOf(described, stageName);
    const counts = `${plan}/${stageName}: ${stage.status} — ${stage.successCount} deployed, ${stage.pendingCount} pending, ${stage.failedCount} failed`;
    const summary = FINISHED.has(stage.status) ? counts : `${counts}${waitingFor(devices)}`;
    if (tty) {
      stdout.write(`\x1b[H\x1b[2J${summary}\n${stage.statusMessage ?? ''}\n\n${devicesTable(devices)}\n`);
    } else if (summary !== last) {
      stdout.write(
        out.json
          ? `${JSON.stringify({ plan, stage: stageName, status: stage.status, successCount: stage.successCount, pendingCount: stage.pendingCount, failedCount: stage.failedCount })}\n`
          : `${summary}\n`,
      );
    }
    last = summary;
    if (FINISHED.has(stage.status)) return stage;
    await new Promise((resolve) => setTimeout(resolve, timing.intervalMs));
  }
}

export function registerDeploymentCommands(
  program: Command,
  output: () => Output,
  stdout: NodeJS.WritableStream = process.stdout,
  stderr: NodeJS.WritableStream = process.stderr,
): void {
  const deployment = program
    .command('deployment')
    .description('deployment plans: roll models out to a fleet in stages (docs/deployments.md)');

  addServerOptions(
    deployment
      .command('create')
      .description('create a deployment plan (stages start with start-stage)')
      .argument('<name>', 'plan name')
      .option(
        '--file <plan.json>',
        'the whole plan as JSON (the server body); flags below are merged over it',
      )
      .option('--fleet <fleet>', 'the fleet to deploy to')
      .option('--model <handle=job>', 'deploy a packaging job under a model handle (repeatable)', collect, [])
      .option(
        '--package <handle=model@version>',
        'deploy an uploaded package (model upload of a .tar.gz) under a model handle (repeatable)',
        collect,
        [],
      )
      .option('--undeploy <handle>', 'remove a model handle from the devices (repeatable)', collect, [])
      .option(
        '--stage <spec>',
        'a stage, in order (repeatable): <name>:percentage=<n> | <name>:devices=<a,b> | <name>:name-contains=<text>, then :tag=<k>=<v> or :policy=DO_NOTHING',
        collect,
        [],
      )
      .option(
        '--timeout <seconds>',
        'a device that took the deployment must report within this',
        intOption('--timeout', 10, 2_592_000),
      )
      .option('--max-retries <n>', 'further attempts per failed device', intOption('--max-retries', 0, 10))
      .option(
        '--auto-advance <percent>',
        'start the next stage when this share is deployed',
        intOption('--auto-advance', 1, 100),
      )
      .option(
        '--abort-failed-count <n>',
        'abort a stage after this many failures',
        intOption('--abort-failed-count', 1, 1_000_000),
      )
      .option(
        '--abort-failed-percent <n>',
        'abort a stage when this share fails',
        intOption('--abort-failed-percent', 1, 100),
      )
      .option(
        '--abort-min-devices <n>',
        'judge abort only after this many devices finished',
        intOption('--abort-min-devices', 1, 1_000_000),
      )
      .option('--allow-downgrade', 'a rollback plan: devices may install older versions'),
  ).action(
    async (
      name: string,
      opts: ConnectionFlags & {
        file?: string;
        fleet?: string;
        model: string[];
        package: string[];
        undeploy: string[];
        stage: string[];
        timeout?: number;
        maxRetries?: number;
        autoAdvance?: number;
        abortFailedCount?: number;
        abortFailedPercent?: number;
        abortMinDevices?: number;
        allowDowngrade?: boolean;
      },
    ) => {
      const out = output();
      const base =
        opts.file !== undefined
          ? (JSON.parse(await readFile(opts.file, 'utf8')) as Record<string, unknown>)
          : {};
      const modelConfigs = [
        ...((base.modelConfigs as unknown[] | undefined) ?? []),
        ...opts.model.map(parseModel),
        ...opts.package.map(parseUploadedPackage),
        ...opts.undeploy.map((handle) => ({ modelHandle: handle, state: 'UNDEPLOY' })),
      ];
      const stages = [...((base.stages as unknown[] | undefined) ?? []), ...opts.stage.map(parseStage)];
      const options: Record<string, unknown> = { ...(base.options as Record<string, unknown> | undefined) };
      if (opts.timeout !== undefined) options.deviceTimeoutSeconds = opts.timeout;
      if (opts.maxRetries !== undefined) options.maxRetries = opts.maxRetries;
      if (opts.allowDowngrade) options.allowDowngrade = true;
      if (opts.autoAdvance !== undefined) options.autoAdvance = { successPercent: opts.autoAdvance };
      if (opts.abortFailedCount !== undefined || opts.abortFailedPercent !== undefined) {
        options.abort = {
          ...(opts.abortFailedCount !== undefined && { failedCount: opts.abortFailedCount }),
          ...(opts.abortFailedPercent !== undefined && { failedPercent: opts.abortFailedPercent }),
          ...(opts.abortMinDevices !== undefined && { minDevices: opts.abortMinDevices }),
        };
      }
      const fleetName = opts.fleet ?? base.fleetName;
      if (fleetName === undefined) throw new CliError('deployment create: --fleet is required', EXIT.usage);
      if (modelConfigs.length === 0) {
        throw new CliError(
          'deployment create: give at least one --model <handle=job>, --package <handle=model@version> or --undeploy <handle>',
          EXIT.usage,
        );
      }
      const created = await withServer(opts, (client) =>
        client.createDeploymentPlan({ ...base, name, fleetName, modelConfigs, stages, options }),
      );
      out.result(created, () => [
        `Created deployment plan ${created.name}`,
        ...describePlan(created),
        ...(created.warnings ?? []).map((warning) => `warning: ${warning}`),
      ]);
    },
  );

  addServerOptions(
    refuseArguments(
      deployment.command('list'),
      output,
      (arg, invocation) =>
        `to list one fleet's plans add --fleet ${arg}; one plan: ${invocation} deployment describe ${arg}`,
    )
      .description('list deployment plans')
      .option('--fleet <fleet>', 'only plans for this fleet')
      .option('--limit <n>', 'at most this many', intOption('--limit', 1, 1_000_000)),
  ).action(async (opts: ConnectionFlags & { fleet?: string; limit?: number }) => {
    const out = output();
    const plans = await withServer(opts, (client) =>
      client.listDeploymentPlans({ ...(opts.fleet && { fleetName: opts.fleet }) }, opts.limit),
    );
    out.result({ plans }, () =>
      plans.length === 0
        ? 'no deployment plans'
        : table(
            ['plan', 'fleet', 'stages', 'deployed', 'pending', 'failed', 'created'],
            plans.map((p) => [
              p.name,
              p.fleetName,
              p.stages.map((s) => `${s.name}:${s.status}`).join(' '),
              String(p.successCount),
              String(p.pendingCount),
              String(p.failedCount),
              formatTime(p.createdAt),
            ]),
          ),
    );
  });

  addServerOptions(
    deployment
      .command('describe')
      .description('show a plan, its stages and their progress')
      .argument('<plan>'),
  ).action(async (plan: string, opts: ConnectionFlags) => {
    const out = output();
    const found = await withServer(opts, (client) => client.getDeploymentPlan(plan));
    out.result(found, () => describePlan(found));
  });

  addServerOptions(
    deployment
      .command('start-stage')
      .description('start a stage: the devices it selects now are its devices')
      .argument('<plan>')
      .argument('<stage>')
      .option('--force', 'start it even though an earlier stage of the plan FAILED (refused otherwise)'),
  ).action(async (plan: string, stage: string, opts: ConnectionFlags & { force?: boolean }) => {
    const out = output();
    const updated = await withServer(opts, (client) =>
      client.startDeploymentStage(plan, stage, { force: opts.force === true }),
    );
    out.result(updated, () => [`Started stage ${stage} of ${plan}`, ...describePlan(updated)]);
  });

  addServerOptions(
    deployment
      .command('stop-stage')
      .description('stop a stage: devices not started are not; devices mid-update finish or roll back')
      .argument('<plan>')
      .argument('<stage>'),
  ).action(async (plan: string, stage: string, opts: ConnectionFlags) => {
    const out = output();
    const updated = await withServer(opts, (client) => client.stopDeploymentStage(plan, stage));
    out.result(updated, () => [`Stopping stage ${stage} of ${plan}`, ...describePlan(updated)]);
  });

  addServerOptions(
    deployment.command('delete').description('delete a plan with no stage under way').argument('<plan>'),
  ).action(async (plan: string, opts: ConnectionFlags) => {
    const out = output();
    await withServer(opts, (client) => client.deleteDeploymentPlan(plan));
    out.result({ deleted: plan }, () => `Deleted deployment plan ${plan}`);
  });

  addServerOptions(
    deployment
      .command('devices')
      .description("a stage's devices: status, attempts, last seen, reason")
      .argument('<plan>')
      .argument('<stage>')
      .option(
        '--status <status>',
        `only the devices in this status (${DEVICE_STATUSES.join(', ')})`,
        (value: string) => {
          if (!(DEVICE_STATUSES as readonly string[]).includes(value)) {
            throw new CliError(
              `--status ${JSON.stringify(value)}: expected one of ${DEVICE_STATUSES.join(', ')}`,
              EXIT.usage,
            );
          }
          return value;
        },
      )
      .option('--watch', 'follow the stage until it finishes (exit status 1 if it FAILED)')
      .option(
        '--interval <seconds>',
        'with --watch: seconds between reads',
        intOption('--interval', 1, 3600),
        2,
      )
      .option(
        '--retry-for <seconds>',
        'with --watch: keep retrying (backing off up to 30 s) while the server does not answer, this long',
        intOption('--retry-for', 0, 86_400),
        300,
      ),
  ).action(
    async (
      plan: string,
      stage: string,
      opts: ConnectionFlags & { status?: string; watch?: boolean; interval: number; retryFor: number },
    ) => {
      const out = output();
      if (opts.watch && opts.status !== undefined)
        throw new CliError(
          '--status lists devices once; --watch follows the whole stage: use one',
          EXIT.usage,
        );
      if (opts.watch) {
        const final = await withServer(opts, (client) =>
          watchStage(client, out, { stdout, stderr }, plan, stage, {
            intervalMs: opts.interval * 1000,
            retryForMs: opts.retryFor * 1000,
          }),
        );
        if (final.status === 'FAILED') {
          throw new CliError(`stage ${stage} of ${plan} FAILED: ${final.statusMessage ?? 'see its devices'}`);
        }
        return;
      }
      const devices = await withServer(opts, (client) =>
        client.stageDevices(plan, stage, opts.status !== undefined ? { status: opts.status } : {}),
      );
      out.result({ devices }, () => devicesTable(devices));
    },
  );

  addServerOptions(
    deployment
      .command('cancel-device')
      .description("cancel one device's deployment: it goes back to what earlier plans gave it")
      .argument('<plan>')
      .argument('<device>'),
  ).action(async (plan: string, device: string, opts: ConnectionFlags) => {
    const out = output();
    const cancelled = await withServer(opts, (client) => client.cancelDeviceDeployment(plan, device));
    out.result(cancelled, () => `Cancelled ${device} in ${plan}: ${cancelled.status}`);
  });

  addServerOptions(
    deployment
      .command('events')
      .description("a plan's events: stages started and finished, device failures, rollbacks")
      .argument('<plan>'),
  ).action(async (plan: string, opts: ConnectionFlags) => {
    const out = output();
    const events = await withServer(opts, (client) => client.deploymentEvents(plan));
    out.result({ events }, () =>
      events.length === 0
        ? 'no events'
        : table(
            ['time', 'event', 'stage', 'device', 'message'],
            events.map((e) => [formatTime(e.at), e.kind, e.stageName ?? '', e.deviceName ?? '', e.message]),
          ),
    );
  });
}
