/**
 * Real Chromium for the console's tests: Debian's `chromium` package (installed by .ci/run), driven by
 * playwright-core. Nothing is downloaded; a missing browser fails the suite with the command that installs it.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';

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
