#!/usr/bin/env node
/**
 * The Greengrass component's Install step: `node render-main.js <config.json out> [--identity <file>]`.
 * Reads each component parameter from the environment variable `EDGEFLEET_GG_<Parameter>` (the recipe's
 * Setenv interpolates `{configuration:/<Parameter>}` into it) and the thing name from `EDGEFLEET_GG_ThingName`,
 * writes the agent's config (mode 0640, atomically) and prints the socket path. Exit 2 names a bad parameter.
 * With CaptureDataDestination EdgeFleet on an enrolled device, asks the server (with the device's certificate)
 * for the fleet's output location now: the identity file's is a snapshot from the first Install.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import {
  COMPONENT_PARAMETER_NAMES,
  ComponentParameterError,
  renderAgentConfig,
  type RenderContext,
  type RenderedConfig,
} from './component-parameters.js';
import { readDeviceTls } from '../fleet/fleet-client.js';
import { DeviceApiError } from '../fleet/device-api.js';
import { readFleetOutput } from './fleet-output.js';

export const ENV_PREFIX = 'EDGEFLEET_GG_';

async function main(argv: string[]): Promise<void> {
  const [out, flag, identityFile] = argv;
  if (!out || (flag !== undefined && (flag !== '--identity' || !identityFile))) {
    throw new ComponentParameterError(
      null,
      'usage: render-main.js <config.json> [--identity <enrolled config.json>]',
    );
  }
  const configuration = Object.fromEntries(
    COMPONENT_PARAMETER_NAMES.flatMap((name) => {
      const value = process.env[`${ENV_PREFIX}${name}`];
      return value === undefined ? [] : [[name, value]];
    }),
  );
  const identity = identityFile
    ? await readFile(identityFile, 'utf8').then(
        (text) => JSON.parse(text) as Record<string, unknown>,
        (error: NodeJS.ErrnoException) => {
          if (error.code === 'ENOENT') return undefined;
          throw error;
        },
      )
    : undefined;
  const context: RenderContext = {
    thingName: process.env[`${ENV_PREFIX}ThingName`] ?? '',
    ...(identity ? { identity } : {}),
  };
  const rendered = await withFleetOutputNow(
    configuration,
    context,
    renderAgentConfig(configuration, context),
  );
  for (const warning of rendered.warnings) process.stderr.write(`warning: ${warning}\n`);
  const partial = `${out}.${randomBytes(4).toString('hex')}.partial`;
  await writeFile(partial, `${JSON.stringify(rendered.config, null, 2)}\n`, { mode: 0o640 });
  await rename(partial, out);
  process.stdout.write(`${rendered.socketPath}\n`);
}

/** How long Install waits for the server's answer before it falls back to the enrolled fleet output. */
const FLEET_OUTPUT_TIMEOUT_MS = 15_000;

/**
 * Renders again with the fleet's output as the server reports it now, when captures go through the server on an
 * enrolled device; unreachable, the enrolled output stays, with a warning that says how to recover.
 */
async function withFleetOutputNow(
  configuration: Record<string, string>,
  context: RenderContext,
  first: RenderedConfig,
): Promise<RenderedConfig> {
  const { effective } = first;
  const enrolledBucket = context.identity?.sagemaker_edge_provider_s3_bucket_name;
  const endpoint = effective.provider.endpoint;
  if (effective.capture.destination !== 'EdgeFleet' || typeof enrolledBucket !== 'string' || !endpoint)
    return first;
  try {
    const output = await readFleetOutput(endpoint, await readDeviceTls(effective), FLEET_OUTPUT_TIMEOUT_MS);
    if (output === undefined) return first;
    return renderAgentConfig(configuration, { ...context, fleetOutput: output });
  } catch (error) {
    const prefix = String(first.config.sagemaker_edge_core_folder_prefix ?? '');
    first.warnings.push(
      `could not ask the server at ${endpoint} for ${effective.device.fleetName === undefined ? 'the fleet' : `fleet ${effective.device.fleetName}`}'s output location now (${(error as Error).message}); the one enrolled at the first Install is used: bucket ${JSON.stringify(enrolledBucket)}, prefix ${JSON.stringify(prefix)}. If the fleet's output has changed since (edgefleet fleet update --output), the server refuses every capture until Install reaches it: ${error instanceof DeviceApiError && error.failure === 'refused' ? "the server refused this device's certificate (revoked, or another server's): enroll the device again with a new token" : 'redeploy the component once the server is reachable'}`,
    );
    return first;
  }
}

main(process.argv.slice(2)).catch((error: unknown) => {
  process.stderr.write(
    `edgefleet greengrass config: ${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exit(error instanceof ComponentParameterError ? 2 : 1);
});
