#!/usr/bin/env node
// `npm run bundle:agent`: self-contained device bundles of the agent, bundles/edgefleet-agent-<version>-linux-
// {x64,arm64}.tar.gz. Each holds the agent, the CLI (for `edgefleet device enroll`) and their production
// dependencies, ONNX Runtime's binary for that architecture only (onnxruntime-node ships both linux builds),
// native addons prebuilt when the bundle's architecture is this machine's (else built on the device by
// setup-native.sh), install.sh, setup-native.sh, the systemd unit and a starter config. The dependencies are
// installed with `npm ci` from a lock derived from package-lock.json (bundle-lock.mjs: the versions the tests
// ran), out of npm's cache or else the npm registry; nothing else is downloaded.
// Usage: node deploy/bundle/build.mjs [--arch x64|arm64 ...] [--out DIR]   (after `npm run build`)
import { spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BUNDLED_WORKSPACES, bundleLock } from './bundle-lock.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const args = process.argv.slice(2);
const option = (name) => args.flatMap((a, i) => (a === name ? [args[i + 1]] : []));
const arches = option('--arch').length > 0 ? option('--arch') : ['x64', 'arm64'];
const outDir = resolve(option('--out')[0] ?? join(root, 'bundles'));
const version = JSON.parse(readFileSync(join(root, 'packages/agent/package.json'), 'utf8')).version;
// What tells two bundles of one version apart, for install.sh's message over an installed agent: the commit
// built (with "-dirty" for uncommitted changes; "unknown" outside a git checkout) and the agent.db schema
// version its agent knows (an older one refuses a database a newer agent wrote: a rollback).
const build = (() => {
  const described = spawnSync('git', ['describe', '--always', '--dirty', '--abbrev=12'], {
    cwd: root,
    encoding: 'utf8',
  });
  return described.status === 0 ? described.stdout.trim() : 'unknown';
})();
const migrationsModule = join(root, 'packages/agent/dist/state/migrations.js');
if (!existsSync(migrationsModule)) throw new Error(`${migrationsModule} is missing: run npm run build first`);
const { LATEST_SCHEMA_VERSION: agentDatabaseSchema } = await import(pathToFileURL(migrationsModule).href);
const hostArch = os.arch();
const repoLock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8'));
const rootManifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const WORKSPACES = BUNDLED_WORKSPACES;

for (const arch of arches) {
  if (!['x64', 'arm64'].includes(arch)) throw new Error(`--arch ${arch}: expected x64 or arm64`);
}

function run(command, argv, cwd) {
  const result = spawnSync(command, argv, { cwd, stdio: ['ignore', 'inherit', 'inherit'] });
  if (result.status !== 0)
    throw new Error(`${command} ${argv.join(' ')} failed (${result.status ?? result.signal})`);
}

function sizeOf(path) {
  const s = statSync(path);
  if (!s.isDirectory()) return s.size;
  return readdirSync(path).reduce((sum, name) => sum + sizeOf(join(path, name)), 0);
}
const mib = (bytes) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

const work = mkdtempSync(join(os.tmpdir(), 'edgefleet-bundle-'));
try {
  const tarballs = join(work, 'tarballs');
  mkdirSync(tarballs);
  run(
    'npm',
    [
      'pack',
      '--silent',
      '--pack-destination',
      tarballs,
      '-w',
      'packages/core',
      '-w',
      'packages/agent',
      '-w',
      'packages/cli',
    ],
    root,
  );
  const tarball = (name) =>
    join(
      tarballs,
      readdirSync(tarballs).find((f) => f.startsWith(`edgefleet-${name}-`)),
    );
  mkdirSync(outDir, { recursive: true });

  for (const arch of arches) {
    const stage = join(work, arch, 'edgefleet-agent');
    mkdirSync(stage, { recursive: true });
    // The workspaces' tarballs by a path relative to the bundle folder, and every other package at the version
    // and place package-lock.json gives it (bundle-lock.mjs): `npm ci` installs that tree and nothing newer.
    const tarballSpecs = Object.fromEntries(
      Object.keys(WORKSPACES).map((name) => [
        name,
        `file:${relative(stage, tarball(name.slice('@edgefleet/'.length)))}`,
      ]),
    );
    const manifest = {
      name: 'edgefleet-agent-bundle',
      version,
      private: true,
      type: 'module',
      dependencies: tarballSpecs,
      // The repository's overrides shape its lock (cookie 1 for fastify's light-my-request): npm ci checks the
      // lock against them, and a later `npm rebuild` on the device reads them too.
      ...(rootManifest.overrides !== undefined ? { overrides: rootManifest.overrides } : {}),
    };
    writeFileSync(join(stage, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    writeFileSync(
      join(stage, 'package-lock.json'),
      `${JSON.stringify(bundleLock(repoLock, WORKSPACES, manifest, tarballSpecs), null, 2)}\n`,
    );
    // No install scripts: onnxruntime-node's would download; native addons are handled below. Packages come from
    // npm's cache, or the registry when the cache lacks them, at the locked versions and integrity hashes.
    const installed = spawnSync(
      'npm',
      [
        'ci',
        '--omit=dev',
        '--ignore-scripts',
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        '--install-links',
      ],
      { cwd: stage, stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' },
    );
    process.stderr.write(installed.stderr);
    if (installed.status !== 0) throw new Error(`npm ci failed (${installed.status ?? installed.signal})`);
    // A package that declares a newer Node than the one the docs promise must not reach devices unnoticed.
    if (/EBADENGINE/.test(installed.stderr))
      throw new Error('npm ci warned EBADENGINE: a locked dependency needs a newer Node than this one');
    // The device has no tarballs: its package.json names the versions it holds, so that `npm ls` and
    // setup-native.sh's `npm rebuild` see a valid tree rather than this machine's temporary paths.
    writeFileSync(
      join(stage, 'package.json'),
      `${JSON.stringify({ ...manifest, dependencies: Object.fromEntries(Object.keys(WORKSPACES).map((name) => [name, version])) }, null, 2)}\n`,
    );
    rmSync(join(stage, 'package-lock.json'), { force: true });

    // ONNX Runtime: only this architecture's Linux binary.
    const ortBin = join(stage, 'node_modules/onnxruntime-node/bin/napi-v6');
    for (const platform of readdirSync(ortBin)) {
      if (platform !== 'linux') rmSync(join(ortBin, platform), { recursive: true, force: true });
    }
    for (const cpu of readdirSync(join(ortBin, 'linux'))) {
      if (cpu !== arch) rmSync(join(ortBin, 'linux', cpu), { recursive: true, force: true });
    }
    if (!existsSync(join(ortBin, 'linux', arch, 'onnxruntime_binding.node'))) {
      throw new Error(`onnxruntime-node has no linux/${arch} binary`);
    }

    // Native addons, prebuilt for this machine's architecture and Node.js ABI; setup-native.sh rebuilds them
    // on a device where they do not load.
    const prebuilt = arch === hostArch;
    if (prebuilt) {
      const sqlite = join(stage, 'node_modules/better-sqlite3/build/Release');
      mkdirSync(sqlite, { recursive: true });
      copyFileSync(
        join(root, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node'),
        join(sqlite, 'better_sqlite3.node'),
      );
      const shm = join(stage, 'node_modules/@edgefleet/agent/native/build/Release');
      mkdirSync(shm, { recursive: true });
      copyFileSync(
        join(root, 'packages/agent/native/build/Release/sysv_shm.node'),
        join(shm, 'sysv_shm.node'),
      );
    }

    mkdirSync(join(stage, 'bin'));
    writeFileSync(
      join(stage, 'bin', 'edgefleet-agent.js'),
      "#!/usr/bin/env node\nimport '../node_modules/@edgefleet/agent/dist/main.js';\n",
      { mode: 0o755 },
    );
    writeFileSync(
      join(stage, 'bin', 'edgefleet.js'),
      "#!/usr/bin/env node\nimport '../node_modules/@edgefleet/cli/dist/main.js';\n",
      { mode: 0o755 },
    );
    for (const file of ['install.sh', 'setup-native.sh', 'agent.json']) {
      copyFileSync(join(root, 'deploy/bundle', file), join(stage, file));
    }
    copyFileSync(
      join(root, 'deploy/systemd/edgefleet-agent.service'),
      join(stage, 'edgefleet-agent.service'),
    );
    writeFileSync(
      join(stage, 'bundle.json'),
      `${JSON.stringify({ version, build, agentDatabaseSchema, arch, node: process.versions.node, nodeModuleVersion: process.versions.modules, prebuiltNativeAddons: prebuilt }, null, 2)}\n`,
    );

    const file = join(outDir, `edgefleet-agent-${version}-linux-${arch}.tar.gz`);
    run('tar', ['--owner=0', '--group=0', '-czf', file, '-C', dirname(stage), 'edgefleet-agent'], root);
    console.log(
      `${file}: ${mib(statSync(file).size)} (unpacked ${mib(sizeOf(stage))}; native addons ${prebuilt ? `prebuilt for Node.js ABI ${process.versions.modules}` : 'built on install'})`,
    );
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
