/**
 * The errors the server's capabilities raise, in their own terms: what went wrong, never how a transport says
 * it. The HTTP layer maps each code to a status (http/errors.ts); the SageMaker facade will map them to AWS
 * error bodies. Every message says what was wrong and what was expected.
 */
export type DomainErrorCode =
  | 'ValidationError'
  | 'Unauthenticated'
  | 'Forbidden'
  | 'NotFound'
  | 'Conflict'
  | 'ResourceInUse'
  | 'PayloadTooLarge'
  | 'LimitExceeded'
  /** Something the server depends on (its database, a blob store or bucket) cannot be used now: try later. */
  | 'DependencyUnavailable'
  /** The request's body stopped arriving before it was all in: the client may send it again. */
  | 'RequestTimeout'
  | 'CertificateRequired'
  | 'CertificateInvalid'
  | 'CertificateExpired'
  | 'CertificateRevoked'
  | 'EnrollmentTokenInvalid'
  | 'EnrollmentTokenExpired'
  | 'EnrollmentTokenUsed';

export class DomainError extends Error {
  constructor(
    readonly code: DomainErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'DomainError';
  }
}

export const notFound = (what: string, details?: Record<string, unknown>) =>
  new DomainError('NotFound', `${what} does not exist`, details);
export const conflict = (message: string, details?: Record<string, unknown>) =>
  new DomainError('Conflict', message, details);
export const invalid = (message: string, details?: Record<string, unknown>) =>
  new DomainError('ValidationError', message, details);
