import { request } from 'node:http';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../support/server.js';

/** A request sent with its path exactly as written (curl --path-as-is): fetch would resolve %2E%2E itself. */
function rawPost(url: string, pathAsIs: string, token: string, body: Buffer) {
  return new Promise<{ status: number; body: { code: string; message: string } }>((resolve, reject) => {
    const req = request(
      `${url}${pathAsIs}`,
      {
        method: 'POST',
        path: pathAsIs,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

describe('model version "." or ".." (issue 15, item 11)', () => {
  let t: TestServer;
  let work: string;
  beforeAll(async () => {
    t = await startTestServer();
    work = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-version-'));
  });
  afterAll(async () => {
    await t.stop();
    await rm(work, { recursive: true, force: true });
  });

  it('is refused at validation with a 400 naming the rule, for uploads and packaging jobs', async () => {
    const model = await readFile(await writeTestModel('tiny', work));
    for (const version of ['%2E%2E', '%2E', '..%2F..', '.']) {
      const answer = await rawPost(t.url, `/api/v1/models/tiny/versions/${version}`, t.adminToken, model);
      expect(answer.status, version).toBe(400);
      expect(answer.body.code, version).toBe('ValidationError');
    }
    const dotdot = await rawPost(t.url, '/api/v1/models/tiny/versions/%2E%2E', t.adminToken, model);
    expect(dotdot.body.message).toContain('a model version cannot be "." or ".."');
    const job = await t.call('POST', '/api/v1/packaging-jobs', {
      token: t.adminToken,
      body: { name: 'job-1', modelName: 'tiny', modelVersion: '..' },
    });
    expect(job).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
    // A dotted version that is not a path segment is still a version.
    const fine = await rawPost(t.url, '/api/v1/models/tiny/versions/1..2', t.adminToken, model);
    expect(fine.status).toBe(201);
  });
});
