import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runServerCli, startServerProcess } from '../support/process.js';

let cwd: string;
beforeAll(async () => {
  cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-config-mode-'));
});
afterAll(() => rm(cwd, { recursive: true, force: true }));

const flags = ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0', '--log-level', 'info'];

// Each CLI run starts Node with tsx; on a busy two-core machine that takes seconds.
describe(
  'serve warns when its config file holds secrets others can read (real processes)',
  { timeout: 90_000 },
  () => {
    it('names the file, the secret and the mode when world-readable; says nothing once it is 0600', async () => {
      const config = path.join(cwd, 'server.json');
      await writeFile(
        config,
        JSON.stringify({ s3: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'not-to-be-shared' } }),
      );
      await chmod(config, 0o644);
      expect((await runServerCli(['init', '--config', config], cwd)).code).toBe(0);

      const open = await startServerProcess([...flags, '--config', config], cwd);
      try {
        const warning = open.logs.find((l) => String(l.msg).startsWith('the config file'));
        expect(warning?.msg).toBe(
          `the config file ${config} holds s3.secretAccessKey and is readable by every local user (mode 0644); expected 0600, or 0640 with the server's own group: chmod 0600 ${config}`,
        );
        // The secret itself is never logged.
        expect(JSON.stringify(open.logs)).not.toContain('not-to-be-shared');
      } finally {
        expect(await open.stop()).toBe(0);
      }

      await chmod(config, 0o600);
      const closed = await startServerProcess([...flags, '--config', config], cwd);
      try {
        expect(closed.logs.some((l) => String(l.msg).startsWith('the config file'))).toBe(false);
      } finally {
        expect(await closed.stop()).toBe(0);
      }
    });
  },
);
