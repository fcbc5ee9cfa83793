/**
 * The database or the blob store down while the server runs: requests that need it are answered 503
 * DependencyUnavailable naming the component (as /readyz does), not 500 "see its log", and the CLI prints it.
 */
import { execFile } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { Writable } from 'node:stream';
import Fastify, { type FastifyBaseLogger } from 'fastify';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { S3BlobStore } from '../../src/blobs/index.js';
import { installErrorHandlers } from '../../src/http/errors.js';
import { OutageLog } from '../../src/http/outage-log.js';
import { CLI_MAIN } from '../../../../test/support/control-plane.js';
import { startTestPostgres } from '../support/postgres.js';
import { startTestS3 } from '../support/s3.js';
import { startTestServer, type TestServer } from '../support/server.js';

const run = promisify(execFile);
const postgres = await startTestPostgres();

describe('the database down at run time', { timeout: 60_000 }, () => {
  let t: TestServer | undefined;
  afterAll(async () => {
    await t?.stop().catch(() => undefined);
    await postgres?.stop();
  });

  it.skipIf(postgres === undefined)('answers 503 naming the database, and the CLI says so', async () => {
    const lines: Array<{ level: number; msg: string }> = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
        done();
      },
    });
    t = await startTestServer({
      logger: pino({ level: 'info' }, sink),
      database: { engine: 'postgres', url: await postgres!.createDatabase() },
    });
    expect((await t.call('GET', '/api/v1/fleets', { token: t.adminToken })).status).toBe(200);

    await postgres!.stop();
    const answer = await t.call('GET', '/api/v1/fleets', { token: t.adminToken });
    expect(answer).toMatchObject({
      status: 503,
      body: { code: 'DependencyUnavailable', details: { component: 'database' } },
    });
    expect(answer.body.message).toMatch(/^the server's database cannot be used now; try again later/);
    expect(answer.headers.get('retry-after')).toBe('5');
    // The host and port stay in the server's log, as /readyz keeps them.
    expect(answer.body.message).not.toMatch(/127\.0\.0\.1/);
    expect((await t.call('GET', '/readyz')).body.details).toEqual({ failing: ['database'] });
    // Retries through the outage: one warn line for it (with the cause), none per request.
    for (let i = 0; i < 3; i++)
      expect((await t.call('GET', '/api/v1/fleets', { token: t.adminToken })).status).toBe(503);
    const warned = lines.filter(
      (line) => line.level >= 40 && (line.msg === 'request' || /database cannot be used/.test(line.msg)),
    );
    expect(warned).toEqual([
      expect.objectContaining({ msg: expect.stringMatching(/database cannot be used/) }),
    ]);

    const cli = await run(process.execPath, [CLI_MAIN, 'fleet', 'list'], {
      env: { ...process.env, EDGEFLEET_SERVER: t.server.operatorUrl, EDGEFLEET_TOKEN: t.adminToken },
    }).catch((error: { code: number; stderr: string }) => error);
    expect('code' in cli && cli.code).toBe(1);
    expect(cli.stderr).toMatch(
      /^edgefleet: the server's database cannot be used now; try again later .*\[HTTP 503 DependencyUnavailable\]/,
    );
  });
});

describe('the blob store down at run time', () => {
  it('answers 503 naming the blob store, and logs the outage once a minute, not per request', async () => {
    const s3 = await startTestS3();
    const store = new S3BlobStore({
      bucket: s3.bucket,
      prefix: 'server',
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
    const lines: Array<{ level: number; msg: string; component?: string; requestsNotLogged?: number }> = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
        done();
      },
    });
    let now = 1_000_000;
    const app = Fastify({ loggerInstance: pino({ level: 'info' }, sink) as FastifyBaseLogger });
    installErrorHandlers(app, new OutageLog({ now: () => now }));
    app.get('/blob', async () => store.head('models/x'));
    await app.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/blob`;
    const outageLines = () => lines.filter((line) => /blob store cannot be used/.test(line.msg));
    try {
      expect((await fetch(url)).status).toBe(200);
      await s3.stop();
      const answer = await fetch(url);
      expect(answer.status).toBe(503);
      expect(answer.headers.get('retry-after')).toBe('5');
      expect(await answer.json()).toMatchObject({
        code: 'DependencyUnavailable',
        message: expect.stringMatching(/^the server's blob store cannot be used now; try again later/),
        details: { component: 'blobStore' },
      });
      for (let i = 0; i < 3; i++) expect((await fetch(url)).status).toBe(503);
      expect(outageLines()).toHaveLength(1);
      expect(outageLines()[0]).toMatchObject({ level: 40 });

      // A minute on, the next failure is logged with the count of those left out.
      now += 60_000;
      expect((await fetch(url)).status).toBe(503);
      expect(outageLines()).toHaveLength(2);
      expect(outageLines()[1]).toMatchObject({ requestsNotLogged: 3 });
    } finally {
      await app.close();
      await store.close();
    }
  });
});
