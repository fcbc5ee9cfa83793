/**
 * The SageMaker facade through boto3 (Debian's python3-boto3; .ci/run installs it) against a real
 * edgefleet-server process. The Python side (boto3_facade.py) holds the cases; this file starts the server,
 * creates access keys through the REST API, enrolls and starts a real agent (from packages/agent/dist) for
 * the Edge Manager flow once the script has registered its devices, and fails if any Python case fails.
 */
import { spawn, spawnSync } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AGENT_MAIN,
  requireBuilt,
  startAgentProcess,
  type AgentProcess,
} from '../../../../test/support/control-plane.js';
import { runServerCli, startServerProcess, type ServerProcess } from '../support/process.js';

import { startTestS3, type TestS3 } from '../support/s3.js';

/**
 * The Python the cases run under: EDGEFLEET_TEST_PYTHON when set (to run them under a given boto3, e.g. Debian's
 * /usr/bin/python3 with botocore 1.29 where a pyenv with a newer one comes first on the PATH), else the first with
 * boto3 of `python3` on the PATH and Debian's, where .ci/run installs python3-boto3. The cases send only what
 * botocore 1.29 (Debian 12) and today's both accept, as scripts written for Edge Manager do.
 */
const PYTHON =
  process.env.EDGEFLEET_TEST_PYTHON ??
  ['python3', '/usr/bin/python3'].find(
    (python) => spawnSync(python, ['-c', 'import boto3'], { stdio: 'ignore' }).status === 0,
  ) ??
  'python3';

const SCRIPT = fileURLToPath(new URL('./boto3_facade.py', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const CLI_MAIN = path.join(REPO_ROOT, 'packages', 'cli', 'src', 'main.ts');
const TSX_LOADER = pathToFileURL(
  path.join(REPO_ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs'),
).toString();

/** `edgefleet …` as a real process (from source, through tsx). */
function edgefleetCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', TSX_LOADER, CLI_MAIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
  });
}

function runPython(env: Record<string, string>): {
  done: Promise<{ code: number | null; output: string }>;
  exited: () => boolean;
  kill: () => void;
} {
  let exited = false;
  let kill = () => {};
  const done = new Promise<{ code: number | null; output: string }>((resolve, reject) => {
    const child = spawn(PYTHON, [SCRIPT], {
      env: { ...process.env, ...env, AWS_CONFIG_FILE: '/dev/null', AWS_SHARED_CREDENTIALS_FILE: '/dev/null' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    kill = () => child.kill('SIGKILL');
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      exited = true;
      resolve({ code, output });
    });
  });
  return { done, exited: () => exited, kill: () => kill() };
}

/** Resolves once `file` exists; false if `stop()` turns true first. */
async function fileAppears(file: string, stop: () => boolean): Promise<boolean> {
  for (;;) {
    if (
      await access(file).then(
        () => true,
        () => false,
      )
    )
      return true;
    if (stop()) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('SageMaker facade with boto3 (real server process)', { timeout: 180_000 }, () => {
  let cwd: string;
  let s3: TestS3;
  let server: ServerProcess;
  let adminToken: string;
  let agent: AgentProcess | undefined;

  beforeAll(async () => {
    requireBuilt(AGENT_MAIN);
    cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-facade-'));
    s3 = await startTestS3('edge-models');
    // The fleets' output buckets (boto3_facade.py's, and the documented example's): a server with S3 settings
    // writes captures into them, and a fleet takes an output only once its bucket is known to exist.
    const client = new S3Client({
      endpoint: s3.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      // A copy: the SDK marks the credentials object it is given, which the server config below spreads.
      credentials: { ...s3.credentials },
    });
    for (const bucket of ['edge-output', 'other', 'captures'])
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    client.destroy();
    // The server reads model inputs from, and writes packages to, this S3-compatible store.
    await writeFile(
      path.join(cwd, 'server.json'),
      JSON.stringify({
        listen: '127.0.0.1:0',
        deviceListen: '127.0.0.1:0',
        logLevel: 'info',
        s3: { endpoint: s3.endpoint, forcePathStyle: true, ...s3.credentials },
        packaging: { pollIntervalMs: 50 },
        // Small enough for HeartbeatLimits to pass in a few heartbeats; the agents here send far less.
        heartbeat: { metricBytesPerDevicePerHour: 1024 * 1024 },
      }),
    );
    const init = await runServerCli(['init', '-c', 'server.json'], cwd);
    expect(init.code).toBe(0);
    adminToken = init.stdout.trim();
    server = await startServerProcess(['-c', 'server.json'], cwd);
  }, 120_000);
  afterAll(async () => {
    if (agent !== undefined && agent.child.exitCode === null && agent.child.signalCode === null) {
      agent.child.kill('SIGTERM');
      await agent.exited;
    }
    await server?.stop();
    await s3?.stop();
    await rm(cwd, { recursive: true, force: true });
  });

  async function accessKey(scope: 'admin' | 'read-only') {
    const response = await fetch(`${server.operatorUrl}/api/v1/access-keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: `boto3 ${scope}`, scope }),
    });
    expect(response.status).toBe(201);
    return (await response.json()) as { accessKeyId: string; secretAccessKey: string };
  }

  async function startEnrolledAgent(dir: string, deviceName: string): Promise<AgentProcess> {
    const operator = { EDGEFLEET_SERVER: server.operatorUrl, EDGEFLEET_TOKEN: adminToken };
    const token = await edgefleetCli(['device', 'enrollment-token', deviceName], operator);
    expect(token.code, token.output).toBe(0);
    const config = path.join(dir, 'agent.json');
    const enrolled = await edgefleetCli(
      ['device', 'enroll', '--token', token.output.trim(), '--config', config],
      operator,
    );
    expect(enrolled.code, enrolled.output).toBe(0);
    const settings = JSON.parse(await readFile(config, 'utf8')) as Record<string, unknown>;
    await writeFile(
      config,
      JSON.stringify({
        ...settings,
        // Deployments on (Edge Manager's switch), polled every second, a one-second health window.
        sagemaker_edge_deployment_lib_path: '/usr/lib/deployment.so',
        edgefleet_deployment_poll_interval_seconds: 1,
        edgefleet_deployment_health_window_seconds: 1,
        edgefleet_heartbeat_interval_seconds: 1,
        edgefleet_rest_socket_path: path.join(dir, 'rest.sock'),
      }),
    );
    const started = startAgentProcess(path.join(dir, 'agent.sock'), config, dir);
    await started.waitFor((line) => line.event === 'listening', `${deviceName} listening`);
    return started;
  }

  it('passes every boto3 case', async () => {
    const admin = await accessKey('admin');
    const reader = await accessKey('read-only');
    const workDir = path.join(cwd, 'work');
    await mkdir(workDir);
    const python = runPython({
      EF_S3_ENDPOINT: s3.endpoint,
      EF_S3_BUCKET: s3.bucket,
      EF_MODEL_FILE: await writeTestModel('tiny', workDir),
      EF_WORK_DIR: workDir,
      EF_ENDPOINT: server.operatorUrl,
      EF_ADMIN_TOKEN: adminToken,
      EF_ADMIN_KEY_ID: admin.accessKeyId,
      EF_ADMIN_SECRET: admin.secretAccessKey,
      EF_READ_KEY_ID: reader.accessKeyId,
      EF_READ_SECRET: reader.secretAccessKey,
    });
    // The Edge Manager flow's other half: once boto3 has registered the devices, em-cam-1 enrolls and a real
    // agent (deployments on, polling every second) runs for it.
    if (await fileAppears(path.join(workDir, 'devices-registered'), python.exited)) {
      try {
        agent = await startEnrolledAgent(path.join(workDir, 'em-cam-1'), 'em-cam-1');
      } catch (error) {
        // The script would wait for the agent in vain: end it, leaving no process behind.
        python.kill();
        await python.done;
        throw error;
      }
      await writeFile(path.join(workDir, 'agent-running'), 'em-cam-1\n');
    }
    const result = await python.done;
    expect(result.output).toMatch(/^OK/m);
    // Every case ran (none skipped silently).
    expect(result.output).toMatch(/^Ran 28 tests/m);
    expect(result.code, result.output).toBe(0);

    // The package the packaging job wrote to S3 verifies against the server's signing root.
    const root = await fetch(`${server.operatorUrl}/api/v1/signing/root-certificate`, {
      headers: { authorization: `Bearer ${adminToken}` },
    });
    const trustDir = path.join(workDir, 'trust');
    await mkdir(trustDir);
    await writeFile(
      path.join(trustDir, 'root.pem'),
      ((await root.json()) as { certificatePem: string }).certificatePem,
    );
    const verified = await edgefleetCli([
      'package',
      'verify',
      path.join(workDir, 'tiny-1.0.tar.gz'),
      '--trust',
      trustDir,
    ]);
    expect(verified.code, verified.output).toBe(0);
  });
});
