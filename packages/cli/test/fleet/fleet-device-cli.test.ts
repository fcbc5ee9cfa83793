import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ServerClient } from '../../src/server-client/index.js';
import { edgefleet, useOperatorCli } from '../run-cli.js';

const cli = useOperatorCli();
const { ef, json } = cli;

describe('edgefleet fleet', () => {
  it('creates, lists, describes, updates, reports and deletes a fleet', async () => {
    const created = await ef(
      'fleet',
      'create',
      'vision',
      '--output',
      's3://captures/vision',
      '--description',
      'cameras',
      '--tag',
      'team=cv',
    );
    expect(created.code).toBe(0);
    expect(created.stdout).toMatch(
      /Created fleet vision[\s\S]*output\s+s3:\/\/captures\/vision[\s\S]*tags\s+team=cv/,
    );
    // This server has no S3: it says where the captures go instead.
    expect(created.stdout).toMatch(
      /\nwarning: captures for s3:\/\/captures\/vision will be kept on the server in file:\/\/\S+\/fleet-output\/captures\/vision, not in bucket captures: the server has no S3/,
    );

    const list = await ef('fleet', 'list');
    expect(list.stdout.split('\n')[0]).toMatch(/^name\s+devices\s+output\s+description$/);
    expect(list.stdout).toMatch(/^vision\s+0\s+s3:\/\/captures\/vision\s+cameras$/m);

    const updated = await json(
      'fleet',
      'update',
      'vision',
      '--description',
      'all cameras',
      '--tag',
      'team=ml',
      '--tag',
      'tier=1',
    );
    expect(updated).toMatchObject({
      name: 'vision',
      description: 'all cameras',
      tags: [
        { key: 'team', value: 'ml' },
        { key: 'tier', value: '1' },
      ],
    });
    expect(await json('fleet', 'describe', 'vision')).toMatchObject({
      description: 'all cameras',
      deviceCount: 0,
    });

    const report = await json('fleet', 'report', 'vision');
    expect(report).toMatchObject({
      fleetName: 'vision',
      deviceStats: { connectedDeviceCount: 0, registeredDeviceCount: 0 },
      agentVersions: [],
      modelStats: [],
    });
    const reportText = (await ef('fleet', 'report', 'vision')).stdout;
    expect(reportText).toMatch(/devices\s+0 connected of 0 registered/);
    // No outage of the output location: the location alone.
    expect(reportText).toMatch(/\noutput\s+s3:\/\/captures\/vision\n/);

    await json('device', 'register', 'vision', 'cam-1');
    const refused = await ef('fleet', 'delete', 'vision');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /^edgefleet: fleet vision still has 1 registered device.*\[HTTP 409 ResourceInUse\]\n$/,
    );
    await json('device', 'deregister', 'cam-1');
    expect((await ef('fleet', 'delete', 'vision')).stdout).toBe('Deleted fleet vision\n');
    const gone = await ef('fleet', 'describe', 'vision');
    expect(gone.code).toBe(1);
    expect(gone.stderr).toBe('edgefleet: fleet vision does not exist [HTTP 404 NotFound]\n');
  });

  it('turns the server’s validation errors into exit code 2 with its message', async () => {
    const bad = await ef('fleet', 'create', 'no_underscores', '--output', 's3://b/p');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(
      /name: expected 1-63 letters, digits and inner hyphens .*\[HTTP 400 ValidationError\]/,
    );
    const nothing = await ef('fleet', 'update', 'x');
    expect(nothing.code).toBe(2);
    expect(nothing.stderr).toMatch(/nothing to change/);
    const nothingOnDevice = await ef('device', 'update', 'x');
    expect(nothingOnDevice.code).toBe(2);
    expect(nothingOnDevice.stderr).toMatch(/nothing to change: give --description, --iot-thing-name/);
    for (const noun of ['fleet', 'device']) {
      const both = await ef(noun, 'update', 'x', '--tag', 'a=b', '--clear-tags');
      expect(both.code).toBe(2);
      expect(both.stderr).toMatch(/give --tag or --clear-tags, not both/);
    }
  });
});

describe('edgefleet device', () => {
  it('registers, lists, describes, updates and deregisters devices; issues enrollment tokens', async () => {
    await json('fleet', 'create', 'plant', '--output', 's3://b/plant');
    const registered = await json(
      'device',
      'register',
      'plant',
      'press-1',
      'press-2',
      '--tag',
      'line=a',
      '--description',
      'hydraulic press',
    );
    expect(registered.devices.map((d: { name: string }) => d.name)).toEqual(['press-1', 'press-2']);

    const table = await ef('device', 'list', '--fleet', 'plant');
    expect(table.stdout).toMatch(/^press-1\s+plant\s+never seen\s+-\s+-\s+-$/m);
    // They can be listed as such (N13); neither has been heard from.
    const neverSeen = await json('device', 'list', '--fleet', 'plant', '--status', 'never-seen');
    expect(neverSeen.devices.map((d: { name: string }) => d.name)).toEqual(['press-1', 'press-2']);
    expect((await json('device', 'list', '--fleet', 'plant', '--status', 'online')).devices).toEqual([]);
    expect((await json('device', 'list', '--tag', 'line=a', '--name-contains', '2')).devices).toHaveLength(1);
    // A fleet that does not exist is not an empty fleet: the server's 404, exit 1.
    const typo = await ef('device', 'list', '--fleet', 'plant-x');
    expect(typo.code).toBe(1);
    expect(typo.stdout).toBe('');
    expect(typo.stderr).toMatch(/^edgefleet: fleet plant-x does not exist/);

    const described = await json('device', 'describe', 'press-1');
    expect(described).toMatchObject({
      name: 'press-1',
      fleetName: 'plant',
      description: 'hydraulic press',
      status: 'offline',
      identity: { status: 'NOT_ENROLLED' },
      models: [],
    });
    expect((await ef('device', 'describe', 'press-1')).stdout).toMatch(/identity\s+NOT_ENROLLED/);

    const updated = await json(
      'device',
      'update',
      'press-1',
      '--description',
      '',
      '--iot-thing-name',
      'thing-1',
    );
    expect(updated.description).toBeUndefined();
    expect(updated.iotThingName).toBe('thing-1');
    expect(updated.tags).toEqual([{ key: 'line', value: 'a' }]);
    expect((await json('device', 'update', 'press-1', '--clear-tags')).tags).toEqual([]);

    const token = await ef('device', 'enrollment-token', 'press-1', '--ttl', '600');
    expect(token.code).toBe(0);
    expect(token.stdout).toMatch(/^efe_[A-Za-z0-9_-]+\n$/);
    expect((await json('device', 'certificates', 'press-1')).certificates).toEqual([]);

    expect((await ef('device', 'deregister', 'press-2')).code).toBe(0);
    expect((await json('device', 'list', '--fleet', 'plant')).devices).toHaveLength(1);
    const usage = await ef('device', 'register', 'plant', 'a', 'b', '--iot-thing-name', 't');
    expect(usage.code).toBe(2);
  });

  it('follows page tokens past the server’s largest page', async () => {
    const client = new ServerClient({ server: cli.plane.operatorUrl, token: cli.plane.adminToken });
    await client.createFleet({ name: 'big', outputConfig: { s3OutputLocation: 's3://b/big' } });
    for (let batch = 0; batch < 6; batch++) {
      await client.registerDevices(
        'big',
        Array.from({ length: 100 }, (_, i) => ({ name: `big-${String(batch * 100 + i).padStart(4, '0')}` })),
      );
    }
    const all = await json('device', 'list', '--fleet', 'big');
    expect(all.devices).toHaveLength(600);
    expect(new Set(all.devices.map((d: { name: string }) => d.name)).size).toBe(600);
    expect((await json('device', 'list', '--fleet', 'big', '--limit', '7')).devices).toHaveLength(7);
  });

  it('registers more devices than the server takes at once in batches, saying which went through (W3)', async () => {
    expect((await ef('fleet', 'create', 'many', '--output', 's3://m/many')).code).toBe(0);
    const names = (from: number, count: number) =>
      Array.from({ length: count }, (_, i) => `m-${String(from + i).padStart(3, '0')}`);
    const registered = await ef('device', 'register', 'many', ...names(1, 150));
    expect(registered.stderr).toBe(
      'Registered batch 1 of 2: 100 devices (m-001 … m-100 (100))\n' +
        'Registered batch 2 of 2: 50 devices (m-101 … m-150 (50))\n',
    );
    expect(registered.code).toBe(0);
    expect(registered.stdout).toMatch(/^Registered 150 devices in fleet many: m-001, m-002, /);
    expect((await json('device', 'list', '--fleet', 'many')).devices).toHaveLength(150);

    // The second batch holds a device registered already: the first went through, the rest did not.
    const clash = await ef('device', 'register', 'many', ...names(151, 100), ...names(140, 20));
    expect(clash.code).toBe(1);
    expect(clash.stderr).toContain('Registered batch 1 of 2: 100 devices (m-151 … m-250 (100))\n');
    expect(clash.stderr).toContain('batch 2 of 2 (m-140 … m-159 (20)) was not registered: ');
    expect(clash.stderr).toContain(
      '; registered before it: 100 devices (m-151 … m-250 (100)); not registered: 20 (from m-140 on)',
    );
    expect((await json('device', 'list', '--fleet', 'many')).devices).toHaveLength(250);
  });
});

describe('edgefleet token, auth and connection errors', () => {
  it('creates a read-only token, shows who it is, refuses admin work with it, revokes it', async () => {
    const created = await ef('token', 'create', '--name', 'dashboard', '--scope', 'read-only');
    expect(created.code).toBe(0);
    const secret = created.stdout.trim();
    expect(secret).toMatch(/^efo_/);
    const listed = await json('token', 'list');
    const entry = listed.tokens.find((t: { name: string }) => t.name === 'dashboard');
    expect(entry).toMatchObject({ scope: 'read-only' });
    expect(JSON.stringify(listed)).not.toContain(secret);

    const who = await edgefleet('token', 'whoami', '--server', cli.plane.operatorUrl, '--token', secret);
    expect(who.stdout).toMatch(/name\s+dashboard\nscope\s+read-only/);
    const forbidden = await edgefleet(
      'fleet',
      'create',
      'x',
      '--output',
      's3://b/x',
      '--server',
      cli.plane.operatorUrl,
      '--token',
      secret,
    );
    expect(forbidden.code).toBe(1);
    expect(forbidden.stderr).toMatch(/needs an admin token.*\(use an admin token\) \[HTTP 403 Forbidden\]/);

    expect((await ef('token', 'revoke', entry.id)).code).toBe(0);
    const revoked = await edgefleet('fleet', 'list', '--server', cli.plane.operatorUrl, '--token', secret);
    expect(revoked.code).toBe(1);
    expect(revoked.stderr).toMatch(/unknown or revoked \(check --token/);
    expect(revoked.stderr + revoked.stdout).not.toContain(secret);
  });

  it('reads the server and token from a profile file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ef-profile-'));
    const file = join(dir, 'profiles.json');
    await writeFile(
      file,
      JSON.stringify({
        profiles: { lab: { server: cli.plane.operatorUrl, token: cli.plane.adminToken } },
      }),
    );
    const saved = { ...process.env };
    process.env.EDGEFLEET_PROFILES = file;
    delete process.env.EDGEFLEET_SERVER;
    delete process.env.EDGEFLEET_TOKEN;
    try {
      const who = await edgefleet('token', 'whoami', '--profile', 'lab', '--json');
      expect(JSON.parse(who.stdout)).toMatchObject({ scope: 'admin' });
      const missing = await edgefleet('token', 'whoami', '--profile', 'prod');
      expect(missing.code).toBe(2);
      expect(missing.stderr).toMatch(/no profile "prod"/);
    } finally {
      process.env = saved;
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('says when there is no token or no server', async () => {
    const noToken = await edgefleet('fleet', 'list', '--server', cli.plane.operatorUrl, '--profile', 'x');
    expect(noToken.code).toBe(2); // no such profile
    const anonymous = await edgefleet('fleet', 'list', '--server', cli.plane.operatorUrl, '--token', '');
    expect(anonymous.code).toBe(1);
    expect(anonymous.stderr).toMatch(/needs an API token/);
    const away = await edgefleet(
      'fleet',
      'list',
      '--server',
      'http://127.0.0.1:9',
      '--token',
      'efo_secret_value',
    );
    expect(away.code).toBe(1);
    expect(away.stderr).toMatch(/^edgefleet: cannot reach the EdgeFleet server at http:\/\/127\.0\.0\.1:9: /);
    expect(away.stderr).not.toContain('efo_secret_value');
  });

  it('names an unknown option even when a required one is missing (N5)', async () => {
    const misspelt = await ef('fleet', 'create', 'plant-c', '--output-location', 's3://x');
    expect(misspelt.code).toBe(2);
    expect(misspelt.stderr).toMatch(/^error: unknown option '--output-location'$/m);
    expect(misspelt.stderr).not.toMatch(/required option/);
    // Without an unknown option, the missing one is still what is said; after `--` nothing is an option.
    const missing = await ef('fleet', 'create', 'plant-c');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^error: required option '--output <s3uri>' not specified$/m);
  });

  it('says so when --server names the device API instead of the operator API (N3)', async () => {
    const devicePort = new URL(cli.plane.deviceEndpoint).port;
    for (const scheme of ['http', 'https']) {
      const server = `${scheme}://127.0.0.1:${devicePort}`;
      const wrongPort = await edgefleet('fleet', 'list', '--server', server, '--token', cli.plane.adminToken);
      expect(wrongPort.code).toBe(1);
      expect(wrongPort.stderr).toMatch(
        new RegExp(
          `^edgefleet: ${server.replaceAll('.', '\\.')} is an EdgeFleet server's device API \\(mutual TLS, for agents\\), not its operator API: pass the operator API's URL as --server`,
        ),
      );
    }
  });
});
