// Rollout bookkeeping at scale: one edgefleet-server, a 1,000-device fleet of simulated devices
// (bench/support/device-simulator.mjs: the device API over mutual TLS, no ONNX), one deployment plan whose
// single stage (PERCENTAGE 100) targets every device. Measures the time from StartEdgeDeploymentStage to the
// stage being DEPLOYED, and the server's CPU use meanwhile (from /proc, so it stays meaningful on a shared
// machine). Goal (issue 9): with a 10 s poll interval, DEPLOYED within 30 s, the server averaging under one core.
//
//   npx tsc -b packages/server && node bench/deployments.bench.mjs [--devices 1000] [--poll-seconds 10]
//        [--engines sqlite,postgres]
//
// The devices poll (with jitter) for a full interval before the stage starts, so the server is in its steady
// state; then each device takes the deployment at its next poll, downloads the package, checks its SHA-256
// and reports SUCCESS in a heartbeat. Results also go to bench-results/deployments.json.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { writeTestModel } from '@edgefleet/core';
import { simulateFleet } from './support/device-simulator.mjs';
import {
  cpuSecondsOf,
  enrollDevices,
  MAIN,
  request,
  root,
  startPostgres,
  startServer,
} from './support/fleet-server.mjs';
import { argValue } from './support/args.mjs';

const DEVICES = Number(argValue('--devices', 1000));
const POLL_SECONDS = Number(argValue('--poll-seconds', 10));
const ENGINES = argValue('--engines', 'sqlite,postgres').split(',');
const GOAL_SECONDS = 30;

if (!existsSync(MAIN)) {
  console.error(`${MAIN} is missing: run \`npx tsc -b packages/server\` first`);
  process.exit(2);
}

// What the engine now running must stop and remove: Ctrl-C leaves no server, cluster or data folder behind.
let cleanUp;
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, async () => {
    console.log(`\n${signal}: stopping the server, the simulated devices and the database…`);
    await cleanUp?.();
    process.exit(130);
  });
}

async function benchEngine(engine) {
  let postgres;
  if (engine === 'postgres') {
    postgres = await startPostgres();
    if (!postgres) {
      console.log('postgres: skipped (no initdb/pg_ctl found)');
      return undefined;
    }
  }
  const dataDir = mkdtempSync(join(tmpdir(), `edgefleet-bench-deploy-${engine}-`));
  let server;
  let fleet;
  cleanUp = async () => {
    cleanUp = undefined; // once, whichever of the signal and the finally comes first
    await fleet?.stop();
    await server?.stop();
    postgres?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    server = await startServer(dataDir, postgres?.url);
    const admin = { authorization: `Bearer ${server.token}` };
    const api = (method, path, body) =>
      request(undefined, `${server.operatorUrl}${path}`, { method, headers: admin, body });
    await api('POST', '/api/v1/fleets', {
      name: 'sim',
      outputConfig: { s3OutputLocation: 's3://bench/sim' },
    });
    const names = Array.from({ length: DEVICES }, (_, i) => `sim-${String(i).padStart(5, '0')}`);
    const devices = await enrollDevices(server, 'sim', names);

    const onnx = await writeTestModel('tiny', join(dataDir, 'model'));
    const upload = await fetch(`${server.operatorUrl}/api/v1/models/tiny/versions/1`, {
      method: 'POST',
      headers: { ...admin, 'content-type': 'application/octet-stream' },
      body: readFileSync(onnx),
    });
    if (upload.status !== 201) throw new Error(`upload: ${upload.status} ${await upload.text()}`);
    await api('POST', '/api/v1/packaging-jobs', { name: 'pack-1', modelName: 'tiny', modelVersion: '1' });
    for (let i = 0; ; i++) {
      const job = await api('GET', '/api/v1/packaging-jobs/pack-1');
      if (job.body.status === 'COMPLETED') break;
      if (job.body.status === 'FAILED' || i > 600) throw new Error(`packaging: ${JSON.stringify(job.body)}`);
      await sleep(100);
    }

    fleet = simulateFleet({ deviceUrl: server.deviceUrl, devices, pollIntervalMs: POLL_SECONDS * 1000 });
    await sleep(POLL_SECONDS * 1000); // every device has polled once: the steady state
    const created = await api('POST', '/api/v1/deployment-plans', {
      name: 'rollout',
      fleetName: 'sim',
      modelConfigs: [{ modelHandle: 'classifier', packagingJobName: 'pack-1' }],
      stages: [{ name: 'all', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
    });
    if (created.status !== 201) throw new Error(`create plan: ${JSON.stringify(created.body)}`);

    const serverCpu0 = cpuSecondsOf(server.pid);
    const t0 = process.hrtime.bigint();
    const started = await api('POST', '/api/v1/deployment-plans/rollout/stages/all/start');
    if (started.status !== 200) throw new Error(`start stage: ${JSON.stringify(started.body)}`);
    let stage;
    for (;;) {
      stage = (await api('GET', '/api/v1/deployment-plans/rollout')).body.stages[0];
      if (['DEPLOYED', 'FAILED', 'STOPPED'].includes(stage.status)) break;
      if (Number(process.hrtime.bigint() - t0) / 1e9 > 10 * GOAL_SECONDS) break;
      await sleep(250);
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const serverCpu1 = cpuSecondsOf(server.pid);
    const result = {
      engine,
      devices: DEVICES,
      pollSeconds: POLL_SECONDS,
      status: stage.status,
      deployed: stage.successCount,
      failed: stage.failedCount,
      secondsToDeployed: Number(seconds.toFixed(2)),
      serverCores:
        serverCpu0 === undefined ? undefined : Number(((serverCpu1 - serverCpu0) / seconds).toFixed(2)),
      simulator: fleet.stats(),
    };
    result.goalMet =
      result.status === 'DEPLOYED' &&
      result.deployed === DEVICES &&
      result.secondsToDeployed <= GOAL_SECONDS &&
      (result.serverCores === undefined || result.serverCores < 1);
    console.log(
      `${engine.padEnd(8)} ${result.status} ${result.deployed}/${DEVICES} devices in ${result.secondsToDeployed} s ` +
        `(goal ≤ ${GOAL_SECONDS} s) | server ${result.serverCores ?? '?'} cores on average (goal < 1) | ` +
        `${result.simulator.polls} polls, ${result.simulator.downloads} downloads, ${result.simulator.errors} errors | ` +
        `load average ${loadavg()[0].toFixed(1)} | ${result.goalMet ? 'goal met' : 'GOAL MISSED'}`,
    );
    return result;
  } finally {
    await cleanUp?.();
  }
}

console.log(
  `deployment rollout: ${DEVICES} simulated devices polling every ${POLL_SECONDS} s, one stage of 100 %, ` +
    `server and simulator on one machine (${cpus().length} cores)`,
);
const results = [];
for (const engine of ENGINES) {
  const result = await benchEngine(engine);
  if (result) results.push(result);
}
// The goal table: one row per engine, each part of the goal met or not.
const mark = (ok) => (ok ? 'met' : 'NOT MET');
console.log(
  `\ngoal (issue 9): ${DEVICES} devices, poll ${POLL_SECONDS} s → DEPLOYED in ≤ ${GOAL_SECONDS} s, server < 1 core`,
);
console.log('engine    status     deployed     seconds  time goal  server cores  cpu goal  goal');
for (const r of results) {
  const timeOk = r.status === 'DEPLOYED' && r.deployed === DEVICES && r.secondsToDeployed <= GOAL_SECONDS;
  const cpuOk = r.serverCores === undefined || r.serverCores < 1;
  console.log(
    `${r.engine.padEnd(9)} ${r.status.padEnd(10)} ${`${r.deployed}/${DEVICES}`.padEnd(12)} ` +
      `${String(r.secondsToDeployed).padStart(7)}  ${mark(timeOk).padEnd(9)}  ` +
      `${String(r.serverCores ?? '?').padStart(12)}  ${mark(cpuOk).padEnd(8)}  ${mark(r.goalMet)}`,
  );
}
for (const engine of ENGINES.filter((e) => !results.some((r) => r.engine === e)))
  console.log(`${engine.padEnd(9)} skipped (not available on this machine)`);
mkdirSync(join(root, 'bench-results'), { recursive: true });
writeFileSync(
  join(root, 'bench-results', 'deployments.json'),
  `${JSON.stringify({ at: new Date().toISOString(), results }, null, 2)}\n`,
);
process.exit(results.every((r) => r.status === 'DEPLOYED') ? 0 : 1);
