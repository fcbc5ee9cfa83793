/**
 * deploy/bundle/install.sh into a scratch system image (--root), without building a bundle: the script with
 * the files it copies. Run twice, as an upgrade is: the second run says to restart the agent.
 */
import { execFile, spawn } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const deployDir = path.resolve(import.meta.dirname, '..');
// The agent as built by `npm run build` (the bundle runs the same dist).
const AGENT_MAIN = path.resolve(deployDir, '..', 'packages/agent/dist/main.js');
const isRoot = process.getuid?.() === 0;
const haveUseradd = await run('sh', ['-c', 'command -v useradd']).then(
  () => true,
  () => false,
);

let scratch: string | undefined;
afterAll(() => (scratch ? rm(scratch, { recursive: true, force: true }) : undefined));

// install.sh creates a user and sets owners: root only (CI's bundle check runs as root too).
describe.skipIf(!isRoot || !haveUseradd)('install.sh', () => {
  it('says "installed" the first time, and over an installed one which bundle it replaced, a rollback named, and "restart the agent", keeping the config', async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-install-'));
    const bundle = path.join(scratch, 'edgefleet-agent');
    await mkdir(bundle);
    await copyFile(path.join(deployDir, 'bundle', 'install.sh'), path.join(bundle, 'install.sh'));
    await copyFile(path.join(deployDir, 'bundle', 'agent.json'), path.join(bundle, 'agent.json'));
    await copyFile(
      path.join(deployDir, 'systemd', 'edgefleet-agent.service'),
      path.join(bundle, 'edgefleet-agent.service'),
    );
    await writeFile(path.join(bundle, 'bundle.json'), JSON.stringify({ arch: 'x64' }));
    const image = path.join(scratch, 'image');
    const install = () => run('sh', [path.join(bundle, 'install.sh'), '--root', image]);

    const first = await install();
    expect(first.stderr).toMatch(
      /installed into .*image; enable with: systemctl enable --now edgefleet-agent/,
    );
    const config = path.join(image, 'etc/edgefleet/agent.json');
    await writeFile(config, '{"edited": true}\n');

    const second = await install();
    expect(second.stderr).toMatch(
      /upgraded in .*image \(config kept\); restart the agent \(systemctl restart edgefleet-agent\)/,
    );
    // A bundle.json from before it named its build and schema.
    expect(second.stderr).toMatch(
      /replaced the installed agent \(version unknown, build unknown, database schema unknown\) with this bundle's \(version unknown, build unknown, database schema unknown\)/,
    );
    expect(second.stderr).not.toMatch(/rollback/);
    expect(await readFile(config, 'utf8')).toBe('{"edited": true}\n');

    // Bundles of one version: the build and the agent.db schema tell them apart, and a rollback is named.
    const installAs = async (build: string, agentDatabaseSchema: number) => {
      await writeFile(
        path.join(bundle, 'bundle.json'),
        JSON.stringify({ version: '0.1.0', build, agentDatabaseSchema, arch: 'x64' }),
      );
      return (await install()).stderr;
    };
    await installAs('b-new', 7);
    const same = await installAs('b-newer', 7);
    expect(same).toMatch(
      /replaced the installed agent \(version 0\.1\.0, build b-new, database schema 7\) with this bundle's \(version 0\.1\.0, build b-newer, database schema 7\)/,
    );
    expect(same).not.toMatch(/rollback/);
    const older = await installAs('b-old', 5);
    expect(older).toMatch(
      /replaced the installed agent \(version 0\.1\.0, build b-newer, database schema 7\) with this bundle's \(version 0\.1\.0, build b-old, database schema 5\)/,
    );
    expect(older).toMatch(
      /warning: this is a rollback: the agent\.db the installed agent left .* may have schema 7, newer than this agent knows \(5\); if so, this agent refuses to start \(exit 2, "newer than this agent knows"\) .*see deploy\/README\.md, Rolling a device back/,
    );
    expect(await readFile(config, 'utf8')).toBe('{"edited": true}\n');
  });

  it('installs a starter config that verifies package signatures with /etc/edgefleet/trust: the agent refuses to start while it is empty', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-starter-'));
    try {
      const bundle = path.join(dir, 'edgefleet-agent');
      await mkdir(bundle);
      for (const file of ['install.sh', 'agent.json'])
        await copyFile(path.join(deployDir, 'bundle', file), path.join(bundle, file));
      await copyFile(
        path.join(deployDir, 'systemd', 'edgefleet-agent.service'),
        path.join(bundle, 'edgefleet-agent.service'),
      );
      await writeFile(path.join(bundle, 'bundle.json'), JSON.stringify({ arch: 'x64' }));
      const image = path.join(dir, 'image');
      await run('sh', [path.join(bundle, 'install.sh'), '--root', image]);

      // The installed config as the unit runs it, its absolute paths moved into the image.
      const installed = await readFile(path.join(image, 'etc/edgefleet/agent.json'), 'utf8');
      const config = path.join(dir, 'agent.json');
      await writeFile(
        config,
        installed.replace(
          /"\/(etc\/edgefleet|var\/lib\/edgefleet-agent|run\/edgefleet-agent)/g,
          `"${image}/$1`,
        ),
      );
      await mkdir(path.join(image, 'run/edgefleet-agent'), { recursive: true });
      const agent = spawn(process.execPath, [
        AGENT_MAIN,
        '-a',
        path.join(image, 'run/edgefleet-agent/agent.sock'),
        '-c',
        config,
      ]);
      let output = '';
      agent.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      agent.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
      // An agent that starts (signatures unchecked) is stopped here once it listens, and the test fails.
      agent.stdout.on('data', () => {
        if (output.includes('"event":"listening"')) agent.kill('SIGKILL');
      });
      const code = await new Promise<number | null>((done) => agent.once('exit', (c) => done(c)));
      expect(output).toContain(
        `trust folder ${path.join(image, 'etc/edgefleet/trust')} holds no *.pem or *.crt files; expected root certificates or public keys`,
      );
      expect(code).toBe(2);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('writes the node it finds on PATH into the unit, and without node says what is missing', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-node-path-'));
    try {
      const bundle = path.join(dir, 'edgefleet-agent');
      await mkdir(bundle);
      for (const file of ['install.sh', 'agent.json'])
        await copyFile(path.join(deployDir, 'bundle', file), path.join(bundle, file));
      await copyFile(
        path.join(deployDir, 'systemd', 'edgefleet-agent.service'),
        path.join(bundle, 'edgefleet-agent.service'),
      );
      await writeFile(path.join(bundle, 'bundle.json'), JSON.stringify({ arch: 'x64' }));
      const image = path.join(dir, 'image');
      // A Node.js outside /usr/bin, as nodejs.org's tarball or `n` installs it (/usr/local/bin): every user can
      // reach it (mkdtemp makes a 0700 folder, which the agent's user could not enter).
      await chmod(dir, 0o755);
      const localBin = path.join(dir, 'local', 'bin');
      await mkdir(localBin, { recursive: true });
      await symlink(process.execPath, path.join(localBin, 'node'));
      const installed = await run('sh', [path.join(bundle, 'install.sh'), '--root', image], {
        env: { ...process.env, PATH: `${localBin}:/usr/sbin:/usr/bin:/sbin:/bin` },
      });
      const unit = await readFile(path.join(image, 'etc/systemd/system/edgefleet-agent.service'), 'utf8');
      expect(unit).toContain(`\nExecStart=${localBin}/node /opt/edgefleet-agent/bin/edgefleet-agent.js `);
      expect(unit).not.toContain('/usr/bin/node /opt');
      expect(installed.stderr).toContain(`the unit runs ${localBin}/node, which ${image} lacks`);

      // No node at all: the script's own message, before anything is installed (not the shell's "node: not found").
      const tools = path.join(dir, 'tools');
      await mkdir(tools);
      for (const tool of ['dirname', 'id', 'cat', 'uname'])
        await symlink((await run('sh', ['-c', `command -v ${tool}`])).stdout.trim(), path.join(tools, tool));
      const refused = await run(
        '/bin/sh',
        [path.join(bundle, 'install.sh'), '--root', path.join(dir, 'image2')],
        {
          env: { PATH: tools },
        },
      ).then(
        () => ({ code: 0, stderr: '' }),
        (error: { code: number; stderr: string }) => error,
      );
      expect(refused.code).toBe(1);
      expect(refused.stderr).toBe(
        'install.sh: node is not installed; expected Node.js >= 20.19 on PATH (the unit runs the node found there)\n',
      );
      await expect(readFile(path.join(dir, 'image2', 'etc', 'passwd'))).rejects.toThrow(/ENOENT/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses a node the agent's user cannot run (behind a 0700 folder, as nvm's under /root is), before installing the program", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-node-private-'));
    try {
      await chmod(dir, 0o755);
      const bundle = path.join(dir, 'edgefleet-agent');
      await mkdir(bundle);
      for (const file of ['install.sh', 'agent.json'])
        await copyFile(path.join(deployDir, 'bundle', file), path.join(bundle, file));
      await copyFile(
        path.join(deployDir, 'systemd', 'edgefleet-agent.service'),
        path.join(bundle, 'edgefleet-agent.service'),
      );
      await writeFile(path.join(bundle, 'bundle.json'), JSON.stringify({ arch: 'x64' }));
      // root's own folder, as /root is (0700): root runs node from it, the agent's user cannot reach it.
      const privateBin = path.join(dir, 'private', 'bin');
      await mkdir(privateBin, { recursive: true });
      await chmod(path.join(dir, 'private'), 0o700);
      await symlink(process.execPath, path.join(privateBin, 'node'));
      const image = path.join(dir, 'image');
      const refused = await run('sh', [path.join(bundle, 'install.sh'), '--root', image], {
        env: { ...process.env, PATH: `${privateBin}:/usr/sbin:/usr/bin:/sbin:/bin` },
      }).then(
        () => ({ code: 0, stderr: '' }),
        (error: { code: number; stderr: string }) => error,
      );
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(
        new RegExp(
          `(^|\\n)install\\.sh: the agent's user edgefleet-agent \\(uid \\d+\\) cannot run ${privateBin}/node: .*Permission denied.*; the unit runs node as that user: expected a Node\\.js >= 20\\.19 every user can run, installed system-wide \\(/usr/bin, /usr/local/bin\\)\n$`,
        ),
      );
      await expect(stat(path.join(image, 'opt', 'edgefleet-agent'))).rejects.toThrow(/ENOENT/);
      await expect(stat(path.join(image, 'etc', 'systemd'))).rejects.toThrow(/ENOENT/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
