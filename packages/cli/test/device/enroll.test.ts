import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { request } from 'node:https';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { edgefleet, useOperatorCli } from '../run-cli.js';
import { REPO_ROOT, deviceEnrollArgs } from '../../../../test/support/control-plane.js';
import { runCli } from '../../src/cli.js';
import { enrollDevice } from '../../src/device/enroll.js';
import { ServerClient } from '../../src/server-client/index.js';

const execFileAsync = promisify(execFile);
const cli = useOperatorCli('ef-enroll-');
const admin = cli.ef;
/** `edgefleet device enroll --server <plane> --token <token> --config <config> [extra]`. */
const enroll = (token: string, config: string, ...extra: string[]) =>
  edgefleet(...deviceEnrollArgs(cli.plane, token, config, ...extra));

async function enrollmentToken(device: string): Promise<string> {
  const created = await admin('device', 'enrollment-token', device);
  expect(created.code).toBe(0);
  return created.stdout.trim();
}

/** GetDeviceRegistration over mutual TLS with the files enrollment wrote. */
function registration(config: Record<string, string>): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request(
      `${config.sagemaker_edge_core_endpoint_override}/GetDeviceRegistration`,
      {
        method: 'POST',
        cert: readFileSync(config.sagemaker_edge_provider_aws_cert_file!, 'utf8'),
        key: readFileSync(config.sagemaker_edge_provider_aws_cert_pk_file!, 'utf8'),
        ca: readFileSync(config.sagemaker_edge_provider_aws_ca_cert_file!, 'utf8'),
        headers: { 'content-type': 'application/json' },
        agent: false,
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      },
    );
    req.on('error', reject);
    req.end(
      JSON.stringify({
        DeviceName: config.sagemaker_edge_core_device_name,
        DeviceFleetName: config.sagemaker_edge_core_device_fleet_name,
      }),
    );
  });
}

beforeAll(async () => {
  expect((await admin('fleet', 'create', 'yard', '--output', 's3://captures/yard')).code).toBe(0);
  expect(
    (
      await admin(
        'device',
        'register',
        'yard',
        'crane-1',
        'crane-2',
        'crane-3',
        'crane-4',
        'crane-5',
        'crane-6',
        'crane-7',
        'crane-8',
      )
    ).code,
  ).toBe(0);
});

describe('edgefleet device enroll', () => {
  it('writes a 0600 key, the certificate and CA, and merges the agent config keeping other keys', async () => {
    const configFile = join(cli.work, 'crane-1', 'agent.json');
    await mkdir(join(cli.work, 'crane-1'));
    await writeFile(
      configFile,
      JSON.stringify({
        sagemaker_edge_core_capture_data_destination: 'Disk',
        edgefleet_inference_workers: 2,
      }),
    );
    const token = await enrollmentToken('crane-1');
    const enrolled = await enroll(token, configFile, '--json');
    expect(enrolled.stderr).toBe('');
    expect(enrolled.code).toBe(0);
    const result = JSON.parse(enrolled.stdout);
    const certDir = join(cli.work, 'crane-1', 'certs');
    const trustDir = join(cli.work, 'crane-1', 'trust');
    expect(result).toMatchObject({
      deviceName: 'crane-1',
      fleetName: 'yard',
      deviceEndpoint: cli.plane.deviceEndpoint,
      files: {
        privateKey: join(certDir, 'device.key'),
        certificate: join(certDir, 'device.pem'),
        caCertificate: join(certDir, 'ca.pem'),
      },
    });
    expect((await stat(result.files.privateKey)).mode & 0o777).toBe(0o600);
    expect((await stat(certDir)).mode & 0o777).toBe(0o700);

    const config = JSON.parse(await readFile(configFile, 'utf8'));
    expect(config).toEqual({
      // The fleet's output (s3://captures/yard) reaches the device: captures go through the control plane into it.
      sagemaker_edge_core_capture_data_destination: 'EdgeFleet',
      sagemaker_edge_provider_s3_bucket_name: 'captures',
      sagemaker_edge_core_folder_prefix: 'yard',
      // The package-signing root, fetched with the new certificate into trust/ beside the config (not into the
      // cert dir, which the agent may own), is what the agent trusts.
      sagemaker_edge_core_root_certs_path: trustDir,
      sagemaker_edge_local_data_root_path: join(cli.work, 'crane-1', 'data'),
      edgefleet_heartbeat_interval_seconds: '30',
      edgefleet_inference_workers: 2,
      sagemaker_edge_core_device_name: 'crane-1',
      sagemaker_edge_core_device_fleet_name: 'yard',
      sagemaker_edge_provider_provider: 'Aws',
      sagemaker_edge_core_endpoint_override: cli.plane.deviceEndpoint,
      sagemaker_edge_provider_aws_cert_file: result.files.certificate,
      sagemaker_edge_provider_aws_cert_pk_file: result.files.privateKey,
      sagemaker_edge_provider_aws_ca_cert_file: result.files.caCertificate,
    });
    const root = await admin('packaging', 'root-certificate');
    expect(await readFile(join(trustDir, 'package-signing-root.pem'), 'utf8')).toBe(`${root.stdout}`);
    expect(result.files.trustFolder).toBe(trustDir);
    expect((await stat(trustDir)).mode & 0o777).toBe(0o755);
    expect((await stat(join(trustDir, 'package-signing-root.pem'))).mode & 0o777).toBe(0o644);
    expect((await stat(join(cli.work, 'crane-1', 'data'))).isDirectory()).toBe(true);
    const cert = new X509Certificate(await readFile(result.files.certificate));
    expect(cert.subject.split('\n')).toEqual(expect.arrayContaining(['CN=crane-1', 'OU=yard']));
    expect(cert.verify(new X509Certificate(await readFile(result.files.caCertificate)).publicKey)).toBe(true);

    // The files work: the device API accepts them over mutual TLS.
    expect(await registration(config)).toEqual({
      status: 200,
      body: { DeviceRegistration: 'REGISTERED', CacheTTL: expect.any(String) },
    });
    expect((await admin('device', 'describe', 'crane-1')).stdout).toMatch(/identity\s+ENROLLED/);

    // The token was single use: a second enrollment fails and changes nothing.
    const before = await readFile(configFile, 'utf8');
    const keyBefore = await readFile(result.files.privateKey, 'utf8');
    const again = await enroll(token, configFile);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/EnrollmentTokenUsed/);
    // The hint names what enrollment reads, not the operator's EDGEFLEET_TOKEN.
    expect(again.stderr).toMatch(
      /single-use .*edgefleet device enrollment-token <device>.*EDGEFLEET_ENROLLMENT_TOKEN/,
    );
    expect(again.stderr).not.toContain('EDGEFLEET_TOKEN,');
    expect(again.stderr).not.toContain(token);
    expect(await readFile(configFile, 'utf8')).toBe(before);
    expect(await readFile(result.files.privateKey, 'utf8')).toBe(keyBefore);

    // Re-enrolling with a new token replaces the key and certificate and keeps the rest of the config.
    const renewed = JSON.parse(
      (await enroll(await enrollmentToken('crane-1'), configFile, '--key-type', 'ed25519', '--json')).stdout,
    );
    expect(renewed.serial).not.toBe(result.serial);
    expect(await readFile(result.files.privateKey, 'utf8')).not.toBe(keyBefore);
    expect(JSON.parse(await readFile(configFile, 'utf8')).edgefleet_inference_workers).toBe(2);
    expect((await admin('device', 'certificates', 'crane-1', '--json')).stdout).toContain(result.serial);
  });

  it('refuses a --token followed by an option: the command meant to print the token failed', async () => {
    const configFile = join(cli.work, 'no-token', 'agent.json');
    // What `--token $(edgefleet device enrollment-token <unregistered>) --config …` becomes once the inner
    // command failed and printed nothing.
    const shifted = await edgefleet(
      'device',
      'enroll',
      '--server',
      cli.plane.operatorUrl,
      '--token',
      '--config',
      configFile,
    );
    expect(shifted.code).toBe(2);
    expect(shifted.stderr).toMatch(
      /--token is missing: it is followed by "--config", an option, not the efe_… token — probably because the command that prints the token failed/,
    );
    expect(shifted.stderr).not.toMatch(/required option|Usage:/);
    const empty = await edgefleet(...deviceEnrollArgs(cli.plane, '', configFile));
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/--token is empty: expected the efe_… token/);
    await expect(stat(configFile)).rejects.toThrow(/ENOENT/);
  });

  it('names the command as the user started it in the --token refusal’s hint: npx edgefleet through npm, else edgefleet (N4)', async () => {
    const refusal = async (env: Record<string, string>) => {
      let stderr = '';
      const sink = new Writable({
        write(chunk: Buffer, _encoding, done) {
          stderr += chunk.toString();
          done();
        },
      });
      const code = await runCli(['device', 'enroll', '--token', '--config', join(cli.work, 'hint.json')], {
        stdout: sink,
        stderr: sink as unknown as NodeJS.WriteStream,
        env,
      });
      expect(code).toBe(2);
      return stderr;
    };
    expect(await refusal({})).toContain(
      'TOKEN=$(edgefleet device enrollment-token <device>) && EDGEFLEET_ENROLLMENT_TOKEN="$TOKEN" edgefleet device enroll',
    );
    expect(await refusal({ npm_command: 'exec' })).toContain(
      'TOKEN=$(npx edgefleet device enrollment-token <device>) && EDGEFLEET_ENROLLMENT_TOKEN="$TOKEN" npx edgefleet device enroll',
    );
  });

  it("the README's enrollment line stops at a failed enrollment-token, with its message alone", async () => {
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    const line = readme.split('\n').find((l) => l.includes('device enroll') && l.includes('cam-01'));
    expect(line).toBeDefined();
    // As an operator runs it, in a shell; cam-01 is not registered on this control plane, so the inner
    // command fails.
    const cliMain = join(REPO_ROOT, 'packages/cli/dist/main.js');
    const run = await execFileAsync('sh', ['-c', line!.replaceAll('npx edgefleet', `node ${cliMain}`)], {
      cwd: cli.work,
      env: { ...process.env, EDGEFLEET_SERVER: cli.plane.operatorUrl, EDGEFLEET_TOKEN: cli.plane.adminToken },
    }).then(
      () => ({ code: 0, stderr: '' }),
      (error: { code: number; stderr: string }) => error,
    );
    expect(run.code).toBe(1);
    expect(run.stderr.trim()).toBe('edgefleet: device cam-01 does not exist [HTTP 404 NotFound]');
    await expect(stat(join(cli.work, 'cam-01'))).rejects.toThrow(/ENOENT/);
  });

  it('refuses a config that is not a JSON object before spending the token', async () => {
    const configFile = join(cli.work, 'broken.json');
    await writeFile(configFile, '{"sagemaker_edge_core_device_name": ');
    const token = await enrollmentToken('crane-2');
    const refused = await enroll(token, configFile, '--cert-dir', join(cli.work, 'c2'));
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/is not valid JSON/);
    await writeFile(configFile, '[]');
    expect((await enroll(token, configFile)).stderr).toMatch(/must hold a JSON object/);
    // The token is still good.
    const fresh = join(cli.work, 'fresh', 'agent.json');
    const ok = await enroll(token, fresh, '--cert-dir', join(cli.work, 'c2'), '--rest-port', '8081');
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^Enrolled as device crane-2 of fleet yard/);
    // What the TCP port exposes, and to whom.
    expect(ok.stdout).toMatch(
      /REST +TCP 127\.0\.0\.1:8081 serves inference, model metadata, health and metrics to every local user; loading and unloading models and the agent status stay on the agent's Unix socket/,
    );
    expect(JSON.parse(await readFile(fresh, 'utf8')).sagemaker_edge_provider_aws_cert_pk_file).toBe(
      join(cli.work, 'c2', 'device.key'),
    );
  });

  // As deploy/bundle installs it: /etc/edgefleet/agent.json root:edgefleet-agent 0640, enrolled by root.
  it.runIf(process.getuid?.() === 0)(
    'run as root, keeps the owner and group of the config it rewrites, so the agent can still read it',
    async () => {
      const folder = join(cli.work, 'crane-3');
      const configFile = join(folder, 'agent.json');
      await mkdir(folder);
      await writeFile(configFile, '{}', { mode: 0o640 });
      await chown(configFile, 0, 65534);
      const enrolled = await enroll(await enrollmentToken('crane-3'), configFile);
      expect(enrolled.stderr).toBe('');
      expect(enrolled.code).toBe(0);
      const after = await stat(configFile);
      expect([after.uid, after.gid, after.mode & 0o777]).toEqual([0, 65534, 0o640]);
      expect(JSON.parse(await readFile(configFile, 'utf8')).sagemaker_edge_core_device_name).toBe('crane-3');
    },
  );

  it('writes the package-signing root into --trust-dir, and warns when that is inside the cert dir', async () => {
    const folder = join(cli.work, 'crane-4');
    const configFile = join(folder, 'agent.json');
    const certDir = join(folder, 'identity');
    const trustDir = join(folder, 'anchors', 'signing');
    const token = await enrollmentToken('crane-4');
    // A umask of 077 (root's, on some systems) must not make the folders unreadable to the agent's user.
    const umask = process.umask(0o077);
    const enrolled = await enroll(token, configFile, '--cert-dir', certDir, '--trust-dir', trustDir).finally(
      () => process.umask(umask),
    );
    expect(enrolled.stderr).toBe('');
    expect(enrolled.code).toBe(0);
    expect(enrolled.stdout).toMatch(new RegExp(`trust folder\\s+${trustDir}\n`));
    expect(enrolled.stdout).not.toMatch(/warning/);
    expect(JSON.parse(await readFile(configFile, 'utf8')).sagemaker_edge_core_root_certs_path).toBe(trustDir);
    const root = (await admin('packaging', 'root-certificate')).stdout;
    expect(await readFile(join(trustDir, 'package-signing-root.pem'), 'utf8')).toBe(root);
    for (const made of [join(folder, 'anchors'), trustDir])
      expect([made, (await stat(made)).mode & 0o777]).toEqual([made, 0o755]);
    expect((await stat(join(trustDir, 'package-signing-root.pem'))).mode & 0o777).toBe(0o644);
    expect(await readdir(certDir)).toEqual(['ca.pem', 'device.key', 'device.pem']);

    // Inside the cert dir it still works (the operator asked for it), but says why that is unsafe.
    const inside = join(certDir, 'trust');
    const again = await enroll(
      await enrollmentToken('crane-4'),
      configFile,
      '--cert-dir',
      certDir,
      '--trust-dir',
      inside,
      '--json',
    );
    expect(again.code).toBe(0);
    const result = JSON.parse(again.stdout);
    expect(result.config.sagemaker_edge_core_root_certs_path).toBe(inside);
    expect(result.warnings).toEqual([
      expect.stringMatching(
        /trust folder .* is inside the cert dir .*: the agent renews its certificate there.*own signing root.*--trust-dir only root can write/,
      ),
    ]);

    // A file where the folder should be is refused before the token is spent.
    const file = join(folder, 'not-a-folder');
    await writeFile(file, '');
    const unspent = await enrollmentToken('crane-4');
    const refused = await enroll(unspent, configFile, '--cert-dir', certDir, '--trust-dir', file);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /not-a-folder is not a folder; expected where to put the package-signing root/,
    );
    expect((await enroll(unspent, configFile, '--cert-dir', certDir, '--trust-dir', trustDir)).code).toBe(0);
  });

  // The attack: code running as the agent renames the trust folder and puts its own signing root in its place.
  // Enrolled as deploy/README.md says (config in a root:agent 0750 folder, cert dir handed to the agent), the
  // agent's user (nobody here) can change nothing of it; with the trust folder in the cert dir, as before, it can.
  it.runIf(process.getuid?.() === 0)(
    'run as root as the install docs say, leaves the trust anchors out of reach of the agent’s user',
    async () => {
      const AGENT = 65534; // nobody:nogroup stands in for edgefleet-agent
      const system = await mkdtemp(join(tmpdir(), 'ef-enroll-system-'));
      try {
        await chmod(system, 0o755); // the agent's user must reach the folders under it, as it would /etc
        const etc = join(system, 'etc', 'edgefleet');
        const state = join(system, 'var', 'lib', 'edgefleet-agent');
        await mkdir(join(system, 'etc'), { mode: 0o755 });
        await mkdir(join(system, 'var', 'lib'), { recursive: true, mode: 0o755 });
        await mkdir(etc, { mode: 0o750 });
        await chown(etc, 0, AGENT);
        await mkdir(state, { mode: 0o750 });
        await chown(state, AGENT, AGENT);
        const configFile = join(etc, 'agent.json');
        await writeFile(configFile, '{}', { mode: 0o640 });
        await chown(configFile, 0, AGENT);

        /** Enrolls with the README's flags and hands the cert dir to the agent, as its chown line does. */
        const enrollAsDocumented = async (device: string, certDir: string, ...extra: string[]) => {
          const enrolled = await enroll(
            await enrollmentToken(device),
            configFile,
            '--cert-dir',
            certDir,
            ...extra,
          );
          expect(enrolled.code).toBe(0);
          for (const entry of [certDir, ...(await readdir(certDir)).map((f) => join(certDir, f))])
            if ((await stat(entry)).isFile() || entry === certDir) await chown(entry, AGENT, AGENT);
          return enrolled;
        };
        /** What the agent's user manages to do to a trust folder: each step's outcome ('done' or the error code). */
        const attackAsAgent = async (trust: string) => {
          const script = `const fs = require('node:fs'); const t = process.argv[1]; const out = {};
            const steps = {
              read: () => fs.readFileSync(t + '/package-signing-root.pem'),
              add: () => fs.writeFileSync(t + '/attacker-root.pem', 'x'),
              replace: () => fs.writeFileSync(t + '/package-signing-root.pem', 'x'),
              chmod: () => fs.chmodSync(t, 0o777),
              swap: () => { fs.renameSync(t, t + '.old'); fs.mkdirSync(t); fs.writeFileSync(t + '/attacker-root.pem', 'x'); },
            };
            for (const [name, step] of Object.entries(steps)) { try { step(); out[name] = 'done'; } catch (e) { out[name] = e.code; } }
            console.log(JSON.stringify(out));`;
          const { stdout } = await execFileAsync(process.execPath, ['-e', script, trust], {
            uid: AGENT,
            gid: AGENT,
          });
          return JSON.parse(stdout) as Record<string, string>;
        };

        const enrolled = await enrollAsDocumented('crane-5', join(state, 'identity'));
        expect(enrolled.stdout).not.toMatch(/warning/);
        const trust = join(etc, 'trust');
        expect(JSON.parse(await readFile(configFile, 'utf8')).sagemaker_edge_core_root_certs_path).toBe(
          trust,
        );
        // Owners and modes: the trust folder's parent is the config folder (root's), not the cert dir (the agent's).
        for (const [path, mode] of [
          [etc, 0o750],
          [trust, 0o755],
          [join(trust, 'package-signing-root.pem'), 0o644],
        ] as const) {
          const info = await stat(path);
          expect([path, info.uid, info.mode & 0o777]).toEqual([path, 0, mode]);
        }
        expect((await stat(join(state, 'identity'))).uid).toBe(AGENT);
        const pem = await readFile(join(trust, 'package-signing-root.pem'), 'utf8');
        // It reads the root (so it reaches the folder), and changes nothing.
        expect(await attackAsAgent(trust)).toEqual({
          read: 'done',
          add: 'EACCES',
          replace: 'EACCES',
          chmod: 'EPERM',
          swap: 'EACCES',
        });
        expect(await readdir(trust)).toEqual(['package-signing-root.pem']);
        expect(await readFile(join(trust, 'package-signing-root.pem'), 'utf8')).toBe(pem);

        // The layout before: the trust folder in the cert dir the agent owns. The files are as root-only, yet
        // the agent's user swaps the whole folder; enrollment warns about exactly that.
        const before = await enrollAsDocumented(
          'crane-6',
          join(state, 'identity-6'),
          '--trust-dir',
          join(state, 'identity-6', 'trust'),
        );
        expect(before.stdout).toMatch(/warning: the trust folder .* is inside the cert dir/);
        expect(await attackAsAgent(join(state, 'identity-6', 'trust'))).toMatchObject({
          read: 'done',
          replace: 'EACCES',
          swap: 'done',
        });
        // Anywhere else the agent's user could rename it from: enrollment run as root says so too.
        const elsewhere = await enroll(
          await enrollmentToken('crane-6'),
          configFile,
          '--cert-dir',
          join(state, 'identity-6'),
          '--trust-dir',
          join(state, 'trust'),
        );
        expect(elsewhere.code).toBe(0);
        expect(elsewhere.stdout).toContain(
          `warning: ${state} (owner uid ${AGENT}, mode 0750) can be changed by a user other than root`,
        );
      } finally {
        await rm(system, { recursive: true, force: true });
      }
    },
  );

  it('warns when a server reached over the network hands out a loopback device API (W3)', async () => {
    expect((await admin('device', 'register', 'yard', 'crane-far')).code).toBe(0);
    const folder = join(cli.work, 'crane-far');
    // The device reaches the server by a network name; the test resolves that name itself (to the real server on
    // loopback, which hands out its loopback device endpoint, as an unconfigured server does).
    const operator = new URL(cli.plane.operatorUrl);
    const server = `http://fleet.example:${operator.port}`;
    const resolveName: typeof fetch = (input, init) =>
      fetch(String(input).replace(server, cli.plane.operatorUrl), init);
    const result = await enrollDevice({
      client: new ServerClient({ server }, { fetch: resolveName }),
      enrollmentToken: await enrollmentToken('crane-far'),
      configFile: join(folder, 'agent.json'),
      certDir: join(folder, 'certs'),
      trustDir: join(folder, 'trust'),
      defaultDataDir: join(folder, 'data'),
      invocation: 'edgefleet',
    });
    expect(result.deviceEndpoint).toBe(cli.plane.deviceEndpoint);
    expect(result.warnings).toEqual([
      `the server at ${server} handed out ${cli.plane.deviceEndpoint} as its device API, a loopback address: an agent on another host than the server would call itself; the server's operator sets deviceEndpoint (--device-endpoint) and deviceServerNames (--device-server-names) to the address devices reach, then set sagemaker_edge_core_endpoint_override in ${join(folder, 'agent.json')} to it (or enroll again)`,
    ]);
  });

  it('with --device (Greengrass passes its thing name), refuses a token issued for another device and leaves it unused', async () => {
    const configFile = join(cli.work, 'crane-8', 'agent.json');
    const token = await enrollmentToken('crane-7');
    const other = await enroll(token, configFile, '--device', 'crane-8');
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(
      /the enrollment token was issued for device crane-7, not crane-8; expected a token for crane-8 \(the token is left unused\)/,
    );
    expect(other.stderr).not.toContain(token);
    await expect(stat(configFile)).rejects.toThrow(/ENOENT/);
    // The token is still good for the device it was issued for.
    const right = await enroll(
      token,
      join(cli.work, 'crane-7', 'agent.json'),
      '--device',
      'crane-7',
      '--json',
    );
    expect(right.code).toBe(0);
    expect(JSON.parse(right.stdout).deviceName).toBe('crane-7');
  });

  it('on an existing Edge Manager config, says the deployments the agent will run and each value it replaced (F4)', async () => {
    const folder = join(cli.work, 'sme');
    await mkdir(folder);
    const configFile = join(folder, 'sagemaker_edge_config.json');
    const edgeManager = {
      sagemaker_edge_core_device_name: 'crane-8',
      sagemaker_edge_core_device_fleet_name: 'yard',
      sagemaker_edge_core_root_certs_path: join(folder, 'certificates'),
      sagemaker_edge_core_capture_data_destination: 'Disk',
      sagemaker_edge_deployment_lib_path: '/opt/sme/lib/libdeployment.so',
      sagemaker_edge_model_deployment_poll_interval: 1440,
      sagemaker_edge_local_data_root_path: join(folder, 'data'),
    };
    await writeFile(configFile, JSON.stringify(edgeManager));
    const enrolled = await enroll(await enrollmentToken('crane-8'), configFile);
    expect(enrolled.code).toBe(0);
    const lines = enrolled.stdout.split('\n');
    // Deployments stay on (the lib path turns them on), polling once a day: said so, not "off".
    expect(lines).toContainEqual(
      expect.stringMatching(
        /^\s*deployments\s+on \(kept from sagemaker_edge_deployment_lib_path in the config\), polling every 86400 s \(sagemaker_edge_model_deployment_poll_interval: 1440 min\); --deployments <poll-seconds> polls more often$/,
      ),
    );
    // Each value enrollment replaced, old → new; the keys it kept or added are not listed.
    const replaced = lines.filter((l) => l.startsWith('replaced '));
    expect(replaced).toEqual([
      `replaced sagemaker_edge_core_root_certs_path: ${join(folder, 'certificates')} → ${join(folder, 'trust')}`,
      `replaced sagemaker_edge_core_capture_data_destination: Disk → EdgeFleet`,
    ]);
    const written = JSON.parse(await readFile(configFile, 'utf8'));
    expect(written).toMatchObject({
      sagemaker_edge_deployment_lib_path: '/opt/sme/lib/libdeployment.so',
      sagemaker_edge_core_capture_data_destination: 'EdgeFleet',
    });
    // With --deployments, enrollment sets the interval itself and says it.
    const again = await enroll(await enrollmentToken('crane-8'), configFile, '--deployments', '60');
    expect(again.stdout).toMatch(/^\s*deployments\s+on, polling every 60 s$/m);
    expect(again.stdout).toMatch(
      /^replaced sagemaker_edge_deployment_lib_path: \/opt\/sme\/lib\/libdeployment\.so → /m,
    );
  });

  it('for a fleet output at the bucket root, replaces an Edge Manager prefix with "/" (none), and takes a thing name other than the device name (R1, R3)', async () => {
    expect((await admin('fleet', 'create', 'quay', '--output', 's3://quay-captures')).code).toBe(0);
    // Edge Manager's RegisterDevices allowed an IotThingName other than the DeviceName, and no valid device name.
    expect((await admin('device', 'register', 'quay', 'rover-1', '--iot-thing-name', 'Rover_1')).code).toBe(
      0,
    );
    const folder = join(cli.work, 'rover');
    await mkdir(folder);
    const configFile = join(folder, 'sagemaker_edge_config.json');
    await writeFile(
      configFile,
      JSON.stringify({
        sagemaker_edge_core_device_name: 'rover-1',
        sagemaker_edge_core_device_fleet_name: 'quay',
        sagemaker_edge_core_capture_data_destination: 'Cloud',
        sagemaker_edge_provider_s3_bucket_name: 'quay-captures',
        sagemaker_edge_core_folder_prefix: 'sme-capture',
      }),
    );
    const token = await enrollmentToken('rover-1');
    // The device's name is not its thing name: refused, the token left unused.
    const byName = await enroll(token, configFile, '--thing-name', 'rover-1');
    expect(byName.code).toBe(1);
    expect(byName.stderr).toMatch(
      /the enrollment token was issued for device rover-1, whose IoT thing name is Rover_1, not rover-1/,
    );
    const enrolled = await enroll(token, configFile, '--thing-name', 'Rover_1');
    expect(enrolled.stderr).toBe('');
    expect(enrolled.code).toBe(0);
    expect(enrolled.stdout.split('\n').filter((l) => l.startsWith('replaced '))).toEqual([
      'replaced sagemaker_edge_core_capture_data_destination: Cloud → EdgeFleet',
      'replaced sagemaker_edge_core_folder_prefix: sme-capture → /',
    ]);
    expect(JSON.parse(await readFile(configFile, 'utf8'))).toMatchObject({
      sagemaker_edge_core_device_name: 'rover-1',
      sagemaker_edge_core_iot_thing_name: 'Rover_1',
      sagemaker_edge_provider_s3_bucket_name: 'quay-captures',
      sagemaker_edge_core_folder_prefix: '/',
    });
  });

  it('asks for a token of the right kind', async () => {
    const config = join(cli.work, 'x.json');
    const missing = await edgefleet(
      'device',
      'enroll',
      '--server',
      cli.plane.operatorUrl,
      '--config',
      config,
    );
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/no enrollment token/);
    const operator = await enroll(cli.plane.adminToken, config);
    expect(operator.code).toBe(2);
    expect(operator.stderr).toMatch(/should start with efe_/);
    expect(operator.stderr).not.toContain(cli.plane.adminToken);
    const unknown = await enroll('efe_not-a-real-token', config);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/EnrollmentTokenInvalid/);
  });

  it('leaves no folder it made behind when enrollment fails (N6)', async () => {
    // A config in folders that do not exist yet: none of them stays.
    const fresh = join(cli.work, 'failed-fresh');
    const refused = await enroll('efe_not-a-real-token', join(fresh, 'device', 'agent.json'));
    expect(refused.code).toBe(1);
    await expect(stat(fresh)).rejects.toThrow(/ENOENT/);
    // A folder that was there stays, with what it held; the certs/ made for the failed try does not.
    const existing = join(cli.work, 'failed-existing');
    await mkdir(existing);
    await writeFile(join(existing, 'agent.json'), '{}');
    const spent = await enrollmentToken('crane-6');
    expect((await enroll(spent, join(cli.work, 'crane-6', 'agent.json'))).code).toBe(0);
    const reused = await enroll(spent, join(existing, 'agent.json'));
    expect(reused.code).toBe(1);
    expect(await readdir(existing)).toEqual(['agent.json']);
  });

  it('removes only the folders it made that are still empty: what another process wrote there meanwhile stays (N1)', async () => {
    const enrollInto = (folder: string, trustDir: string, fetchHook?: typeof fetch) =>
      enrollDevice({
        client: new ServerClient({ server: cli.plane.operatorUrl }, fetchHook && { fetch: fetchHook }),
        enrollmentToken: 'efe_not-a-real-token',
        configFile: join(folder, 'agent.json'),
        certDir: join(folder, 'certs'),
        trustDir,
        defaultDataDir: join(folder, 'data'),
        invocation: 'edgefleet',
      });
    // A second enroll into the same new folder (a provisioning script run twice) writes its config there while
    // this one waits for the server, which refuses this one's token.
    const shared = join(cli.work, 'failed-shared', 'device');
    const theirs = join(shared, 'agent.json.theirs');
    const writeMeanwhile: typeof fetch = async (input, init) => {
      await writeFile(theirs, '{"theirs":true}');
      return fetch(input, init);
    };
    await expect(enrollInto(shared, join(shared, 'trust'), writeMeanwhile)).rejects.toThrow(
      /the enrollment token is unknown/,
    );
    expect(await readdir(shared)).toEqual(['agent.json.theirs']);
    expect(await readFile(theirs, 'utf8')).toBe('{"theirs":true}');
    // A check that fails after the folders were made (a --trust-dir that is a file): none of them stays.
    const checked = join(cli.work, 'failed-check');
    const trustFile = join(cli.work, 'trust-is-a-file');
    await writeFile(trustFile, '');
    await expect(enrollInto(join(checked, 'device'), trustFile)).rejects.toThrow(/is not a folder/);
    await expect(stat(checked)).rejects.toThrow(/ENOENT/);
  });
});
