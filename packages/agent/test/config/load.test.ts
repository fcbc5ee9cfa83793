import { chmod, chown, mkdir, mkdtemp, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadAgentConfig, type ConfigContext } from '../../src/config/index.js';

let dir: string;
let context: ConfigContext;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agent-config-'));
  // As root, whoever runs the tests: the check of folders the agent's own user owns is tested on its own below.
  context = { cwd: dir, cpuCount: 2, grpcSocketPath: join(dir, 'agent.sock'), uid: 0 };
  await mkdir(join(dir, 'certs'), { mode: 0o755 });
  await chmod(join(dir, 'certs'), 0o755);
  await writeFile(join(dir, 'ca.pem'), 'not checked here');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function writeConfig(name: string, content: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, content);
  return file;
}

async function errorOf(file: string): Promise<ConfigError> {
  const error = await loadAgentConfig(file, context).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConfigError);
  return error as ConfigError;
}

describe('loadAgentConfig', () => {
  it('reads a config file, resolving relative paths against the working folder', async () => {
    const file = await writeConfig(
      'ok.json',
      '\uFEFF' +
        JSON.stringify({
          sagemaker_edge_core_root_certs_path: 'certs',
          sagemaker_edge_provider_aws_ca_cert_file: 'ca.pem',
          sagemaker_edge_local_data_root_path: 'data',
          unknown_thing: 1,
        }),
    );
    const { config, warnings } = await loadAgentConfig(file, context);
    expect(config.trust).toEqual({ rootCertsPath: join(dir, 'certs'), requireSignatures: true });
    expect(config.provider.caCertFile).toBe(join(dir, 'ca.pem'));
    expect(config.storage.localDataRootPath).toBe(join(dir, 'data'));
    expect(warnings).toEqual(['unknown config key "unknown_thing" is ignored']);
  });

  it('says which file is missing or not JSON', async () => {
    const missing = await errorOf(join(dir, 'nope.json'));
    expect(missing.key).toBeNull();
    expect(missing.message).toMatch(/cannot read the config file .*nope\.json: ENOENT/);
    const broken = await errorOf(await writeConfig('broken.json', '{"sagemaker_edge_log_verbose": tru'));
    expect(broken.key).toBeNull();
    expect(broken.message).toMatch(/broken\.json is not valid JSON/);
    const folder = await errorOf(join(dir, 'certs'));
    expect(folder.message).toMatch(/not a regular file/);
  });

  it('refuses root certificates that are missing or not a folder', async () => {
    const missing = await errorOf(
      await writeConfig('c1.json', JSON.stringify({ sagemaker_edge_core_root_certs_path: 'no-such-certs' })),
    );
    expect(missing.key).toBe('sagemaker_edge_core_root_certs_path');
    expect(missing.message).toMatch(
      /no-such-certs does not exist; expected a folder of PEM root certificates/,
    );
    const file = await errorOf(
      await writeConfig('c2.json', JSON.stringify({ sagemaker_edge_core_root_certs_path: 'ca.pem' })),
    );
    expect(file.key).toBe('sagemaker_edge_core_root_certs_path');
    expect(file.message).toMatch(/is not a folder/);
  });

  it('warns when the root certificates folder, or a folder above it, belongs to the user the agent runs as', async () => {
    await mkdir(join(dir, 'agent-owned', 'trust'), { recursive: true, mode: 0o755 });
    // As root (CI), the folders are given to nobody, who stands in for the agent's user; else they are the runner's.
    if (process.getuid?.() === 0) await chown(join(dir, 'agent-owned'), 65534, 65534);
    const agentUid = (await stat(join(dir, 'agent-owned'))).uid;
    const file = await writeConfig(
      'c-owned.json',
      JSON.stringify({ sagemaker_edge_core_root_certs_path: 'agent-owned/trust' }),
    );
    const { warnings } = await loadAgentConfig(file, { ...context, uid: agentUid });
    expect(warnings).toEqual([
      // The trust folder itself when it is the runner's too (not as root), else the folder above it.
      expect.stringMatching(/agent-owned(\/trust)? belongs to the agent's own user .*--trust-dir/),
    ]);
    // Reached through a symbolic link from a folder the agent's user does not own: the real path is checked.
    await symlink(join(dir, 'agent-owned', 'trust'), join(dir, 'trust-link'));
    const linked = await writeConfig(
      'c-linked.json',
      JSON.stringify({ sagemaker_edge_core_root_certs_path: 'trust-link' }),
    );
    expect((await loadAgentConfig(linked, { ...context, uid: agentUid })).warnings).toEqual([
      expect.stringMatching(/agent-owned(\/trust)? belongs to the agent's own user/),
    ]);
    // A user who owns none of the folders on the way (and root, who could write anywhere) gets no warning.
    for (const uid of [0, 54321])
      expect((await loadAgentConfig(file, { ...context, uid })).warnings).toEqual([]);
  });

  it('warns when the root certificates folder is writable by others (the original required it read-only)', async () => {
    await mkdir(join(dir, 'open-certs'));
    await chmod(join(dir, 'open-certs'), 0o777);
    const { warnings } = await loadAgentConfig(
      await writeConfig('c3.json', JSON.stringify({ sagemaker_edge_core_root_certs_path: 'open-certs' })),
      context,
    );
    expect(warnings).toEqual([expect.stringMatching(/writable by group or others/)]);
  });

  it('refuses certificate files that do not exist and data folders that are files', async () => {
    const cert = await errorOf(
      await writeConfig(
        'c4.json',
        JSON.stringify({ sagemaker_edge_provider_aws_cert_file: '/nonexistent/cert.pem' }),
      ),
    );
    expect(cert.key).toBe('sagemaker_edge_provider_aws_cert_file');
    expect(cert.message).toMatch(/does not exist; expected a readable PEM file/);
    const certDir = await errorOf(
      await writeConfig('c5.json', JSON.stringify({ sagemaker_edge_provider_aws_cert_pk_file: 'certs' })),
    );
    expect(certDir.key).toBe('sagemaker_edge_provider_aws_cert_pk_file');
    const root = await errorOf(
      await writeConfig('c6.json', JSON.stringify({ sagemaker_edge_local_data_root_path: 'ca.pem' })),
    );
    expect(root.key).toBe('sagemaker_edge_local_data_root_path');
    expect(root.message).toMatch(/exists and is not a folder/);
    const capture = await errorOf(
      await writeConfig('c7.json', JSON.stringify({ sagemaker_edge_core_capture_data_disk_path: 'ca.pem' })),
    );
    expect(capture.key).toBe('sagemaker_edge_core_capture_data_disk_path');
  });
});
