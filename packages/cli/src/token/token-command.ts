import { Option, type Command } from 'commander';
import { table, type Output } from '../cli-io.js';
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
      ),
  ).action(async (opts: ConnectionFlags & { name: string; scope: string }) => {
    const out = output();
    const created = await withServer(opts, (client) =>
      client.createApiToken({ name: opts.name, scope: opts.scope }),
    );
    // The secret alone on stdout, so `$(edgefleet token create …)` captures it; --json has every field.
    out.result(created, () => created.token);
  });

  addServerOptions(
    token
      .command('list')
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

  addServerOptions(token.command('revoke').description('revoke an API token by id').argument('<id>')).action(
    async (id: string, opts: ConnectionFlags) => {
      const out = output();
      await withServer(opts, (client) => client.revokeApiToken(id));
      out.result({ revoked: id }, () => `Revoked token ${id}`);
    },
  );

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
