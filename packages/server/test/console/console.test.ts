/**
 * The console's server side over real HTTP: sign-in into an HttpOnly SameSite=Strict cookie, CSRF on writes,
 * sessions ending with sign-out, expiry and token revocation, the static files with their CSP, and the
 * live-update stream (capped, fed from the database, so it works across replicas on PostgreSQL).
 */
import http from 'node:http';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiTokenStore } from '../../src/auth/index.js';
import {
  ConsoleSessionStore,
  EXPIRED_SESSION_KEPT_MS,
  MAX_SESSIONS_PER_TOKEN,
} from '../../src/console/index.js';
import type { DatabaseLocation } from '../../src/storage/index.js';
import { databaseEngines, openFreshDatabase } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();
const sqlite = engines.find((e) => e.engine === 'sqlite')!;
const postgres = engines.find((e) => e.engine === 'postgres')!;

async function signIn(t: TestServer, token: string) {
  const response = await t.call('POST', '/api/v1/console/session', { token });
  expect(response.status).toBe(201);
  const setCookie = response.headers.get('set-cookie') ?? '';
  const cookie = setCookie.split(';')[0] ?? '';
  return { setCookie, cookie, csrfToken: response.body.csrfToken as string };
}

/** Opens the event stream; `next()` resolves with the topics of the next change event. */
async function openEvents(t: TestServer, cookie: string) {
  const abort = new AbortController();
  const response = await fetch(`${t.url}/api/v1/console/events`, {
    headers: { cookie },
    signal: abort.signal,
  });
  const reader = response.body?.getReader();
  let buffered = '';
  return {
    status: response.status,
    contentType: response.headers.get('content-type'),
    /** Resolves at the stream's "ready" event: every change after it is sent. */
    async ready(): Promise<void> {
      for (;;) {
        const at = buffered.indexOf('event: ready\n');
        if (at >= 0) {
          buffered = buffered.slice(at);
          return;
        }
        const chunk = await reader!.read();
        if (chunk.done) throw new Error('the event stream ended');
        buffered += new TextDecoder().decode(chunk.value);
      }
    },
    async next(): Promise<string[]> {
      for (;;) {
        const match = /event: change\ndata: (.*)\n\n/.exec(buffered);
        if (match) {
          buffered = buffered.slice((match.index ?? 0) + match[0].length);
          return (JSON.parse(match[1] ?? '{}') as { topics: string[] }).topics;
        }
        const chunk = await reader!.read();
        if (chunk.done) throw new Error('the event stream ended');
        buffered += new TextDecoder().decode(chunk.value);
      }
    },
    close: () => abort.abort(),
  };
}

describe('console sessions and CSRF', () => {
  let t: TestServer;
  let staticDir: string;
  let location: DatabaseLocation;
  beforeAll(async () => {
    staticDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-console-static-'));
    await mkdir(path.join(staticDir, 'assets'));
    await writeFile(
      path.join(staticDir, 'index.html'),
      '<!doctype html><script src="/assets/app-1.js"></script>',
    );
    const script = 'console.log("console");'.repeat(50);
    await writeFile(path.join(staticDir, 'assets', 'app-1.js'), script);
    await writeFile(path.join(staticDir, 'assets', 'app-1.js.br'), brotliCompressSync(script));
    await writeFile(path.join(staticDir, 'assets', 'app-1.js.gz'), gzipSync(script));
    location = await sqlite.createLocation();
    t = await startTestServer({
      database: location,
      config: { console: { staticDir, eventPollMs: 100, maxEventStreams: 2 } },
    });
  });
  afterAll(async () => {
    await t?.stop();
    await rm(staticDir, { recursive: true, force: true });
  });

  it('serves the console with a strict CSP and pre-compressed assets', async () => {
    const index = await fetch(`${t.url}/`);
    expect(index.status).toBe(200);
    const csp = index.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toMatch(/unsafe|https?:/);
    expect(index.headers.get('x-content-type-options')).toBe('nosniff');
    const asset = await fetch(`${t.url}/assets/app-1.js`, { headers: { 'accept-encoding': 'br' } });
    expect(asset.headers.get('content-encoding')).toBe('br');
    expect(asset.headers.get('cache-control')).toContain('immutable');
    expect(await asset.text()).toContain('console.log');
    expect((await fetch(`${t.url}/assets/missing.js`)).status).toBe(404);
  });

  it('honours Accept-Encoding q-values: an encoding the client refuses (q=0) is never sent', async () => {
    /** GETs the asset with `accept` (none if undefined) as sent, the body undecoded. */
    const get = (accept: string | undefined) =>
      new Promise<{ encoding: string | undefined; body: Buffer }>((resolve, reject) => {
        const url = new URL('/assets/app-1.js', t.url);
        const headers = accept === undefined ? {} : { 'accept-encoding': accept };
        http
          .get(url, { headers }, (response) => {
            const chunks: Buffer[] = [];
            response.on('data', (chunk: Buffer) => chunks.push(chunk));
            response.on('end', () =>
              resolve({ encoding: response.headers['content-encoding'], body: Buffer.concat(chunks) }),
            );
          })
          .on('error', reject);
      });
    const script = 'console.log("console");'.repeat(50);
    const cases: Array<[string | undefined, string | undefined]> = [
      [undefined, undefined],
      ['br', 'br'],
      ['gzip, deflate, br', 'br'], // equals: ours first
      ['br;q=0, gzip', 'gzip'],
      ['br;q=0', undefined],
      ['br;q=0.000, gzip;q=0', undefined],
      ['gzip;q=1, br;q=0.5', 'gzip'],
      ['*;q=0, identity', undefined],
      ['*', 'br'],
      ['BR', 'br'],
    ];
    for (const [accept, expected] of cases) {
      const { encoding, body } = await get(accept);
      expect(encoding, `Accept-Encoding: ${accept}`).toBe(expected);
      if (expected === undefined) expect(body.toString()).toBe(script);
    }
  });

  it('exchanges a token for an HttpOnly SameSite=Strict cookie; writes need the CSRF token', async () => {
    const { setCookie, cookie, csrfToken } = await signIn(t, t.adminToken);
    expect(setCookie).toMatch(/HttpOnly/i);
    expect(setCookie).toMatch(/SameSite=Strict/i);
    expect(setCookie).toMatch(/Path=\//);
    expect(setCookie).not.toContain(t.adminToken);
    expect((await t.call('GET', '/api/v1/fleets', { headers: { cookie } })).status).toBe(200);
    const session = await t.call('GET', '/api/v1/console/session', { headers: { cookie } });
    expect(session.body).toMatchObject({ operator: { name: 'test-admin', scope: 'admin' }, csrfToken });
    // The session's token is named by id, so the console can leave it out of its Revoke buttons.
    const listed = await t.call('GET', '/api/v1/tokens', { token: t.adminToken });
    const own = (listed.body.tokens as { id: string; name: string }[]).find((x) => x.name === 'test-admin');
    expect(session.body.operator.tokenId).toBe(own?.id);
    // The cookie outlives the session by a day (the default session lasts 8 h), so that after the session
    // expires the browser still sends it and is told "expired" rather than nothing.
    const maxAge = Number(/Max-Age=(\d+)/i.exec(setCookie)?.[1]);
    expect(maxAge).toBeGreaterThan(8 * 3600 + 23 * 3600);
    expect(maxAge).toBeLessThanOrEqual(8 * 3600 + 24 * 3600);

    const fleet = { name: 'f1', outputConfig: { s3OutputLocation: 's3://c/f1' } };
    // A forged request: the browser sends the cookie, but the attacker cannot know the CSRF token.
    const forged = await t.call('POST', '/api/v1/fleets', { headers: { cookie }, body: fleet });
    expect(forged.status).toBe(403);
    expect(forged.body.message).toContain('x-csrf-token');
    // One character off (never the token itself: it may end in A).
    const guess = `${csrfToken.slice(0, -1)}${csrfToken.endsWith('A') ? 'B' : 'A'}`;
    const guessed = await t.call('POST', '/api/v1/fleets', {
      headers: { cookie, 'x-csrf-token': guess },
      body: fleet,
    });
    expect(guessed.status).toBe(403);
    expect((await t.call('GET', '/api/v1/fleets/f1', { token: t.adminToken })).status).toBe(404);
    const genuine = await t.call('POST', '/api/v1/fleets', {
      headers: { cookie, 'x-csrf-token': csrfToken },
      body: fleet,
    });
    expect(genuine.status).toBe(201);
  });

  it('refuses bad tokens, read-only writes, and sessions after sign-out or token revocation', async () => {
    const bad = await t.call('POST', '/api/v1/console/session', { token: 'efo_nope' });
    expect(bad.status).toBe(401);
    expect(bad.headers.get('set-cookie')).toBeNull();
    expect((await t.call('POST', '/api/v1/console/session')).status).toBe(401);

    const reader = await signIn(t, t.readToken);
    const write = await t.call('DELETE', '/api/v1/fleets/f1', {
      headers: { cookie: reader.cookie, 'x-csrf-token': reader.csrfToken },
    });
    expect(write.status).toBe(403);

    const admin = await signIn(t, t.adminToken);
    const signOut = await t.call('DELETE', '/api/v1/console/session', {
      headers: { cookie: admin.cookie, 'x-csrf-token': admin.csrfToken },
    });
    expect(signOut.status).toBe(204);
    expect(signOut.headers.get('set-cookie')).toMatch(/Max-Age=0/i);
    expect((await t.call('GET', '/api/v1/fleets', { headers: { cookie: admin.cookie } })).status).toBe(401);
    expect(
      (await t.call('GET', '/api/v1/fleets', { headers: { cookie: 'edgefleet_session=forged' } })).status,
    ).toBe(401);

    const created = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: { name: 'short-lived', scope: 'admin' },
    });
    const revocable = await signIn(t, created.body.token);
    expect((await t.call('GET', '/api/v1/fleets', { headers: { cookie: revocable.cookie } })).status).toBe(
      200,
    );
    await t.call('DELETE', `/api/v1/tokens/${created.body.id}`, { token: t.adminToken });
    // The answer says why, so that the console can tell its operator.
    expect(await t.call('GET', '/api/v1/fleets', { headers: { cookie: revocable.cookie } })).toMatchObject({
      status: 401,
      body: {
        code: 'Unauthenticated',
        message:
          'the console session ended: its API token "short-lived" was revoked; sign in with another token',
        details: { sessionEnded: 'revoked' },
      },
    });
    expect(
      (await t.call('GET', '/api/v1/fleets', { headers: { cookie: admin.cookie } })).body.details,
    ).toEqual({ sessionEnded: 'unknown' });
  });

  it("signing out with an ended session's cookie (expired, revoked, unknown) clears the cookie and the row", async () => {
    const whyRefused = async (cookie: string) =>
      (await t.call('GET', '/api/v1/fleets', { headers: { cookie } })).body.details?.sessionEnded as unknown;
    const signOut = (headers: Record<string, string>) =>
      t.call('DELETE', '/api/v1/console/session', { headers });

    // Expired: its row is kept (to say "expired") until signed out; no CSRF token is needed, it grants nothing.
    const expiring = await signIn(t, t.adminToken);
    const db = new Database(location.engine === 'sqlite' ? location.file : '', { timeout: 10_000 });
    try {
      db.prepare('UPDATE console_sessions SET expires_at = ? WHERE expires_at > ?').run(
        Date.now() - 1000,
        Date.now(),
      );
    } finally {
      db.close();
    }
    expect(await whyRefused(expiring.cookie)).toBe('expired');
    const expired = await signOut({ cookie: expiring.cookie });
    expect(expired.status).toBe(204);
    expect(expired.headers.get('set-cookie')).toMatch(/^edgefleet_session=;.*Max-Age=0/i);
    expect(await whyRefused(expiring.cookie)).toBe('unknown');

    // Revoked: the same.
    const created = await t.call('POST', '/api/v1/tokens', {
      token: t.adminToken,
      body: { name: 'signed-out-after-revocation', scope: 'read-only' },
    });
    const revocable = await signIn(t, created.body.token);
    await t.call('DELETE', `/api/v1/tokens/${created.body.id}`, { token: t.adminToken });
    expect(await whyRefused(revocable.cookie)).toBe('revoked');
    const revoked = await signOut({ cookie: revocable.cookie });
    expect(revoked.status).toBe(204);
    expect(revoked.headers.get('set-cookie')).toMatch(/Max-Age=0/i);
    expect(await whyRefused(revocable.cookie)).toBe('unknown');

    // Unknown (already signed out, or never was): the browser is still told to drop it.
    const unknown = await signOut({ cookie: 'edgefleet_session=never-was' });
    expect(unknown.status).toBe(204);
    expect(unknown.headers.get('set-cookie')).toMatch(/Max-Age=0/i);

    // A live session still needs its CSRF token, and keeps working when it is missing.
    const live = await signIn(t, t.adminToken);
    const forged = await signOut({ cookie: live.cookie });
    expect(forged.status).toBe(403);
    expect(forged.headers.get('set-cookie')).toBeNull();
    expect((await t.call('GET', '/api/v1/fleets', { headers: { cookie: live.cookie } })).status).toBe(200);
    // Without the cookie there is nothing to sign out; a bearer token does not stand in for it.
    const noCookie = await t.call('DELETE', '/api/v1/console/session', { token: t.adminToken });
    expect(noCookie.status).toBe(401);
    expect(noCookie.body.message).toBe(
      'signing out needs the console session cookie (edgefleet_session); this request carried none',
    );
  });

  it('streams changes from the database, and caps the number of open streams', async () => {
    const { cookie, csrfToken } = await signIn(t, t.readToken);
    const unauthenticated = await fetch(`${t.url}/api/v1/console/events`);
    expect(unauthenticated.status).toBe(401);
    const first = await openEvents(t, cookie);
    expect(first.status).toBe(200);
    expect(first.contentType).toContain('text/event-stream');
    const second = await openEvents(t, cookie);
    const refused = await openEvents(t, cookie);
    expect(refused.status).toBe(429);
    second.close();

    // No wait for the feed's first snapshot: once the stream says "ready", a change made at once is sent.
    await first.ready();
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'f2', outputConfig: { s3OutputLocation: 's3://c/f2' } },
    });
    expect(await first.next()).toContain('fleets');
    first.close();
    // A closed stream frees its place.
    await expect
      .poll(async () => {
        const again = await openEvents(t, cookie);
        again.close();
        return again.status;
      })
      .toBe(200);
    expect(csrfToken).not.toBe('');
  });

  it('names the deployments topic when a plan is created and when its stage starts', async () => {
    const { cookie } = await signIn(t, t.readToken);
    await t.call('POST', '/api/v1/fleets', {
      token: t.adminToken,
      body: { name: 'f3', outputConfig: { s3OutputLocation: 's3://c/f3' } },
    });
    const events = await openEvents(t, cookie);
    expect(events.status).toBe(200);
    await events.ready();
    // An undeploy plan needs no package; a stage that selects no device is DEPLOYED at once.
    const created = await t.call('POST', '/api/v1/deployment-plans', {
      token: t.adminToken,
      body: {
        name: 'p1',
        fleetName: 'f3',
        modelConfigs: [{ modelHandle: 'm', state: 'UNDEPLOY' }],
        stages: [{ name: 's1', deviceSelection: { subsetType: 'PERCENTAGE', percentage: 100 } }],
      },
    });
    expect(created.status).toBe(201);
    expect(await events.next()).toEqual(['deployments']);
    const started = await t.call('POST', '/api/v1/deployment-plans/p1/stages/s1/start', {
      token: t.adminToken,
    });
    expect(started.status).toBe(200);
    expect(await events.next()).toEqual(['deployments']);
    events.close();
  });
});

describe('console session expiry', () => {
  it('ends a session at its expiry time; keeps its row while the cookie lasts, to say why', async () => {
    const database = await openFreshDatabase(sqlite);
    try {
      const tokens = new ApiTokenStore(database.db);
      const { token } = await tokens.create({ name: 'op', scope: 'admin' });
      let now = 1_000_000;
      const sessions = new ConsoleSessionStore(database.db, { ttlMs: 60_000, now: () => now });
      const opened = await sessions.open((await tokens.verify(token))!);
      now += 59_999;
      expect((await sessions.find(opened.sessionId))?.identity.name).toBe('op');
      now += 1;
      expect(await sessions.find(opened.sessionId)).toBeUndefined();
      // Another sign-in clears old rows, but not one whose cookie the browser still holds: it says "expired".
      now += EXPIRED_SESSION_KEPT_MS - 1;
      await sessions.open((await tokens.verify(token))!);
      expect(await sessions.lookup(opened.sessionId)).toEqual({ ended: 'expired' });
      // Once the cookie is gone too, the row goes at the next sign-in.
      now += 1;
      await sessions.open((await tokens.verify(token))!);
      expect(await sessions.lookup(opened.sessionId)).toEqual({ ended: 'unknown' });
    } finally {
      await database.close();
    }
  });

  it(`keeps at most ${MAX_SESSIONS_PER_TOKEN} sessions per API token: a sign-in beyond that removes its oldest`, async () => {
    const database = await openFreshDatabase(sqlite);
    try {
      const tokens = new ApiTokenStore(database.db);
      const looping = (await tokens.verify(
        (await tokens.create({ name: 'loop', scope: 'read-only' })).token,
      ))!;
      const other = (await tokens.verify(
        (await tokens.create({ name: 'other', scope: 'read-only' })).token,
      ))!;
      let now = 1_000_000;
      const sessions = new ConsoleSessionStore(database.db, { ttlMs: 60_000, now: () => now });
      const othersSession = await sessions.open(other);
      const opened = [];
      for (let i = 0; i < MAX_SESSIONS_PER_TOKEN; i += 1) {
        now += 1;
        opened.push(await sessions.open(looping));
      }
      const live = async (session: { sessionId: string }) =>
        'live' in (await sessions.lookup(session.sessionId));
      expect(await live(opened[0]!)).toBe(true);
      // One more: the oldest goes, the rest (and another token's session) stay.
      now += 1;
      opened.push(await sessions.open(looping));
      expect(await sessions.lookup(opened[0]!.sessionId)).toEqual({ ended: 'unknown' });
      for (const session of opened.slice(1)) expect(await live(session)).toBe(true);
      expect(await live(othersSession)).toBe(true);
      const rows = await database.db
        .selectFrom('console_sessions')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('token_id', '=', looping.tokenId)
        .executeTakeFirstOrThrow();
      expect(Number(rows.n)).toBe(MAX_SESSIONS_PER_TOKEN);
    } finally {
      await database.close();
    }
  });
});

describe.skipIf(!postgres.available)('console live updates across replicas on PostgreSQL', () => {
  let a: TestServer;
  let b: TestServer;
  let shared: string;
  beforeAll(async () => {
    shared = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-console-replicas-'));
    const location = await postgres.createLocation();
    const config = { console: { enabled: false, eventPollMs: 100 } };
    a = await startTestServer({ database: location, dataDir: shared, config });
    b = await startTestServer({ database: location, dataDir: shared, config });
  });
  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await rm(shared, { recursive: true, force: true });
  });

  it('a session opened on one replica works on the other, and a write on one reaches streams on the other', async () => {
    const { cookie, csrfToken } = await signIn(a, a.adminToken);
    const stream = await openEvents(b, cookie);
    expect(stream.status).toBe(200);
    await stream.ready();
    const created = await a.call('POST', '/api/v1/fleets', {
      headers: { cookie, 'x-csrf-token': csrfToken },
      body: { name: 'replicated', outputConfig: { s3OutputLocation: 's3://c/r' } },
    });
    expect(created.status).toBe(201);
    expect(await stream.next()).toContain('fleets');
    stream.close();
  });
});
