#!/usr/bin/env node
// Release check of `npm run bundle:agent` (run after it, as root, as .ci/run does): unpacks this machine's
// bundle, runs its install.sh into a scratch root (--root), checks the user, owners and modes, and runs the
// installed agent serving the bundle CLI's signed demo package. Usage: node deploy/bundle/check.mjs [DIR]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BUNDLED_WORKSPACES, productionClosure } from './bundle-lock.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bundles = resolve(process.argv[2] ?? join(root, 'bundles'));
const version = JSON.parse(readFileSync(join(root, 'packages/agent/package.json'), 'utf8')).version;
const bundle = join(bundles, `edgefleet-agent-${version}-linux-${os.arch()}.tar.gz`);
/** The oldest Node.js the docs promise devices (deploy/README.md, setup-native.sh). */
const MIN_NODE = '20.19.0';
const scratch = mkdtempSync(join(os.tmpdir(), 'edgefleet-bundle-check-'));

function run(command, args, options = {}) {
  console.log(`$ ${[command, ...args].join(' ')}`);
  const result = spawnSync(command, args, { encoding: 'utf8', ...options });
  if (result.status !== 0) {
    throw new Error(
      `${command} exited ${result.status ?? result.signal}\n${result.stdout}\n${result.stderr}`,
    );
  }
  return result;
}
function expectThat(ok, what) {
  if (!ok) throw new Error(what);
  console.log(`   ok: ${what}`);
}

/**
 * The installed bundle holds exactly the packages package-lock.json gives the bundled workspaces, at its
 * versions (what the tests ran), and none needs a newer Node than the docs promise: an EBADENGINE on a device.
 */
function checkLockedTree(prefix) {
  const repoLock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8'));
  const expected = new Map(
    [...productionClosure(repoLock, BUNDLED_WORKSPACES)].map(([lockPath, bundlePath]) => [
      bundlePath,
      repoLock.packages[lockPath].version ?? version,
    ]),
  );
  const installed = installedPackages(prefix);
  const differences = [];
  for (const [path, want] of expected) {
    const got = installed.get(path);
    if (got === undefined) differences.push(`${path}: missing (lock: ${want})`);
    else if (got.version !== want) differences.push(`${path}: ${got.version}, lock: ${want}`);
  }
  for (const path of installed.keys())
    if (!expected.has(path)) differences.push(`${path}: not in the lock's production tree`);
  expectThat(
    differences.length === 0,
    `the bundle's ${installed.size} packages are package-lock.json's versions${differences.length ? `; differ:\n  ${differences.join('\n  ')}` : ''}`,
  );
  const semver = createRequire(join(root, 'package.json'))('semver');
  const tooNew = [...installed]
    .filter(([, p]) => p.engines?.node !== undefined && !semver.satisfies(MIN_NODE, p.engines.node))
    .map(([path, p]) => `${path}@${p.version} needs node ${p.engines.node}`);
  expectThat(
    tooNew.length === 0,
    `every bundled package runs on Node ${MIN_NODE} (no EBADENGINE)${tooNew.length ? `; not:\n  ${tooNew.join('\n  ')}` : ''}`,
  );
}

/** Every package under `prefix`/node_modules, nested ones included: path → its package.json. */
function installedPackages(prefix) {
  const found = new Map();
  const walk = (modules) => {
    if (!existsSync(modules)) return;
    for (const name of readdirSync(modules)) {
      if (name.startsWith('.')) continue;
      const dirs = name.startsWith('@')
        ? readdirSync(join(modules, name)).map((inner) => join(name, inner))
        : [name];
      for (const dir of dirs) {
        const manifest = join(modules, dir, 'package.json');
        if (!existsSync(manifest)) continue;
        found.set(
          relative(prefix, join(modules, dir)).split(sep).join('/'),
          JSON.parse(readFileSync(manifest, 'utf8')),
        );
        walk(join(modules, dir, 'node_modules'));
      }
    }
  };
  walk(join(prefix, 'node_modules'));
  return found;
}

let failed = false;
try {
  if (process.getuid?.() !== 0) throw new Error('run as root: install.sh creates a user and sets owners');
  console.log(`bundle ${bundle}: ${(statSync(bundle).size / 1024 / 1024).toFixed(1)} MiB`);
  run('tar', ['-xzf', bundle, '-C', scratch]);
  const image = join(scratch, 'image');
  run('sh', [join(scratch, 'edgefleet-agent', 'install.sh'), '--root', image], { stdio: 'inherit' });

  const passwd = readFileSync(join(image, 'etc/passwd'), 'utf8');
  const entry = passwd.split('\n').find((l) => l.startsWith('edgefleet-agent:'));
  expectThat(
    entry !== undefined && entry.endsWith(':/usr/sbin/nologin'),
    'system user edgefleet-agent, no login shell',
  );
  const uid = Number(entry.split(':')[2]);
  const mode = (p) => statSync(join(image, p)).mode & 0o7777;
  const owner = (p) => statSync(join(image, p)).uid;
  expectThat(
    owner('opt/edgefleet-agent') === 0 && (mode('opt/edgefleet-agent') & 0o022) === 0,
    'program root-owned, not group/world-writable',
  );
  expectThat(
    owner('var/lib/edgefleet-agent') === uid && mode('var/lib/edgefleet-agent') === 0o750,
    'state folder owned by the agent, 0750',
  );
  expectThat(
    owner('etc/edgefleet') === 0 && mode('etc/edgefleet') === 0o750,
    '/etc/edgefleet root-owned, 0750',
  );
  expectThat(mode('etc/edgefleet/agent.json') === 0o640, 'config 0640');
  expectThat(
    owner('etc/edgefleet/trust') === 0 && mode('etc/edgefleet/trust') === 0o755,
    'trust folder /etc/edgefleet/trust root-owned, 0755, out of the agent-owned state folder',
  );
  expectThat(mode('etc/systemd/system/edgefleet-agent.service') === 0o644, 'systemd unit installed');

  const prefix = join(image, 'opt/edgefleet-agent');
  checkLockedTree(prefix);
  run('sh', [join(prefix, 'setup-native.sh')], { stdio: 'inherit' });
  const agentVersion = run(process.execPath, [join(prefix, 'bin/edgefleet-agent.js'), '--version']).stdout;
  expectThat(agentVersion.includes(version), `installed edgefleet-agent --version says ${version}`);

  // The installed agent serving a signed package made with the bundle's own CLI.
  const demo = join(scratch, 'demo');
  run(process.execPath, [join(prefix, 'bin/edgefleet.js'), 'demo', '--dir', demo]);
  const socket = join(scratch, 'agent.sock');
  const config = join(scratch, 'agent.json');
  writeFileSync(
    config,
    JSON.stringify({
      sagemaker_edge_core_root_certs_path: join(demo, 'pki', 'trust'),
      sagemaker_edge_local_data_root_path: join(scratch, 'state'),
      sagemaker_edge_db_module_path: 'builtin',
      edgefleet_preload_models: [{ url: join(demo, 'device', 'models', 'demo-classifier'), name: 'demo' }],
    }),
  );
  const agent = spawn(
    process.execPath,
    [join(prefix, 'bin/edgefleet-agent.js'), '-a', socket, '-c', config],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const exited = new Promise((done) => agent.once('exit', (code, signal) => done(code ?? signal)));
  try {
    const listening = await new Promise((ready, fail) => {
      const timer = setTimeout(() => fail(new Error('no "listening" within 60 s')), 60_000);
      agent.once('exit', (code) => fail(new Error(`the agent exited ${code}`)));
      createInterface({ input: agent.stdout }).on('line', (line) => {
        if (!line.includes('"event":"listening"')) return;
        clearTimeout(timer);
        ready(JSON.parse(line));
      });
    });
    expectThat(listening.models.includes('demo'), 'the bundled agent serves the verified demo package');
    expectThat(listening.sharedMemory === true, 'with the shared-memory addon');
    const list = run(process.execPath, [
      join(prefix, 'bin/edgefleet.js'),
      'agent',
      'list',
      '--socket',
      socket,
    ]).stdout;
    expectThat(/demo/.test(list), 'the bundled CLI lists it over the socket');
  } finally {
    agent.kill('SIGTERM');
  }
  expectThat((await exited) === 0, 'the agent stopped cleanly on SIGTERM');
  console.log('\nBundle check passed.');
} catch (error) {
  failed = true;
  console.error(`\nBundle check FAILED: ${error.message}`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
