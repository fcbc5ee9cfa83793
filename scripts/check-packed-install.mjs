#!/usr/bin/env node
// Release check: each workspace packed with `npm pack` and installed into an empty folder, as a user installs
// a release, then every binary run from there: the CLI's demo (core), edgefleet-server init (SQLite), and the
// agent serving the demo package to the CLI over its socket. Slow (npm install builds better-sqlite3 from
// source when no prebuilt can be fetched), so .ci/run runs it as its own step, not inside `npm test`.
// Usage: node scripts/check-packed-install.mjs [--keep]   (after `npm run build`)
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const workspaces = ['packages/core', 'packages/agent', 'packages/server', 'packages/cli'];
const tmp = await mkdtemp(join(os.tmpdir(), 'edgefleet-packed-'));
const tarballs = join(tmp, 'tarballs');
const app = join(tmp, 'app');
const bin = (name) => join(app, 'node_modules', '.bin', name);

function step(title) {
  console.log(`\n== ${title}`);
}

/** Runs a command, echoing it; throws with its output when it fails. */
function run(command, args, options = {}) {
  console.log(`$ ${[command, ...args].join(' ')}`);
  const result = spawnSync(command, args, { encoding: 'utf8', cwd: app, ...options });
  if (result.status !== 0) {
    throw new Error(
      `${command} ${args.join(' ')} exited ${result.status ?? result.signal}\n${result.stdout}\n${result.stderr}`,
    );
  }
  return result;
}

function expectMatch(text, pattern, what) {
  if (!pattern.test(text)) throw new Error(`${what}: expected ${pattern}, got:\n${text}`);
  console.log(`   ok: ${what}`);
}

let failed = false;
try {
  step('npm pack each workspace');
  await mkdir(tarballs, { recursive: true });
  run('npm', ['pack', '--pack-destination', tarballs, ...workspaces.flatMap((w) => ['-w', w])], {
    cwd: root,
  });
  const packed = (await readdir(tarballs)).filter((f) => f.endsWith('.tgz')).map((f) => join(tarballs, f));
  if (packed.length !== workspaces.length)
    throw new Error(`expected ${workspaces.length} tarballs, got ${packed}`);

  step('npm install the tarballs into an empty folder');
  await mkdir(app);
  // What a user's project needs on npm >= 11.16: onnxruntime-node's post-install would download GPU binaries.
  await writeFile(
    join(app, 'package.json'),
    `${JSON.stringify(
      {
        name: 'edgefleet-release-check',
        private: true,
        allowScripts: {
          'onnxruntime-node': false,
          protobufjs: false,
          'better-sqlite3': true,
          '@edgefleet/agent': true,
        },
      },
      null,
      2,
    )}\n`,
  );
  const install = run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', ...packed], {
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  process.stderr.write(install.stderr);
  // A dependency that declares a newer Node than ours warns every user who installs on the Node we support (seen
  // only when this runs on that older Node, as CI's Node 20 does).
  if (/EBADENGINE/.test(install.stderr))
    throw new Error(
      'npm install warned EBADENGINE: a dependency needs a newer Node than the packages declare',
    );

  step('binaries');
  expectMatch(run(bin('edgefleet'), ['--version']).stdout, /^0\.1\.0/, 'edgefleet --version');
  expectMatch(run(bin('edgefleet-agent'), ['--version']).stdout, /0\.1\.0/, 'edgefleet-agent --version');
  expectMatch(run(bin('edgefleet-server'), ['--help']).stdout, /backup/, 'edgefleet-server --help');
  expectMatch(run('npx', ['edgefleet', '--help']).stdout, /demo/, 'npx edgefleet --help');

  step('the CLI: package life cycle on the demo model');
  expectMatch(run(bin('edgefleet'), ['demo', '--dir', 'demo']).stdout, /refused/, 'edgefleet demo');

  step('the server: init on SQLite');
  const init = run(bin('edgefleet-server'), ['init', '--data-dir', 'server-data']);
  expectMatch(init.stdout, /^efo_/, 'edgefleet-server init printed an admin token');

  step('the agent: the shared-memory addon, and serving the signed demo package');
  const addon = join(
    app,
    'node_modules',
    '@edgefleet',
    'agent',
    'native',
    'build',
    'Release',
    'sysv_shm.node',
  );
  if (!existsSync(addon)) throw new Error(`the install step did not build ${addon}`);
  console.log('   ok: System V shared-memory addon built on install');
  const socket = join(app, 'agent.sock');
  await writeFile(
    join(app, 'agent.json'),
    JSON.stringify({
      sagemaker_edge_core_device_name: 'release-check',
      sagemaker_edge_core_root_certs_path: join(app, 'demo', 'pki', 'trust'),
      sagemaker_edge_local_data_root_path: join(app, 'agent-data'),
      edgefleet_preload_models: [
        { url: join(app, 'demo', 'device', 'models', 'demo-classifier'), name: 'demo' },
      ],
    }),
  );
  const agent = spawn(bin('edgefleet-agent'), ['-a', socket, '-c', join(app, 'agent.json')], {
    cwd: app,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((done) => agent.once('exit', (code, signal) => done(code ?? signal)));
  try {
    await new Promise((ready, fail) => {
      const timer = setTimeout(
        () => fail(new Error('the agent did not log "listening" within 60 s')),
        60_000,
      );
      agent.once('exit', (code) => fail(new Error(`the agent exited (${code}) before listening`)));
      createInterface({ input: agent.stdout }).on('line', (line) => {
        if (line.includes('"event":"listening"')) {
          clearTimeout(timer);
          ready();
        }
      });
    });
    expectMatch(
      run(bin('edgefleet'), ['agent', 'list', '--socket', socket]).stdout,
      /demo/,
      'edgefleet agent list shows the verified demo package',
    );
  } finally {
    agent.kill('SIGTERM');
  }
  const code = await exited;
  if (code !== 0) throw new Error(`the agent exited ${code} on SIGTERM, expected 0`);
  console.log('   ok: the agent stopped cleanly on SIGTERM');
  console.log('\nPacked install check passed.');
} catch (error) {
  failed = true;
  console.error(`\nPacked install check FAILED: ${error.message}`);
} finally {
  if (process.argv.includes('--keep')) console.log(`kept ${tmp}`);
  else await rm(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
