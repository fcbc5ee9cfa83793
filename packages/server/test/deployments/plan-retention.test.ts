/**
 * Finished plans are deleted with their events once past deployments.planRetentionDays, unless a device's
 * desired state still comes from them (a registered device's, or a newcomer's): every device is given the same
 * before and after the sweep. Before the fix plans and their events were kept for ever.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetEventLog } from '../../src/audit/index.js';
import { DeploymentService } from '../../src/deployments/index.js';
import { deleteExpiredPlans, type RetentionCursor } from '../../src/deployments/plan-retention.js';
import {
  adminCalls,
  handlesResult,
  planCalls,
  shownDeployments as shown,
} from '../support/deployment-calls.js';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const FLEET = 'fr';
const DAY = 86_400_000;

describe.each(engines)('plan retention on $engine', (fixture) => {
  let t: TestServer;
  const { register, createFleet } = adminCalls(() => t);
  const { service, poll, rollOut } = planCalls(() => t, FLEET);

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    await createFleet(FLEET, ['a', 'b', 'c']);
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    'deletes finished plans past retention that no device gets anything from, and keeps the rest',
    async () => {
      const all = { a: 'SUCCESS', b: 'SUCCESS', c: 'SUCCESS' } as const;
      await rollOut('old00', ['y'], all); // superseded everywhere by old03: deleted
      await rollOut('old01', ['x'], all); // b failed old02 and falls back to it: kept
      await rollOut('old02', ['x'], { a: 'SUCCESS', b: 'FAIL', c: 'SUCCESS' }); // a's and c's x: kept
      await rollOut('old03', ['y'], all);
      await rollOut('old04', ['z'], { a: 'SUCCESS' }); // b and c never took it: unfinished, kept
      await rollOut(
        'old05',
        ['w'],
        { a: 'SUCCESS' },
        { deviceSelection: { subsetType: 'SELECTION', deviceNames: ['a'] } },
      ); // deleted
      await rollOut(
        'old06',
        ['w'],
        { a: 'SUCCESS' },
        { deviceSelection: { subsetType: 'SELECTION', deviceNames: ['a'] } },
      );
      await rollOut('old07', ['v'], all); // b's and c's v: kept
      await rollOut(
        'old08',
        ['v'],
        { a: 'SUCCESS' },
        { deviceSelection: { subsetType: 'SELECTION', deviceNames: ['a'] } },
      );
      await rollOut('old09', ['u'], all); // registered devices get old10; a newcomer would get it: kept
      await rollOut('old10', ['u'], all, {
        deviceSelection: { subsetType: 'SELECTION', deviceNames: ['a', 'b', 'c'] },
      });
      await register(FLEET, ['n1']);
      const devices = ['a', 'b', 'c', 'n1'];
      const before = new Map<string, string[]>();
      for (const device of devices) before.set(device, shown(await poll(device)));
      expect(before.get('n1')).toEqual(['old01: x', 'old03: y', 'old07: v', 'old09: u']);

      const lines: { event?: string; outcome?: string; plan?: string; msg?: string }[] = [];
      const logger = pino({}, { write: (line: string) => lines.push(JSON.parse(line)) });
      const sweeper = (daysLater: number) =>
        new DeploymentService(t.server.database.db, {
          engine: t.server.database.engine,
          packagingJobs: t.server.services.packagingJobs,
          models: t.server.services.models,
          events: new FleetEventLog(logger),
          now: () => Date.now() + daysLater * DAY,
        });
      // Within the window, nothing goes.
      expect(await sweeper(0).deleteExpiredPlans(90 * DAY)).toEqual({ deleted: [], kept: 0 });
      expect(await sweeper(89).deleteExpiredPlans(90 * DAY)).toEqual({ deleted: [], kept: 0 });

      const swept = await sweeper(91).deleteExpiredPlans(90 * DAY);
      expect(swept.deleted.map((p) => p.name).sort()).toEqual(['old00', 'old05']);
      // old04 is not finished, so not judged: 11 plans, 10 judged, 2 deleted.
      expect(swept.kept).toBe(8);
      const left = await service().listPlans({ limit: 100 });
      expect(left.map((p) => p.name)).toEqual([
        'old01',
        'old02',
        'old03',
        'old04',
        'old06',
        'old07',
        'old08',
        'old09',
        'old10',
      ]);
      // Their events went with them; the others' stay.
      const events = await t.server.database.db
        .selectFrom('deployment_events')
        .select('plan_name')
        .distinct()
        .orderBy('plan_name')
        .execute();
      expect(events.map((e) => e.plan_name)).toEqual(left.map((p) => p.name));
      expect(
        lines
          .filter((l) => l.event === 'plan_deleted')
          .map((l) => `${l.plan} ${l.outcome}`)
          .sort(),
      ).toEqual(['old00 expired', 'old05 expired']);

      // Every device is given what it was, and a newcomer what one was given before.
      for (const device of devices) expect(shown(await poll(device)), device).toEqual(before.get(device));
      await register(FLEET, ['n2']);
      expect(shown(await poll('n2'))).toEqual(before.get('n1'));
      // A second sweep finds nothing more to delete.
      expect((await sweeper(91).deleteExpiredPlans(90 * DAY)).deleted).toEqual([]);
    },
  );

  it.skipIf(!fixture.available)(
    'a sweep goes on after the last plan the one before judged: plans kept at the front hold none back',
    async () => {
      const everyone = { a: 'SUCCESS', b: 'SUCCESS', c: 'SUCCESS', n1: 'SUCCESS', n2: 'SUCCESS' } as const;
      // old03 (y) is superseded everywhere now.
      await rollOut('old11', ['y'], everyone);
      await rollOut('old12', ['y'], everyone);
      const later = Date.now() + 91 * DAY;
      const sweep = (after?: RetentionCursor) =>
        deleteExpiredPlans(t.server.database.db, {
          engine: t.server.database.engine,
          retentionMs: 90 * DAY,
          now: later,
          batch: 2,
          after,
        });
      // The two oldest (old01, old02) are kept: a sweep of two judges only them, and says where it stopped.
      const first = await sweep();
      expect(first.deleted).toEqual([]);
      expect(first.next?.name).toBe('old02');
      expect((await sweep()).deleted).toEqual([]);
      // Going on from there, old03 is judged (and deleted), with old06, which stays.
      const second = await sweep(first.next);
      expect(second.deleted.map((p) => p.name)).toEqual(['old03']);
      expect(second.next?.name).toBe('old06');
      // Round the end and back to the oldest: old11 went behind old12.
      let after = second.next;
      const deleted: string[] = [];
      for (let i = 0; i < 10 && after !== undefined; i++) {
        const next = await sweep(after);
        deleted.push(...next.deleted.map((p) => p.name));
        after = next.next;
      }
      expect(deleted).toEqual(['old11']);
    },
  );
});

describe.each(engines)('plan retention judged again as the delete commits, on $engine', (fixture) => {
  let t: TestServer;
  const { admin, register, createFleet } = adminCalls(() => t);
  const fleets = ['r1', 'r2', 'r3'] as const;
  const calls = (fleet: (typeof fleets)[number]) => planCalls(() => t, fleet);
  const sweep = (beforeDelete?: (names: readonly string[]) => Promise<void>) =>
    deleteExpiredPlans(t.server.database.db, {
      engine: t.server.database.engine,
      retentionMs: 90 * DAY,
      now: Date.now() + 91 * DAY,
      ...(beforeDelete !== undefined && { beforeDelete }),
    });

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    for (const fleet of fleets) {
      await createFleet(fleet, [`${fleet}-a`, `${fleet}-b`]);
    }
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    'keeps the plan a device deregistered during a newer rollout gets again once re-registered (review D #2)',
    async () => {
      const { service, poll, rollOut } = calls('r1');
      await rollOut('r1-p1', ['x'], { 'r1-a': 'SUCCESS', 'r1-b': 'SUCCESS' });
      await service().createPlan({
        name: 'r1-p2',
        fleetName: 'r1',
        modelConfigs: [{ modelHandle: 'x', state: 'UNDEPLOY' }],
        stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
        options: { maxRetries: 0 },
      });
      await service().startStage('r1-p2', 'all');
      await poll('r1-a');
      await calls('r1').report('r1-a', handlesResult('r1-p2', ['x'], 'SUCCESS'));
      // b deregistered mid-rollout: its r1-p2 target STOPPED, and r1-p2 ends DEPLOYED (a newcomer's x).
      expect((await admin('DELETE', '/api/v1/devices/r1-b')).status).toBe(204);
      await register('r1', ['r1-b']);
      const before = shown(await poll('r1-b'));
      expect(before).toEqual(['r1-p1: x']);
      expect((await admin('DELETE', '/api/v1/devices/r1-b')).status).toBe(204);
      // While b is away, no registered device nor newcomer gets r1-p1; b's name still does.
      expect((await sweep()).deleted).toEqual([]);
      await register('r1', ['r1-b']);
      expect(shown(await poll('r1-b'))).toEqual(before);
    },
  );

  it.skipIf(!fixture.available)(
    'keeps a plan while a newer unfinished plan holds its handle: a device failing that one falls back to it',
    async () => {
      const { service, poll, report, rollOut } = calls('r2');
      // Half the fleet (one device): no newcomer gets it, and the other device never had it.
      await rollOut('r2-p1', ['x'], {}, { deviceSelection: { subsetType: 'PERCENTAGE', percentage: 50 } });
      const [{ device_name: device }] = (await t.server.database.db
        .selectFrom('deployment_targets')
        .select('device_name')
        .where('plan_name', '=', 'r2-p1')
        .execute()) as [{ device_name: string }];
      await poll(device);
      await report(device, handlesResult('r2-p1', ['x'], 'SUCCESS'));
      expect((await service().describePlan('r2-p1')).stages.map((s) => s.status)).toEqual(['DEPLOYED']);
      // r2-p2 completes on the other device only: newer, completed, and covering every newcomer r2-p1 covers (none).
      const other = device === 'r2-a' ? 'r2-b' : 'r2-a';
      await rollOut(
        'r2-p2',
        ['x'],
        { [other]: 'SUCCESS' },
        { deviceSelection: { subsetType: 'SELECTION', deviceNames: [other] } },
      );
      // r2-p3 in progress: every device is given it now, but the device fails it afterwards (rollback).
      await service().createPlan({
        name: 'r2-p3',
        fleetName: 'r2',
        modelConfigs: [{ modelHandle: 'x', state: 'UNDEPLOY' }],
        stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
        options: { maxRetries: 0 },
      });
      await service().startStage('r2-p3', 'all');
      expect(shown(await poll(device))).toEqual(['r2-p3: x']);
      expect((await sweep()).deleted).toEqual([]);
      await report(device, handlesResult('r2-p3', ['x'], 'FAIL'));
      expect(shown(await poll(device))).toEqual(['r2-p1: x']);
    },
  );

  it.skipIf(!fixture.available)(
    'a plan that becomes a source again between the judgement and the delete is kept (review D #3)',
    async () => {
      const { service, poll, rollOut } = calls('r3');
      const both = { 'r3-a': 'SUCCESS', 'r3-b': 'SUCCESS' } as const;
      await rollOut('r3-p1', ['x'], both);
      await rollOut('r3-p2', ['x'], both);
      // Judged superseded by r3-p2; then an operator deletes r3-p2, so every device falls back to r3-p1.
      const judged: string[] = [];
      const swept = await sweep(async (names) => {
        judged.push(...names);
        if (names.includes('r3-p1')) await service().deletePlan('r3-p2');
      });
      expect(judged).toEqual(['r3-p1']);
      expect(swept.deleted).toEqual([]);
      expect(shown(await poll('r3-a'))).toEqual(['r3-p1: x']);
    },
  );
});

describe.each(engines)('plan retention judging every device on $engine', (fixture) => {
  it.skipIf(!fixture.available)(
    'keeps a plan one device still gets when a device judged before it wins only other plans (review J #1)',
    async () => {
      const t = await startTestServer({
        database: await fixture.createLocation(),
        config: { deployments: { sweepIntervalMs: 3_600_000 } },
      });
      try {
        const { register, createFleet } = adminCalls(() => t);
        const { service, poll, report, rollOut } = planCalls(() => t, 'f');
        await createFleet('f', ['m', 'n']);
        // p1 (x) to one of the two, then aged past retention.
        await rollOut('p1', ['x'], {}, { deviceSelection: { subsetType: 'PERCENTAGE', percentage: 50 } });
        const db = t.server.database.db;
        const [target] = await db
          .selectFrom('deployment_targets')
          .select('device_name')
          .where('plan_name', '=', 'p1')
          .execute();
        const device = target!.device_name;
        await poll(device);
        await report(device, handlesResult('p1', ['x'], 'SUCCESS'));
        const old = Date.now() - 100 * DAY;
        await db.updateTable('deployment_plans').set({ created_at: old }).where('name', '=', 'p1').execute();
        await db
          .updateTable('deployment_stages')
          .set({ ended_at: old, updated_at: old })
          .where('plan_name', '=', 'p1')
          .execute();
        await db
          .updateTable('deployment_plan_handles')
          .set({ created_at: old })
          .where('plan_name', '=', 'p1')
          .execute();
        const other = device === 'm' ? 'n' : 'm';
        await rollOut(
          'p3',
          ['x'],
          { [other]: 'SUCCESS' },
          { deviceSelection: { subsetType: 'SELECTION', deviceNames: [other] } },
        );
        // "a" is judged first, and is given only p2 (another handle, under way): the judgement went no further.
        await register('f', ['a']);
        await service().createPlan({
          name: 'p2',
          fleetName: 'f',
          modelConfigs: [{ modelHandle: 'y', state: 'UNDEPLOY' }],
          stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
          options: { maxRetries: 0 },
        });
        await service().startStage('p2', 'all');
        const before = shown(await poll(device));
        expect(before).toContain('p1: x');
        const swept = await deleteExpiredPlans(db, {
          engine: t.server.database.engine,
          retentionMs: 90 * DAY,
          now: Date.now(),
        });
        expect(swept.deleted).toEqual([]);
        expect(shown(await poll(device))).toEqual(before);
      } finally {
        await t.stop();
      }
    },
  );
});

describe.each(engines)('the plan retention sweep of a running server on $engine', (fixture) => {
  it.skipIf(!fixture.available)(
    'deletes a finished plan past deployments.planRetentionDays on its own, and logs it',
    async () => {
      const lines: { event?: string; outcome?: string; plan?: string; msg?: string; deleted?: number }[] = [];
      const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
      const t = await startTestServer({
        database: await fixture.createLocation(),
        logger,
        config: { deployments: { planRetentionDays: 1, planRetentionSweepSeconds: 1 } },
      });
      try {
        const service = t.server.services.deployments;
        await adminCalls(() => t).createFleet('empty');
        // A sample of an empty fleet: DEPLOYED at once, to no device, and no newcomer would get it.
        for (const name of ['ended-long-ago', 'ended-now']) {
          await service.createPlan({
            name,
            fleetName: 'empty',
            modelConfigs: [{ modelHandle: name, state: 'UNDEPLOY' }],
            stages: [{ name: 'half', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 50 } }],
          });
          await service.startStage(name, 'half');
        }
        // Made two days old, as if it had ended then.
        const db = t.server.database.db;
        const old = Date.now() - 2 * DAY;
        await db
          .updateTable('deployment_plans')
          .set({ created_at: old })
          .where('name', '=', 'ended-long-ago')
          .execute();
        await db
          .updateTable('deployment_stages')
          .set({ ended_at: old, updated_at: old })
          .where('plan_name', '=', 'ended-long-ago')
          .execute();
        for (let i = 0; i < 600 && !lines.some((l) => l.event === 'plan_deleted'); i++)
          await new Promise((resolve) => setTimeout(resolve, 50));
        expect(lines.filter((l) => l.event === 'plan_deleted').map((l) => `${l.plan} ${l.outcome}`)).toEqual([
          'ended-long-ago expired',
        ]);
        expect(lines.find((l) => l.msg?.startsWith('plan retention sweep:'))).toMatchObject({
          deleted: 1,
          msg: "plan retention sweep: 1 finished plan(s) deleted; 0 past retention kept (a device's desired state comes from them)",
        });
        expect((await service.listPlans({ limit: 10 })).map((p) => p.name)).toEqual(['ended-now']);
      } finally {
        await t.stop();
      }
    },
  );
});
