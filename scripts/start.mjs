// `npm start`: the whole product on embedded defaults, nothing to set up. The package life cycle on the demo
// model (edgefleet demo), then the control plane (SQLite, local blobs), a device agent enrolled to it, the
// demo model packaged and signed by the server, deployed to the agent through a deployment plan (the agent's
// update engine downloads, verifies and switches to it), heartbeats, a first inference, the console URL and
// what to try next. Ctrl-C stops everything; a second `npm start` reuses the server's state,
// the API token and the agent's enrollment. Everything lives under .edgefleet/ (or $EDGEFLEET_HOME).
// Each step goes through the product's own front doors: the CLI, the server's HTTP API, the agent binary.
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { get as httpGet } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const home = resolve(process.env.EDGEFLEET_HOME ?? join(root, '.edgefleet'));
const demoDir = resolve(process.env.EDGEFLEET_DEMO_DIR ?? join(home, 'demo'));
const serverDir = join(home, 'server');
const agentDir = join(home, 'agent');
const tokenFile = join(serverDir, 'demo-admin-token');
const bin = {
  cli: join(root, 'packages', 'cli', 'dist', 'main.js'),
  server: join(root, 'packages', 'server', 'dist', 'main.js'),
  agent: join(root, 'packages', 'agent', 'dist', 'main.js'),
};
const MODEL = { name: 'demo-classifier', version: '1.0', job: 'demo-classifier-1-0' };
const FLEET = 'demo-fleet';
const PLAN = { name: 'demo-rollout', stage: 'demo' };
const POLL_SECONDS = 2;
const HEALTH_WINDOW_SECONDS = 3;
const HEARTBEAT_SECONDS = 3;
const DEPLOY_WAIT_SECONDS = 120;
const DEVICE = 'demo-device';
const children = [];
/** A private temp folder for the agent's socket when .edgefleet's path is too long for one; removed on stop. */
let socketFolder;

function fail(message) {
  console.error(`\nnpm start: ${message}`);
  stopAll().then(() => process.exit(1));
}

/** Runs the CLI and returns its stdout; a failure stops everything with its message. */
function cli(args, env = {}) {
  const result = spawnSync(process.execPath, [bin.cli, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  if (result.status !== 0)
    throw new Error(`edgefleet ${args[0]} ${args[1] ?? ''} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

/** `preferred` if nothing listens there, else any free port. */
function freePort(preferred) {
  return new Promise((resolvePort) => {
    const probe = createServer();
    probe.once('error', () => {
      const any = createServer();
      any.listen(0, '127.0.0.1', () => {
        const { port } = any.address();
        any.close(() => resolvePort(port));
      });
    });
    probe.listen(preferred, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}

/** Starts a daemon whose stdout is JSON log lines; resolves with the first line `ready` accepts. */
function startDaemon(name, args, logFile, ready) {
  // Its own process group: a terminal's Ctrl-C reaches only this script, which stops each daemon once.
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  children.push({ name, child, exited: new Promise((done) => child.once('exit', done)) });
  const log = [];
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  return new Promise((resolveReady, reject) => {
    child.once('exit', (code) =>
      reject(new Error(`${name} exited (${code}) while starting: ${stderr.trim()}`)),
    );
    createInterface({ input: child.stdout }).on('line', (line) => {
      log.push(line);
      writeFileSync(logFile, `${line}\n`, { flag: 'a' });
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.level >= 50) console.error(`${name}: ${entry.msg}`);
      if (ready(entry)) resolveReady(entry);
    });
  });
}

async function stopAll() {
  for (const { child } of children) if (child.exitCode === null) child.kill('SIGTERM');
  await Promise.all(children.map((c) => c.exited));
  if (socketFolder) rmSync(socketFolder, { recursive: true, force: true });
}

async function main() {
  // 1-7: the package life cycle, locally (edgefleet demo recreates its folder each run).
  const demo = spawnSync(process.execPath, [bin.cli, 'demo', '--dir', demoDir], { stdio: 'inherit' });
  if (demo.status !== 0) process.exit(demo.status ?? 1);

  // 8: the control plane on SQLite and a local blob folder; its first admin token is kept for the next run.
  mkdirSync(home, { recursive: true });
  let token = existsSync(tokenFile) ? readFileSync(tokenFile, 'utf8').trim() : '';
  if (!token) {
    const init = spawnSync(process.execPath, [bin.server, 'init', '--data-dir', serverDir], {
      encoding: 'utf8',
    });
    if (init.status !== 0) throw new Error(`edgefleet-server init failed: ${init.stderr.trim()}`);
    token = init.stdout.trim();
    if (!token) {
      throw new Error(
        `${serverDir} has an admin token this script did not keep; remove ${serverDir} to start over`,
      );
    }
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  }
  const operatorPort = await freePort(Number(process.env.EDGEFLEET_SERVER_PORT ?? 8090));
  const devicePort = await freePort(Number(process.env.EDGEFLEET_DEVICE_PORT ?? 8443));
  const operatorUrl = `http://127.0.0.1:${operatorPort}`;
  const deviceUrl = `https://127.0.0.1:${devicePort}`;
  console.log(`\n8. Starting the control plane (state: ${serverDir}, logs: ${join(home, 'server.log')})`);
  await startDaemon(
    'edgefleet-server',
    [
      bin.server,
      'serve',
      '--data-dir',
      serverDir,
      '--listen',
      `127.0.0.1:${operatorPort}`,
      '--device-listen',
      `127.0.0.1:${devicePort}`,
      '--device-endpoint',
      deviceUrl,
    ],
    join(home, 'server.log'),
    (entry) => entry.msg === 'edgefleet-server started',
  );
  const env = { EDGEFLEET_SERVER: operatorUrl, EDGEFLEET_TOKEN: token };
  const api = async (method, path, body) => {
    const response = await fetch(`${operatorUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body && { 'content-type': 'application/json' }) },
      ...(body && { body: JSON.stringify(body) }),
    });
    return { status: response.status, body: await response.json().catch(() => ({})) };
  };
  for (
    let i = 0;
    (await fetch(`${operatorUrl}/readyz`).then(
      (r) => r.ok,
      () => false,
    )) === false;
    i++
  ) {
    if (i > 100) throw new Error(`the server did not get ready at ${operatorUrl}/readyz`);
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(`   Operator API ${operatorUrl}, device API (mutual TLS) ${deviceUrl}`);

  // 9: a fleet, a device, and the agent enrolled to it (once; its key and certificate are kept).
  if ((await api('GET', `/api/v1/fleets/${FLEET}`)).status === 404) {
    cli(['fleet', 'create', FLEET, '--output', 's3://edgefleet-demo/captures'], env);
  }
  if ((await api('GET', `/api/v1/devices/${DEVICE}`)).status === 404)
    cli(['device', 'register', FLEET, DEVICE], env);
  const agentConfigFile = join(agentDir, 'agent-config.json');
  const identityDir = join(agentDir, 'identity');
  if (!existsSync(join(identityDir, 'device.pem'))) {
    mkdirSync(agentDir, { recursive: true });
    const enrollment = await api('POST', `/api/v1/devices/${DEVICE}/enrollment-tokens`, {});
    if (enrollment.status !== 201) throw new Error(`enrollment token: HTTP ${enrollment.status}`);
    cli([
      'device',
      'enroll',
      '--server',
      operatorUrl,
      '--token',
      enrollment.body.token,
      '--config',
      agentConfigFile,
      '--cert-dir',
      identityDir,
    ]);
    console.log(`9. Enrolled the agent as ${DEVICE} of ${FLEET} (key and certificate in ${identityDir})`);
  } else {
    console.log(`9. The agent is enrolled as ${DEVICE} of ${FLEET} (kept from the last run)`);
  }

  // 10: the demo model uploaded, then packaged and signed by the server (a packaging job).
  if ((await api('GET', `/api/v1/models/${MODEL.name}/versions/${MODEL.version}`)).status === 404) {
    const onnx = readdirSync(demoDir).find((f) => f.endsWith('.onnx'));
    cli(['model', 'upload', join(demoDir, onnx), '--name', MODEL.name, '--version', MODEL.version], env);
  }
  if ((await api('GET', `/api/v1/packaging-jobs/${MODEL.job}`)).status === 404) {
    cli(['packaging', 'create', MODEL.job, '--model', MODEL.name, '--version', MODEL.version, '--wait'], env);
  }
  console.log(`10. Packaged and signed ${MODEL.name} ${MODEL.version} on the server (job ${MODEL.job})`);

  // 11: the agent, trusting only packages the server signed, polling for deployments and heartbeating.
  // Enrollment put the server's signing root in trust/ beside the config; state from before --trust-dir (or an
  // enrollment that could not fetch it) lacks it there, and gets it from the server. The demo runs everything as
  // one user, so that user owns the folder; an installed agent's trust folder is root's (deploy/README.md).
  const trustDir = join(agentDir, 'trust');
  if (!existsSync(join(trustDir, 'package-signing-root.pem'))) {
    mkdirSync(trustDir, { recursive: true });
    cli(['packaging', 'root-certificate', '--out', join(trustDir, 'server-signing-root.pem')], env);
  }
  const restPort = await freePort(Number(process.env.EDGEFLEET_REST_PORT ?? 8080));
  let socket = join(agentDir, 'agent.sock');
  // Too long for a Unix socket's address: a fresh private folder, not a fixed /tmp name another user could take.
  if (Buffer.byteLength(socket) > 100) {
    socketFolder = mkdtempSync(join(tmpdir(), 'edgefleet-demo-'));
    socket = join(socketFolder, 'agent.sock');
  }
  // Earlier versions of this script preloaded the package; the update engine installs it now.
  const { edgefleet_preload_models: _preloaded, ...enrolled } = JSON.parse(
    readFileSync(agentConfigFile, 'utf8'),
  );
  writeFileSync(
    agentConfigFile,
    `${JSON.stringify(
      {
        ...enrolled,
        sagemaker_edge_core_endpoint_override: deviceUrl, // the port may differ from the last run's
        sagemaker_edge_core_root_certs_path: trustDir,
        sagemaker_edge_local_data_root_path: join(agentDir, 'state'),
        sagemaker_edge_core_capture_data_disk_path: join(agentDir, 'capture'),
        edgefleet_rest_tcp: `127.0.0.1:${restPort}`,
        edgefleet_heartbeat_interval_seconds: HEARTBEAT_SECONDS,
        // Deployments on (Edge Manager's switch; the path itself is not used), polled often for the demo,
        // and a short health window so the first rollout commits within seconds.
        sagemaker_edge_deployment_lib_path: join(agentDir, 'deployments'),
        sagemaker_edge_db_module_path: join(agentDir, 'db'), // the local database, which deployments need
        edgefleet_deployment_poll_interval_seconds: POLL_SECONDS,
        edgefleet_deployment_health_window_seconds: HEALTH_WINDOW_SECONDS,
      },
      null,
      2,
    )}\n`,
  );
  console.log(`11. Starting the device agent (logs: ${join(home, 'agent.log')})`);
  await startDaemon(
    'edgefleet-agent',
    [bin.agent, '-a', socket, '-c', agentConfigFile, '-f'],
    join(home, 'agent.log'),
    (entry) => entry.event === 'listening',
  );
  const rest = `http://127.0.0.1:${restPort}`;
  // The agent status answers on the REST Unix socket only (TCP refuses it: docs/security.md); it is beside -a's.
  const restSocket = join(dirname(socket), 'agent.rest.sock');
  const agentStatus = () =>
    new Promise((resolve) => {
      const request = httpGet({ socketPath: restSocket, path: '/edgefleet/v1/status' }, (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('end', () => {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
          } catch {
            resolve({ models: [] });
          }
        });
      });
      request.on('error', () => resolve({ models: [] }));
    });

  // 12: a deployment plan (one stage: this device), started; the agent downloads, verifies and switches.
  const stagePath = `/api/v1/deployment-plans/${PLAN.name}/stages/${PLAN.stage}`;
  if ((await api('GET', `/api/v1/deployment-plans/${PLAN.name}`)).status === 404) {
    // A concurrent creation is a 409: the plan exists then, which is all this needs.
    try {
      cli(
        [
          'deployment',
          'create',
          PLAN.name,
          '--fleet',
          FLEET,
          '--model',
          `${MODEL.name}=${MODEL.job}`,
          '--stage',
          `${PLAN.stage}:devices=${DEVICE}`,
        ],
        env,
      );
    } catch (error) {
      if ((await api('GET', `/api/v1/deployment-plans/${PLAN.name}`)).status !== 200) throw error;
    }
    console.log(
      `12. Created the deployment plan ${PLAN.name}: ${MODEL.name} → stage ${PLAN.stage} (${DEVICE})`,
    );
  } else {
    console.log(`12. The deployment plan ${PLAN.name} exists (kept from the last run)`);
  }
  const plan = (await api('GET', `/api/v1/deployment-plans/${PLAN.name}`)).body;
  const stage = plan.stages?.find((s) => s.name === PLAN.stage) ?? {};
  if (stage.status === 'READYTODEPLOY') {
    cli(['deployment', 'start-stage', PLAN.name, PLAN.stage], env);
    console.log(`    Started stage ${PLAN.stage}; the agent polls every ${POLL_SECONDS} s:`);
  } else {
    console.log(
      `    Stage ${PLAN.stage} is ${stage.status ?? 'unknown'} (started in an earlier run); the agent polls every ${POLL_SECONDS} s:`,
    );
  }
  // Progress: the agent's update state for the handle and the server's view of the device, on each change.
  let seen = '';
  let serving;
  let deviceStatus;
  for (let i = 0; ; i++) {
    const status = await agentStatus();
    const update = status.deployments?.models?.find((m) => m.handle === MODEL.name);
    serving = status.models?.find((m) => m.name === MODEL.name);
    const devices = (await api('GET', `${stagePath}/devices`)).body.devices ?? [];
    const device = devices.find((d) => d.deviceName === DEVICE);
    deviceStatus = device?.status;
    const line =
      `    agent: ${update ? `${update.state} ${update.version ?? ''}`.trimEnd() : 'no update yet'}` +
      `${update?.reason ? ` (${update.reason})` : ''}; server: ${DEVICE} ${deviceStatus ?? '?'}` +
      `${device?.statusMessage && !device.statusMessage.startsWith(device.status) ? ` (${device.statusMessage})` : ''}`;
    if (line !== seen) console.log(line);
    seen = line;
    if (deviceStatus === 'DEPLOYED' && serving) break;
    if (deviceStatus === 'FAILED' || deviceStatus === 'STOPPED' || update?.state === 'Failed') {
      throw new Error(`the deployment did not succeed: ${line.trim()}`);
    }
    if (i > DEPLOY_WAIT_SECONDS * 4) {
      throw new Error(`the deployment did not finish within ${DEPLOY_WAIT_SECONDS} s: ${line.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  console.log(
    `    Deployed: the agent serves ${MODEL.name} ${serving.version}, ` +
      `signature ${serving.signatureVerified ? "verified against the server's signing root" : 'NOT verified'}.`,
  );

  // 13: a first inference, and the device as the control plane sees it.
  const body = JSON.stringify({
    inputs: [{ name: 'features', datatype: 'FP32', shape: [1, 4], data: [5.1, 3.5, 1.4, 0.2] }],
  });
  const answer = await fetch(`${rest}/v2/models/${MODEL.name}/infer`, { method: 'POST', body })
    .then(async (r) => JSON.stringify((await r.json()).outputs?.[0]?.data))
    .catch((error) => `(the check call failed: ${error.message})`);
  let online = false;
  for (let i = 0; i < 50 && !online; i++) {
    online = (await api('GET', `/api/v1/devices/${DEVICE}`)).body.status === 'online';
    if (!online) await new Promise((r) => setTimeout(r, 200));
  }

  console.log(`13. gRPC, the SageMaker Edge agent API:  unix://${socket}
    REST, KServe v2:                     ${rest}
    A first inference (setosa-like flower) → probabilities ${answer}
    The device is ${online ? 'online in' : 'not yet reporting to'} the control plane (heartbeats every ${HEARTBEAT_SECONDS} s).

Console:        ${operatorUrl}/   (sign in with the admin API token)
Control plane:  ${operatorUrl}   admin API token: ${token}
Try:
   curl -s -X POST ${rest}/v2/models/${MODEL.name}/infer \\
        -d '{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],"data":[6.7,3.0,5.2,2.3]}]}'
   curl -s ${rest}/metrics | grep edgefleet_deployment
   curl -s -H "authorization: Bearer ${token}" ${operatorUrl}/api/v1/deployment-plans/${PLAN.name}
   export EDGEFLEET_SERVER=${operatorUrl} EDGEFLEET_TOKEN=${token}
   npx edgefleet deployment describe ${PLAN.name}
   npx edgefleet deployment devices ${PLAN.name} ${PLAN.stage}
   npx edgefleet deployment events ${PLAN.name}
   npx edgefleet fleet report ${FLEET}
   npx edgefleet device describe ${DEVICE}
   npx edgefleet agent list --socket ${socket}
   Existing SageMaker Edge clients: point them at unix://${socket}

Ctrl-C stops the agent and the control plane; the next npm start reuses their state.`);
}

let signals = 0;
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    signals += 1;
    if (signals > 1) process.exit(130);
    console.log('\nstopping the agent and the control plane…');
    stopAll().then(() => {
      console.log('stopped');
      process.exit(0);
    });
  });
}
main().catch((error) => fail(error.message));
