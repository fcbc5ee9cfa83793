/**
 * How the console's session ends, in real Chromium against a real edgefleet-server process (review N1, N3, N4):
 * Sign out after the session ended clears the cookie and shows the plain sign-in page; a revoked token's page is
 * dropped (only an expired session keeps it, and only for the same token); a 401 to a request sent before signing in again is ignored.
 * Requests are held back with the browser's own interception, to put answers in the order each case needs;
 * every answer is the real server's.
 */
import type { BrowserContext, Route } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { expireConsoleSessionsNow, useConsoleServer } from './browser.js';

const ui = useConsoleServer({});
const { api, signIn } = ui;

async function sessionCookie(context: BrowserContext): Promise<string | undefined> {
  const cookie = (await context.cookies()).find((c) => c.name === 'edgefleet_session');
  return cookie === undefined || cookie.value === '' ? undefined : `edgefleet_session=${cookie.value}`;
}

/** Why the server refuses a cookie now (details.sessionEnded): "unknown" once its row is gone. */
async function whyRefused(cookie: string): Promise<unknown> {
  const response = await fetch(`${ui.plane.operatorUrl}/api/v1/fleets`, { headers: { cookie } });
  return ((await response.json()) as { details?: { sessionEnded?: unknown } }).details?.sessionEnded;
}

/** A gate the test opens: `held` resolves once a request is held back, `release()` lets it go on. */
function gate() {
  let release!: () => void;
  let held!: () => void;
  const opened = new Promise<void>((resolve) => (release = resolve));
  const heldBack = new Promise<void>((resolve) => (held = resolve));
  return { opened, held: heldBack, release, markHeld: () => held() };
}

describe('console session endings (review N1, N3, N4)', { timeout: 120_000 }, () => {
  it('Sign out after the session expired: the cookie and its row go, and the plain sign-in page shows', async () => {
    const page = await signIn(ui.plane.adminToken);
    const context = page.context();
    const cookie = (await sessionCookie(context))!;

    // The sign-out is held back while the session expires and another request learns so (the dialog opens) ...
    const signOut = gate();
    await page.route('**/api/v1/console/session', async (route: Route) => {
      if (route.request().method() !== 'DELETE') return route.continue();
      signOut.markHeld();
      await signOut.opened;
      return route.continue();
    });
    await page.getByRole('button', { name: 'Sign out' }).click();
    await signOut.held;
    expireConsoleSessionsNow(ui.plane.dataDir);
    // Another page's requests (set from script: a live update may have opened the dialog already).
    await page.evaluate(`location.hash = '#/devices'`);
    await page.getByRole('dialog', { name: 'Sign in again' }).waitFor();

    // ... then it is answered: the whole window is the sign-in page, not the dialog's content on its own.
    signOut.release();
    await page.getByRole('heading', { level: 1, name: 'EdgeFleet console' }).waitFor();
    expect(await page.getByRole('dialog').count()).toBe(0);
    expect(await page.locator('main#main').getByLabel('Operator API token').count()).toBe(1);
    await expect.poll(() => page.title()).toBe('Sign in — EdgeFleet console');
    // The browser dropped the cookie and the server its row (so the cookie is unknown, no longer "expired").
    expect(await sessionCookie(context)).toBeUndefined();
    expect(await whyRefused(cookie)).toBe('unknown');
    await context.close();
  });

  it("a revoked token's session drops the page it was on: what was typed is not kept for the next token", async () => {
    const created = await api('POST', '/api/v1/tokens', ui.plane.adminToken, {
      name: 'revoked-while-typing',
      scope: 'admin',
    });
    expect(created.status).toBe(201);
    const page = await signIn(created.body.token as string);
    await page.getByRole('button', { name: 'Create fleet' }).click();
    const form = page.getByRole('form', { name: 'Create fleet' });
    await form.getByLabel('Name').fill('typed-by-revoked');
    expect((await api('DELETE', `/api/v1/tokens/${created.body.id}`, ui.plane.adminToken)).status).toBe(204);
    await form.getByRole('button', { name: 'Create' }).click();

    // Told why, on the plain sign-in page: no dialog over the old page, and nothing typed left in the DOM.
    await page.getByRole('heading', { level: 1, name: 'EdgeFleet console' }).waitFor();
    expect(await page.getByTestId('session-ended').textContent()).toBe(
      'the console session ended: its API token "revoked-while-typing" was revoked; sign in with another token',
    );
    expect(await page.getByRole('dialog').count()).toBe(0);
    expect(await page.getByRole('form', { name: 'Create fleet' }).count()).toBe(0);
    const typedLeft = await page.evaluate(
      `[...document.querySelectorAll('input')].some((input) => input.value === 'typed-by-revoked')`,
    );
    expect(typedLeft).toBe(false);
    await page.getByLabel('Operator API token').fill(ui.plane.adminToken);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    expect(await page.getByRole('form', { name: 'Create fleet' }).count()).toBe(0);
    await page.context().close();
  });

  it('another token signing in over an expired session gets the page afresh: the earlier typing is not kept', async () => {
    const created = await api('POST', '/api/v1/tokens', ui.plane.adminToken, {
      name: 'expired-while-typing',
      scope: 'admin',
    });
    expect(created.status).toBe(201);
    const page = await signIn(created.body.token as string);
    await page.getByRole('button', { name: 'Create fleet' }).click();
    await page.getByRole('form', { name: 'Create fleet' }).getByLabel('Name').fill('typed-by-the-first');
    expireConsoleSessionsNow(ui.plane.dataDir);
    await page.getByRole('form', { name: 'Create fleet' }).getByRole('button', { name: 'Create' }).click();
    const dialog = page.getByRole('dialog', { name: 'Sign in again' });
    await dialog.waitFor();
    await dialog.getByLabel('Operator API token').fill(ui.plane.adminToken);
    await dialog.getByRole('button', { name: 'Sign in' }).click();
    await dialog.waitFor({ state: 'detached' });
    const typedLeft = await page.evaluate(
      `[...document.querySelectorAll('input')].some((input) => input.value === 'typed-by-the-first')`,
    );
    expect(typedLeft).toBe(false);
    await page.context().close();
  });

  it('a 401 to a request sent before signing in again does not bring the dialog back', async () => {
    const page = await signIn(ui.plane.adminToken);
    const context = page.context();
    await page.getByRole('button', { name: 'Create fleet' }).click();
    const form = page.getByRole('form', { name: 'Create fleet' });
    await form.getByLabel('Name').fill('sent-before-sign-in');
    const oldCookie = (await sessionCookie(context))!;

    // The first write is sent with the old cookie, and its (real) answer held back until after the new sign-in.
    const late = gate();
    let first = true;
    await page.route('**/api/v1/fleets', async (route: Route) => {
      const request = route.request();
      if (request.method() !== 'POST' || !first) return route.continue();
      first = false;
      late.markHeld();
      await late.opened;
      const answer = await fetch(request.url(), {
        method: 'POST',
        headers: { ...(await request.allHeaders()), cookie: oldCookie },
        body: request.postData() ?? '',
      });
      return route.fulfill({
        status: answer.status,
        contentType: 'application/json',
        body: await answer.text(),
      });
    });
    await form.getByRole('button', { name: 'Create' }).click();
    await late.held;
    expireConsoleSessionsNow(ui.plane.dataDir);
    // The second one is answered at once: expired, so the dialog opens (submitted from script: a live update may
    // have opened it already); sign in again.
    await form.evaluate((element) => (element as unknown as { requestSubmit(): void }).requestSubmit());
    const dialog = page.getByRole('dialog', { name: 'Sign in again' });
    await dialog.getByLabel('Operator API token').fill(ui.plane.adminToken);
    await dialog.getByRole('button', { name: 'Sign in' }).click();
    await dialog.waitFor({ state: 'detached' });
    // A write under the new session, refused for its name, so that the form shows another message ...
    await form.getByLabel('Name').fill('bad name!');
    await form.getByRole('button', { name: 'Create' }).click();
    const note = form.getByRole('alert');
    await expect.poll(() => note.textContent()).toContain('name');

    // ... until the late 401 reaches the form: by then the client has seen it too, and the dialog stays closed.
    late.release();
    await expect
      .poll(() => note.textContent())
      .toBe('the console session expired (console.sessionTtlSeconds); sign in again');
    expect(await page.getByRole('dialog').count()).toBe(0);
    expect(await page.locator('main#main').getAttribute('inert')).toBeNull();
    await context.close();
  });
});
