/**
 * The SageMaker facade through boto3 (Debian's python3-boto3; .ci/run installs it) against a real
 * edgefleet-server process. The Python side (boto3_facade.py) holds the cases; this file starts the server,
 * creates access keys through the REST API, and fails if any Python case fails.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runServerCli, startServerProcess, type ServerProcess } from '../support/process.js';
import { startTestS3, type TestS3 } from '../support/s3.js';

const SCRIPT = fileURLToPath(new URL('./boto3_facade.py', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const CLI_MAIN = path.join(REPO_ROOT, 'packages', 'cli', 'src', 'main.ts');
const TSX_LOADER = pathToFileURL(
  path.join(REPO_ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs'),
).toString();

/** `edgefleet …` as a real process (from source, through tsx). */
function edgefleetCli(args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', TSX_LOADER, CLI_MAIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
  });
}

function runPython(env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', [SCRIPT], {
      env: { ...process.env, ...env, AWS_CONFIG_FILE: '/dev/null', AWS_SHARED_CREDENTIALS_FILE: '/dev/null' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
  });
}

describe('SageMaker facade with boto3 (real server process)', { timeout: 180_000 }, () => {
  let cwd: string;
  let s3: TestS3;
  let server: ServerProcess;
  let adminToken: string;

  beforeAll(async () => {
    cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-facade-'));
    s3 = await startTestS3('edge-models');
    // The server reads model inputs from, and writes packages to, this S3-compatible store.
    await writeFile(
      path.join(cwd, 'server.json'),
      JSON.stringify({
        listen: '127.0.0.1:0',
        deviceListen: '127.0.0.1:0',
        logLevel: 'info',
        s3: { endpoint: s3.endpoint, forcePathStyle: true, ...s3.credentials },
        packaging: { pollIntervalMs: 50 },
      }),
    );
    const init = await runServerCli(['init', '-c', 'server.json'], cwd);
    expect(init.code).toBe(0);
    adminToken = init.stdout.trim();
    server = await startServerProcess(['-c', 'server.json'], cwd);
  }, 120_000);
  afterAll(async () => {
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

  it('passes every boto3 case', async () => {
    const admin = await accessKey('admin');
    const reader = await accessKey('read-only');
    const workDir = path.join(cwd, 'work');
    await mkdir(workDir);
    const result = await runPython({
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
    expect(result.output).toMatch(/^OK/m);
    // Every case ran (none skipped silently).
    expect(result.output).toMatch(/^Ran 18 tests/m);
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
