import type { ActiveAccessKey } from '../auth/index.js';
import { arnBuilder } from './arns.js';
import { AwsError } from './aws-errors.js';
import { parseInput, type OperationModule } from './operation.js';

/** The operations of the `sagemaker` service this server knows; anything else is UnknownOperationException. */
export class SageMakerDispatcher {
  private readonly operations: OperationModule;

  constructor(
    modules: readonly OperationModule[],
    private readonly accountId: string,
  ) {
    const merged: OperationModule = {};
    for (const module of modules) {
      for (const [name, operation] of Object.entries(module)) {
        if (name in merged) throw new Error(`SageMaker operation ${name} is defined twice`);
        merged[name] = operation;
      }
    }
    this.operations = merged;
  }

  get operationNames(): string[] {
    return Object.keys(this.operations).sort();
  }

  /** Runs `X-Amz-Target: SageMaker.<name>` with a JSON body already parsed, as `key`. */
  async dispatch(
    target: string | undefined,
    body: unknown,
    auth: { key: ActiveAccessKey; region: string },
  ): Promise<Record<string, unknown>> {
    const match = /^SageMaker\.([A-Za-z0-9]{1,100})$/.exec(target ?? '');
    const name = match?.[1];
    const operation = name === undefined ? undefined : this.operations[name];
    if (operation === undefined || name === undefined) {
      throw new AwsError(
        'UnknownOperationException',
        target === undefined
          ? 'the X-Amz-Target header is missing; expected SageMaker.<OperationName>'
          : `${target} is not an operation this server supports; see docs/sagemaker-compatibility.md`,
      );
    }
    if (auth.key.deviceName !== null) {
      throw new AwsError(
        'AccessDeniedException',
        `access key ${auth.key.accessKeyId} is bound to device ${auth.key.deviceName}: it may call only the sagemaker-edge data plane`,
      );
    }
    if (operation.mutating && auth.key.scope !== 'admin') {
      throw new AwsError(
        'AccessDeniedException',
        `access key ${auth.key.accessKeyId} ("${auth.key.name}") is ${auth.key.scope}; ${name} needs an admin key`,
      );
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new AwsError('SerializationException', 'the request body must be a JSON object');
    }
    return operation.run(parseInput(operation.input, body), {
      key: auth.key,
      region: auth.region,
      arns: arnBuilder(auth.region, this.accountId),
    });
  }
}
