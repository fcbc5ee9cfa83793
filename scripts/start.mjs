// `npm start`: the package life cycle on the bundled demo model (edgefleet demo), then the device agent serving
// the signed demo package, verified against the demo PKI, on the SageMaker Edge gRPC socket and KServe v2 REST.
// Everything lives under .edgefleet/demo (or $EDGEFLEET_DEMO_DIR); nothing needs a database server or a cloud account.
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const demoDir = resolve(process.env.EDGEFLEET_DEMO_DIR ?? join(root, '.edgefleet', 'demo'));
const cli = join(root, 'packages', 'cli', 'dist', 'main.js');
const agentBin = join(root, 'packages', 'agent', 'dist', 'main.js');

const demo = spawnSync(process.execPath, [cli, 'demo', '--dir', demoDir], { stdio: 'inherit' });
if (demo.status !== 0) process.exit(demo.status ?? 1);

const port = await freePort(Number(process.env.EDGEFLEET_REST_PORT ?? 8080));
// A Unix socket path is limited to 107 bytes; a deep checkout falls back to /tmp.
let socket = join(demoDir, 'agent.sock');
if (Buffer.byteLength(socket) > 100) socket = `/tmp/edgefleet-demo-${process.getuid?.() ?? 'user'}.sock`;
const configPath = join(demoDir, 'agent-config.json');
writeFileSync(
  configPath,
  `${JSON.stringify(
    {
      sagemaker_edge_core_device_name: 'demo-device',
      sagemaker_edge_core_device_fleet_name: 'demo-fleet',
      sagemaker_edge_core_root_certs_path: join(demoDir, 'pki', 'trust'),
      sagemaker_edge_local_data_root_path: join(demoDir, 'agent'),
      sagemaker_edge_core_capture_data_disk_path: join(demoDir, 'capture'),
      edgefleet_rest_tcp: `127.0.0.1:${port}`,
      edgefleet_preload_models: [
        { url: join(demoDir, 'device', 'models', 'demo-classifier'), name: 'demo-classifier' },
      ],
    },
    null,
    2,
  )}\n`,
);

const logPath = join(demoDir, 'agent.log');
const log = createWriteStream(logPath);
console.log(`\n8. Starting the device agent (logs: ${logPath})`);
const agent = spawn(process.execPath, [agentBin, '-a', socket, '-c', configPath, '-f'], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => agent.kill(signal));
agent.on('exit', (code, signal) => {
  console.log(`agent stopped (${signal ?? `exit ${code}`})`);
  process.exit(code ?? 0);
});

createInterface({ input: agent.stdout }).on('line', (line) => {
  log.write(`${line}\n`);
  let entry;
  try {
    entry = JSON.parse(line);
  } catch {
    return;
  }
  if (entry.level >= 50) console.error(`agent: ${entry.msg}`);
  if (entry.event === 'listening') void announce(entry);
});

async function announce(entry) {
  const rest = `http://127.0.0.1:${port}`;
  const body = JSON.stringify({
    inputs: [{ name: 'features', datatype: 'FP32', shape: [1, 4], data: [5.1, 3.5, 1.4, 0.2] }],
  });
  let answer = '';
  try {
    const response = await fetch(`${rest}/v2/models/demo-classifier/infer`, { method: 'POST', body });
    answer = JSON.stringify((await response.json()).outputs?.[0]?.data);
  } catch (error) {
    answer = `(the check call failed: ${error.message})`;
  }
  console.log(`   Serving ${entry.models.join(', ')}, signature verified against the demo root CA.
   gRPC, the SageMaker Edge agent API:  unix://${socket}
   REST, KServe v2:                     ${rest}
   A first inference (setosa-like flower) → probabilities ${answer}

Try:
   curl -s ${rest}/v2/models/demo-classifier
   curl -s -X POST ${rest}/v2/models/demo-classifier/infer \\
        -d '{"inputs":[{"name":"features","datatype":"FP32","shape":[1,4],"data":[6.7,3.0,5.2,2.3]}]}'
   curl -s ${rest}/metrics | grep edgefleet_inference
   Existing SageMaker Edge clients: point them at unix://${socket}

Ctrl-C stops the agent.`);
}

/** `preferred` if nothing listens there (0: any), else any free port. */
function freePort(preferred) {
  return new Promise((resolvePort) => {
    const probe = createServer();
    probe.once('error', () => {
      const any = createServer();
      any.listen(0, '127.0.0.1', () => {
        const { port: p } = any.address();
        any.close(() => resolvePort(p));
      });
    });
    probe.listen(preferred, '127.0.0.1', () => {
      const { port: p } = probe.address();
      probe.close(() => resolvePort(p));
    });
  });
}
