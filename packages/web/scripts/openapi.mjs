// Writes the operator API's OpenAPI document (generated/openapi.json) by starting the built server on a
// throwaway data dir and loopback port 0, then asking it for /api/docs: the client types derive from what the
// server really serves, never from a hand-written copy. Offline: nothing is downloaded.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
// The server is built first (tsc -b) by the root build script; a relative import keeps web out of its dependencies.
import { loadConfig, startServer } from '../../server/dist/index.js';

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export async function writeOpenApi(outFile = path.join(webDir, 'generated', 'openapi.json')) {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-openapi-'));
  try {
    const configFile = path.join(dataDir, 'config.json');
    await writeFile(
      configFile,
      JSON.stringify({
        dataDir,
        listen: '127.0.0.1:0',
        deviceListen: '127.0.0.1:0',
        logLevel: 'silent',
        console: { enabled: false },
      }),
    );
    const server = await startServer(await loadConfig({ configFile, env: {}, cwd: dataDir }));
    try {
      const response = await fetch(`${server.operatorUrl}/api/docs`);
      if (!response.ok) throw new Error(`GET /api/docs answered ${response.status}`);
      await mkdir(path.dirname(outFile), { recursive: true });
      await writeFile(outFile, JSON.stringify(await response.json(), null, 2));
    } finally {
      await server.close();
    }
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
  return outFile;
}
