#!/usr/bin/env node
// Fresh-clone check: clones this repository's HEAD into a temp folder, runs `npm ci`, checks that the three
// binaries run through npx from the root, then runs every command of the README's "Set up" and "A five-minute
// walkthrough" sections as written, extracted from the README, so this fails when the README drifts.
// `npm start` runs in the background while the commands after it run, and is stopped with Ctrl-C (SIGINT) at
// the end; `npm test` is left to CI's own step. Slow (npm ci): .ci/run runs it as its own step.
// Usage: node scripts/check-fresh-clone.mjs [--keep]
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const tmp = mkdtempSync(join(os.tmpdir(), 'edgefleet-clone-'));
const clone = join(tmp, 'edgefleet');
const SECTIONS = ['Set up', 'A five-minute walkthrough'];
const LEFT_TO_CI = new Set(['npm test']);

/** The commands of the README's sh blocks in `sections`: continuation lines joined, comments dropped. */
function readmeCommands(markdown, sections) {
  const commands = [];
  let section = '';
  let inBlock = false;
  let pending = '';
  for (const line of markdown.split('\n')) {
    const heading = /^## (.+)$/.exec(line);
    if (heading && !inBlock) section = heading[1].trim();
    if (/^```/.test(line)) {
      inBlock = !inBlock && /^```sh\s*$/.test(line);
      continue;
    }
    if (!inBlock || !sections.includes(section)) continue;
    const text = line.replace(/\s+#\s.*$/, '').replace(/^#.*$/, '');
    if (text.trimEnd().endsWith('\\')) {
      pending += `${text.trimEnd().slice(0, -1).trimEnd()} `;
      continue;
    }
    const command = `${pending}${text.trim()}`.trim();
    pending = '';
    if (command !== '') commands.push(command);
  }
  return commands;
}

function sh(command, options = {}) {
  console.log(`$ ${command}`);
  return spawnSync('sh', ['-c', command], { cwd: clone, encoding: 'utf8', ...options });
}
function must(command, options) {
  const result = sh(command, options);
  if (result.status !== 0) {
    throw new Error(
      `"${command}" exited ${result.status ?? result.signal}\n${result.stdout ?? ''}\n${result.stderr ?? ''}`,
    );
  }
  return result;
}

/** Starts `npm start` and resolves once it prints the line that ends its announcement. */
function startDemo() {
  console.log('$ npm start   (in the background)');
  const child = spawn('npm', ['start'], { cwd: clone, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  const exited = new Promise((done) => child.once('exit', (code, signal) => done({ code, signal })));
  const ready = new Promise((resolveReady, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`npm start did not get ready in 5 minutes:\n${output}`)),
      300_000,
    );
    const onData = (chunk) => {
      output += chunk;
      process.stdout.write(chunk);
      if (/Ctrl-C stops/.test(output)) {
        clearTimeout(timer);
        resolveReady();
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.stderr.setEncoding('utf8').on('data', onData);
    void exited.then(({ code }) =>
      reject(new Error(`npm start exited (${code}) before it was ready:\n${output}`)),
    );
  });
  return { child, ready, exited, output: () => output };
}

let failed = false;
let demo;
try {
  const commands = readmeCommands(readFileSync(join(root, 'README.md'), 'utf8'), SECTIONS);
  if (!commands.includes('npm ci') || !commands.includes('npm start')) {
    throw new Error(
      `the README's ${SECTIONS.join(' / ')} sections lost npm ci or npm start: ${commands.join('; ')}`,
    );
  }
  console.log(`README commands: ${commands.length}`);
  must(`git clone --quiet --no-hardlinks ${JSON.stringify(root)} ${JSON.stringify(clone)}`, { cwd: tmp });

  for (const command of commands) {
    if (LEFT_TO_CI.has(command)) {
      console.log(`(skipped: ${command}, CI runs it as its own step)`);
      continue;
    }
    if (command === 'npm ci') {
      const install = must('npm ci --prefer-offline --no-audit --no-fund', {
        stdio: ['ignore', 'inherit', 'pipe'],
      });
      process.stderr.write(install.stderr);
      // As in check-packed-install: a dependency needing a newer Node than ours (seen on the older Node only).
      if (/EBADENGINE/.test(install.stderr))
        throw new Error(
          'npm ci warned EBADENGINE: a dependency needs a newer Node than the packages declare',
        );
      // The binaries work from the root of a fresh clone.
      must('npx edgefleet --version');
      must('npx edgefleet-agent --version');
      must('npx edgefleet-server --help');
      continue;
    }
    if (command === 'npm start') {
      demo = startDemo();
      await demo.ready;
      continue;
    }
    let toRun = command;
    // `npm start` takes 127.0.0.1:8080 "or another free port if that one is taken": use the one it printed.
    const port = /REST, KServe v2:\s+http:\/\/127\.0\.0\.1:(\d+)/.exec(demo?.output() ?? '')?.[1];
    if (port) toRun = toRun.replaceAll('127.0.0.1:8080', `127.0.0.1:${port}`);
    const result = must(toRun);
    if (toRun.startsWith('curl')) {
      if (!/"outputs"/.test(result.stdout))
        throw new Error(`"${toRun}" did not answer an inference:\n${result.stdout}`);
    }
  }

  // "Change one byte of my-model-1.0/model.onnx and verify refuses it with exit code 3, naming the file."
  const verify = commands.find((c) => c.includes('package verify my-model-1.0'));
  if (verify) {
    const modelFile = join(clone, 'my-model-1.0', 'model.onnx');
    const bytes = readFileSync(modelFile);
    bytes[bytes.length - 1] ^= 0xff;
    writeFileSync(modelFile, bytes);
    // The folder, not the archive made before the change.
    const refused = sh(verify.replace('my-model-1.0.tar.gz', 'my-model-1.0'));
    if (refused.status !== 3 || !/model\.onnx/.test(refused.stdout + refused.stderr)) {
      throw new Error(
        `a changed model.onnx: expected exit 3 naming the file, got ${refused.status}:\n${refused.stdout}${refused.stderr}`,
      );
    }
    console.log('   ok: a changed byte is refused with exit code 3, naming model.onnx');
  }

  if (demo) {
    process.kill(-demo.child.pid, 'SIGINT'); // Ctrl-C reaches the whole process group
    const { code, signal } = await demo.exited;
    if (code !== 0 && code !== 130 && signal !== 'SIGINT')
      throw new Error(`npm start ended with ${code ?? signal} on Ctrl-C`);
    console.log('   ok: Ctrl-C stopped npm start');
    demo = undefined;
  }
  console.log('\nFresh-clone README check passed.');
} catch (error) {
  failed = true;
  console.error(`\nFresh-clone README check FAILED: ${error.message}`);
} finally {
  if (demo) {
    // Ctrl-C first: npm start stops the server and agent it started, which run in process groups of their own
    // and would outlive a SIGKILL of its group (holding the demo's ports); SIGKILL only if it does not end.
    const signal = (name) => {
      try {
        process.kill(-demo.child.pid, name);
      } catch {
        // already gone
      }
    };
    signal('SIGINT');
    const ended = await Promise.race([demo.exited.then(() => true), sleep(30_000).then(() => false)]);
    if (!ended) signal('SIGKILL');
  }
  if (process.argv.includes('--keep')) console.log(`kept ${tmp}`);
  else rmSync(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
