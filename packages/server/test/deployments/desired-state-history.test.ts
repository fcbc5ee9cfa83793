/**
 * A device's desired state over a fleet's plan history: what each device is given (a completed plan's models
 * stay, a device that failed a newer plan gets the older one's back, a DO_NOTHING failure holds, the newest
 * plan wins each handle, a newcomer gets completed plans, a deleted plan hands back to the one before), and
 * that a poll reads the newest plans that may apply per model handle, not every finished plan of the fleet.
 * Before the fix every completed plan the device took part in was read and parsed on every poll.
 */
import { CompiledQuery } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { FleetEventLog } from '../../src/audit/index.js';
import { DeploymentService } from '../../src/deployments/index.js';
import { candidatesOf, winningPlans } from '../../src/deployments/desired-state.js';
import { adminCalls, planCalls, shownDeployments as shown } from '../support/deployment-calls.js';
import { databaseEngines } from '../support/engines.js';
import { rowsReadFrom } from '../support/rows-read.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const FLEET = 'fh';

describe.each(engines)('desired state over a plan history on $engine', (fixture) => {
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
    'gives each device the newest plan that applies to it per model handle, and reads only those',
    async () => {
      const all = { a: 'SUCCESS', b: 'SUCCESS', c: 'SUCCESS' } as const;
      // p01 completes on every device: x and y.
      await rollOut('p01', ['x', 'y'], all);
      // p02 takes x on, b fails it (ROLLBACK_ON_FAILURE): b keeps p01's x; the stage FAILED.
      await rollOut('p02', ['x'], { a: 'SUCCESS', b: 'FAIL', c: 'SUCCESS' });
      // p03 only on a, DO_NOTHING, failed: a holds x (nothing sent for it), p02 does not take it back.
      await rollOut(
        'p03',
        ['x'],
        { a: 'FAIL' },
        {
          deviceSelection: { subsetType: 'SELECTION', deviceNames: ['a'] },
          failureHandlingPolicy: 'DO_NOTHING',
        },
      );
      // A long history on z, every plan completed everywhere.
      for (let i = 10; i < 40; i++) await rollOut(`p${i}`, ['z'], all);
      // A plan under way on w: a poll takes it.
      await service().createPlan({
        name: 'p50',
        fleetName: FLEET,
        modelConfigs: [{ modelHandle: 'w', state: 'UNDEPLOY' }],
        stages: [{ name: 'all', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['c'] } }],
      });
      await service().startStage('p50', 'all');
      // A newcomer, after all of it: completed plans whose rule covers it (p01 and the newest on z).
      await register(FLEET, ['n']);

      expect(shown(await poll('a'))).toEqual(['p01: y', 'p39: z']);
      expect(shown(await poll('b'))).toEqual(['p01: x, y', 'p39: z']);
      expect(shown(await poll('c'))).toEqual(['p01: y', 'p02: x', 'p39: z', 'p50: w']);
      expect(shown(await poll('n'))).toEqual(['p01: x, y', 'p39: z']);
      const taken = await service().stageDevices('p50', 'all', { limit: 10 });
      expect(taken.map((d) => `${d.deviceName} ${d.status} ${d.attempts}`)).toEqual(['c INPROGRESS 1']);

      // What a poll reads: the newest candidate plans per handle, however long the history on z.
      const counted = async (deviceName: string) => {
        const plans = rowsReadFrom('deployment_plans');
        const stages = rowsReadFrom('deployment_stages');
        const db = t.server.database.db.withPlugin(plans.plugin).withPlugin(stages.plugin);
        const reader = new DeploymentService(db, {
          engine: t.server.database.engine,
          packagingJobs: t.server.services.packagingJobs,
          models: t.server.services.models,
        });
        const answer = await reader.deploymentsFor({ deviceName, fleetName: FLEET });
        return { shown: shown(answer), plansRead: plans.rows(), stagesRead: stages.rows() };
      };
      const readByB = await counted('b');
      expect(readByB.shown).toEqual(['p01: x, y', 'p39: z']);
      // p01, p02 and p03 for x and y, a few of the newest on z (not 30); each of them has one stage.
      expect(readByB.plansRead).toBeLessThanOrEqual(8);
      expect(readByB.stagesRead).toBeLessThanOrEqual(8);
      const readByNewcomer = await counted('n');
      expect(readByNewcomer.shown).toEqual(['p01: x, y', 'p39: z']);
      expect(readByNewcomer.plansRead).toBeLessThanOrEqual(8);

      // The database's walk for one handle: the index, newest first, with no sort of the handle's plans.
      if (fixture.engine === 'sqlite') {
        const walk = candidatesOf(
          t.server.database.db,
          { deviceName: 'b', fleetName: FLEET },
          'z',
          undefined,
          4,
        );
        const compiled = walk.compile();
        const explained = await t.server.database.db.executeQuery<{ detail: string }>(
          CompiledQuery.raw(`explain query plan ${compiled.sql}`, [...compiled.parameters]),
        );
        const text = explained.rows.map((row) => row.detail).join('\n');
        expect(text, text).toContain('deployment_plan_handles_newest');
        expect(text, text).not.toMatch(/TEMP B-TREE/);
        expect((await walk.execute()).map((c) => c.plan_name)).toEqual(['p39', 'p38', 'p37', 'p36']);
      }

      // A finished plan deleted: the one before it on that handle applies again.
      await service().deletePlan('p39');
      expect(shown(await poll('a'))).toEqual(['p01: y', 'p38: z']);
      expect(shown(await poll('n'))).toEqual(['p01: x, y', 'p38: z']);
      await service().deletePlan('p02');
      expect(shown(await poll('c'))).toEqual(['p01: x, y', 'p38: z', 'p50: w']);
    },
  );
  it.skipIf(!fixture.available)(
    'a plan an older build created without its handle rows is given once the deployment sweep fills them in',
    async () => {
      await createFleet('fo', ['o1']);
      await service().createPlan({
        name: 'by-older-build',
        fleetName: 'fo',
        modelConfigs: [{ modelHandle: 'm', state: 'UNDEPLOY' }],
        stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
      });
      await service().startStage('by-older-build', 'all');
      // An older build (a replica still running it in a rolling upgrade) writes no handle rows.
      await t.server.database.db
        .deleteFrom('deployment_plan_handles')
        .where('plan_name', '=', 'by-older-build')
        .execute();
      // And one whose stored model configs no longer parse (a hand edit): skipped and answered, not the end of
      // the sweep (its timeouts and settling, the plans after it).
      await service().createPlan({
        name: 'a-unreadable',
        fleetName: 'fo',
        modelConfigs: [{ modelHandle: 'n', state: 'UNDEPLOY' }],
        stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
      });
      await t.server.database.db
        .updateTable('deployment_plans')
        // Created before the other: the fill-in meets it first.
        .set({ model_configs: '[{"modelHandle":5}]', created_at: Date.now() - 60_000 })
        .where('name', '=', 'a-unreadable')
        .execute();
      await t.server.database.db
        .deleteFrom('deployment_plan_handles')
        .where('plan_name', '=', 'a-unreadable')
        .execute();
      const pollO1 = async () => shown(await service().deploymentsFor({ deviceName: 'o1', fleetName: 'fo' }));
      expect(await pollO1()).toEqual([]);
      const swept = await service().sweep();
      expect(swept.unreadablePlans.map((p) => p.plan)).toEqual(['a-unreadable']);
      expect(swept.unreadablePlans[0]!.reason).toMatch(/modelHandle/);
      expect(await pollO1()).toEqual(['by-older-build: m']);
    },
  );

  it.skipIf(!fixture.available)(
    "a process's first sweep fills in every plan's handle rows, later sweeps only the last 7 days' (review J note 7)",
    async () => {
      await createFleet('fw', ['w1']);
      const db = t.server.database.db;
      const olderBuildPlan = async (name: string) => {
        await service().createPlan({
          name,
          fleetName: 'fw',
          modelConfigs: [{ modelHandle: name, state: 'UNDEPLOY' }],
          stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
        });
        await service().startStage(name, 'all');
        // Made by an older build 30 days ago (an `init --force-migrate` long before this build served).
        await db.deleteFrom('deployment_plan_handles').where('plan_name', '=', name).execute();
        await db
          .updateTable('deployment_plans')
          .set({ created_at: Date.now() - 30 * 86_400_000 })
          .where('name', '=', name)
          .execute();
      };
      const pollW1 = async () => shown(await service().deploymentsFor({ deviceName: 'w1', fleetName: 'fw' }));
      const freshProcess = new DeploymentService(db, {
        engine: t.server.database.engine,
        packagingJobs: t.server.services.packagingJobs,
        models: t.server.services.models,
        events: new FleetEventLog(pino({ level: 'silent' })),
      });
      await olderBuildPlan('fw-old');
      await freshProcess.sweep();
      expect(await pollW1()).toEqual(['fw-old: fw-old']);
      // Its later sweeps look back 7 days only.
      await olderBuildPlan('fw-older');
      await freshProcess.sweep();
      expect(await pollW1()).toEqual(['fw-old: fw-old']);
    },
  );

  it.skipIf(!fixture.available)(
    'a device walking back through plans that do not apply to it reads at most a capped round per statement',
    async () => {
      await createFleet('fk', ['k1', 'k2']);
      const fk = planCalls(() => t, 'fk');
      // k1's plan on k, then 10 newer plans on k for k2 only: k1 walks back past all of them.
      await fk.rollOut('fk-00', ['k'], { k1: 'SUCCESS', k2: 'SUCCESS' });
      for (let i = 1; i <= 10; i++)
        await fk.rollOut(
          `fk-${String(i).padStart(2, '0')}`,
          ['k'],
          { k2: 'SUCCESS' },
          { deviceSelection: { subsetType: 'SELECTION', deviceNames: ['k2'] } },
        );
      // The most rows any one statement returns (candidates, plans, stages, targets).
      let most = 0;
      const db = t.server.database.db.withPlugin({
        transformQuery: (args) => args.node,
        transformResult: async (args) => {
          most = Math.max(most, args.result.rows.length);
          return args.result;
        },
      });
      // Rounds of 4, capped at 4: without the cap the second round reads 16 (7 rows left).
      const { winner } = await winningPlans(db, { deviceName: 'k1', fleetName: 'fk' }, 4);
      expect(winner.get('k')).toBe('fk-00');
      expect(most).toBeLessThanOrEqual(4);
      expect(shown(await fk.poll('k1'))).toEqual(['fk-00: k']);
    },
  );
});
