import { awsProfileName } from '@edgefleet/core';
import { Option, type Command } from 'commander';
import { CliError, EXIT, refuseArguments, table, type Output } from '../cli-io.js';
import {
  addServerOptions,
  fields,
  intOption,
  withServer,
  type ConnectionFlags,
} from '../server-client/index.js';

export function registerTokenCommands(program: Command, output: () => Output): void {
  const token = program.command('token').description('operator API tokens on an EdgeFleet server');

  addServerOptions(
    token
      .command('create')
      .description('create an API token; it is printed once (admin token needed)')
      .requiredOption('--name <name>', 'what the token is for, e.g. "ci deploys"')
      .addOption(
        new Option('--scope <scope>', 'what it may do').choices(['admin', 'read-only']).default('read-only'),
      )
      .option(
        '--aws',
        'create an AWS-style access key pair for the SageMaker API instead, printed in ~/.aws/credentials form',
      )
      .option('--device <name>', 'with --aws: bind the key to a device (sagemaker-edge data plane only)'),
  ).action(
    async (opts: ConnectionFlags & { name: string; scope: string; aws?: boolean; device?: string }) => {
      const out = output();
      if (opts.aws) {
        const key = await withServer(opts, (client) =>
          client.createAccessKey({
            name: opts.name,
            scope: opts.scope,
            ...(opts.device !== undefined ? { deviceName: opts.device } : {}),
          }),
        );
        // Shown once: the server keeps the secret encrypted and never returns it again.
        out.result(key, () => awsCredentialsProfile(opts.name, key.accessKeyId, key.secretAccessKey));
        return;
      }
      if (opts.device !== undefined) {
        throw new CliError('--device applies to access keys only: add --aws', EXIT.usage);
      }
      const created = await withServer(opts, (client) =>
        client.createApiToken({ name: opts.name, scope: opts.scope }),
      );
      // The secret alone on stdout, so `$(edgefleet token create …)` captures it; --json has every field.
      out.result(created, () => created.token);
    },
  );

  addServerOptions(
    refuseArguments(token.command('list'), output, () => 'it lists every API token (add --limit for fewer)')
      .description('list API tokens (never their secrets)')
      .option('--limit <n>', 'at most this many', intOption('--limit', 1, 1_000_000)),
  ).action(async (opts: ConnectionFlags & { limit?: number }) => {
    const out = output();
    const tokens = await withServer(opts, (client) => client.listApiTokens(opts.limit));
    out.result({ tokens }, () =>
      tokens.length === 0
        ? 'no tokens'
        : table(
            ['id', 'scope', 'state', 'created', 'name'],
            tokens.map((t) => [t.id, t.scope, t.revokedAt ? 'revoked' : 'active', t.createdAt, t.name]),
          ),
    );
  });

  addServerOptions(
    token
      .command('revoke')
      .description('revoke an API token by id, or an access key by its id (AKEF…)')
      .argument('<id>'),
  ).action(async (id: string, opts: ConnectionFlags) => {
    const out = output();
    const isAccessKey = /^AKEF/.test(id);
    await withServer(opts, (client) =>
      isAccessKey ? client.revokeAccessKey(id) : client.revokeApiToken(id),
    );
    out.result({ revoked: id }, () => `Revoked ${isAccessKey ? 'access key' : 'token'} ${id}`);
  });

  addServerOptions(
    refuseArguments(
      token.command('list-aws'),
      output,
      () => 'it lists every access key (add --limit for fewer)',
    )
      .description('list access keys for the SageMaker API (never their secrets)')
      .option('--limit <n>', 'at most this many', intOption('--limit', 1, 1_000_000)),
  ).action(async (opts: ConnectionFlags & { limit?: number }) => {
    const out = output();
    const keys = await withServer(opts, (client) => client.listAccessKeys(opts.limit));
    out.result({ accessKeys: keys }, () =>
      keys.length === 0
        ? 'no access keys'
        : table(
            ['access key id', 'scope', 'state', 'device', 'created', 'name'],
            keys.map((k) => [
              k.accessKeyId,
              k.scope,
              k.revokedAt ? 'revoked' : k.endedReason ? `ended (${k.endedReason})` : 'active',
              k.deviceName ?? '-',
              k.createdAt,
              k.name,
            ]),
          ),
    );
  });

  addServerOptions(
    token.command('whoami').description('the token these commands use: id, name, scope'),
  ).action(async (opts: ConnectionFlags) => {
    const out = output();
    const who = await withServer(opts, (client) => client.whoami());
    out.result(who, () =>
      fields([
        ['token id', who.tokenId],
        ['name', who.name],
        ['scope', who.scope],
      ]),
    );
  });
}

/** A profile for ~/.aws/credentials; the profile name is the key's name made safe for an INI section. */
export function awsCredentialsProfile(name: string, accessKeyId: string, secretAccessKey: string): string {
  const profile = awsProfileName(name);
  return [
    `# Add to ~/.aws/credentials; the secret is shown only now.`,
    `[${profile}]`,
    `aws_access_key_id = ${accessKeyId}`,
    `aws_secret_access_key = ${secretAccessKey}`,
  ].join('\n');
}
