/**
 * The SageMaker facade through boto3 (Debian's python3-boto3; .ci/run installs it) against a real
 * edgefleet-server process. The Python side (boto3_facade.py) holds the cases; this file starts the server,
 * creates access keys through the REST API, and fails if any Python case fails.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runServerCli, startServerProcess, type ServerProcess } from '../support/process.js';

const SCRIPT = fileURLToPath(new URL('./boto3_facade.py', import.meta.url));

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
  let server: ServerProcess;
  let adminToken: string;

  beforeAll(async () => {
    cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-facade-'));
    const init = await runServerCli(['init'], cwd);
    expect(init.code).toBe(0);
    adminToken = init.stdout.trim();
    server = await startServerProcess(
      ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0', '--log-level', 'info'],
      cwd,
    );
  }, 120_000);
  afterAll(async () => {
    await server?.stop();
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
    const result = await runPython({
      EF_ENDPOINT: server.operatorUrl,
      EF_ADMIN_TOKEN: adminToken,
      EF_ADMIN_KEY_ID: admin.accessKeyId,
      EF_ADMIN_SECRET: admin.secretAccessKey,
      EF_READ_KEY_ID: reader.accessKeyId,
      EF_READ_SECRET: reader.secretAccessKey,
    });
    expect(result.output).toMatch(/^OK/m);
    expect(result.code, result.output).toBe(0);
  });
});
