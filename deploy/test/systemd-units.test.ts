import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const unitsDir = path.resolve(import.meta.dirname, '..', 'systemd');
const units = ['edgefleet-agent.service', 'edgefleet-server.service'];

// systemd-analyze comes with Debian's systemd package (.ci/run installs it): fail loudly in CI, skip elsewhere.
const haveSystemd = await run('systemd-analyze', ['--version']).then(
  () => true,
  () => false,
);
if (!haveSystemd && process.env.CI) throw new Error('systemd-analyze is missing: apt-get install systemd');

const tempDirs: string[] = [];
afterAll(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});

async function verify(file: string): Promise<{ ok: boolean; output: string }> {
  return run('systemd-analyze', ['verify', file]).then(
    ({ stdout, stderr }) => ({ ok: stderr.trim() === '', output: stdout + stderr }),
    (error: { stdout: string; stderr: string }) => ({ ok: false, output: error.stdout + error.stderr }),
  );
}

/** `Key=value` lines of the [Service] section, every value of a repeated key. */
function serviceSettings(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = '';
  for (const line of text.split('\n')) {
    const header = /^\[(\w+)\]$/.exec(line.trim());
    if (header) section = header[1]!;
    const entry = /^(\w+)=(.*)$/.exec(line);
    if (section === 'Service' && entry)
      settings.set(entry[1]!, [...(settings.get(entry[1]!) ?? []), entry[2]!]);
  }
  return settings;
}

describe.skipIf(!haveSystemd).each(units)('%s', (unit) => {
  it('passes systemd-analyze verify with nothing to report', async () => {
    const result = await verify(path.join(unitsDir, unit));
    expect(result.output).toBe('');
    expect(result.ok).toBe(true);
  });

  it('scores OK in systemd-analyze security (exposure under 4.0 of 10)', async () => {
    const { stdout } = await run('systemd-analyze', [
      'security',
      '--offline=true',
      '--threshold=40',
      path.join(unitsDir, unit),
    ]);
    expect(stdout).toMatch(/Overall exposure level for .*: [0-3]\.\d /);
  });

  it('is hardened: read-only system, no privileges, private /tmp, writes only its state folder', async () => {
    const settings = serviceSettings(await readFile(path.join(unitsDir, unit), 'utf8'));
    const name = unit.replace('.service', '');
    expect(settings.get('ProtectSystem')).toEqual(['strict']);
    expect(settings.get('NoNewPrivileges')).toEqual(['yes']);
    expect(settings.get('PrivateTmp')).toEqual(['yes']);
    expect(settings.get('CapabilityBoundingSet')).toEqual(['']);
    expect(settings.get('ReadWritePaths')).toEqual([`/var/lib/${name}`]);
    expect(settings.get('User')).toEqual([name]);
    expect(settings.get('Restart')).toEqual(['on-failure']);
    expect(settings.get('ExecStartPost')?.length).toBe(1); // the readiness wait
  });

  it('verify catches a broken copy (the check can fail)', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-units-'));
    tempDirs.push(dir);
    const text = await readFile(path.join(unitsDir, unit), 'utf8');
    const broken = path.join(dir, unit);
    await writeFile(broken, text.replace('ExecStart=/usr/bin/node', 'ExecStart=/nonexistent/node'));
    const result = await verify(broken);
    expect(result.ok).toBe(false);
    expect(result.output).toMatch(/nonexistent/);
  });
});

describe('edgefleet-server.service and the exit of a server that gave its database up', () => {
  it('restarts on that code (Restart=on-failure, the code not in RestartPreventExitStatus)', async () => {
    const { DATABASE_GIVEN_UP_EXIT_CODE } = await import('../../packages/server/src/server/start-server.js');
    const settings = serviceSettings(await readFile(path.join(unitsDir, 'edgefleet-server.service'), 'utf8'));
    expect(settings.get('Restart')).toEqual(['on-failure']);
    const prevented = (settings.get('RestartPreventExitStatus') ?? []).flatMap((value) => value.split(/\s+/));
    expect(prevented).toEqual(['2', '4']);
    expect(prevented).not.toContain(String(DATABASE_GIVEN_UP_EXIT_CODE));
    expect(DATABASE_GIVEN_UP_EXIT_CODE).not.toBe(0);
  });
});
