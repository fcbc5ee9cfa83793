/** Which build a server runs: --version, its start line, /healthz and the OpenAPI document say. */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrationNames } from '../../src/storage/index.js';
import { runServerCli, startServerProcess } from '../support/process.js';

const version = (
  JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

describe('which build runs (real processes)', { timeout: 90_000 }, () => {
  let cwd: string;
  beforeAll(async () => {
    cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-version-'));
  });
  afterAll(() => rm(cwd, { recursive: true, force: true }));

  it('--version prints the package version', async () => {
    const result = await runServerCli(['--version'], cwd);
    expect(result.code).toBe(0);
    expect(result.stdout.trim()).toBe(version);
  });

  it('the start line, /healthz and the OpenAPI document name the version and schema', async () => {
    const server = await startServerProcess(
      ['--data-dir', path.join(cwd, 'data'), '--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0'],
      cwd,
    );
    try {
      const started = server.logs.find((l) => l.msg === 'edgefleet-server started');
      expect(started).toMatchObject({ version, schema: migrationNames.at(-1) });
      const health = await fetch(`${server.operatorUrl}/healthz`);
      expect(await health.json()).toEqual({ status: 'ok', version, schema: migrationNames.at(-1) });
      const docs = (await (await fetch(`${server.operatorUrl}/api/docs`)).json()) as {
        info: { version: string };
      };
      expect(docs.info.version).toBe(version);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });
});
