// Helpers the server benchmarks (heartbeats, deployments) share: a device key and CSR, HTTP calls, a
// throwaway PostgreSQL cluster, edgefleet-server as its own process, device enrollment, CPU time from /proc.
import { execFileSync, spawn } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, URL } from 'node:url';
import { createCsr, generateDeviceKey } from '@edgefleet/core';

export const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
export const MAIN = join(root, 'packages/server/dist/main.js');

// ---------- device side: key, CSR (core's, as `edgefleet device enroll` makes them) ----------
export function csrFor(commonName) {
  const key = generateDeviceKey('ecdsa-p256');
  return { csr: createCsr(key.privateKey, commonName), key: key.privateKeyPem };
}

// ---------- HTTP helpers ----------
export function request(agentOrModule, url, { method = 'GET', headers = {}, body, tls } = {}) {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const target = new URL(url);
  const mod = target.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      target,
      {
        method,
        agent: agentOrModule,
        headers: { ...headers, ...(payload !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(tls ?? {}),
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          resolve({ status: res.statusCode, body: text ? JSON.parse(text) : undefined });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

export async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---------- PostgreSQL (throwaway cluster) ----------
function postgresBinDir() {
  const base = '/usr/lib/postgresql';
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl'))) return dir;
  }
  if (!existsSync(base)) return undefined;
  const versions = readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'initdb')));
  versions.sort((a, b) => Number(b) - Number(a));
  return versions[0] ? join(base, versions[0], 'bin') : undefined;
}

export async function startPostgres() {
  const bin = postgresBinDir();
  if (!bin) return undefined;
  const asRoot = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'edgefleet-bench-pg-'));
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
    chownSync(dir, uid, gid);
  }
  const run = (tool, args) =>
    asRoot
      ? execFileSync('runuser', ['-u', 'postgres', '--', join(bin, tool), ...args], { stdio: 'ignore' })
      : execFileSync(join(bin, tool), args, { stdio: 'ignore' });
  run('initdb', ['-D', join(dir, 'data'), '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C']);
  const port = await freePort();
  run('pg_ctl', [
    '-D',
    join(dir, 'data'),
    '-l',
    join(dir, 'log'),
    '-w',
    'start',
    '-o',
    `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c max_connections=100`,
  ]);
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    stop: () => {
      try {
        run('pg_ctl', ['-D', join(dir, 'data'), '-m', 'fast', '-w', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

// ---------- server process ----------
export async function startServer(dataDir, database, serverNodeArgs = []) {
  const [operatorPort, devicePort] = [await freePort(), await freePort()];
  const flags = [
    '--data-dir',
    dataDir,
    '--listen',
    `127.0.0.1:${operatorPort}`,
    '--device-listen',
    `127.0.0.1:${devicePort}`,
  ];
  if (database) flags.push('--database', database);
  const token = execFileSync(process.execPath, [MAIN, 'init', ...flags], {
    stdio: ['ignore', 'pipe', 'ignore'],
  })
    .toString()
    .trim();
  const child = spawn(process.execPath, [...serverNodeArgs, MAIN, 'serve', ...flags, '--log-level', 'warn'], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const operatorUrl = `http://127.0.0.1:${operatorPort}`;
  for (let attempt = 0; ; attempt++) {
    const ready = await request(undefined, `${operatorUrl}/readyz`).catch(() => ({ status: 0 }));
    if (ready.status === 200) break;
    if (attempt > 200 || child.exitCode !== null) throw new Error('edgefleet-server did not become ready');
    await sleep(100);
  }
  return {
    token,
    operatorUrl,
    pid: child.pid,
    deviceUrl: `https://127.0.0.1:${devicePort}`,
    stop: () =>
      new Promise((resolve) => {
        // A terminal's Ctrl-C reaches the server too: it may have exited already.
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', resolve);
        child.kill('SIGTERM');
      }),
  };
}

/** CPU seconds (user + system) a process has used so far, from /proc (Linux); undefined elsewhere. */
export function cpuSecondsOf(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return undefined;
  }
}

/** Registers `names` in `fleet` and enrolls each (CSR → certificate), `parallel` at a time; returns their TLS. */
export async function enrollDevices(server, fleet, names, parallel = 8) {
  const admin = { authorization: `Bearer ${server.token}` };
  for (let i = 0; i < names.length; i += 100) {
    const r = await request(undefined, `${server.operatorUrl}/api/v1/fleets/${fleet}/devices`, {
      method: 'POST',
      headers: admin,
      body: { devices: names.slice(i, i + 100).map((name) => ({ name })) },
    });
    if (r.status !== 201) throw new Error(`register: ${JSON.stringify(r.body)}`);
  }
  const devices = [];
  let next = 0;
  const worker = async () => {
    while (next < names.length) {
      const name = names[next++];
      const token = await request(
        undefined,
        `${server.operatorUrl}/api/v1/devices/${name}/enrollment-tokens`,
        {
          method: 'POST',
          headers: admin,
          body: {},
        },
      );
      const { csr, key } = csrFor(name);
      const enrolled = await request(undefined, `${server.operatorUrl}/api/v1/enroll`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token.body.token}` },
        body: { csr },
      });
      if (enrolled.status !== 201) throw new Error(`enroll: ${JSON.stringify(enrolled.body)}`);
      devices.push({
        name,
        fleet,
        tls: { ca: enrolled.body.caCertificatePem, cert: enrolled.body.certificatePem, key },
      });
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return devices.sort((a, b) => (a.name < b.name ? -1 : 1));
}
