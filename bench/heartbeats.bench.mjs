// Heartbeat ingestion of edgefleet-server: how many SendHeartbeat calls per second it takes from many
// simulated devices over mutual TLS, and the latency of operator API reads (p50/p99) while it does.
//
//   npx tsc -b packages/server && node bench/heartbeats.bench.mjs [--devices 200] [--concurrency 64]
//        [--seconds 15] [--warmup 3] [--engines sqlite,postgres]
//
// The server runs as its own process (`node packages/server/dist/main.js serve`, default settings, log level
// warn) on a fresh data dir; this process is the load: every device enrolls for real (CSR → certificate) and
// then keeps one TLS connection open, the way an agent does. Each heartbeat carries 4 agent metrics and 2
// models with 3 metrics each. `concurrency` heartbeats are in flight at any time, spread round-robin over the
// devices; measuring starts once every device is connected and the warm-up is over. Meanwhile one client
// reads the operator API (device list page, one device, the fleet report) in a loop and records each call's
// latency. Server and load generator CPU time per heartbeat come from the processes' own counters, which stay
// meaningful when other work shares the machine. At the end it checks that the heartbeats landed.
// PostgreSQL runs when initdb/pg_ctl exist (Debian: /usr/lib/postgresql/*/bin): a throwaway cluster with
// default durability settings (fsync on, synchronous_commit on). SQLite runs in WAL with synchronous=NORMAL.
// Results also go to bench-results/heartbeats.json.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
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

const DEVICES = Number(argValue('--devices', 200));
const CONCURRENCY = Number(argValue('--concurrency', 64));
const SECONDS = Number(argValue('--seconds', 15));
const WARMUP = Number(argValue('--warmup', 3));
const ENGINES = argValue('--engines', 'sqlite,postgres').split(',');
// e.g. --server-node-args "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the server.
const SERVER_NODE_ARGS = argValue('--server-node-args', '').split(' ').filter(Boolean);

if (!existsSync(MAIN)) {
  console.error(`${MAIN} is missing: run \`npx tsc -b packages/server\` first`);
  process.exit(2);
}

// ---------- measurement ----------
const ownCpuSeconds = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
};
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const ms = (ns) => Number(ns) / 1e6;

function heartbeatBody(device, fleet, n) {
  const now = Date.now() / 1000;
  const metric = (MetricName, Value) => ({ MetricName, Value, Timestamp: now });
  return {
    DeviceName: device,
    DeviceFleetName: fleet,
    AgentVersion: '1.0.0',
    AgentMetrics: [
      metric('CpuUtilization', n % 100),
      metric('MemoryUsedBytes', 1e8 + n),
      metric('StartupCount', 1),
      metric('CrashCount', 0),
    ],
    Models: ['resnet', 'yolo'].map((ModelName) => ({
      ModelName,
      ModelVersion: '1.0',
      LatestInference: now,
      LatestSampleTime: now - 10,
      ModelMetrics: [
        metric('InferenceCount', n),
        metric('InferenceLatencyMs', 4.2),
        metric('QueueTimeMs', 0.3),
      ],
    })),
  };
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
  const dataDir = mkdtempSync(join(tmpdir(), `edgefleet-bench-${engine}-`));
  const server = await startServer(dataDir, postgres?.url, SERVER_NODE_ARGS);
  try {
    const admin = { authorization: `Bearer ${server.token}` };
    const operator = new http.Agent({ keepAlive: true, maxSockets: 4 });
    const fleet = 'bench';
    await request(operator, `${server.operatorUrl}/api/v1/fleets`, {
      method: 'POST',
      headers: admin,
      body: { name: fleet, outputConfig: { s3OutputLocation: 's3://bench/captures' } },
    });
    const names = Array.from({ length: DEVICES }, (_, i) => `dev-${String(i).padStart(5, '0')}`);
    const devices = (await enrollDevices(server, fleet, names)).map(({ name, tls }) => ({
      name,
      agent: new https.Agent({ keepAlive: true, maxSockets: 1, ...tls }),
    }));

    let phase = 'warmup';
    let sent = 0;
    let completed = 0;
    let failures = 0;
    const heartbeatLatencies = [];
    const readLatencies = [];
    let next = 0;
    const worker = async () => {
      while (phase !== 'done') {
        const device = devices[next++ % devices.length];
        const measuring = phase === 'measure';
        const start = process.hrtime.bigint();
        sent++;
        const r = await request(device.agent, `${server.deviceUrl}/api/v1/device/heartbeat`, {
          method: 'POST',
          body: heartbeatBody(device.name, fleet, sent),
        }).catch((error) => ({ status: 0, body: String(error) }));
        device.connected = true;
        if (r.status !== 200) {
          failures++;
          if (failures <= 3) console.error(`heartbeat failed: ${r.status} ${JSON.stringify(r.body)}`);
        } else if (measuring && phase === 'measure') {
          completed++;
          heartbeatLatencies.push(ms(process.hrtime.bigint() - start));
        }
      }
    };
    const reader = async () => {
      const urls = [
        `/api/v1/devices?fleet=${fleet}&limit=50`,
        `/api/v1/devices/${names[Math.floor(names.length / 2)]}`,
        `/api/v1/fleets/${fleet}/report`,
      ];
      let i = 0;
      while (phase !== 'done') {
        const start = process.hrtime.bigint();
        const r = await request(operator, `${server.operatorUrl}${urls[i++ % urls.length]}`, {
          headers: admin,
        });
        if (r.status !== 200) throw new Error(`operator read failed: ${r.status}`);
        if (phase === 'measure') readLatencies.push(ms(process.hrtime.bigint() - start));
        await sleep(20);
      }
    };
    const running = [...Array.from({ length: CONCURRENCY }, worker), reader()];
    // Warm-up: every device has its TLS connection (handshakes are not what is measured), then WARMUP s more.
    while (!devices.every((d) => d.connected)) await sleep(100);
    await sleep(WARMUP * 1000);
    phase = 'measure';
    const t0 = process.hrtime.bigint();
    const [serverCpu0, clientCpu0] = [cpuSecondsOf(server.pid), ownCpuSeconds()];
    await sleep(SECONDS * 1000);
    const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
    const [serverCpu1, clientCpu1] = [cpuSecondsOf(server.pid), ownCpuSeconds()];
    phase = 'done';
    await Promise.all(running);
    // The heartbeats really landed: every device connected, and one device's metrics add up.
    const report = await request(operator, `${server.operatorUrl}/api/v1/fleets/${fleet}/report`, {
      headers: admin,
    });
    if (report.body.deviceStats.connectedDeviceCount !== DEVICES) {
      throw new Error(
        `only ${report.body.deviceStats.connectedDeviceCount} of ${DEVICES} devices are connected`,
      );
    }
    const series = await request(
      operator,
      `${server.operatorUrl}/api/v1/devices/${names[0]}/metrics?metricName=CrashCount&step=3600&since=${new Date(Date.now() - 3_600_000).toISOString()}`,
      { headers: admin },
    );
    const stored = series.body.series.reduce((n, s) => n + s.points.reduce((m, p) => m + p.count, 0), 0);
    const expectedAtLeast = Math.floor(completed / DEVICES) - 2;
    if (stored < expectedAtLeast)
      throw new Error(`device ${names[0]} has ${stored} CrashCount metrics, expected ≥ ${expectedAtLeast}`);
    for (const d of devices) d.agent.destroy();
    operator.destroy();

    heartbeatLatencies.sort((a, b) => a - b);
    readLatencies.sort((a, b) => a - b);
    const result = {
      engine,
      devices: DEVICES,
      concurrency: CONCURRENCY,
      seconds: Number(elapsed.toFixed(2)),
      heartbeatsPerSecond: Math.round(completed / elapsed),
      metricsPerSecond: Math.round((completed * 10) / elapsed),
      failures,
      // CPU time per heartbeat, from the processes' own counters: meaningful even on a busy machine.
      serverCpuMicrosPerHeartbeat:
        serverCpu0 === undefined ? undefined : Math.round(((serverCpu1 - serverCpu0) / completed) * 1e6),
      serverCpuUtilisation:
        serverCpu0 === undefined ? undefined : Number(((serverCpu1 - serverCpu0) / elapsed).toFixed(2)),
      loadCpuMicrosPerHeartbeat: Math.round(((clientCpu1 - clientCpu0) / completed) * 1e6),
      heartbeatLatencyMs: {
        p50: Number(percentile(heartbeatLatencies, 50).toFixed(2)),
        p99: Number(percentile(heartbeatLatencies, 99).toFixed(2)),
      },
      operatorReadLatencyMs: {
        samples: readLatencies.length,
        p50: Number(percentile(readLatencies, 50).toFixed(2)),
        p99: Number(percentile(readLatencies, 99).toFixed(2)),
      },
    };
    console.log(
      `${engine.padEnd(8)} ${String(result.heartbeatsPerSecond).padStart(6)} heartbeats/s ` +
        `(${result.metricsPerSecond} metrics/s, ${failures} failed) | heartbeat p50 ${result.heartbeatLatencyMs.p50} ms ` +
        `p99 ${result.heartbeatLatencyMs.p99} ms | operator reads p50 ${result.operatorReadLatencyMs.p50} ms ` +
        `p99 ${result.operatorReadLatencyMs.p99} ms (${readLatencies.length} reads)`,
    );
    if (result.serverCpuMicrosPerHeartbeat !== undefined) {
      console.log(
        `${''.padEnd(8)} server CPU ${result.serverCpuMicrosPerHeartbeat} µs/heartbeat (busy ${result.serverCpuUtilisation} cores ` +
          `→ ${Math.round(1e6 / result.serverCpuMicrosPerHeartbeat)} heartbeats/s per server core); ` +
          `load generator ${result.loadCpuMicrosPerHeartbeat} µs/heartbeat; load average ${loadavg()[0].toFixed(1)}`,
      );
    }
    return result;
  } finally {
    await server.stop();
    postgres?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

console.log(
  `heartbeat ingestion: ${DEVICES} devices, ${CONCURRENCY} in flight, ${WARMUP} s warm-up + ${SECONDS} s measured, ` +
    `server and load on one machine (${(await import('node:os')).cpus().length} cores)`,
);
const results = [];
for (const engine of ENGINES) {
  const result = await benchEngine(engine);
  if (result) results.push(result);
}
mkdirSync(join(root, 'bench-results'), { recursive: true });
writeFileSync(
  join(root, 'bench-results', 'heartbeats.json'),
  `${JSON.stringify({ at: new Date().toISOString(), results }, null, 2)}\n`,
);
