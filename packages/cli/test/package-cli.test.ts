import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTestModel } from '@edgefleet/core';
import { edgefleet } from './run-cli.js';

let work: string;
let model: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ef-cli-'));
  model = await writeTestModel('mlp', work);
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('edgefleet pki + package', () => {
  it('creates a PKI, then a signed package and archive that verify against the trust folder', async () => {
    const pki = await edgefleet('--json', 'pki', 'init', '--out', join(work, 'pki'));
    expect(pki.code).toBe(0);
    const files = JSON.parse(pki.stdout) as Record<string, string>;
    expect((await stat(files.rootKey!)).mode & 0o777).toBe(0o600);
    expect((await stat(files.signingKey!)).mode & 0o777).toBe(0o600);

    const created = await edgefleet(
      'package',
      'create',
      model,
      '--name',
      'demo',
      '--version',
      '1.0',
      '--out',
      join(work, 'demo-1.0'),
      '--key',
      files.signingKey!,
      '--cert',
      files.signingCertificate!,
      '--tar',
      '--label',
      'team=vision',
      '--json',
    );
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    const result = JSON.parse(created.stdout);
    expect(result.manifest.inputs).toEqual([
      { name: expect.any(String), dataType: 'FLOAT32', shape: [-1, 4] },
    ]);
    expect(result.manifest.labels).toEqual({ team: 'vision' });
    expect(result.archive.path).toBe(join(work, 'demo-1.0.tar.gz'));

    const verified = await edgefleet(
      'package',
      'verify',
      join(work, 'demo-1.0.tar.gz'),
      '--trust',
      files.trustFolder!,
    );
    expect(verified.code).toBe(0);
    expect(verified.stdout).toMatch(/^OK /);

    const inspected = await edgefleet('package', 'inspect', join(work, 'demo-1.0.tar.gz'));
    expect(inspected.code).toBe(0);
    expect(inspected.stdout).toContain('demo 1.0');
    expect(inspected.stdout).toContain('model.sig present');
  });

  it('refuses a tampered package with exit code 3 and names the file', async () => {
    const pki = JSON.parse((await edgefleet('--json', 'pki', 'init', '--out', join(work, 'pki2'))).stdout);
    const dir = join(work, 'tamper');
    expect(
      (
        await edgefleet(
          'package',
          'create',
          model,
          '--name',
          'm',
          '--version',
          '2',
          '--out',
          dir,
          '--key',
          pki.signingKey,
          '--cert',
          pki.signingCertificate,
        )
      ).code,
    ).toBe(0);
    const bytes = await readFile(join(dir, 'model.onnx'));
    bytes.writeUInt8(bytes.readUInt8(10) ^ 1, 10);
    await writeFile(join(dir, 'model.onnx'), bytes);
    const verified = await edgefleet('package', 'verify', dir, '--trust', pki.trustFolder);
    expect(verified.code).toBe(3);
    expect(verified.stderr).toContain('REFUSED');
    expect(verified.stderr).toContain('model.onnx');
  });

  it('says a missing model does not exist, without a stack trace', async () => {
    const r = await edgefleet(
      'package',
      'create',
      join(work, 'missing.onnx'),
      '--name',
      'x',
      '--version',
      '1',
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `edgefleet: ${join(work, 'missing.onnx')} does not exist; expected an .onnx model file\n`,
    );
  });

  it('rejects a bad model name with the rule', async () => {
    const r = await edgefleet(
      'package',
      'create',
      model,
      '--name',
      'bad_name',
      '--version',
      '1',
      '--out',
      join(work, 'bad'),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/name.*letters and digits/);
  });

  it('reads the manifest of a package folder as devices do: no link followed, no huge file, clear errors', async () => {
    const dir = join(work, 'manifests');
    const created = await edgefleet(
      'package',
      'create',
      model,
      '--name',
      'm',
      '--version',
      '1',
      '--out',
      dir,
    );
    expect(created.code, created.stderr).toBe(0);
    const manifest = join(dir, 'manifest.json');
    const outside = join(work, 'outside-manifest.json');
    await rename(manifest, outside);

    // A link to a valid manifest outside the folder: refused, not followed.
    await symlink(outside, manifest);
    for (const command of ['inspect', 'pack', 'sign']) {
      const args = command === 'sign' ? ['--key', join(work, 'pki', 'signing.key')] : [];
      const linked = await edgefleet('package', command, dir, ...args);
      expect(linked.code, `package ${command}`).toBe(1);
      expect(linked.stderr).toBe(
        `edgefleet: ${manifest} is a symbolic link; expected a regular file (links are not followed in a package)\n`,
      );
    }

    // Larger than any manifest can be: refused from its size, before it is read.
    await unlink(manifest);
    await writeFile(manifest, ' '.repeat(1024 * 1024 + 1));
    const huge = await edgefleet('package', 'inspect', dir);
    expect(huge.code).toBe(1);
    expect(huge.stderr).toBe(`edgefleet: ${manifest} is 1048577 bytes; expected at most 1048576\n`);

    // Not JSON: the user's input, not a bug (exit 1, no stack trace).
    await writeFile(manifest, '{"name": ');
    const broken = await edgefleet('package', 'inspect', dir);
    expect(broken.code).toBe(1);
    expect(broken.stderr).toMatch(/manifest\.json is not JSON.*; expected the package manifest\n$/);

    await unlink(manifest);
    await rename(outside, manifest);
    expect((await edgefleet('package', 'inspect', dir)).code).toBe(0);
  });

  it('reports usage errors with exit code 2', async () => {
    expect((await edgefleet('package', 'create', model)).code).toBe(2);
    expect((await edgefleet('package', 'verify', join(work, 'x'))).code).toBe(2);
    expect((await edgefleet('no-such-command')).code).toBe(2);
  });

  it('the installed binary prints clean errors too', async () => {
    const bin = join(import.meta.dirname, '..', 'dist', 'main.js');
    const run = promisify(execFile);
    const error = await run(process.execPath, [bin, 'package', 'inspect', join(work, 'nope')]).catch(
      (e: unknown) => e as { code: number; stderr: string },
    );
    expect(error).toMatchObject({ code: 1, stderr: expect.stringContaining('does not exist') });
    expect((error as { stderr: string }).stderr).not.toContain('    at ');
  });

  it('hints name the command as the user started it: npx edgefleet through npx, else edgefleet', async () => {
    const run = promisify(execFile);
    const repo = join(import.meta.dirname, '..', '..', '..');
    // Vitest itself may run under npx: the installed-binary run gets an environment without npm's variables.
    const plainEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('npm_')));
    const installed = await run(
      process.execPath,
      [
        join(repo, 'packages', 'cli', 'bin', 'edgefleet.js'),
        'pki',
        'init',
        '--out',
        join(work, 'pki-hint-1'),
      ],
      { env: plainEnv },
    );
    expect(installed.stdout).toMatch(/^Sign a package: edgefleet package sign /m);
    const throughNpx = await run('npx', ['edgefleet', 'pki', 'init', '--out', join(work, 'pki-hint-2')], {
      cwd: repo,
      env: plainEnv,
    });
    expect(throughNpx.stdout).toMatch(/^Sign a package: npx edgefleet package sign /m);
  });
});

describe('edgefleet demo', () => {
  it('runs the whole life cycle and shows the tampered copy refused', async () => {
    const r = await edgefleet('demo', '--dir', join(work, 'demo'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('verified it as a device would: OK');
    expect(r.stdout).toMatch(/7\. .*refused: .*model\.onnx/);
    expect(await stat(join(work, 'demo', 'demo-classifier-1.0.tar.gz'))).toBeTruthy();
  });
});
