import { spawnSync } from 'node:child_process';
import { cp, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { AgentClient } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { callError, callMethod, referenceBytes, wireInputs } from '../grpc/helpers.js';
import { listening, useAgentScratch } from './process-helpers.js';

// Audit s8 finding 1: LoadModel reads files of a folder its caller chooses. A FIFO, a device or a link to
// another file must be refused without reading it, and without wedging the agent or echoing any bytes.

/** How long a load may take to be refused here: generous for a loaded machine; before the fix they hung. */
const LOAD_DEADLINE_MS = 20_000;

const agents = useAgentScratch('agent-package-files-', ['tiny', 'external-data']);
let counter = 0;

async function startAgent(keys: Record<string, unknown> = {}) {
  const id = ++counter;
  const socket = join(agents.files.root, `a${id}.sock`);
  const config = join(agents.files.root, `a${id}.json`);
  await writeFile(
    config,
    JSON.stringify({ edgefleet_inference_workers: 1, edgefleet_rest_socket_path: 'none', ...keys }),
  );
  const agent = agents.start(['-a', socket, '-c', config]);
  const ready = await agent.waitFor(listening, 'that it listens');
  return { agent, client: agents.client(socket), ready };
}

/** LoadModel with a deadline, so that a hung load fails the test instead of hanging it. */
function loadModel(client: AgentClient, name: string, url: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    (client.LoadModel as unknown as CallWithOptions)(
      { url, name },
      { deadline: Date.now() + LOAD_DEADLINE_MS },
      (error: grpc.ServiceError | null, response?: unknown) => (error ? reject(error) : resolve(response)),
    );
  });
}
type CallWithOptions = (
  request: unknown,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response?: unknown) => void,
) => void;

async function expectServes(client: AgentClient, name: string): Promise<void> {
  const response = await callMethod(client, 'Predict', { handle: name, tensors: wireInputs('tiny') });
  expect(Buffer.compare(response.tensors[0]!.byteData!, referenceBytes('tiny').get('y')!.bytes)).toBe(0);
}

/** A copy of a package folder, to be tampered with. */
async function copyOf(pkg: string): Promise<string> {
  const dir = join(agents.files.root, `copy-${++counter}`);
  await cp(pkg, dir, { recursive: true });
  return dir;
}

function mkfifo(path: string): void {
  const result = spawnSync('mkfifo', [path]);
  if (result.status !== 0) throw new Error(`mkfifo ${path} failed: ${result.stderr.toString()}`);
}

function residentBytes(pid: number): Promise<number> {
  return readFile(`/proc/${pid}/status`, 'utf8').then((s) => Number(/VmRSS:\s+(\d+) kB/.exec(s)![1]) * 1024);
}

describe('package files that are not regular files', () => {
  it('FIFO manifests: each load is refused at once with a clear error, and the agent stays responsive', async () => {
    const { agent, client } = await startAgent();
    // More than libuv's 4 threads: before, each open() of a FIFO held one forever, and every fs call queued.
    const folders: string[] = [];
    for (let i = 0; i < 6; i++) {
      const dir = join(agents.files.root, `fifo-${++counter}`);
      await mkdir(dir);
      mkfifo(join(dir, 'manifest.json'));
      folders.push(dir);
    }
    const errors = await Promise.all(folders.map((dir, i) => callError(loadModel(client, `fifo${i}`, dir))));
    for (const error of errors) {
      expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(error.details).toMatch(
        /manifest\.json is not a regular file \(it is a FIFO\); expected a regular file/,
      );
    }
    const missing = await callError(loadModel(client, 'missing', join(agents.files.root, 'no-such-folder')));
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
    // The names are free again, and the agent loads and serves.
    await loadModel(client, 'fifo0', agents.packageOf('tiny'));
    await expectServes(client, 'fifo0');
    agent.child.kill('SIGTERM');
    expect(await agent.exited).toEqual({ code: 0, signal: null });
  }, 60_000);

  it('a manifest linked to a file outside the package is refused without echoing its bytes', async () => {
    const { client } = await startAgent();
    const secret = join(agents.files.root, 'shadow');
    await writeFile(secret, 'root:*:20000:0:99999:7:::\nSECRET-LINE\n');
    const linked = join(agents.files.root, `leak-${++counter}`);
    await mkdir(linked);
    await symlink(secret, join(linked, 'manifest.json'));
    const viaLink = await callError(loadModel(client, 'leak', linked));
    expect(viaLink.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(viaLink.details).toMatch(/manifest\.json is a symbolic link; expected a regular file/);

    // A regular manifest that is not JSON: the error gives a position, never the text.
    const garbled = await copyOf(agents.packageOf('tiny'));
    await writeFile(join(garbled, 'manifest.json'), 'root:*:20000:0:99999:7:::\nSECRET-LINE\n');
    const notJson = await callError(loadModel(client, 'garbled', garbled));
    expect(notJson.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(notJson.details).toMatch(
      /manifest\.json is not JSON( \(at position \d+\))?; expected the package manifest/,
    );

    // The model file as a link to a file elsewhere (here the real model, so only the link is wrong).
    const modelLinked = await copyOf(agents.packageOf('tiny'));
    const manifest = JSON.parse(await readFile(join(modelLinked, 'manifest.json'), 'utf8')) as {
      model: { file: string };
    };
    await rename(join(modelLinked, manifest.model.file), join(agents.files.root, `moved-${counter}.onnx`));
    await symlink(join(agents.files.root, `moved-${counter}.onnx`), join(modelLinked, manifest.model.file));
    const viaModelLink = await callError(loadModel(client, 'modellink', modelLinked));
    expect(viaModelLink.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(viaModelLink.details).toMatch(/is not a regular file/);

    for (const error of [viaLink, notJson, viaModelLink]) {
      expect(error.details).not.toMatch(/root|SECRET|20000/);
    }
  }, 60_000);

  it('a model in a folder linked elsewhere is refused, naming the link; the same folder real loads', async () => {
    const { client } = await startAgent();
    const secret = join(agents.files.root, `secret-folder-${++counter}`);
    await mkdir(secret);
    await writeFile(join(secret, 'model.onnx'), 'root:*:20000:0:99999:7:::\nSECRET-LINE\n');
    const linked = await copyOf(agents.packageOf('tiny'));
    const manifestPath = join(linked, 'manifest.json');
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { model: { file: string } };
    // The model moves into m/, which is then a link to a folder elsewhere holding a file of that name.
    await mkdir(join(linked, 'm'));
    await rename(join(linked, manifest.model.file), join(linked, 'm', 'model.onnx'));
    await writeFile(
      manifestPath,
      JSON.stringify({ ...manifest, model: { ...manifest.model, file: 'm/model.onnx' } }),
    );
    const real = await copyOf(linked);
    await rm(join(linked, 'm'), { recursive: true });
    await symlink(secret, join(linked, 'm'));
    const error = await callError(loadModel(client, 'linkedfolder', linked));
    expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(error.details).toContain(
      'm/model.onnx is reached through m, a symbolic link; expected a folder of the package',
    );
    expect(error.details).not.toMatch(/root|SECRET|20000/);
    await loadModel(client, 'realfolder', real);
    await expectServes(client, 'realfolder');
  }, 60_000);

  it('/dev/zero linked as the manifest or as external data is refused without reading it', async () => {
    const { agent, client } = await startAgent();
    const before = await residentBytes(agent.child.pid!);
    const zeroManifest = join(agents.files.root, `zero-${++counter}`);
    await mkdir(zeroManifest);
    await symlink('/dev/zero', join(zeroManifest, 'manifest.json'));
    const manifestError = await callError(loadModel(client, 'zero', zeroManifest));
    expect(manifestError.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(manifestError.details).toMatch(/manifest\.json is a symbolic link/);

    const zeroData = await copyOf(agents.packageOf('external-data'));
    const manifest = JSON.parse(await readFile(join(zeroData, 'manifest.json'), 'utf8')) as {
      model: { externalData: string[] };
    };
    const dataFile = manifest.model.externalData[0]!;
    await rm(join(zeroData, dataFile));
    await symlink('/dev/zero', join(zeroData, dataFile));
    const dataError = await callError(loadModel(client, 'zerodata', zeroData));
    expect(dataError.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(dataError.details).toContain(`${dataFile} is a symbolic link`);

    // Nothing was read: well under the GBs a read of /dev/zero reaches (4.6 GB in 45 s in the audit).
    expect((await residentBytes(agent.child.pid!)) - before).toBeLessThan(256 * 1024 ** 2);
    await loadModel(client, 'tiny', agents.packageOf('tiny'));
    await expectServes(client, 'tiny');
  }, 60_000);
});

describe('restoring loaded models at start-up', () => {
  it("a recorded model's manifest replaced by a FIFO: the agent still starts and serves, and the model comes back once its package is whole again", async () => {
    const dataRoot = join(agents.files.root, `data-${++counter}`);
    const keys = {
      sagemaker_edge_db_module_path: 'builtin',
      sagemaker_edge_local_data_root_path: dataRoot,
      edgefleet_startup_load_timeout_seconds: 10,
    };
    const victim = await copyOf(agents.packageOf('tiny'));
    const first = await startAgent(keys);
    await loadModel(first.client, 'victim', victim);
    first.agent.child.kill('SIGTERM');
    expect(await first.agent.exited).toEqual({ code: 0, signal: null });

    const manifest = join(victim, 'manifest.json');
    await rename(manifest, `${manifest}.kept`);
    mkfifo(manifest);
    // Before, restoring hung in open() before the agent listened: it never came up.
    const second = await startAgent(keys);
    expect(second.ready.models).toEqual([]);
    expect(
      second.agent.lines.some((line) =>
        /could not load model "victim" again after the restart .*; will try again at the next start/.test(
          line.msg,
        ),
      ),
    ).toBe(true);
    await loadModel(second.client, 'tiny', agents.packageOf('tiny'));
    await expectServes(second.client, 'tiny');
    second.agent.child.kill('SIGTERM');
    expect(await second.agent.exited).toEqual({ code: 0, signal: null });

    // Its record was kept: with the package whole again, it is loaded at the next start (before the model
    // loaded meanwhile, in the order they were first loaded).
    await rm(manifest);
    await rename(`${manifest}.kept`, manifest);
    const third = await startAgent(keys);
    expect(third.ready.models).toEqual(['victim', 'tiny']);
    await expectServes(third.client, 'victim');
  }, 90_000);
});
