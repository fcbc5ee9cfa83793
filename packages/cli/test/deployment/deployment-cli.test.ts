import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { createModelPackage, packModelPackage, writeTestModel } from '@edgefleet/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli.js';
import { parseStage } from '../../src/deployment/deployment-command.js';
import { edgefleet, useOperatorCli } from '../run-cli.js';

const cli = useOperatorCli('edgefleet-deployment-cli-');
const { ef, json } = cli;

beforeAll(async () => {
  expect((await ef('fleet', 'create', 'cams', '--output', 's3://c/cams')).code).toBe(0);
  expect((await ef('device', 'register', 'cams', 'cam-1', 'cam-2', 'cam-3', '--tag', 'site=oslo')).code).toBe(
    0,
  );
  const onnx = await writeTestModel('tiny', join(cli.work, 'tiny'));
  expect((await ef('model', 'upload', onnx, '--name', 'tiny', '--version', '1')).code).toBe(0);
  expect(
    (await ef('packaging', 'create', 'pack-1', '--model', 'tiny', '--version', '1', '--wait')).code,
  ).toBe(0);
});

describe('edgefleet deployment', () => {
  it('parses stage specs and refuses malformed ones with the expected form', () => {
    expect(parseStage('canary:devices=cam-1,cam-2:policy=DO_NOTHING')).toEqual({
      name: 'canary',
      deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-1', 'cam-2'] },
      failureHandlingPolicy: 'DO_NOTHING',
    });
    expect(parseStage('rest:percentage=100:tag=site=oslo')).toEqual({
      name: 'rest',
      deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100, tags: { site: 'oslo' } },
    });
    expect(() => parseStage('oops:everything')).toThrow(/expected <name>:<rule>/);
    // A bare tag key is refused, not sent as the empty value; key= says that on purpose.
    expect(() => parseStage('rest:percentage=100:tag=site')).toThrow(
      '--stage rest:percentage=100:tag=site: tag=site: expected tag=<key>=<value> (tag=site= selects devices whose site tag is empty)',
    );
    expect(parseStage('rest:percentage=100:tag=site=')).toMatchObject({
      deviceSelection: { tags: { site: '' } },
    });
  });

  it('creates a plan, starts and stops stages, follows one with --watch, lists events and deletes it', async () => {
    const created = await ef(
      'deployment',
      'create',
      'rollout',
      '--fleet',
      'cams',
      '--model',
      'classifier=pack-1',
      '--stage',
      'none:name-contains=nomatch',
      '--stage',
      'canary:devices=cam-1,cam-2',
      '--max-retries',
      '2',
      '--abort-failed-percent',
      '50',
    );
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    expect(created.stdout).toMatch(/Created deployment plan rollout/);
    expect(created.stdout).toMatch(/classifier: tiny 1 \(pack-1\)/);
    expect(created.stdout).toMatch(/^canary\s+devices cam-1,cam-2\s+ROLLBACK_ON_FAILURE\s+READYTODEPLOY/m);

    // A stage that selects nobody is DEPLOYED at once; --watch ends at once, with one line off a terminal.
    await json('deployment', 'start-stage', 'rollout', 'none');
    const watched = await ef('deployment', 'devices', 'rollout', 'none', '--watch');
    expect(watched.code).toBe(0);
    expect(watched.stdout).toBe('rollout/none: DEPLOYED — 0 deployed, 0 pending, 0 failed\n');

    const started = await json('deployment', 'start-stage', 'rollout', 'canary');
    expect(started.stages[1]).toMatchObject({ status: 'INPROGRESS', pendingCount: 2 });
    const devices = await json('deployment', 'devices', 'rollout', 'canary');
    expect(
      devices.devices.map((d: { deviceName: string; status: string }) => [d.deviceName, d.status]),
    ).toEqual([
      ['cam-1', 'READYTODEPLOY'],
      ['cam-2', 'READYTODEPLOY'],
    ]);
    const table = await ef('deployment', 'devices', 'rollout', 'canary');
    expect(table.stdout).toMatch(/^cam-1\s+READYTODEPLOY\s+0\s+never/m);
    // --status: only the devices in that status (the server filters, however many the stage has).
    const ready = await json('deployment', 'devices', 'rollout', 'canary', '--status', 'READYTODEPLOY');
    expect(ready.devices.map((d: { deviceName: string }) => d.deviceName)).toEqual(['cam-1', 'cam-2']);
    expect((await json('deployment', 'devices', 'rollout', 'canary', '--status', 'FAILED')).devices).toEqual(
      [],
    );
    const badStatus = await ef('deployment', 'devices', 'rollout', 'canary', '--status', 'LOST');
    expect(badStatus.code).toBe(2);
    expect(badStatus.stderr).toContain(
      '--status "LOST": expected one of READYTODEPLOY, INPROGRESS, DEPLOYED, FAILED, STOPPED',
    );
    // describe counts stopped devices too.
    expect((await ef('deployment', 'describe', 'rollout')).stdout).toMatch(
      /^stage\s+selection\s+policy\s+status\s+deployed\s+pending\s+failed\s+stopped\s+message/m,
    );

    // Another plan for the same handle while this one runs: the server's 409, as one clear line.
    const clash = await ef(
      'deployment',
      'create',
      'other',
      '--fleet',
      'cams',
      '--model',
      'classifier=pack-1',
    );
    expect(clash.code).toBe(1);
    expect(clash.stderr).toMatch(
      /model handle classifier is being rolled out to fleet cams by plan rollout.*409/,
    );

    // Devices registered but never enrolled keep the stage waiting: --watch names them as it waits, and its
    // last line, once the stage is stopped, is the counts alone.
    let watchOutput = '';
    let onWatchOutput = (): void => undefined;
    const waitingLine = new Promise<void>((resolve) => {
      onWatchOutput = () => {
        if (watchOutput.includes('\n')) resolve();
      };
    });
    const watchStdout = new Writable({
      write(chunk: Buffer, _encoding, done) {
        watchOutput += chunk.toString();
        onWatchOutput();
        done();
      },
    });
    const watchStderr = new PassThrough();
    const watching = runCli(
      ['deployment', 'devices', 'rollout', 'canary', '--watch', '--interval', '1'].concat([
        '--server',
        cli.plane.operatorUrl,
        '--token',
        cli.plane.adminToken,
      ]),
      { stdout: watchStdout, stderr: watchStderr as unknown as NodeJS.WriteStream },
    );
    await waitingLine;
    await json('deployment', 'stop-stage', 'rollout', 'canary');
    expect(await watching).toBe(0);
    expect(watchOutput.split('\n')).toEqual([
      'rollout/canary: INPROGRESS — 0 deployed, 2 pending, 0 failed; waiting for cam-1, cam-2; never seen ' +
        '(no heartbeat yet: is it enrolled, is its agent running?): cam-1, cam-2',
      'rollout/canary: STOPPED — 0 deployed, 0 pending, 0 failed',
      '',
    ]);

    const stopped = await ef('deployment', 'devices', 'rollout', 'canary', '--watch', '--json');
    expect(JSON.parse(stopped.stdout.trim())).toMatchObject({ status: 'STOPPED', pendingCount: 0 });

    const listed = await json('deployment', 'list', '--fleet', 'cams');
    expect(listed.plans.map((p: { name: string }) => p.name)).toEqual(['rollout']);
    const typo = await ef('deployment', 'list', '--fleet', 'nope');
    expect(typo.code).toBe(1);
    expect(typo.stderr).toMatch(/^edgefleet: fleet nope does not exist/);
    const events = await ef('deployment', 'events', 'rollout');
    expect(events.stdout).toMatch(/StageStarted[\s\S]*StageDeployed[\s\S]*StageStarted[\s\S]*StageStopped/);
    expect((await ef('deployment', 'delete', 'rollout')).code).toBe(0);
    expect((await ef('deployment', 'describe', 'rollout')).code).toBe(1);
  });

  it('takes a whole plan from a file and reports usage errors as such', async () => {
    const file = join(cli.work, 'plan.json');
    await writeFile(
      file,
      JSON.stringify({
        fleetName: 'cams',
        modelConfigs: [{ modelHandle: 'old', state: 'UNDEPLOY' }],
        stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
      }),
    );
    const created = await json('deployment', 'create', 'cleanup', '--file', file, '--auto-advance', '100');
    expect(created).toMatchObject({
      fleetName: 'cams',
      modelConfigs: [{ modelHandle: 'old', state: 'UNDEPLOY' }],
      options: { autoAdvance: { successPercent: 100 } },
    });
    expect((await ef('deployment', 'create', 'x', '--fleet', 'cams')).code).toBe(2);
    expect((await ef('deployment', 'create', 'x', '--fleet', 'cams', '--stage', 'bad')).code).toBe(2);
    expect((await ef('deployment', 'create', 'x', '--fleet', 'cams', '--package', 'h=nover')).code).toBe(2);
    // An uploaded package names model and version; an ONNX upload is refused with the server's reason.
    const onnxOnly = await ef('deployment', 'create', 'x', '--fleet', 'cams', '--package', 'h=tiny@1');
    expect(onnxOnly.code).toBe(1);
    expect(onnxOnly.stderr).toMatch(/uploaded as ONNX, not as a package/);
  });

  it("prints the server's warning for an uploaded package the devices will refuse (unsigned)", async () => {
    const onnx = await writeTestModel('tiny', join(cli.work, 'unsigned-src'));
    const built = await createModelPackage({
      modelPath: onnx,
      name: 'unsigned-pkg',
      version: '1',
      outDir: join(cli.work, 'unsigned-pkg'),
    });
    const archive = join(cli.work, 'unsigned-pkg.tar.gz');
    await packModelPackage(built.dir, archive);
    expect((await ef('model', 'upload', archive, '--name', 'unsigned-pkg', '--version', '1')).code).toBe(0);
    const created = await ef(
      'deployment',
      'create',
      'unsigned',
      '--fleet',
      'cams',
      '--package',
      'u=unsigned-pkg@1',
    );
    expect(created.code).toBe(0);
    expect(created.stdout).toMatch(
      /\nwarning: model handle u: package unsigned-pkg 1 is not signed: devices enrolled by this server require a signature/,
    );
    expect((await ef('deployment', 'delete', 'unsigned')).code).toBe(0);
  });

  it('--watch against a wrong --server fails at once, without retrying (F3)', async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const watched = await edgefleet(
      ...['deployment', 'devices', 'rollout', 'canary', '--watch', '--interval', '1', '--retry-for', '30'],
      ...['--server', `http://127.0.0.1:${port}`, '--token', cli.plane.adminToken],
    );
    expect(watched.code).not.toBe(0);
    expect(watched.stderr).toMatch(
      /cannot reach the EdgeFleet server at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/,
    );
    expect(watched.stderr).not.toMatch(/retrying/);
  });

  it('--watch rides out a proxy answering 502 and 503 while the server behind it is away (F3)', async () => {
    expect((await ef('device', 'register', 'cams', 'cam-proxied')).code).toBe(0);
    expect(
      (
        await ef(
          'deployment',
          'create',
          'through-proxy',
          '--fleet',
          'cams',
          '--undeploy',
          'gone',
          '--stage',
          'all:devices=cam-proxied',
        )
      ).code,
    ).toBe(0);
    expect((await ef('deployment', 'start-stage', 'through-proxy', 'all')).code).toBe(0);
    // A real HTTP proxy in front of the control plane: it forwards, or answers as a proxy does while its upstream
    // restarts (an HTML 502 page; a 503 as Fastify's own while it closes).
    let away: 502 | 503 | undefined;
    const upstream = new URL(cli.plane.operatorUrl);
    const proxy = http.createServer((request, response) => {
      if (away === 502) {
        response
          .writeHead(502, { 'content-type': 'text/html' })
          .end('<html><body>502 Bad Gateway</body></html>');
        return;
      }
      if (away === 503) {
        response
          .writeHead(503, { 'content-type': 'application/json' })
          .end(
            JSON.stringify({ statusCode: 503, error: 'Service Unavailable', message: 'Service Unavailable' }),
          );
        return;
      }
      const forwarded = http.request(
        {
          host: upstream.hostname,
          port: upstream.port,
          path: request.url,
          method: request.method,
          headers: request.headers,
        },
        (answer) => {
          response.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(response);
        },
      );
      forwarded.on('error', () => response.destroy());
      request.pipe(forwarded);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    try {
      let watchOut = '';
      let watchErr = '';
      const waiters: { test: () => boolean; resolve: () => void }[] = [];
      const until = (test: () => boolean) =>
        new Promise<void>((resolve) => {
          waiters.push({ test, resolve });
          settle();
        });
      const settle = () => {
        for (const waiter of waiters.splice(0))
          (waiter.test() ? waiter.resolve : () => waiters.push(waiter))();
      };
      const sink = (append: (text: string) => void) =>
        new Writable({
          write(chunk: Buffer, _encoding, done) {
            append(chunk.toString());
            settle();
            done();
          },
        });
      const watching = runCli(
        ['deployment', 'devices', 'through-proxy', 'all', '--watch', '--interval', '1'].concat([
          '--server',
          `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
          '--token',
          cli.plane.adminToken,
        ]),
        {
          stdout: sink((text) => (watchOut += text)),
          stderr: sink((text) => (watchErr += text)) as unknown as NodeJS.WriteStream,
        },
      );
      await until(() => watchOut.includes('\n'));
      away = 502;
      await until(() => /HTTP 502.*retrying in \d+ s/.test(watchErr));
      away = 503;
      await until(() => /HTTP 503.*retrying in \d+ s/.test(watchErr));
      away = undefined;
      await until(() => watchErr.includes('the server answers again'));
      await json('deployment', 'stop-stage', 'through-proxy', 'all');
      expect(await watching).toBe(0);
      expect(watchOut.trim().split('\n').at(-1)).toBe(
        'through-proxy/all: STOPPED — 0 deployed, 0 pending, 0 failed',
      );
    } finally {
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  // Last: it restarts the server the other tests use.
  it('--watch rides out a server restart, saying so, and ends with the stage (N12)', async () => {
    expect(
      (
        await ef(
          'deployment',
          'create',
          'through-restart',
          '--fleet',
          'cams',
          '--undeploy',
          'gone',
          '--stage',
          'all:devices=cam-3',
        )
      ).code,
    ).toBe(0);
    expect((await ef('deployment', 'start-stage', 'through-restart', 'all')).code).toBe(0);
    let watchOut = '';
    let watchErr = '';
    const waiters: { test: () => boolean; resolve: () => void }[] = [];
    const until = (test: () => boolean) =>
      new Promise<void>((resolve) => {
        waiters.push({ test, resolve });
        settle();
      });
    const settle = () => {
      for (const waiter of waiters.splice(0)) (waiter.test() ? waiter.resolve : () => waiters.push(waiter))();
    };
    const sink = (append: (text: string) => void) =>
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          append(chunk.toString());
          settle();
          done();
        },
      });
    const watching = runCli(
      ['deployment', 'devices', 'through-restart', 'all', '--watch', '--interval', '1'].concat([
        '--server',
        cli.plane.operatorUrl,
        '--token',
        cli.plane.adminToken,
      ]),
      {
        stdout: sink((text) => (watchOut += text)),
        stderr: sink((text) => (watchErr += text)) as unknown as NodeJS.WriteStream,
      },
    );
    await until(() => watchOut.includes('\n'));
    expect(await cli.plane.stop()).toBe(0);
    await until(() => /retrying in \d+ s/.test(watchErr));
    await cli.plane.start();
    await until(() => watchErr.includes('the server answers again'));
    await json('deployment', 'stop-stage', 'through-restart', 'all');
    expect(await watching).toBe(0);
    expect(watchErr).toMatch(
      /^edgefleet: cannot reach the EdgeFleet server at http:\/\/127\.0\.0\.1:\d+: \w+; retrying in 1 s \(gives up after 300 s without an answer\)$/m,
    );
    expect(watchOut.trim().split('\n').at(-1)).toBe(
      'through-restart/all: STOPPED — 0 deployed, 0 pending, 0 failed',
    );
  });
});
