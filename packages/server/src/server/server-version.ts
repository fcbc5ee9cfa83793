import { readFileSync } from 'node:fs';

/** The server package's version (package.json sits one folder above src/ and dist/), for the start-up log. */
export function serverVersion(): string {
  const text = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
  return (JSON.parse(text) as { version: string }).version;
}
