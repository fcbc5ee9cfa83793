export {
  API_TOKEN_PREFIX,
  ApiTokenStore,
  tokenScopeSchema,
  type ApiTokenRecord,
  type OperatorIdentity,
  type TokenScope,
} from './api-tokens.js';
export {
  AccessKeyStore,
  keyEndedReason,
  loadAccessKeyEncryptionKey,
  openAccessKeyEncryptionKey,
  accessKeyEncryptionKeyFingerprint,
  AccessKeyEncryptionKeyMismatch,
  type AccessKeyRecord,
  type ActiveAccessKey,
} from './access-keys.js';
export { accessKeyRoutes } from './access-key-routes.js';
export { operatorAuthenticators, requireOperator } from './operator-auth.js';
export { RecentTokenVerifications } from './recent-token-verifications.js';
export { apiTokenRoutes } from './routes.js';
export { bearerTokenOf, hashSecret, newId, newSecret } from './secrets.js';
