import { z } from 'zod';
import type { ActiveAccessKey } from '../auth/index.js';
import { pathToNul } from '../http/routes.js';
import { AwsError } from './aws-errors.js';
import type { ArnBuilder } from './arns.js';

/** What every operation knows about the call besides its input. */
export interface OperationContext {
  key: ActiveAccessKey;
  /** The region the request was signed for; ARNs are answered in it. */
  region: string;
  arns: ArnBuilder;
}

/**
 * One SageMaker operation: its input shape (zod, non-strict: unknown members are ignored, as AWS does),
 * whether it changes state (read-only keys may not call it), and the mapping onto native services.
 */
export interface Operation<Input extends z.ZodType = z.ZodType> {
  mutating: boolean;
  input: Input;
  run(input: z.output<Input>, context: OperationContext): Promise<Record<string, unknown>>;
}

/** A capability's operations by name; the dispatcher merges several. */
export type OperationModule = Record<string, Operation>;

export function defineOperation<Input extends z.ZodType>(operation: Operation<Input>): Operation {
  return operation as unknown as Operation;
}

/** AWS's phrasing of input validation failures, naming each member that was wrong. */
function validationError(issues: readonly z.core.$ZodIssue[]): AwsError {
  const shown = issues.slice(0, 5);
  const text = shown
    .map((issue) => {
      const member = issue.path.length > 0 ? issue.path.map(String).join('.') : '(input)';
      return `Value at '${member}' failed to satisfy constraint: ${issue.message}`;
    })
    .join('; ');
  return new AwsError(
    'ValidationException',
    `${issues.length} validation error${issues.length === 1 ? '' : 's'} detected: ${text}`,
  );
}

/**
 * A request body as an operation's input, with AWS's errors: no NUL anywhere (PostgreSQL cannot store one; the
 * native routes refuse it too), then the schema. Used by the control plane and the data plane alike.
 */
export function parseInput<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  const nulAt = pathToNul(body);
  if (nulAt !== undefined) {
    throw new AwsError(
      'ValidationException',
      `1 validation error detected: Value at '${nulAt.map(String).join('.')}' failed to satisfy constraint: must not contain the NUL character`,
    );
  }
  const parsed = schema.safeParse(body);
  if (!parsed.success) throw validationError(parsed.error.issues);
  return parsed.data;
}

/** Epoch milliseconds → the epoch seconds AWS JSON protocols carry. */
export const epochSeconds = (ms: number): number => ms / 1000;

/** An AWS timestamp input (epoch seconds, as botocore sends it) → epoch milliseconds. */
export const timestampInput = z
  .number()
  .finite()
  .min(0)
  .transform((seconds) => Math.round(seconds * 1000));

/** Leaves out members whose value is null or undefined (AWS omits absent members). */
export function present<T extends Record<string, unknown>>(shape: T): Partial<T> {
  return Object.fromEntries(
    Object.entries(shape).filter(([, value]) => value !== null && value !== undefined),
  ) as Partial<T>;
}
