/**
 * The operator's log of fleet events (session 12, n5): after enroll and a failed rollout the whole server log
 * was "Server listening", "edgefleet-server started" and nothing else. A real server's log, captured through a
 * journey an operator makes, must name each event, who caused it and how it ended, and hold none of the
 * secrets that passed through the server on the way.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { writeTestModel } from '@edgefleet/core';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { createCsr, deviceCall, deviceKey } from '../support/device.js';
import { runServerCli } from '../support/process.js';
import { sagemakerCall } from '../support/sagemaker-call.js';
import { FleetEventLog } from '../../src/audit/index.js';
import { DeploymentService } from '../../src/deployments/index.js';
import { enrollDevice, startTestServer, type TestServer } from '../support/server.js';

interface LogLine {
  level: number;
  msg: string;
  event?: string;
  outcome?: string;
  actor?: Record<string, unknown>;
  [key: string]: unknown;
}

// A heartbeat's result is applied after the answer (batched on setImmediate): waited for with a bound far above
// any load (vi.waitFor's default, 1 s, is not), within the test's own timeout below.
const APPLIED = { timeout: 20_000, interval: 20 };
const INFO = 30;
const WARN = 40;

describe('fleet events in the server log (real server, SQLite)', () => {
  const raw: string[] = [];
  let t: TestServer;
  const { admin, register } = adminCalls(() => t);
  const secrets: Record<string, string> = {};

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        raw.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    t = await startTestServer({
      logger: pino({ level: 'info' }, sink),
      config: { deployments: { sweepIntervalMs: 3_600_000 }, packaging: { pollIntervalMs: 50 } },
    });
    secrets.admin = t.adminToken;
    secrets.reader = t.readToken;
  });
  afterAll(() => t?.stop());

  const lines = () => raw.map((line) => JSON.parse(line) as LogLine);
  const eventLine = (event: string, match: Partial<LogLine> = {}) =>
    lines().find(
      (line) =>
        line.event === event &&
        Object.entries(match).every(([key, value]) => JSON.stringify(line[key]) === JSON.stringify(value)),
    );

  it(
    'names enrollment, tokens, keys, a failed rollout and revocations, with actor and outcome, and no secret',
    { timeout: 120_000 },
    async () => {
      // An operator token made through the API does the rest: its name, not its secret, is the actor.
      const created = await admin('POST', '/api/v1/tokens', { name: 'rollout-bot', scope: 'admin' });
      expect(created.status).toBe(201);
      const bot = created.body as { id: string; token: string };
      secrets.bot = bot.token;
      const operator = { kind: 'operator', name: 'rollout-bot', tokenId: bot.id };
      const asBot = (method: string, path: string, body?: unknown) =>
        t.call(method, path, { token: bot.token, ...(body !== undefined && { body }) });

      const key = await asBot('POST', '/api/v1/access-keys', { name: 'sdk', scope: 'admin' });
      expect(key.status).toBe(201);
      secrets.accessKey = (key.body as { secretAccessKey: string }).secretAccessKey;
      const accessKeyId = (key.body as { accessKeyId: string }).accessKeyId;

      expect(
        (
          await asBot('POST', '/api/v1/fleets', {
            name: 'fa',
            outputConfig: { s3OutputLocation: 's3://c/fa' },
          })
        ).status,
      ).toBe(201);
      expect(
        (await asBot('POST', '/api/v1/fleets/fa/devices', { devices: [{ name: 'cam-1' }] })).status,
      ).toBe(201);
      const enrollment = await asBot('POST', '/api/v1/devices/cam-1/enrollment-tokens', {});
      expect(enrollment.status).toBe(201);
      secrets.enrollment = (enrollment.body as { token: string }).token;
      const deviceKeys = deviceKey();
      secrets.deviceKey = deviceKeys.privateKeyPem;
      const enrolled = await t.call('POST', '/api/v1/enroll', {
        token: secrets.enrollment,
        body: { csr: createCsr(deviceKeys, 'cam-1') },
      });
      expect(enrolled.status).toBe(201);
      const tls = {
        ca: enrolled.body.caCertificatePem as string,
        cert: enrolled.body.certificatePem as string,
        key: deviceKeys.privateKeyPem,
      };
      // The used token again: refused, and said so without the token.
      expect(
        (
          await t.call('POST', '/api/v1/enroll', {
            token: secrets.enrollment,
            body: { csr: createCsr(deviceKey(), 'cam-1') },
          })
        ).status,
      ).toBe(401);

      // A rollout that fails: the device's FAIL comes in a heartbeat.
      expect(
        (
          await asBot('POST', '/api/v1/deployment-plans', {
            name: 'p1',
            fleetName: 'fa',
            modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
            stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-1'] } }],
          })
        ).status,
      ).toBe(201);
      expect((await asBot('POST', '/api/v1/deployment-plans/p1/stages/s1/start')).status).toBe(200);
      const identity = { DeviceName: 'cam-1', DeviceFleetName: 'fa' };
      // Two attempts (the plan's one retry), each failing.
      for (const reason of ['disk full', 'disk still full']) {
        expect(
          (
            await deviceCall(t.server.deviceUrl, tls, 'POST', '/api/v1/device/deployments', {
              body: identity,
            })
          ).status,
        ).toBe(200);
        const heartbeat = await deviceCall(t.server.deviceUrl, tls, 'POST', '/api/v1/device/heartbeat', {
          body: { AgentVersion: '1.0', ...identity, DeploymentResult: undeployResult('p1', 'FAIL', reason) },
        });
        expect(heartbeat.status).toBe(200);
        await vi.waitFor(
          () =>
            expect(
              lines().find((l) => l.event?.startsWith('device_') && l.msg.includes(reason)),
            ).toBeDefined(),
          APPLIED,
        );
      }
      await vi.waitFor(() => expect(eventLine('stage_failed')).toBeDefined(), APPLIED);

      // A rollout that succeeds and advances on its own: the device's SUCCESS starts the next stage.
      await register('fa', ['cam-3']);
      expect(
        (
          await asBot('POST', '/api/v1/deployment-plans', {
            name: 'p2',
            fleetName: 'fa',
            modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
            options: { autoAdvance: { successPercent: 100 } },
            stages: [
              { name: 'canary', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-1'] } },
              { name: 'rest', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-3'] } },
            ],
          })
        ).status,
      ).toBe(201);
      expect((await asBot('POST', '/api/v1/deployment-plans/p2/stages/canary/start')).status).toBe(200);
      expect(
        (await deviceCall(t.server.deviceUrl, tls, 'POST', '/api/v1/device/deployments', { body: identity }))
          .status,
      ).toBe(200);
      expect(
        (
          await deviceCall(t.server.deviceUrl, tls, 'POST', '/api/v1/device/deployments/result', {
            body: { ...identity, DeploymentResult: undeployResult('p2', 'SUCCESS') },
          })
        ).status,
      ).toBe(200);
      expect((await asBot('POST', '/api/v1/deployment-plans/p2/stages/rest/stop')).status).toBe(200);

      // A device that takes a deployment and goes quiet: the sweep (a replica whose clock is past the plan's
      // timeout) fails it, on no one's request.
      expect(
        (
          await asBot('POST', '/api/v1/deployment-plans', {
            name: 'p3',
            fleetName: 'fa',
            modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
            options: { maxRetries: 0, deviceTimeoutSeconds: 10 },
            stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-1'] } }],
          })
        ).status,
      ).toBe(201);
      expect((await asBot('POST', '/api/v1/deployment-plans/p3/stages/s1/start')).status).toBe(200);
      expect(
        (await deviceCall(t.server.deviceUrl, tls, 'POST', '/api/v1/device/deployments', { body: identity }))
          .status,
      ).toBe(200);
      const later = new DeploymentService(t.server.database.db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
        events: new FleetEventLog(t.server.logger),
        now: () => Date.now() + 60_000,
      });
      expect(await later.sweep()).toEqual({ timedOut: 1, unreadablePlans: [] });

      // Revocations, then the revoked certificate presented again.
      expect((await asBot('POST', '/api/v1/devices/cam-1/certificates/revoke', {})).status).toBe(200);
      const refused = await deviceCall(t.server.deviceUrl, tls, 'POST', '/api/v1/device/heartbeat', {
        body: { AgentVersion: '1.0', ...identity },
      });
      expect(refused.status).toBeGreaterThanOrEqual(400);
      // Through the SageMaker API, the access key that signed the call is the actor.
      const sdk = { accessKeyId, secretAccessKey: secrets.accessKey! };
      for (const [operation, input] of [
        ['RegisterDevices', { DeviceFleetName: 'fa', Devices: [{ DeviceName: 'cam-4' }] }],
        ['DeregisterDevices', { DeviceFleetName: 'fa', DeviceNames: ['cam-4'] }],
      ] as const)
        expect((await sagemakerCall(t.url, sdk, operation, input)).status, operation).toBe(200);
      expect((await asBot('DELETE', `/api/v1/access-keys/${accessKeyId}`)).status).toBe(204);
      expect((await admin('DELETE', `/api/v1/tokens/${bot.id}`)).status).toBe(204);
      await register('fa', ['cam-2']);
      expect((await admin('DELETE', '/api/v1/devices/cam-2')).status).toBe(204);

      const admins = { kind: 'operator', name: 'test-admin' };
      const expected: [string, number, Partial<LogLine>][] = [
        ['api_token_created', INFO, { actor: admins, outcome: 'created', tokenId: bot.id }],
        ['access_key_created', INFO, { actor: operator, outcome: 'created', accessKeyId }],
        ['device_registered', INFO, { actor: operator, device: 'cam-1', fleet: 'fa' }],
        ['enrollment_token_created', INFO, { actor: operator, device: 'cam-1' }],
        ['device_enrolled', INFO, { actor: { kind: 'enrollment-token', device: 'cam-1' }, device: 'cam-1' }],
        ['device_enrollment_refused', INFO, { outcome: 'refused', reason: 'EnrollmentTokenUsed' }],
        ['plan_created', INFO, { actor: operator, plan: 'p1', fleet: 'fa' }],
        ['stage_started', INFO, { actor: operator, plan: 'p1', stage: 's1' }],
        ['device_retried', WARN, { actor: { kind: 'device', device: 'cam-1' }, outcome: 'retrying' }],
        ['device_failed', WARN, { actor: { kind: 'device', device: 'cam-1' }, plan: 'p1', device: 'cam-1' }],
        ['device_rolled_back', WARN, { actor: { kind: 'device', device: 'cam-1' }, device: 'cam-1' }],
        ['stage_failed', WARN, { plan: 'p1', stage: 's1', outcome: 'failed' }],
        ['stage_deployed', INFO, { actor: { kind: 'device', device: 'cam-1' }, plan: 'p2', stage: 'canary' }],
        ['stage_advanced', INFO, { actor: { kind: 'device', device: 'cam-1' }, plan: 'p2', stage: 'rest' }],
        // Its device had not taken the deployment: the stage stops at once.
        ['stage_stop_requested', INFO, { actor: operator, plan: 'p2', stage: 'rest', outcome: 'stopped' }],
        ['stage_stopped', INFO, { actor: operator, plan: 'p2', stage: 'rest' }],
        ['device_timed_out', WARN, { actor: { kind: 'server' }, plan: 'p3', device: 'cam-1' }],
        ['stage_failed', WARN, { actor: { kind: 'server' }, plan: 'p3', stage: 's1' }],
        ['certificate_revoked', INFO, { actor: operator, device: 'cam-1', count: 1 }],
        [
          'revoked_certificate_used',
          WARN,
          { actor: { kind: 'device', device: 'cam-1' }, outcome: 'refused' },
        ],
        ['device_registered', INFO, { actor: { kind: 'access-key', accessKeyId }, device: 'cam-4' }],
        ['device_deregistered', INFO, { actor: { kind: 'access-key', accessKeyId }, device: 'cam-4' }],
        ['access_key_revoked', INFO, { actor: operator, accessKeyId }],
        ['api_token_revoked', INFO, { actor: admins, tokenId: bot.id }],
        ['device_registered', INFO, { actor: admins, device: 'cam-2' }],
        ['device_deregistered', INFO, { actor: admins, device: 'cam-2', outcome: 'deregistered' }],
      ];
      for (const [event, level, match] of expected) {
        const { actor, ...fields } = match;
        const line = lines().find(
          (l) =>
            l.event === event &&
            Object.entries(fields).every(([k, v]) => l[k] === v) &&
            (actor === undefined || Object.entries(actor).every(([k, v]) => l.actor?.[k] === v)),
        );
        expect(line, `${event} ${JSON.stringify(match)} in:\n${raw.join('\n')}`).toBeDefined();
        expect(line!.level, event).toBe(level);
      }
      // The device's failure says why, as the device put it.
      expect(eventLine('device_failed')!.msg).toContain('disk still full');

      const log = raw.join('\n');
      for (const [name, secret] of Object.entries(secrets)) expect(log, name).not.toContain(secret);
      // Nor any other operator or enrollment token, or a private key.
      expect(log).not.toMatch(/\bef[oe]_/);
      expect(log).not.toContain('PRIVATE KEY');
    },
  );

  it('writes one line a minute for what a client can repeat: unknown enrollment tokens, one device renewing', async () => {
    const refusedBefore = lines().filter(
      (l) => l.event === 'device_enrollment_refused' && l.reason === 'EnrollmentTokenInvalid',
    ).length;
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const answer = await t.call('POST', '/api/v1/enroll', {
        token: `efe_not-a-token-${attempt}`,
        body: { csr: createCsr(deviceKey(), 'anyone') },
      });
      expect(answer.status).toBe(401);
    }
    const refused = lines().filter(
      (l) => l.event === 'device_enrollment_refused' && l.reason === 'EnrollmentTokenInvalid',
    );
    expect(refused.length - refusedBefore).toBe(1);

    await register('fa', ['cam-r']); // the fleet the test above made
    const device = await enrollDevice(t, 'cam-r');
    let tls = device.tls;
    for (let renewal = 0; renewal < 3; renewal += 1) {
      const key = deviceKey();
      const answer = await deviceCall(t.server.deviceUrl, tls, 'POST', '/api/v1/device/certificate', {
        body: { csr: createCsr(key, 'cam-r') },
      });
      expect(answer.status).toBe(201);
      tls = { ...tls, cert: answer.body.certificatePem as string, key: key.privateKeyPem };
    }
    expect(lines().filter((l) => l.event === 'certificate_renewed' && l.device === 'cam-r')).toHaveLength(1);
  });
  it('names fleet, device, tag and model changes, packaging jobs and console sign-in and sign-out, with no secret', async () => {
    const admins = { kind: 'operator', name: 'test-admin' };
    const before = raw.length;
    const linesSince = () => raw.slice(before).map((line) => JSON.parse(line) as LogLine);

    expect(
      (await admin('POST', '/api/v1/fleets', { name: 'fb', outputConfig: { s3OutputLocation: 's3://c/fb' } }))
        .status,
    ).toBe(201);
    expect(
      (
        await admin('PATCH', '/api/v1/fleets/fb', {
          description: 'the yard',
          outputConfig: { s3OutputLocation: 's3://c/fb2' },
        })
      ).status,
    ).toBe(200);
    await register('fb', ['cam-9']);
    expect(
      (
        await admin('PATCH', '/api/v1/devices/cam-9', {
          description: 'gate',
          tags: [{ key: 'site', value: 'north' }],
        })
      ).status,
    ).toBe(200);
    // Through the SageMaker API: the access key is the actor of a tag change.
    const key = await admin('POST', '/api/v1/access-keys', { name: 'tagger', scope: 'admin' });
    expect(key.status).toBe(201);
    const { accessKeyId, secretAccessKey } = key.body as { accessKeyId: string; secretAccessKey: string };
    secrets.tagger = secretAccessKey;
    const arns = await sagemakerCall(t.url, { accessKeyId, secretAccessKey }, 'DescribeDevice', {
      DeviceName: 'cam-9',
      DeviceFleetName: 'fb',
    });
    expect(arns.status).toBe(200);
    const deviceArn = (arns.body as { DeviceArn: string }).DeviceArn;
    expect(
      (
        await sagemakerCall(t.url, { accessKeyId, secretAccessKey }, 'AddTags', {
          ResourceArn: deviceArn,
          Tags: [{ Key: 'rack', Value: '7' }],
        })
      ).status,
    ).toBe(200);
    expect((await admin('DELETE', '/api/v1/devices/cam-9')).status).toBe(204);
    expect((await admin('DELETE', '/api/v1/fleets/fb')).status).toBe(204);

    // A model version uploaded, packaged (completed), packaged again without its file (failed), deleted.
    const work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-audit-'));
    try {
      const onnx = await readFile(await writeTestModel('tiny', path.join(work, 'tiny')));
      for (const version of ['1', '2']) {
        const uploaded = await fetch(`${t.url}/api/v1/models/tiny/versions/${version}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/octet-stream' },
          body: onnx,
        });
        expect(uploaded.status).toBe(201);
      }
    } finally {
      await rm(work, { recursive: true, force: true });
    }
    const waitForJob = (name: string) =>
      vi.waitFor(
        async () => {
          const job = await t.call('GET', `/api/v1/packaging-jobs/${name}`, { token: t.readToken });
          expect(['COMPLETED', 'FAILED']).toContain(job.body.status);
          return job.body.status as string;
        },
        { timeout: 30_000, interval: 50 },
      );
    expect(
      (
        await admin('POST', '/api/v1/packaging-jobs', {
          name: 'pack-1',
          modelName: 'tiny',
          modelVersion: '1',
        })
      ).status,
    ).toBe(201);
    expect(await waitForJob('pack-1')).toBe('COMPLETED');
    const gone = await t.server.services.models.getVersion('tiny', '2');
    await t.server.blobs.delete(gone.blobKey);
    expect(
      (
        await admin('POST', '/api/v1/packaging-jobs', {
          name: 'pack-2',
          modelName: 'tiny',
          modelVersion: '2',
        })
      ).status,
    ).toBe(201);
    expect(await waitForJob('pack-2')).toBe('FAILED');
    expect((await admin('DELETE', '/api/v1/models/tiny/versions/2')).status).toBe(204);

    // Console sign-in and sign-out, by the API token's name and id; the cookie and CSRF token appear nowhere.
    const signedIn = await t.call('POST', '/api/v1/console/session', { token: t.readToken });
    expect(signedIn.status).toBe(201);
    const cookie = (signedIn.headers.get('set-cookie') ?? '').split(';')[0]!;
    secrets.session = cookie.split('=')[1]!;
    secrets.csrf = signedIn.body.csrfToken as string;
    const readerTokenId = (signedIn.body.operator as { tokenId: string }).tokenId;
    const signOut = () =>
      t.call('DELETE', '/api/v1/console/session', { headers: { cookie, 'x-csrf-token': secrets.csrf! } });
    expect((await signOut()).status).toBe(204);
    // The same cookie again (another tab): nothing ended, nothing logged.
    expect((await signOut()).status).toBe(204);

    const reader = { kind: 'operator', tokenId: readerTokenId };
    const expected: [string, number, Partial<LogLine>][] = [
      [
        'fleet_created',
        INFO,
        { actor: admins, fleet: 'fb', outputLocation: 's3://c/fb', outcome: 'created' },
      ],
      [
        'fleet_updated',
        INFO,
        { actor: admins, fleet: 'fb', changed: 'description,outputConfig', outputLocation: 's3://c/fb2' },
      ],
      [
        'device_updated',
        INFO,
        { actor: admins, device: 'cam-9', fleet: 'fb', changed: 'description,tags', tagKeys: 'site' },
      ],
      [
        'device_updated',
        INFO,
        {
          actor: { kind: 'access-key', accessKeyId },
          device: 'cam-9',
          changed: 'tags',
          tagKeys: 'site,rack',
        },
      ],
      ['fleet_deleted', INFO, { actor: admins, fleet: 'fb', outcome: 'deleted' }],
      ['model_version_uploaded', INFO, { actor: admins, model: 'tiny', version: '1', kind: 'onnx' }],
      ['packaging_job_created', INFO, { actor: admins, packagingJob: 'pack-1', model: 'tiny', version: '1' }],
      [
        'packaging_job_completed',
        INFO,
        { actor: { kind: 'server', worker: 'packaging' }, packagingJob: 'pack-1' },
      ],
      [
        'packaging_job_failed',
        WARN,
        { actor: { kind: 'server', worker: 'packaging' }, packagingJob: 'pack-2', outcome: 'failed' },
      ],
      ['model_version_deleted', INFO, { actor: admins, model: 'tiny', version: '2' }],
      ['console_signed_in', INFO, { actor: reader, tokenId: readerTokenId, scope: 'read-only' }],
      ['console_signed_out', INFO, { actor: reader, tokenId: readerTokenId, outcome: 'signed-out' }],
    ];
    for (const [event, level, match] of expected) {
      const { actor, ...fields } = match;
      const line = linesSince().find(
        (l) =>
          l.event === event &&
          Object.entries(fields).every(([k, v]) => l[k] === v) &&
          (actor === undefined || Object.entries(actor).every(([k, v]) => l.actor?.[k] === v)),
      );
      expect(line, `${event} ${JSON.stringify(match)} in:\n${raw.slice(before).join('\n')}`).toBeDefined();
      expect(line!.level, event).toBe(level);
    }
    expect(linesSince().filter((l) => l.event === 'console_signed_out')).toHaveLength(1);
    expect(linesSince().find((l) => l.event === 'packaging_job_failed')!.msg).toMatch(
      /packaging job pack-2 failed: .*does not exist/,
    );
    // One line for each job's end, not the worker's besides the fleet event's.
    const ofJob = (job: string) => linesSince().filter((l) => l.packagingJob === job && l.level >= INFO);
    expect(
      ofJob('pack-2')
        .filter((l) => /fail/.test(l.msg))
        .map((l) => l.event),
    ).toEqual(['packaging_job_failed']);
    expect(
      ofJob('pack-1')
        .filter((l) => /complete/.test(l.msg))
        .map((l) => l.event),
    ).toEqual(['packaging_job_completed']);
    const log = raw.join('\n');
    for (const [name, secret] of Object.entries(secrets)) expect(log, name).not.toContain(secret);
  });
  it('names compilation jobs and tag changes of plans and compilation jobs, with the SageMaker caller as actor', async () => {
    const before = raw.length;
    const linesSince = () => raw.slice(before).map((line) => JSON.parse(line) as LogLine);
    const key = await admin('POST', '/api/v1/access-keys', { name: 'neo', scope: 'admin' });
    expect(key.status).toBe(201);
    const sdk = key.body as { accessKeyId: string; secretAccessKey: string };
    secrets.neo = sdk.secretAccessKey;
    const call = async (operation: string, input: Record<string, unknown>) => {
      const answer = await sagemakerCall(t.url, sdk, operation, input);
      expect(answer.status, `${operation}: ${JSON.stringify(answer.body)}`).toBe(200);
      return answer.body as Record<string, unknown>;
    };

    // No such object: the import fails, but the job was created (and its creation logged) first.
    const created = await call('CreateCompilationJob', {
      CompilationJobName: 'neo-1',
      RoleArn: 'arn:aws:iam::123456789012:role/neo',
      InputConfig: { S3Uri: 's3://neo/models/absent.onnx', Framework: 'ONNX' },
      OutputConfig: { S3OutputLocation: 's3://neo/compiled' },
      StoppingCondition: {},
    });
    await t.server.services.compilationJobs.settle();
    await call('AddTags', {
      ResourceArn: created.CompilationJobArn,
      Tags: [{ Key: 'team', Value: 'vision' }],
    });

    expect(
      (await admin('POST', '/api/v1/fleets', { name: 'fp', outputConfig: { s3OutputLocation: 's3://c/fp' } }))
        .status,
    ).toBe(201);
    await register('fp', ['cam-p']);
    expect(
      (
        await admin('POST', '/api/v1/deployment-plans', {
          name: 'tagged',
          fleetName: 'fp',
          modelConfigs: [{ modelHandle: 'h', state: 'UNDEPLOY' }],
          stages: [{ name: 's1', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-p'] } }],
        })
      ).status,
    ).toBe(201);
    const plan = await call('DescribeEdgeDeploymentPlan', { EdgeDeploymentPlanName: 'tagged' });
    await call('AddTags', {
      ResourceArn: plan.EdgeDeploymentPlanArn,
      Tags: [
        { Key: 'env', Value: 'prod' },
        { Key: 'owner', Value: 'ops' },
      ],
    });
    await call('DeleteTags', { ResourceArn: plan.EdgeDeploymentPlanArn, TagKeys: ['env'] });

    const caller = { kind: 'access-key', accessKeyId: sdk.accessKeyId, name: 'neo' };
    const of = (event: string) => linesSince().filter((line) => line.event === event);
    expect(of('compilation_job_created')).toEqual([
      expect.objectContaining({
        level: INFO,
        log: 'fleet-events',
        outcome: 'created',
        actor: caller,
        compilationJob: 'neo-1',
        input: 's3://neo/models/absent.onnx',
        model: 'compilation-neo-1',
      }),
    ]);
    expect(of('compilation_job_updated')).toEqual([
      expect.objectContaining({ actor: caller, compilationJob: 'neo-1', changed: 'tags', tagKeys: 'team' }),
    ]);
    expect(
      of('plan_updated').map(({ actor, plan, fleet, changed, tagKeys, outcome }) => ({
        actor,
        plan,
        fleet,
        changed,
        tagKeys,
        outcome,
      })),
    ).toEqual([
      {
        actor: caller,
        plan: 'tagged',
        fleet: 'fp',
        changed: 'tags',
        tagKeys: 'env,owner',
        outcome: 'updated',
      },
      { actor: caller, plan: 'tagged', fleet: 'fp', changed: 'tags', tagKeys: 'owner', outcome: 'updated' },
    ]);
    // Tag values are not logged.
    expect(raw.slice(before).join('\n')).not.toMatch(/"(prod|ops|vision)"|\b(prod|vision)\b/);
    const log = raw.join('\n');
    for (const [name, secret] of Object.entries(secrets)) expect(log, name).not.toContain(secret);
  });

  it(
    'edgefleet-server init and token create/revoke log the token by name, id and scope on stderr, never the token',
    { timeout: 90_000 },
    async () => {
      const cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-audit-cli-'));
      try {
        const eventsOf = (stderr: string) =>
          stderr
            .split('\n')
            .filter((line) => line.startsWith('{'))
            .map((line) => JSON.parse(line) as LogLine)
            .filter((line) => line.log === 'fleet-events');
        const init = await runServerCli(['init'], cwd);
        expect(init.code, init.stderr).toBe(0);
        const initialAdmin = init.stdout.trim();
        expect(initialAdmin).toMatch(/^efo_/);
        const created = await runServerCli(['token', 'create', '--name', 'ci', '--scope', 'admin'], cwd);
        expect(created.code, created.stderr).toBe(0);
        const ciToken = created.stdout.trim();
        expect(ciToken).toMatch(/^efo_/);
        // The token alone on stdout, as scripts read it.
        expect(created.stdout).toBe(`${ciToken}\n`);

        const [initLine] = eventsOf(init.stderr);
        expect(initLine).toMatchObject({
          level: INFO,
          event: 'api_token_created',
          outcome: 'created',
          actor: { kind: 'local' },
          tokenName: 'initial-admin',
          scope: 'admin',
          tokenId: expect.stringMatching(/^[0-9a-f]{16}$/),
        });
        const [createdLine] = eventsOf(created.stderr);
        expect(createdLine).toMatchObject({
          event: 'api_token_created',
          actor: { kind: 'local' },
          tokenName: 'ci',
          scope: 'admin',
        });
        const revoked = await runServerCli(['token', 'revoke', createdLine!.tokenId as string], cwd);
        expect(revoked.code, revoked.stderr).toBe(0);
        expect(eventsOf(revoked.stderr)).toEqual([
          expect.objectContaining({ event: 'api_token_revoked', tokenId: createdLine!.tokenId }),
        ]);

        const everything = [init, created, revoked].map((r) => r.stderr).join('\n');
        for (const secret of [initialAdmin, ciToken]) expect(everything).not.toContain(secret);
        expect(everything).not.toMatch(/\befo_/);
      } finally {
        await rm(cwd, { recursive: true, force: true });
      }
    },
  );
});
