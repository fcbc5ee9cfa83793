export * from './auth/index.js';
export * from './blobs/index.js';
export * from './config/index.js';
export * from './server/index.js';
export * from './storage/index.js';
export { ApiError, errorBodySchema, type ErrorBody, type ErrorCode } from './http/errors.js';
export { DomainError, type DomainErrorCode } from './errors/index.js';
