/**
 * Node's socket and DNS error codes that mean a dependency (the database, an S3 endpoint) could not be reached
 * or dropped the connection: an outage, not a fault of the request.
 */
export const NETWORK_ERROR_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
]);
