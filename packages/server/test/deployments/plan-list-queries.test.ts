/**
 * Listing deployment plans costs a fixed number of queries whatever the page size (before the fix each plan of
 * the page was described on its own: three queries per plan, seconds for a page of hundreds), and answers as
 * describing each plan does. Plans list newest first and by stage status, and a plan's events newest first, each
 * paged, however many there are (the console showed the first 100 plans by name and a plan's oldest 100 events);
 * a stage's devices filter by status.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeploymentService } from '../../src/deployments/index.js';
import { adminCalls } from '../support/deployment-calls.js';
import { databaseEngines } from '../support/engines.js';
import { queryCounter } from '../support/query-counter.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('deployment plan listing on $engine', (fixture) => {
  let t: TestServer;
  const { admin, register } = adminCalls(() => t);
  const PLANS = 12;

  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({
      database: await fixture.createLocation(),
      config: { deployments: { sweepIntervalMs: 3_600_000 } },
    });
    await admin('POST', '/api/v1/fleets', { name: 'fl', outputConfig: { s3OutputLocation: 's3://c/fl' } });
    await register('fl', ['cam-a', 'cam-b', 'cam-c']);
    for (let i = 0; i < PLANS; i++) {
      const created = await admin('POST', '/api/v1/deployment-plans', {
        name: `p${String(i).padStart(2, '0')}`,
        fleetName: 'fl',
        modelConfigs: [{ modelHandle: `h${i}`, state: 'UNDEPLOY' }],
        stages: [
          { name: 'canary', deviceSelection: { subsetType: 'SELECTION', deviceNames: ['cam-a'] } },
          { name: 'rest', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } },
        ],
      });
      expect(created.status).toBe(201);
      if (i % 3 === 0) {
        expect(
          (await admin('POST', `/api/v1/deployment-plans/p${String(i).padStart(2, '0')}/stages/canary/start`))
            .status,
        ).toBe(200);
      }
    }
  });
  afterAll(() => t?.stop());

  it.skipIf(!fixture.available)(
    'a page of plans takes the same few queries for 2 plans as for 12',
    async () => {
      const counted = async (limit: number, fleetName?: string) => {
        const counter = queryCounter();
        const service = new DeploymentService(t.server.database.db.withPlugin(counter.plugin), {
          engine: t.server.database.engine,
          packagingJobs: t.server.services.packagingJobs,
          models: t.server.services.models,
        });
        const plans = await service.listPlans({ limit, ...(fleetName !== undefined && { fleetName }) });
        return { plans, queries: counter.count() };
      };
      const small = await counted(2);
      const large = await counted(PLANS);
      expect(small.plans).toHaveLength(2);
      expect(large.plans).toHaveLength(PLANS);
      // The plans, their stages, their target counts.
      expect(large.queries).toBe(3);
      expect(large.queries).toBe(small.queries);
      // With a fleet: its existence check on top.
      expect((await counted(PLANS, 'fl')).queries).toBe(4);
    },
  );

  it.skipIf(!fixture.available)('each listed plan is what describing it answers', async () => {
    const listed = (await admin('GET', '/api/v1/deployment-plans?limit=500')).body.plans as {
      name: string;
    }[];
    expect(listed.map((p) => p.name)).toEqual(
      Array.from({ length: PLANS }, (_, i) => `p${String(i).padStart(2, '0')}`),
    );
    for (const plan of listed) {
      expect(plan).toEqual((await admin('GET', `/api/v1/deployment-plans/${plan.name}`)).body);
    }
    const started = listed.find((p) => p.name === 'p03') as unknown as {
      stages: { name: string; status: string; pendingCount: number }[];
    };
    expect(started.stages.map((s) => [s.name, s.status, s.pendingCount])).toEqual([
      ['canary', 'INPROGRESS', 1],
      ['rest', 'READYTODEPLOY', 0],
    ]);
  });

  const pageThrough = async (first: string, key: string) => {
    const names: string[] = [];
    let token: string | undefined;
    do {
      const url = `${first}${token === undefined ? '' : `&nextToken=${encodeURIComponent(token)}`}`;
      const page = await admin('GET', url);
      expect(page.status).toBe(200);
      names.push(
        ...(page.body[key] as { name?: string; kind?: string }[]).map((p) => p.name ?? p.kind ?? ''),
      );
      token = page.body.nextToken as string | undefined;
    } while (token !== undefined);
    return names;
  };

  it.skipIf(!fixture.available)('plans list newest first, page by page, each once', async () => {
    const names = await pageThrough('/api/v1/deployment-plans?order=newest&limit=5', 'plans');
    expect(names).toEqual(
      Array.from({ length: PLANS }, (_, i) => `p${String(PLANS - 1 - i).padStart(2, '0')}`),
    );
    // A name-order token does not continue a newest-first listing.
    const byName = await admin('GET', '/api/v1/deployment-plans?limit=1');
    const mixed = await admin(
      'GET',
      `/api/v1/deployment-plans?order=newest&nextToken=${encodeURIComponent(byName.body.nextToken as string)}`,
    );
    expect(mixed.status).toBe(400);
    expect(mixed.body.message).toMatch(/nextToken/);
  });

  it.skipIf(!fixture.available)("plans filter by their stages' status, in either order", async () => {
    expect((await admin('POST', '/api/v1/deployment-plans/p06/stages/canary/stop')).status).toBe(200);
    const stopped = await pageThrough(
      '/api/v1/deployment-plans?stageStatus=STOPPED&stageStatus=FAILED',
      'plans',
    );
    expect(stopped).toEqual(['p06']);
    expect(await pageThrough('/api/v1/deployment-plans?stageStatus=INPROGRESS&limit=1', 'plans')).toEqual([
      'p00',
      'p03',
      'p09',
    ]);
    expect(
      await pageThrough(
        '/api/v1/deployment-plans?stageStatus=INPROGRESS&stageStatus=STOPPED&order=newest&limit=2',
        'plans',
      ),
    ).toEqual(['p09', 'p06', 'p03', 'p00']);
    const wrong = await admin('GET', '/api/v1/deployment-plans?stageStatus=BROKEN');
    expect(wrong.status).toBe(400);
    expect(wrong.body.message).toMatch(/stageStatus/);
    expect(wrong.body.message).toMatch(/expected one or more of .*FAILED.*not "BROKEN"/);
  });

  it.skipIf(!fixture.available)("a plan's events list newest first, then older page by page", async () => {
    expect(await pageThrough('/api/v1/deployment-plans/p00/events?limit=1', 'events')).toEqual([
      'PlanCreated',
      'StageStarted',
    ]);
    expect(await pageThrough('/api/v1/deployment-plans/p00/events?order=newest&limit=1', 'events')).toEqual([
      'StageStarted',
      'PlanCreated',
    ]);
  });

  it.skipIf(!fixture.available)("a stage's devices filter by status", async () => {
    const devices = async (query: string) =>
      (
        (await admin('GET', `/api/v1/deployment-plans/p00/stages/rest/devices${query}`)).body.devices as {
          deviceName: string;
        }[]
      ).map((d) => d.deviceName);
    expect(
      (await admin('POST', '/api/v1/deployment-plans/p00/stages/rest/start', { force: false })).status,
    ).toBe(200);
    expect(await devices('')).toEqual(['cam-b', 'cam-c']);
    expect(await devices('?status=READYTODEPLOY')).toEqual(['cam-b', 'cam-c']);
    expect(await devices('?status=FAILED')).toEqual([]);
    const wrong = await admin('GET', '/api/v1/deployment-plans/p00/stages/rest/devices?status=LOST');
    expect(wrong.status).toBe(400);
    expect(wrong.body.message).toMatch(/status/);
  });
});
