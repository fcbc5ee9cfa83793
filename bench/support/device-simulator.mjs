// A light device simulator: speaks EdgeFleet's device API over mutual TLS like an agent's update engine
// would (GetDeployments, package download with SHA-256 check, DeploymentResult in a heartbeat), without
// ONNX Runtime, so one process can stand in for a thousand devices. Used by bench/deployments.bench.mjs
// to test rollout bookkeeping at scale; see docs/deployments.md.
//
//   const fleet = simulateFleet({ deviceUrl, devices, pollIntervalMs: 10_000, failRate: 0 });
//   … later: fleet.stats(); await fleet.stop();
//
// Each device polls at its interval with jitter (its first poll at a random point of the first interval,
// as agents started at different times do), installs what the answer asks for that it does not run, and
// reports the result. A device chosen by `failRate` (deterministic: a hash of its name) reports FAIL.
import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import https from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';

/** One HTTPS request; resolves with status and body (JSON parsed when it is JSON, else the bytes). */
function call(agent, url, { method = 'GET', body } = {}) {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        agent,
        headers: payload === undefined ? {} : { 'content-type': 'application/json' },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const bytes = Buffer.concat(chunks);
          const json = (res.headers['content-type'] ?? '').includes('json');
          resolve({
            status: res.statusCode,
            body: json && bytes.length > 0 ? JSON.parse(bytes.toString()) : bytes,
          });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** A stable fraction in [0, 1) from a name: which devices fail does not change between runs. */
const fractionOf = (name) => createHash('sha256').update(name).digest().readUInt32BE(0) / 2 ** 32;

/**
 * A loopback source address of its own for device `index` (127.10.x.y): real devices connect from their own
 * addresses, and a thousand sharing 127.0.0.1 would run into the device port's per-address connection cap,
 * which a fleet does not. Linux routes all of 127.0.0.0/8 to the loopback interface; elsewhere, none.
 */
const sourceAddressOf = (index) =>
  process.platform === 'linux' ? `127.10.${Math.floor(index / 250)}.${(index % 250) + 1}` : undefined;

/**
 * Runs the devices until stop(). `devices`: [{ name, fleet, tls: { ca, cert, key } }].
 * Options: pollIntervalMs, jitter (share of the interval, default 0.2), failRate (default 0).
 */
export function simulateFleet({ deviceUrl, devices, pollIntervalMs, jitter = 0.2, failRate = 0 }) {
  let running = true;
  const stopping = new AbortController();
  setMaxListeners(devices.length + 10, stopping.signal);
  // Sleeps end early on stop(), so stopping a thousand devices does not wait out their intervals.
  const pause = (ms) => sleep(ms, undefined, { signal: stopping.signal }).catch(() => undefined);
  const stats = { polls: 0, downloads: 0, downloadedBytes: 0, reports: 0, failedReports: 0, errors: 0 };
  const loops = devices.map(async (device, index) => {
    // No keep-alive (an agent polls every few seconds at most), but each device's agent resumes its TLS
    // session, as a real client library would.
    const localAddress = sourceAddressOf(index);
    const agent = new https.Agent({
      keepAlive: false,
      ...(localAddress !== undefined && { localAddress }),
      ca: device.tls.ca,
      cert: device.tls.cert,
      key: device.tls.key,
    });
    const installed = new Map(); // model handle → package SHA-256
    const ids = { DeviceName: device.name, DeviceFleetName: device.fleet };
    const fails = fractionOf(device.name) < failRate;
    // A result the server has not acknowledged yet: sent again before the next poll, as the agent repeats its
    // last result in every heartbeat until accepted (else a report lost to a dropped connection would leave
    // the device INPROGRESS for good, since it already runs the package and asks for nothing more).
    let unsent;
    const report = async (result) => {
      unsent = result;
      const sent = await call(agent, `${deviceUrl}/api/v1/device/heartbeat`, {
        method: 'POST',
        body: { ...ids, AgentVersion: 'simulator 1.0', DeploymentResult: result },
      });
      if (sent.status !== 200)
        throw new Error(`SendHeartbeat: HTTP ${sent.status} ${JSON.stringify(sent.body)}`);
      unsent = undefined;
      stats.reports++;
      if (result.DeploymentStatus === 'FAIL') stats.failedReports++;
    };
    await pause(Math.random() * pollIntervalMs);
    while (running) {
      try {
        if (unsent !== undefined) await report(unsent);
        stats.polls++;
        const answer = await call(agent, `${deviceUrl}/api/v1/device/deployments`, {
          method: 'POST',
          body: ids,
        });
        if (answer.status !== 200) throw new Error(`GetDeployments: HTTP ${answer.status}`);
        for (const deployment of answer.body.Deployments ?? []) {
          const todo = (deployment.Definitions ?? []).filter((d) =>
            d.State === 'UNDEPLOY' ? installed.has(d.ModelHandle) : installed.get(d.ModelHandle) !== d.Sha256,
          );
          if (todo.length === 0) continue;
          const started = Date.now() / 1000;
          const models = [];
          for (const definition of todo) {
            if (definition.State === 'UNDEPLOY') {
              installed.delete(definition.ModelHandle);
              models.push({
                ModelHandle: definition.ModelHandle,
                State: 'UNDEPLOY',
                DesiredState: 'UNDEPLOY',
                Status: 'SUCCESS',
              });
              continue;
            }
            const pkg = await call(agent, `${deviceUrl}${definition.PackageUrl}`);
            stats.downloads++;
            const sha256 = createHash('sha256').update(pkg.body).digest('hex');
            stats.downloadedBytes += pkg.body.length;
            const ok = pkg.status === 200 && sha256 === definition.Sha256 && !fails;
            if (ok) installed.set(definition.ModelHandle, definition.Sha256);
            models.push({
              ModelHandle: definition.ModelHandle,
              ModelName: definition.ModelName,
              ModelVersion: definition.ModelVersion,
              DesiredState: 'DEPLOY',
              State: ok ? 'DEPLOY' : 'UNDEPLOY',
              Status: ok ? 'SUCCESS' : 'FAIL',
              ...(!ok && {
                StatusReason: fails ? 'simulated failure' : `download: HTTP ${pkg.status}, sha256 ${sha256}`,
              }),
            });
          }
          const failed = models.some((m) => m.Status === 'FAIL');
          await report({
            DeploymentName: deployment.DeploymentName,
            DeploymentStatus: failed ? 'FAIL' : 'SUCCESS',
            DeploymentStartTime: started,
            DeploymentEndTime: Date.now() / 1000,
            DeploymentModels: models,
          });
        }
      } catch (error) {
        stats.errors++;
        if (stats.errors <= 3) console.error(`simulated device ${device.name}: ${error.message}`);
      }
      const spread = pollIntervalMs * jitter;
      await pause(pollIntervalMs - spread / 2 + Math.random() * spread);
    }
    agent.destroy();
  });
  return {
    stats: () => ({ ...stats }),
    stop: async () => {
      running = false;
      stopping.abort();
      await Promise.all(loops);
    },
  };
}
