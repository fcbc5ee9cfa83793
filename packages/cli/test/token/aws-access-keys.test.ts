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
});
