export {
  buildRestApp,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_CONCURRENT_JSON_BODIES,
  DEFAULT_MAX_JSON_BODY_BYTES,
  LARGE_JSON_BODY_BYTES,
  REST_EXTENSIONS,
  REST_SERVER_NAME,
  type RestAppOptions,
} from './rest-app.js';
export { REST_MODEL_PLATFORM } from './model-routes.js';
export { REST_LISTENER_LIMITS } from './rest-limits.js';
export { startRestServer, type RestServer, type RestServerOptions } from './rest-server.js';
export { INFERENCE_HEADER_CONTENT_LENGTH } from './infer-request.js';
export { KSERVE_DATATYPES, SUPPORTED_KSERVE_DATATYPES, kserveDatatype } from './kserve-datatypes.js';
