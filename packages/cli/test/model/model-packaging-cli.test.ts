import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { writeTestModel } from '@edgefleet/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli.js';
import { edgefleet, useOperatorCli } from '../run-cli.js';

const cli = useOperatorCli('ef-models-');
const { ef } = cli;
let onnx: string;
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read answers field by field
async function json(...args: string[]): Promise<any> {
  const result = await ef(...args, '--json');
  if (result.code !== 0) throw new Error(`edgefleet ${args.join(' ')} → ${result.code}: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

beforeAll(async () => {
  onnx = await writeTestModel('mlp', join(cli.work, 'src'));
});

describe('edgefleet model + packaging', () => {
  it('uploads an ONNX model, packages and signs it on the server, and the download verifies locally', async () => {
    const uploaded = await json(
      'model',
      'upload',
      onnx,
      '--name',
      'iris',
      '--version',
      '1.0',
      '--description',
      'flowers',
    );
    expect(uploaded).toMatchObject({
      modelName: 'iris',
      version: '1.0',
      sourceKind: 'onnx',
      sha256: createHash('sha256')
        .update(await readFile(onnx))
        .digest('hex'),
      inputs: [{ name: 'features', dataType: 'FLOAT32', shape: [-1, 4] }],
    });
    expect((await ef('model', 'list')).stdout).toMatch(/^iris\s+1\s+1\.0\s+flowers$/m);
    expect((await ef('model', 'describe', 'iris', '--version', '1.0')).stdout).toMatch(
      /input\s+features\s+FLOAT32\s+\[-1, 4\]/,
    );
    expect((await json('model', 'describe', 'iris')).versions).toHaveLength(1);

    const job = await json('packaging', 'create', 'iris-1', '--model', 'iris', '--version', '1.0', '--wait');
    expect(job).toMatchObject({
      name: 'iris-1',
      status: 'COMPLETED',
      artifact: { sha256: expect.stringMatching(/^[0-9a-f]{64}$/) },
    });
    expect(JSON.parse(job.modelSignature)).toHaveProperty('dsseEnvelope');
    expect((await ef('packaging', 'list', '--status', 'COMPLETED')).stdout).toMatch(
      /^iris-1\s+iris\s+1\.0\s+COMPLETED/m,
    );

    const file = join(cli.work, 'iris-1.0.tar.gz');
    const downloaded = await json('packaging', 'download', 'iris-1', '--out', file);
    expect(downloaded).toMatchObject({ file, bytes: job.artifact.sizeBytes, sha256: job.artifact.sha256 });
    const again = await ef('packaging', 'download', 'iris-1', '--out', file);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already exists; pass --force/);

    // The device's view: the server's signing root in a trust folder verifies the package.
    // As the docs write it: --out into a folder that does not exist yet (issue 13.2) is created, 0755.
    const trust = join(cli.work, 'etc', 'edgefleet', 'trust');
    expect((await ef('packaging', 'root-certificate', '--out', join(trust, 'root.pem'))).code).toBe(0);
    expect((await stat(trust)).mode & 0o777).toBe(0o755);
    const verified = await edgefleet('package', 'verify', file, '--trust', trust);
    expect(verified.stderr).toBe('');
    expect(verified.stdout).toMatch(/^OK /);
  });

  it('uploads a package archive made by "package create --tar", with a progress bar on a terminal', async () => {
    const made = await edgefleet(
      'package',
      'create',
      onnx,
      '--name',
      'iris',
      '--version',
      '2.0',
      '--out',
      join(cli.work, 'iris-2.0'),
      '--tar',
      '--json',
    );
    expect(made.code).toBe(0);
    const archive = JSON.parse(made.stdout).archive.path as string;

    const stdout = new Capture(false);
    const stderr = new Capture(true);
    const code = await runCli(
      [
        'model',
        'upload',
        archive,
        '--name',
        'iris',
        '--version',
        '2.0',
        '--server',
        cli.plane.operatorUrl,
        '--token',
        cli.plane.adminToken,
      ],
      { stdout, stderr: stderr as unknown as NodeJS.WriteStream },
    );
    expect(code).toBe(0);
    expect(stdout.text).toMatch(/^Uploaded iris 2\.0\n[\s\S]*uploaded as\s+package archive/);
    // Unsigned: accepted, and the server's warning is printed (the devices it enrolls will refuse it).
    expect(stdout.text).toMatch(
      /^warning: package iris 2\.0 is not signed: devices enrolled by this server require a signature that leads to the server's package-signing root \(.*SHA-256 [0-9a-f]{64}\) and will refuse it/m,
    );
    expect(stderr.text).toContain('\r\x1b[Kuploading 100% ');

    expect(
      (await json('model', 'describe', 'iris')).versions.map((v: { version: string }) => v.version),
    ).toEqual(['1.0', '2.0']);
    expect((await ef('model', 'delete', 'iris', '--version', '2.0')).stdout).toBe('Deleted iris 2.0\n');
    expect((await json('model', 'describe', 'iris')).versionCount).toBe(1);
  });

  it('reports what went wrong: a file that is no model, a job for a missing version, an unfinished download', async () => {
    const junk = join(cli.work, 'junk.onnx');
    await writeFile(junk, 'this is not ONNX');
    const refused = await ef('model', 'upload', junk, '--name', 'junk', '--version', '1');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/^edgefleet: .*\[HTTP 4\d\d \w+\]\n$/);
    // The server answers 409 before it has read the body; that answer is what the user sees (issue 13.1).
    const big = join(cli.work, 'big.onnx');
    await writeFile(big, Buffer.alloc(16 * 1024 * 1024, 1));
    const again = await ef('model', 'upload', big, '--name', 'iris', '--version', '1.0');
    expect(again).toMatchObject({ code: 1, stdout: '' });
    expect(again.stderr).toMatch(
      /^edgefleet: model iris version 1\.0 already exists.*\[HTTP 409 Conflict\]\n$/,
    );
    // A path that cannot be written is the user's to fix, never "a bug; please report it" (exit 70).
    const blocked = await ef('packaging', 'root-certificate', '--out', join(junk, 'root.pem'));
    expect(blocked.code).toBe(1);
    expect(blocked.stderr).toMatch(
      /^edgefleet: cannot create the folder .*junk\.onnx for --out .*: a file is in the way/,
    );
    const isFolder = await ef('packaging', 'root-certificate', '--out', cli.work);
    expect(isFolder.code).toBe(1);
    expect(isFolder.stderr).toBe(`edgefleet: ${cli.work}: it is a folder, expected a file (open EISDIR)\n`);
    const missing = await ef('model', 'upload', join(cli.work, 'nope.onnx'), '--name', 'x', '--version', '1');
    expect(missing.stderr).toMatch(/is not a file/);

    // An Edge Manager (Neo/DLR) packaging job's output: said what it is, not "it has no manifest.json".
    const neo = join(cli.work, 'neo');
    await mkdir(neo);
    for (const name of ['sagemaker_edge_manifest', 'compiled.so', 'compiled.params', 'compiled_model.json'])
      await writeFile(join(neo, name), 'neo');
    const neoArchive = join(cli.work, 'resnet-1.0.tar.gz');
    await promisify(execFile)('tar', ['-czf', neoArchive, '-C', neo, '.']);
    const neoUpload = await ef('model', 'upload', neoArchive, '--name', 'resnet', '--version', '1.0');
    expect(neoUpload.code).not.toBe(0);
    expect(neoUpload.stderr).toMatch(
      /is a SageMaker Edge Manager \(Neo\/DLR-compiled\) package \(compiled\.params, compiled\.so, compiled_model\.json, sagemaker_edge_manifest\), and EdgeFleet runs ONNX model packages: re-export the model to ONNX, then package and sign it \(see docs\/migrating-from-edge-manager\.md\).*\[HTTP 400/,
    );

    const failed = await ef('packaging', 'create', 'ghost-1', '--model', 'ghost', '--version', '9', '--wait');
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/ghost/);
  });
});

class Capture extends Writable {
  text = '';
  constructor(readonly isTTY: boolean) {
    super();
  }
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}
