#!/usr/bin/env node
/**
 * The Greengrass component's Install step: `node render-main.js <config.json out> [--identity <file>]`.
 * Reads each component parameter from the environment variable `EDGEFLEET_GG_<Parameter>` (the recipe's
 * Setenv interpolates `{configuration:/<Parameter>}` into it) and the thing name from `EDGEFLEET_GG_ThingName`,
 * writes the agent's config (mode 0640, atomically) and prints the socket path. Exit 2 names a bad parameter.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import {
  COMPONENT_PARAMETER_NAMES,
  ComponentParameterError,
  renderAgentConfig,
} from './component-parameters.js';

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
  const rendered = renderAgentConfig(configuration, {
    thingName: process.env[`${ENV_PREFIX}ThingName`] ?? '',
    ...(identity ? { identity } : {}),
  });
  for (const warning of rendered.warnings) process.stderr.write(`warning: ${warning}\n`);
  const partial = `${out}.${randomBytes(4).toString('hex')}.partial`;
  await writeFile(partial, `${JSON.stringify(rendered.config, null, 2)}\n`, { mode: 0o640 });
  await rename(partial, out);
  process.stdout.write(`${rendered.socketPath}\n`);
}

main(process.argv.slice(2)).catch((error: unknown) => {
  process.stderr.write(
    `edgefleet greengrass config: ${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exit(error instanceof ComponentParameterError ? 2 : 1);
});
