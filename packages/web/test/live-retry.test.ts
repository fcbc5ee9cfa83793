/**
 * Review s8 #6 in real Chromium against a real edgefleet-server process: a tab whose live-update stream is
 * refused (429, the token already holds its most streams) opens a new one after a jittered backoff, and once
 * its session has ended (401) it stops trying. The page's clock is Playwright's, so the 30-60 s backoff is
 * fast-forwarded rather than waited for.
 */
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { useConsoleServer } from './browser.js';

const EVENTS = '/api/v1/console/events';
const SESSION = '/api/v1/console/session';

const ui = useConsoleServer({
  console: { eventPollMs: 200, eventKeepaliveMs: 200, maxEventStreamsPerToken: 1 },
});
const { api } = ui;

/** A signed-in console tab in its own browser context, recording its stream requests and answers. */
async function openTab(token: string) {
  const context = await ui.browser.newContext();
  const page = await context.newPage();
  await page.clock.install();
  const streams: number[] = [];
  const answers: { path: string; method: string; status: number }[] = [];
  let streamRequests = 0;
  page.on('request', (request) => {
    if (request.url().endsWith(EVENTS)) streamRequests += 1;
  });
  page.on('response', (response) => {
    const path = new URL(response.url()).pathname;
    answers.push({ path, method: response.request().method(), status: response.status() });
    if (path === EVENTS) streams.push(response.status());
  });
  await page.goto(ui.plane.operatorUrl);
  await page.getByLabel('Operator API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  return { context, page, streams, answers, streamRequests: () => streamRequests };
}

const liveText = (page: Page) => page.getByTestId('live').textContent();

describe('console live updates when a stream is refused', { timeout: 120_000 }, () => {
  it('retries a 429 after the backoff and gets the stream once a place is free; stops after a 401', async () => {
    const viewer = await api('POST', '/api/v1/tokens', ui.plane.adminToken, {
      name: 'viewer',
      scope: 'read-only',
    });
    expect(viewer.status).toBe(201);
    const token = viewer.body.token as string;

    const first = await openTab(token);
    await expect.poll(() => liveText(first.page), { timeout: 30_000 }).toBe('live');
    // The token may hold one stream: a second tab is refused, and the browser alone would never try again.
    const second = await openTab(token);
    await expect.poll(() => second.streams.includes(429), { timeout: 30_000 }).toBe(true);
    expect(await liveText(second.page)).toBe('offline');
    // It says why, in words next to the indicator: the server's 429 message.
    await expect
      .poll(() => second.page.getByTestId('live-refused').textContent(), { timeout: 30_000 })
      .toMatch(
        /^Live updates paused: token "viewer" already holds 1 live-update streams, .*\(console\.maxEventStreamsPerToken\); close one \(another console tab\) or try again later\. This tab tries again/,
      );
    expect(await first.page.getByTestId('live-refused').count()).toBe(0);

    // The first tab goes; after the backoff the second opens a stream by itself.
    await first.context.close();
    await expect
      .poll(
        async () => {
          await second.page.clock.fastForward(61_000);
          return second.streams.at(-1);
        },
        { timeout: 30_000, interval: 500 },
      )
      .toBe(200);
    await expect.poll(() => liveText(second.page), { timeout: 30_000 }).toBe('live');
    expect(await second.page.getByTestId('live-refused').count()).toBe(0);

    // Revoked: the stream ends, the browser's reconnect gets 401, the session route says signed out: no more tries.
    const seen = second.answers.length;
    expect(
      (await api('DELETE', `/api/v1/tokens/${viewer.body.id as string}`, ui.plane.adminToken)).status,
    ).toBe(204);
    await expect
      .poll(
        () =>
          second.answers
            .slice(seen)
            .some((a) => a.path === SESSION && a.method === 'GET' && a.status === 401),
        {
          timeout: 30_000,
        },
      )
      .toBe(true);
    const tried = second.streamRequests();
    for (let i = 0; i < 3; i += 1) await second.page.clock.fastForward(61_000);
    await second.page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 0)));
    expect(second.streamRequests()).toBe(tried);
    expect(await liveText(second.page)).toBe('offline');
    await second.context.close();
  });
});
