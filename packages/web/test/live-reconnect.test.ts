/**
 * The console's live updates in real Chromium against a real edgefleet-server process whose streams end early
 * (audit s8 finding 6): the page reconnects by itself after a stream's lifetime and keeps updating, and shows
 * itself offline once its token is revoked.
 */
import { describe, expect, it } from 'vitest';
import { useConsoleServer } from './browser.js';

const ui = useConsoleServer({
  console: { eventPollMs: 200, eventKeepaliveMs: 200, eventStreamMaxSeconds: 1 },
});
const { api } = ui;

describe('console live updates when the server ends streams', { timeout: 120_000 }, () => {
  it('reconnects after each stream lifetime and keeps updating; goes offline once its token is revoked', async () => {
    const viewer = await api('POST', '/api/v1/tokens', ui.plane.adminToken, {
      name: 'viewer',
      scope: 'read-only',
    });
    expect(viewer.status).toBe(201);
    const context = await ui.browser.newContext();
    const page = await context.newPage();
    const streamsOpened: number[] = [];
    page.on('response', (response) => {
      if (response.url().endsWith('/api/v1/console/events')) streamsOpened.push(response.status());
    });
    await page.goto(ui.plane.operatorUrl);
    await page.getByLabel('Operator API token').fill(viewer.body.token as string);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();

    // The server ends each stream after a second; the page opens new ones by itself, all accepted.
    await expect.poll(() => streamsOpened.length, { timeout: 30_000 }).toBeGreaterThanOrEqual(3);
    expect(streamsOpened.every((status) => status === 200)).toBe(true);
    await expect.poll(() => page.getByTestId('live').textContent(), { timeout: 30_000 }).toBe('live');

    // A change made elsewhere still reaches the page, over a reconnected stream.
    const created = await api('POST', '/api/v1/fleets', ui.plane.adminToken, {
      name: 'after-reconnect',
      outputConfig: { s3OutputLocation: 's3://captures/after-reconnect' },
    });
    expect(created.status).toBe(201);
    await page.getByText('after-reconnect').first().waitFor({ timeout: 30_000 });

    // Revoked: its stream ends at the next check and the reconnect is refused, so the page shows it is offline.
    expect(
      (await api('DELETE', `/api/v1/tokens/${viewer.body.id as string}`, ui.plane.adminToken)).status,
    ).toBe(204);
    await expect.poll(() => streamsOpened.includes(401), { timeout: 30_000 }).toBe(true);
    await expect.poll(() => page.getByTestId('live').textContent(), { timeout: 30_000 }).toBe('offline');
    await context.close();
  });
});
