import { AwsError } from './aws-errors.js';

/**
 * ARNs of the resources the facade serves, in a stable form:
 *   arn:aws:sagemaker:<region>:<account>:device-fleet/<fleet>
 *   arn:aws:sagemaker:<region>:<account>:device-fleet/<fleet>/device/<device>
 *   arn:aws:sagemaker:<region>:<account>:compilation-job/<job>
 *   arn:aws:sagemaker:<region>:<account>:edge-packaging-job/<job>
 *   arn:aws:sagemaker:<region>:<account>:edge-deployment/<plan>
 * The region is the one the request was signed for; the account id is configured (sagemaker.accountId).
 */
export interface ArnBuilder {
  fleet(name: string): string;
  device(fleetName: string, deviceName: string): string;
  compilationJob(name: string): string;
  edgePackagingJob(name: string): string;
  edgeDeploymentPlan(name: string): string;
}

export type ParsedArn =
  | { kind: 'device-fleet'; fleet: string }
  | { kind: 'device'; fleet: string; device: string }
  | { kind: 'compilation-job'; name: string }
  | { kind: 'edge-packaging-job'; name: string }
  | { kind: 'edge-deployment'; name: string };

export function arnBuilder(region: string, accountId: string): ArnBuilder {
  const base = `arn:aws:sagemaker:${region}:${accountId}`;
  return {
    fleet: (name) => `${base}:device-fleet/${name}`,
    device: (fleetName, deviceName) => `${base}:device-fleet/${fleetName}/device/${deviceName}`,
    compilationJob: (name) => `${base}:compilation-job/${name}`,
    edgePackagingJob: (name) => `${base}:edge-packaging-job/${name}`,
    edgeDeploymentPlan: (name) => `${base}:edge-deployment/${name}`,
  };
}

const NAME = '[a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62}';
const JOB_ARN = new RegExp(
  `^arn:aws[a-z-]*:sagemaker:[a-z0-9-]*:\\d{12}:(compilation-job|edge-packaging-job|edge-deployment)/(${NAME})$`,
);
const RESOURCE_ARN = new RegExp(
  `^arn:aws[a-z-]*:sagemaker:[a-z0-9-]*:\\d{12}:device-fleet/(${NAME})(?:/device/(${NAME}))?$`,
);

/**
 * The resource an ARN names, or a ValidationException. Unlike AWS, names keep their case in ARNs (our names
 * are case-sensitive), so an ARN always leads back to its resource.
 */
export function parseResourceArn(arn: string): ParsedArn {
  const job = JOB_ARN.exec(arn);
  if (job) {
    const name = job[2] as string;
    const kind = job[1] as 'compilation-job' | 'edge-packaging-job' | 'edge-deployment';
    return { kind, name };
  }
  const m = RESOURCE_ARN.exec(arn);
  if (!m) {
    throw new AwsError(
      'ValidationException',
      `1 validation error detected: Value at 'ResourceArn' failed to satisfy constraint: expected the ARN of a device fleet, device, compilation job, edge packaging job or edge deployment plan (the resources this server tags); got "${arn}"`,
    );
  }
  const fleet = m[1] as string;
  return m[2] === undefined ? { kind: 'device-fleet', fleet } : { kind: 'device', fleet, device: m[2] };
}
