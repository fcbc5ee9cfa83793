import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { useOperatorCli } from '../run-cli.js';

const cli = useOperatorCli();
const { ef } = cli;

/** One SageMaker call through boto3 (python3-boto3) with the given key: its error code, or 'OK'. */
function listFleetsWith(accessKeyId: string, secret: string): string {
  const script = [
    'import sys, boto3, botocore.exceptions as e',
    'c = boto3.client("sagemaker", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])',
    'try:',
    '    c.list_device_fleets(); print("OK")',
    'except e.ClientError as error:',
    '    print(error.response["Error"]["Code"])',
  ].join('\n');
  const run = spawnSync('python3', ['-c', script, cli.plane.operatorUrl, accessKeyId, secret], {
    encoding: 'utf8',
    env: { ...process.env, AWS_CONFIG_FILE: '/dev/null', AWS_SHARED_CREDENTIALS_FILE: '/dev/null' },
  });
  return (run.stdout || run.stderr).trim();
}

describe('edgefleet token create --aws', () => {
  it('prints a ~/.aws/credentials profile once, lists the key without its secret, and revokes it', async () => {
    const created = await ef('token', 'create', '--name', 'ci', '--scope', 'read-only', '--aws');
    expect(created.code).toBe(0);
    const match = /^\[ci\]\naws_access_key_id = (AKEF[A-Z2-7]{16})\naws_secret_access_key = (\S{40})$/m.exec(
      created.stdout,
    );
    expect(match, created.stdout).not.toBeNull();
    const [, accessKeyId, secret] = match as unknown as [string, string, string];
    expect(listFleetsWith(accessKeyId, secret)).toBe('OK');

    const listed = await ef('token', 'list-aws', '--json');
    expect(listed.stdout).toContain(accessKeyId);
    expect(listed.stdout).not.toContain(secret);

    expect((await ef('token', 'revoke', accessKeyId)).code).toBe(0);
    expect(listFleetsWith(accessKeyId, secret)).toBe('UnrecognizedClientException');
    expect((await ef('token', 'revoke', accessKeyId)).code).toBe(1);
  });

  it('refuses --device without --aws, and a device key for an unknown device', async () => {
    const noAws = await ef('token', 'create', '--name', 'x', '--device', 'dev-1');
    expect(noAws.code).toBe(2);
    expect(noAws.stderr).toMatch(/--device applies to access keys only/);
    const unknown = await ef('token', 'create', '--name', 'x', '--aws', '--device', 'no-such-device');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/device no-such-device does not exist/);
  });
  it('lists a device key whose device was deregistered as ended, saying why (F-key-active)', async () => {
    expect((await ef('fleet', 'create', 'keyed', '--output', 's3://c/keyed')).code).toBe(0);
    expect((await ef('device', 'register', 'keyed', 'cam-k')).code).toBe(0);
    const created = await ef('token', 'create', '--name', 'cam-k', '--aws', '--device', 'cam-k');
    expect(created.code, created.stderr).toBe(0);
    const accessKeyId = /aws_access_key_id = (AKEF[A-Z2-7]{16})/.exec(created.stdout)![1]!;
    const stateOf = async () =>
      (await ef('token', 'list-aws')).stdout.split('\n').find((line) => line.startsWith(accessKeyId));
    expect(await stateOf()).toMatch(/ active /);
    expect((await ef('device', 'deregister', 'cam-k')).code).toBe(0);
    expect(await stateOf()).toMatch(/ ended \(device cam-k was deregistered\) /);
    // Registered again: the old key still does not speak for the new device.
    expect((await ef('device', 'register', 'keyed', 'cam-k')).code).toBe(0);
    expect(await stateOf()).toMatch(
      / ended \(device cam-k was deregistered and registered again after the key was issued\) /,
    );
    const listed = (await cli.json('token', 'list-aws')) as {
      accessKeys: { accessKeyId: string; state: string; endedReason?: string }[];
    };
    expect(listed.accessKeys.find((k) => k.accessKeyId === accessKeyId)).toMatchObject({
      state: 'ended',
      endedReason: 'device cam-k was deregistered and registered again after the key was issued',
    });
  });

  it('refuses a second unrevoked key with the same credentials profile, naming token revoke (F-key-profile-dup)', async () => {
    const first = await ef('token', 'create', '--name', 'deploy bot', '--aws');
    expect(first.code, first.stderr).toBe(0);
    const accessKeyId = /aws_access_key_id = (AKEF[A-Z2-7]{16})/.exec(first.stdout)![1]!;
    // "deploy-bot" prints the same [deploy-bot] section as "deploy bot".
    const second = await ef('token', 'create', '--name', 'deploy-bot', '--aws');
    expect(second.code).toBe(1);
    expect(second.stdout).toBe('');
    expect(second.stderr).toContain(
      `access key ${accessKeyId} (name "deploy bot") already has the ~/.aws/credentials profile [deploy-bot]; to rotate it, revoke that key (edgefleet token revoke ${accessKeyId}) and create the new one, or choose another name`,
    );
    expect((await ef('token', 'revoke', accessKeyId)).code).toBe(0);
    expect((await ef('token', 'create', '--name', 'deploy-bot', '--aws')).code).toBe(0);
  });

  it('says which characters an access key id has (F-key-active nit)', async () => {
    const refused = await ef('token', 'revoke', 'AKEFNOSUCHKEY0000000');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/AKEF and 16 more of A-Z and 2-7/);
  });
});
