// How long plan retention holds SQLite's one connection in the delete's transaction, for a fleet of N devices
// (deployments/plan-retention.ts). One fleet, two completed plans on one model handle, every device DEPLOYED in
// both, both past retention: the older one is deleted. Measured from the moment the transaction holds its locks
// to its commit, two ways:
// - "unchanged": nothing written since the judgement, so the fleet's revision stands and no device is judged
//   again (this build);
// - "re-judged": a write in between (the fleet's revision moves), so every device is judged again inside the
//   transaction, as every sweep that deleted plans did before migration 0026.
//
//   npx tsc -b packages/server && node bench/retention-hold.mjs [--devices 1000,5000] [--repeat 3]
//
// Rows are written straight into a fresh SQLite file (not through the API): the setup is not what is measured.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { deleteExpiredPlans } from '../packages/server/dist/deployments/plan-retention.js';
import { migrateToLatest, openDatabase } from '../packages/server/dist/storage/index.js';
import { argValue } from './support/args.mjs';

const SIZES = argValue('--devices', '1000,5000').split(',').map(Number);
const REPEAT = Number(argValue('--repeat', 3));
const DAY = 86_400_000;
const FLEET = 'f';

async function seed(db, devices, now) {
  const old = now - 100 * DAY;
  await db
    .insertInto('fleets')
    .values({ name: FLEET, output_s3_location: 's3://b/p', tags: '[]', created_at: old, updated_at: old })
    .execute();
  const names = Array.from({ length: devices }, (_, i) => `d${String(i).padStart(6, '0')}`);
  for (let i = 0; i < names.length; i += 500) {
    await db
      .insertInto('devices')
      .values(
        names
          .slice(i, i + 500)
          .map((name) => ({ name, fleet_name: FLEET, tags: '[]', registered_at: old, updated_at: old })),
      )
      .execute();
  }
  for (const [index, plan] of ['p1', 'p2'].entries()) {
    const at = old + index;
    await db
      .insertInto('deployment_plans')
      .values({
        name: plan,
        fleet_name: FLEET,
        model_configs: JSON.stringify([{ modelHandle: 'x', state: 'UNDEPLOY' }]),
        options: '{}',
        tags: '[]',
        created_at: at,
        updated_at: at,
      })
      .execute();
    await db
      .insertInto('deployment_plan_handles')
      .values({ plan_name: plan, fleet_name: FLEET, model_handle: 'x', created_at: at })
      .execute();
    await db
      .insertInto('deployment_stages')
      .values({
        plan_name: plan,
        name: 'all',
        position: 0,
        selection: JSON.stringify({ subsetType: 'PERCENTAGE', percentage: 100 }),
        failure_policy: 'ROLLBACK_ON_FAILURE',
        status: 'DEPLOYED',
        started_at: at,
        ended_at: at,
        updated_at: at,
      })
      .execute();
    for (let i = 0; i < names.length; i += 500) {
      await db
        .insertInto('deployment_targets')
        .values(
          names.slice(i, i + 500).map((device) => ({
            plan_name: plan,
            device_name: device,
            stage_name: 'all',
            fleet_name: FLEET,
            status: 'DEPLOYED',
            attempts: 1,
            started_at: at,
            ended_at: at,
            updated_at: at,
          })),
        )
        .execute();
    }
  }
}

async function measure(devices, changed) {
  const dir = mkdtempSync(join(tmpdir(), 'edgefleet-retention-hold-'));
  const database = await openDatabase({ engine: 'sqlite', file: join(dir, 'state.db') });
  try {
    await migrateToLatest(database.db);
    const now = Date.now();
    await seed(database.db, devices, now);
    let lockedAt = 0;
    const result = await deleteExpiredPlans(database.db, {
      engine: 'sqlite',
      retentionMs: 90 * DAY,
      now,
      // A tag written and taken back: the revision moves, what the judgement reads does not.
      beforeDelete: changed
        ? async () => {
            await database.db
              .insertInto('device_tags')
              .values({ device_name: 'd000000', key: 'k', value: 'v' })
              .execute();
            await database.db.deleteFrom('device_tags').where('device_name', '=', 'd000000').execute();
          }
        : undefined,
      whileLocked: async () => {
        lockedAt = performance.now();
      },
    });
    const held = performance.now() - lockedAt;
    if (result.deleted.map((p) => p.name).join() !== 'p1')
      throw new Error(`expected p1 deleted, got ${JSON.stringify(result)}`);
    return held;
  } finally {
    await database.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

for (const devices of SIZES) {
  for (const changed of [false, true]) {
    const runs = [];
    for (let i = 0; i < REPEAT; i += 1) runs.push(await measure(devices, changed));
    console.log(
      `${devices} devices, ${changed ? 're-judged' : 'unchanged'}: held ${runs.map((ms) => ms.toFixed(1)).join(', ')} ms`,
    );
  }
}
