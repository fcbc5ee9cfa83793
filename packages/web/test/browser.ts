/**
 * Real Chromium for the console's tests: Debian's `chromium` package (installed by .ci/run), driven by
 * playwright-core. Nothing is downloaded; a missing browser fails the suite with the command that installs it.
 */
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll } from 'vitest';
import {
  CLI_MAIN,
  REPO_ROOT,
  removeControlPlane,
  requireBuilt,
  startControlPlane,
  type ControlPlane,
} from '../../../test/support/control-plane.js';

const CANDIDATES = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'];

export function chromiumPath(): string {
  const found = CANDIDATES.find((candidate) => candidate !== undefined && existsSync(candidate));
  if (found === undefined) {
    throw new Error(
      'Chromium is not installed: run `apt-get update && apt-get install -y chromium` (or set CHROMIUM_PATH)',
    );
  }
  return found;
}

export async function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath(),
    // Root in CI containers cannot use Chromium's sandbox; the pages are our own, on loopback.
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
  });
}

/** One operator API call with a bearer token and an optional JSON body; the answer's status and parsed body. */
export async function operatorApi(
  operatorUrl: string,
  method: string,
  path: string,
  token: string,
  body?: unknown,
) {
  const response = await fetch(`${operatorUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await response.text();
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read answers field by field
  return { status: response.status, body: (text === '' ? undefined : JSON.parse(text)) as any };
}

/** A test file's control plane (with `config`), the built console it serves, and Chromium. */
export interface ConsoleFixture {
  plane: ControlPlane;
  browser: Browser;
  /** An operator API call on the plane (see operatorApi). */
  api(method: string, path: string, token: string, body?: unknown): ReturnType<typeof operatorApi>;
  /** A page in a browser context of its own, signed in to the console with `token`, on the overview. */
  signIn(token: string): Promise<Page>;
}

/** Starts the plane and Chromium before the file's tests (the console must be built); stops both after. */
export function useConsoleServer(config: Record<string, unknown>): ConsoleFixture {
  let work: string;
  const fixture = {
    api: (method: string, path: string, token: string, body?: unknown) =>
      operatorApi(fixture.plane.operatorUrl, method, path, token, body),
    async signIn(token: string): Promise<Page> {
      const page = await (await fixture.browser.newContext()).newPage();
      await page.goto(fixture.plane.operatorUrl);
      await page.getByLabel('Operator API token').fill(token);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { name: 'Overview' }).waitFor();
      return page;
    },
  } as ConsoleFixture;
  beforeAll(async () => {
    requireBuilt(CLI_MAIN, join(REPO_ROOT, 'packages/web/dist/index.html'));
    fixture.plane = await startControlPlane({ config });
    fixture.browser = await launchChromium();
    work = await mkdtemp(join(tmpdir(), 'ef-console-live-'));
  });
  afterAll(async () => {
    await fixture.browser?.close();
    await removeControlPlane(fixture.plane, work);
  });
  return fixture;
}

/**
 * Ends every console session of the plane in `dataDir` now, as if its time had passed: its expiry is moved into
 * the past in the server's own database (the server process has no clock to move, and the shortest
 * sessionTtlSeconds is a minute).
 */
export function expireConsoleSessionsNow(dataDir: string): void {
  const db = new Database(join(dataDir, 'state.db'), { timeout: 10_000 });
  try {
    db.prepare('UPDATE console_sessions SET expires_at = ?').run(Date.now() - 1000);
  } finally {
    db.close();
  }
}
