/**
 * The ~/.aws/credentials profile (INI section) name `edgefleet token create --aws` prints for an access key
 * named `name`: runs of characters other than letters, digits, `_` and `-` become one `-` ("ci deploys" →
 * "ci-deploys"). The server refuses a second unrevoked key whose profile name would be the same: two sections
 * of one name make botocore refuse the whole file.
 */
export function awsProfileName(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]+/g, '-');
}
