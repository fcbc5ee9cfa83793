/**
 * `packaging create --wait` that runs out while the job is still running exits 4, as docs/cli.md says of every
 * --wait that runs out (the work may still finish), not 1 (failed): a script polls again on 4. The server keeps
 * its blobs in a real S3 (s3rver in its own process) that the test stops with SIGSTOP, as an endpoint that hangs:
 * the packaging worker's read of the upload waits, so the job cannot finish during the wait however slow the
 * machine.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  REPO_ROOT,
  removeControlPlane,
  startControlPlane,
  until,
  type ControlPlane,
} from '../../../../test/support/control-plane.js';
import { edgefleet } from '../run-cli.js';

const S3RVER = `
import S3rver from 's3rver';
const { port } = await new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: process.argv[1],
  configureBuckets: [{ name: 'models' }] }).run();
console.log(port);`;

let work: string;
let s3: ChildProcess;
let plane: ControlPlane | undefined;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ef-packaging-wait-'));
  s3 = spawn(process.execPath, ['--input-type=module', '-e', S3RVER, join(work, 's3')], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [port] = (await once(s3.stdout!, 'data')) as [Buffer];
  plane = await startControlPlane({
    config: {
      blob: 's3://models/edgefleet',
      s3: {
        endpoint: `http://127.0.0.1:${port.toString().trim()}`,
        forcePathStyle: true,
        accessKeyId: 'S3RVER',
        secretAccessKey: 'S3RVER',
        // The stopped endpoint holds the worker's read until the test lets it go, not until a timeout.
        socketTimeoutMs: 3_600_000,
      },
    },
  });
});
afterAll(async () => {
  s3?.kill('SIGCONT');
  await removeControlPlane(plane, work);
  s3?.kill('SIGKILL');
});

describe('edgefleet packaging create --wait', () => {
  it('exits 4 ("a --wait ran out"), naming the job and its status, when --timeout runs out first', async () => {
    const ef = (...args: string[]) =>
      edgefleet(...args, '--server', plane!.operatorUrl, '--token', plane!.adminToken);
    const model = await writeTestModel('mlp', join(work, 'model'));
    expect((await ef('model', 'upload', model, '--name', 'stall', '--version', '1')).code).toBe(0);

    s3.kill('SIGSTOP');
    const ranOut = await ef(
      'packaging',
      'create',
      'stall-1',
      '--model',
      'stall',
      '--version',
      '1',
      '--wait',
      '--timeout',
      '1',
    );
    expect(ranOut.stderr).toMatch(
      /^edgefleet: packaging job stall-1 is still (STARTING|INPROGRESS) after 1 s; check later with ".*packaging describe stall-1"\n$/,
    );
    expect(ranOut.code).toBe(4);

    // The job goes on once the endpoint answers again: 4 meant "not yet", not "failed".
    s3.kill('SIGCONT');
    await until(async () => {
      const described = await ef('packaging', 'describe', 'stall-1', '--json');
      return JSON.parse(described.stdout).status === 'COMPLETED' ? true : undefined;
    }, 'packaging job stall-1 to complete');
  });
});
