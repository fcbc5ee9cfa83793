/**
 * Audit s8 finding 6 over real HTTP and SQLite: one token cannot take every live-update stream, and a stream
 * ends once its token is revoked, its session signed out, or its lifetime is over (EventSource reconnects).
 */
import pg from 'pg';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const postgres = (await databaseEngines()).find((fixture) => fixture.engine === 'postgres')!;

interface Stream {
  status: number;
  retryAfter: string | null;
  /** The error body of a refused stream. */
  error: unknown;
  /** Resolves with everything the stream carried once the server ends it. */
  ended(): Promise<string>;
  /** Resolves once `count` keepalive comments arrived (the stream is being checked and kept). */
  keepalives(count: number): Promise<void>;
  close(): void;
}

const open: Stream[] = [];

async function openStream(t: TestServer, auth: { token?: string; cookie?: string }): Promise<Stream> {
  const abort = new AbortController();
  const headers: Record<string, string> = {};
  if (auth.token !== undefined) headers.authorization = `Bearer ${auth.token}`;
  if (auth.cookie !== undefined) headers.cookie = auth.cookie;
  const response = await fetch(`${t.url}/api/v1/console/events`, { headers, signal: abort.signal });
  const retryAfter = response.headers.get('retry-after');
  if (response.status !== 200) {
    const error: unknown = await response.json();
    return {
      status: response.status,
      retryAfter,
      error,
      ended: () => Promise.reject(new Error('refused')),
      keepalives: () => Promise.reject(new Error('refused')),
      close: () => {},
    };
  }
  const reader = response.body!.getReader();
  let text = '';
  let done = false;
  const waiters: (() => void)[] = [];
  void (async () => {
    try {
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) break;
        text += new TextDecoder().decode(chunk.value);
        waiters.splice(0).forEach((wake) => wake());
      }
    } catch {
      // aborted by the test
    }
    done = true;
    waiters.splice(0).forEach((wake) => wake());
  })();
  const until = async (condition: () => boolean) => {
    while (!condition()) {
      if (done) throw new Error(`the stream ended early: ${JSON.stringify(text)}`);
      await new Promise<void>((wake) => waiters.push(wake));
    }
  };
  const stream: Stream = {
    status: response.status,
    retryAfter,
    error: undefined,
    ended: async () => {
      while (!done) await new Promise<void>((wake) => waiters.push(wake));
      return text;
    },
    keepalives: (count) => until(() => text.split(': keepalive').length - 1 >= count),
    close: () => abort.abort(),
  };
  open.push(stream);
  return stream;
}

async function signIn(t: TestServer, token: string): Promise<{ cookie: string; csrfToken: string }> {
  const response = await t.call('POST', '/api/v1/console/session', { token });
  expect(response.status).toBe(201);
  const cookie = (response.headers.get('set-cookie') ?? '').split(';')[0] ?? '';
  return { cookie, csrfToken: response.body.csrfToken as string };
}

describe('console live-update streams', () => {
  let t: TestServer | undefined;
  afterEach(async () => {
    open.splice(0).forEach((stream) => stream.close());
    await t?.stop();
    t = undefined;
  });

  it('caps streams per token (its console sessions included), leaving the rest of the server to others', async () => {
    t = await startTestServer({ config: { console: { maxEventStreamsPerToken: 2, eventKeepaliveMs: 100 } } });
    const { cookie } = await signIn(t, t.readToken);
    expect((await openStream(t, { token: t.readToken })).status).toBe(200);
    expect((await openStream(t, { cookie })).status).toBe(200);
    for (const auth of [{ token: t.readToken }, { cookie }]) {
      const refused = await openStream(t, auth);
      expect(refused.status).toBe(429);
      expect(refused.retryAfter).toMatch(/^\d+$/);
      expect(refused.error).toMatchObject({
        code: 'LimitExceeded',
        message: expect.stringMatching(/console\.maxEventStreamsPerToken/),
      });
    }
    expect((await openStream(t, { token: t.adminToken })).status).toBe(200);
    // Closing one frees its place for the same token.
    open[0]!.close();
    await expect
      .poll(async () => {
        const again = await openStream(t!, { token: t!.readToken });
        again.close();
        return again.status;
      })
      .toBe(200);
  });

  it('ends the streams of a revoked token and of a signed-out session at the next check', async () => {
    t = await startTestServer({ config: { console: { eventKeepaliveMs: 100 } } });
    const { token, record } = await t.server.services.apiTokens.create({
      name: 'viewer',
      scope: 'read-only',
    });
    const viaToken = await openStream(t, { token });
    const { cookie, csrfToken } = await signIn(t, t.readToken);
    const viaSession = await openStream(t, { cookie });
    const bystander = await openStream(t, { token: t.adminToken });
    // Checked and kept while the credentials hold.
    await Promise.all([viaToken.keepalives(2), viaSession.keepalives(2)]);

    expect((await t.call('DELETE', `/api/v1/tokens/${record.id}`, { token: t.adminToken })).status).toBe(204);
    await viaToken.ended();
    expect((await openStream(t, { token })).status).toBe(401);

    const signOut = await t.call('DELETE', '/api/v1/console/session', {
      headers: { cookie, 'x-csrf-token': csrfToken },
    });
    expect(signOut.status).toBe(204);
    await viaSession.ended();
    expect((await openStream(t, { cookie })).status).toBe(401);

    await bystander.keepalives(4);
  });

  it('ends every stream after its lifetime; the client reconnects with the same credentials', async () => {
    t = await startTestServer({
      config: { console: { eventKeepaliveMs: 100, eventStreamMaxSeconds: 1, maxEventStreamsPerToken: 1 } },
    });
    const { cookie } = await signIn(t, t.readToken);
    const first = await openStream(t, { cookie });
    expect(await first.ended()).toMatch(/^retry: \d+/);
    // Its place was given back when the server ended it (the token may hold one stream).
    expect((await openStream(t, { cookie })).status).toBe(200);
  });

  // Review s8 #2: a client that goes away while its credentials are being checked must not keep its place.
  // PostgreSQL makes the wait real: another session locks the token table the check reads.
  it.skipIf(!postgres.available)(
    'gives the place back when the client goes away during authentication',
    async () => {
      const database = await postgres.createLocation();
      if (database.engine !== 'postgres') throw new Error('PostgreSQL only');
      t = await startTestServer({ database, config: { console: { maxEventStreamsPerToken: 1 } } });
      const server = t;
      const locker = new pg.Client({ connectionString: database.url });
      await locker.connect();
      try {
        await locker.query('BEGIN');
        await locker.query('LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE');
        const abort = new AbortController();
        const gone = fetch(`${server.url}/api/v1/console/events`, {
          headers: { authorization: `Bearer ${server.readToken}` },
          signal: abort.signal,
        }).catch(() => undefined);
        // The server's token check is waiting for the lock.
        await vi.waitFor(
          async () => {
            // Statistics are read once per transaction unless cleared, and the locker is inside one.
            await locker.query('SELECT pg_stat_clear_snapshot()');
            const waiting = await locker.query<{ count: string }>(
              "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%api_tokens%'",
            );
            expect(Number(waiting.rows[0]!.count)).toBeGreaterThan(0);
          },
          { timeout: 10_000, interval: 20 },
        );
        abort.abort();
        await gone;
        // Round trips through the server's event loop (no database), so that it has seen the connection close.
        for (let i = 0; i < 3; i += 1) expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
      } finally {
        await locker.query('COMMIT');
        await locker.end();
      }
      await expect
        .poll(
          async () => {
            const again = await openStream(server, { token: server.readToken });
            again.close();
            return again.status;
          },
          { timeout: 10_000, interval: 100 },
        )
        .toBe(200);
    },
  );
});
