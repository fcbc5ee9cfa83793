import { dependencyUnavailableOf, DomainError, type DomainErrorCode } from '../errors/index.js';
import type { Refusal } from '../http/refusal.js';

/**
 * The AWS error types the facade answers with, and the HTTP status AWS uses for each. botocore reads the
 * type from `__type` (json 1.1) or the `x-amzn-ErrorType` header (rest-json); we send both.
 */
const STATUS_BY_AWS_TYPE = {
  // Authentication (403, as AWS answers unsigned or badly signed requests).
  MissingAuthenticationTokenException: 403,
  IncompleteSignatureException: 403,
  InvalidSignatureException: 403,
  UnrecognizedClientException: 403,
  AuthorizationQueryParametersError: 403,
  // SageMaker answers its own errors with 400.
  AccessDeniedException: 400,
  ValidationException: 400,
  SerializationException: 400,
  UnknownOperationException: 400,
  ResourceNotFound: 400,
  ResourceInUse: 400,
  ResourceLimitExceeded: 400,
  ConflictException: 400,
  ThrottlingException: 400,
  // sagemaker-edge's one documented error.
  InternalServiceException: 500,
  InternalFailure: 500,
  // A dependency (database, S3) cannot be used now; AWS SDKs retry it with backoff.
  ServiceUnavailable: 503,
} as const;

export type AwsErrorType = keyof typeof STATUS_BY_AWS_TYPE;

/**
 * What each type means as a refusal, for metrics/: the status AWS uses says little (a bad signature is 403, a
 * device acting for another is 400), so the facade's answers are counted by their type.
 */
export const REFUSAL_BY_AWS_TYPE: Record<AwsErrorType, Refusal> = {
  MissingAuthenticationTokenException: 'unauthenticated',
  IncompleteSignatureException: 'unauthenticated',
  InvalidSignatureException: 'unauthenticated',
  UnrecognizedClientException: 'unauthenticated',
  AuthorizationQueryParametersError: 'unauthenticated',
  AccessDeniedException: 'forbidden',
  ValidationException: 'invalid',
  SerializationException: 'invalid',
  UnknownOperationException: 'invalid',
  ResourceNotFound: 'invalid',
  ResourceInUse: 'invalid',
  ResourceLimitExceeded: 'limit_exceeded',
  ConflictException: 'invalid',
  ThrottlingException: 'limit_exceeded',
  InternalServiceException: 'server_error',
  InternalFailure: 'server_error',
  ServiceUnavailable: 'unavailable',
};

export class AwsError extends Error {
  constructor(
    readonly type: AwsErrorType,
    message: string,
  ) {
    super(message);
    this.name = 'AwsError';
  }

  get statusCode(): number {
    return STATUS_BY_AWS_TYPE[this.type];
  }
}

/** The one place native domain errors become AWS error types. */
const AWS_TYPE_BY_DOMAIN_CODE: Record<DomainErrorCode, AwsErrorType> = {
  ValidationError: 'ValidationException',
  PayloadTooLarge: 'ValidationException',
  NotFound: 'ResourceNotFound',
  Conflict: 'ResourceInUse',
  ResourceInUse: 'ResourceInUse',
  LimitExceeded: 'ResourceLimitExceeded',
  Unauthenticated: 'UnrecognizedClientException',
  Forbidden: 'AccessDeniedException',
  CertificateRequired: 'AccessDeniedException',
  CertificateInvalid: 'AccessDeniedException',
  CertificateExpired: 'AccessDeniedException',
  CertificateRevoked: 'AccessDeniedException',
  EnrollmentTokenInvalid: 'AccessDeniedException',
  EnrollmentTokenExpired: 'AccessDeniedException',
  EnrollmentTokenUsed: 'AccessDeniedException',
  DependencyUnavailable: 'ServiceUnavailable',
  RequestTimeout: 'ValidationException',
};

/** Any error a facade handler raised, as an AWS error; undefined for an unexpected (internal) failure. */
export function toAwsError(thrown: unknown): AwsError | undefined {
  if (thrown instanceof AwsError) return thrown;
  const error = dependencyUnavailableOf(thrown) ?? thrown;
  if (error instanceof DomainError) return new AwsError(AWS_TYPE_BY_DOMAIN_CODE[error.code], error.message);
  return undefined;
}
