/**
 * What an operator's mistake in a plan's stages leads to (s10 W1, C3): a SELECTION naming devices that are
 * not in the plan's fleet is refused; a stage that deployed no device never auto-advances; the next stage
 * after a FAILED one starts only when forced.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStage } from '../../src/deployments/stage-progress.js';
import { adminCalls, undeployResult } from '../support/deployment-calls.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('stage checks on $engine', (fixture) => {
  let t: TestServer;

  const { admin, register } = adminCalls(() => t);
  const plan = async (name: string) =>
    (await t.call('GET', `/api/v1/deployment-plans/${name}`, { token: t.readToken })).body as {
      stages: { name: string; status: string; successCount: number; failedCount: number }[];
    };
  const events = async (name: string) =>
    (
      (await t.call('GET', `/api/v1/deployment-plans/${name}/events`, { token: t.readToken })).body as {
        events: { kind: string; stageName?: string; deviceName?: string; message: string }[];
      }
    ).events;
  const selection = (name: string, deviceNames: string[]) => ({
    name,
    deviceSelection: { subsetType: 'SELECTION', deviceNames },
  });
  const report = async (
    planName: string,
    deviceName: string,
    status: 'SUCCESS' | 'FAIL',
    statusMessage?: string,
  ) => {
    await t.server.services.deployments.recordResults([
      {
        deviceName,
        fleetName: 'fa',
        result: undeployResult(planName, status, statusMessage),
        receivedAt: Date.now(),
      },
    ]);
  };
  const createPlan = (name: string, stages: unknown[], options: Record<string, unknown> = {}) =>
    admin('POST', '/api/v1/deployment-plans', {
      name,
      fleetName: 'fa',
      modelConfigs: [{ modelHandle: `h-${name}`, state: 'UNDEPLOY' }],
      stages,
      options,
    });

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    for (const fleet of ['fa', 'fb']) {
      await admin('POST', '/api/v1/fleets', {
        name: fleet,
        outputConfig: { s3OutputLocation: `s3://c/${fleet}` },
      });
    }
    await register('fa', ['cam-01', 'cam-02', 'cam-03']);
    await register('fb', ['b-01']);
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    'refuses a SELECTION naming devices not registered in the fleet, at create and when stages are added',
    async () => {
      const created = await createPlan('typo', [
        selection('canary', ['cam-0l', 'cam-01']),
        selection('other', ['b-01']),
        { name: 'rest', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } },
      ]);
      expect(created.status).toBe(400);
      expect(created.body.message).toBe(
        'device(s) not registered in fleet fa: stage canary names cam-0l; stage other names b-01 (in fleet ' +
          "fb); a SELECTION stage deploys only to devices of the plan's fleet: register them in fa first, or " +
          'fix the names',
      );
      expect(created.body.details).toEqual({
        fleet: 'fa',
        unknownDevices: { canary: ['cam-0l'], other: ['b-01'] },
      });
      // Nothing was created: the name is free and the handle is not held.
      expect((await t.call('GET', '/api/v1/deployment-plans/typo', { token: t.readToken })).status).toBe(404);

      expect((await createPlan('typo', [selection('canary', ['cam-01'])])).status).toBe(201);
      const added = await admin('POST', '/api/v1/deployment-plans/typo/stages', {
        stages: [selection('rest', ['cam-02', 'cam-99'])],
      });
      expect(added.status).toBe(400);
      expect(added.body.message).toMatch(/^device\(s\) not registered in fleet fa: stage rest names cam-99;/);
      expect((await plan('typo')).stages.map((s) => s.name)).toEqual(['canary']);
      expect((await admin('DELETE', '/api/v1/deployment-plans/typo')).status).toBe(204);
    },
  );

  it.skipIf(!fixture.available)(
    'refuses to start a stage naming a device deregistered since, and auto-advance does not start it',
    async () => {
      await register('fa', ['gone-1', 'gone-2']);
      expect((await createPlan('dereg', [selection('s1', ['gone-1'])])).status).toBe(201);
      expect((await admin('DELETE', '/api/v1/devices/gone-1')).status).toBe(204);
      const started = await admin('POST', '/api/v1/deployment-plans/dereg/stages/s1/start');
      expect(started.status).toBe(409);
      expect(started.body.message).toBe(
        'stage s1 of plan dereg names device(s) no longer registered in fleet fa: gone-1; delete stage s1 ' +
          'and add it again with devices that exist',
      );
      expect((await plan('dereg')).stages[0]).toMatchObject({ status: 'READYTODEPLOY' });

      // A stage that already started is told so, not to delete it (which is refused for a started stage); a
      // middle stage is told that adding it again puts it last, and which stages to add again after it.
      await register('fa', ['gone-3', 'gone-4']);
      expect(
        (
          await createPlan('redo', [
            selection('s1', ['gone-3']),
            selection('s2', ['gone-4']),
            { name: 's3', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } },
          ])
        ).status,
      ).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/redo/stages/s1/start')).status).toBe(200);
      expect((await admin('DELETE', '/api/v1/devices/gone-3')).status).toBe(204);
      expect((await admin('DELETE', '/api/v1/devices/gone-4')).status).toBe(204);
      const again = await admin('POST', '/api/v1/deployment-plans/redo/stages/s1/start');
      expect(again.status).toBe(409);
      expect(again.body.message).toMatch(
        /^stage s1 of plan redo is [A-Z]+; only a READYTODEPLOY stage can start$/,
      );
      const middle = await admin('POST', '/api/v1/deployment-plans/redo/stages/s2/start');
      expect(middle.status).toBe(409);
      expect(middle.body.message).toBe(
        'stage s2 of plan redo names device(s) no longer registered in fleet fa: gone-4; a stage added again ' +
          'goes after the last one, so to keep the order delete stages s2, s3 and add them again in that ' +
          'order, s2 with devices that exist',
      );
      expect((await plan('redo')).stages.map((s) => s.name)).toEqual(['s1', 's2', 's3']);

      // Auto-advance: s1 deploys cam-03, then s2's gone-2 has been deregistered: s2 waits, and one event says why.
      expect(
        (
          await createPlan('dereg-auto', [selection('s1', ['cam-03']), selection('s2', ['gone-2'])], {
            autoAdvance: { successPercent: 100 },
          })
        ).status,
      ).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/dereg-auto/stages/s1/start')).status).toBe(200);
      expect((await admin('DELETE', '/api/v1/devices/gone-2')).status).toBe(204);
      await report('dereg-auto', 'cam-03', 'SUCCESS');
      // Another, different report from the stage's device settles the stage again: still held, one event.
      await report('dereg-auto', 'cam-03', 'SUCCESS', 'still serving');
      await t.server.services.deployments.sweep();
      expect((await plan('dereg-auto')).stages.map((s) => s.status)).toEqual(['DEPLOYED', 'READYTODEPLOY']);
      expect((await events('dereg-auto')).filter((e) => e.kind === 'AutoAdvanceHeld')).toMatchObject([
        {
          stageName: 's1',
          message:
            'auto-advance does not start stage s2: it names device(s) no longer registered in fleet fa: gone-2',
        },
      ]);
    },
  );

  it.skipIf(!fixture.available)(
    'does not auto-advance from a stage that deployed no device, and says why',
    async () => {
      const created = await createPlan(
        'empty-canary',
        [
          { name: 'canary', deviceSelection: { subsetType: 'NAMECONTAINS', deviceNameContains: 'nomatch' } },
          { name: 'rest', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } },
        ],
        { autoAdvance: { successPercent: 100 } },
      );
      expect(created.status).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/empty-canary/stages/canary/start')).status).toBe(
        200,
      );
      expect((await plan('empty-canary')).stages).toMatchObject([
        { name: 'canary', status: 'DEPLOYED', successCount: 0 },
        { name: 'rest', status: 'READYTODEPLOY' },
      ]);
      expect((await events('empty-canary')).map((e) => `${e.kind} ${e.stageName ?? ''}`.trim())).toEqual([
        'PlanCreated',
        'StageStarted canary',
        'StageDeployed canary',
        'AutoAdvanceHeld canary',
      ]);
      expect((await events('empty-canary'))[3]!.message).toBe(
        'auto-advance does not start stage rest: stage canary deployed no device (it selected none); start ' +
          'the next stage by hand',
      );
      // An operator may still start it.
      expect((await admin('POST', '/api/v1/deployment-plans/empty-canary/stages/rest/start')).status).toBe(
        200,
      );
      expect((await plan('empty-canary')).stages[1]).toMatchObject({ status: 'INPROGRESS' });
    },
  );
  it.skipIf(!fixture.available)(
    'refuses to start a stage after an earlier one FAILED, naming it, unless forced',
    async () => {
      expect(
        (
          await createPlan('after-fail', [selection('canary', ['cam-01']), selection('rest', ['cam-02'])], {
            maxRetries: 0,
          })
        ).status,
      ).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/after-fail/stages/canary/start')).status).toBe(
        200,
      );
      // The device takes the deployment, then reports its failure.
      await t.server.services.deployments.deploymentsFor({ deviceName: 'cam-01', fleetName: 'fa' });
      await report('after-fail', 'cam-01', 'FAIL');
      expect((await plan('after-fail')).stages[0]).toMatchObject({ status: 'FAILED', failedCount: 1 });

      for (const body of [undefined, {}, { force: false }]) {
        const refused = await admin('POST', '/api/v1/deployment-plans/after-fail/stages/rest/start', body);
        expect(refused.status).toBe(409);
        expect(refused.body.message).toBe(
          'stage canary of plan after-fail FAILED (1 of 1 device(s) failed); stage rest comes after it and ' +
            'was not started. Look at why it failed (edgefleet deployment devices after-fail canary); to ' +
            'start rest anyway, force it (force: true, edgefleet deployment start-stage --force)',
        );
      }
      expect((await plan('after-fail')).stages[1]).toMatchObject({ status: 'READYTODEPLOY' });
      const bad = await admin('POST', '/api/v1/deployment-plans/after-fail/stages/rest/start', {
        force: 'yes',
      });
      expect(bad.status).toBe(400);

      const forced = await admin('POST', '/api/v1/deployment-plans/after-fail/stages/rest/start', {
        force: true,
      });
      expect(forced.status).toBe(200);
      expect(forced.body.stages[1]).toMatchObject({ status: 'INPROGRESS', pendingCount: 1 });
      expect((await events('after-fail')).filter((e) => e.kind === 'StageStarted').at(-1)).toMatchObject({
        stageName: 'rest',
        message:
          'stage started (started by an operator, forced although stage(s) canary FAILED); it targets 1 device(s)',
      });
    },
  );

  it.skipIf(!fixture.available)(
    'a plan refused for a held handle names the holder plan stages that have not ended (one stopped, the next never run)',
    async () => {
      const holder = (name: string) =>
        admin('POST', '/api/v1/deployment-plans', {
          name,
          fleetName: 'fa',
          modelConfigs: [{ modelHandle: 'h-held', state: 'UNDEPLOY' }],
          stages: [selection('canary', ['cam-01']), selection('rest', ['cam-02'])],
        });
      expect((await holder('held-1')).status).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/held-1/stages/canary/start')).status).toBe(200);
      expect((await admin('POST', '/api/v1/deployment-plans/held-1/stages/canary/stop')).status).toBe(200);
      const refused = await holder('held-2');
      expect(refused.status).toBe(409);
      expect(refused.body.message).toBe(
        'model handle h-held is being rolled out to fleet fa by plan held-1 (its stage rest READYTODEPLOY has ' +
          'not ended); finish, stop or delete that plan first (one unfinished plan per model handle and fleet)',
      );
    },
  );

  // Review H2: an auto-advance whose transaction reads the next stage after another one (a report to another
  // replica, the sweep) committed its start, or after a device it names was deregistered, goes on quietly: a
  // 409 there would roll back the reporting device's result. An operator's start is still refused.
  it.skipIf(!fixture.available)(
    'an auto-advance finding the next stage started, or naming a deregistered device, returns false; an operator gets 409',
    async () => {
      await register('fa', ['gone-01']);
      const created = await createPlan(
        'h2',
        [selection('s1', ['cam-01']), selection('s2', ['cam-02']), selection('s3', ['gone-01'])],
        { autoAdvance: { successPercent: 50 } },
      );
      expect(created.status).toBe(201);
      expect((await admin('POST', '/api/v1/deployment-plans/h2/stages/s1/start')).status).toBe(200);
      expect((await admin('POST', '/api/v1/deployment-plans/h2/stages/s2/start')).status).toBe(200);
      expect((await admin('DELETE', '/api/v1/devices/gone-01')).status).toBe(204);
      const start = (stage: string, autoAdvance: boolean) =>
        t.server.database.db.transaction().execute((trx) =>
          startStage(trx, 'h2', stage, Date.now(), 'auto-advance', [], { autoAdvance }).then(
            (started) => `returned ${started}`,
            (error: unknown) => `threw ${(error as Error).message}`,
          ),
        );
      expect(await start('s2', true)).toBe('returned false');
      expect(await start('s2', false)).toBe(
        'threw stage s2 of plan h2 is INPROGRESS; only a READYTODEPLOY stage can start',
      );
      expect(await start('s3', true)).toBe('returned false');
      expect(await start('s3', false)).toMatch(
        /^threw stage s3 of plan h2 names device\(s\) no longer registered in fleet fa: gone-01;/,
      );
      expect(await start('s9', true)).toBe('returned false');
      expect((await plan('h2')).stages.map((stage) => stage.status)).toEqual([
        'INPROGRESS',
        'INPROGRESS',
        'READYTODEPLOY',
      ]);
    },
  );
});
