import { readFileSync } from 'node:fs';
import { migrationNames } from '../storage/index.js';

/** The server package's version (package.json sits two folders above src/server/ and dist/server/). */
export function serverVersion(): string {
  const text = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
  return (JSON.parse(text) as { version: string }).version;
}

/** The schema this build brings a database to: its last migration's name. */
export function schemaVersion(): string {
  return migrationNames[migrationNames.length - 1]!;
}
