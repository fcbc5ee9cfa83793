export {
  listenAddressSchema,
  serverConfigSchema,
  type ListenAddress,
  type ServerConfig,
  type ServerConfigInput,
} from './config-schema.js';
export {
  ConfigError,
  loadConfig,
  overridableSettings,
  type ConfigSources,
  type OverridableSetting,
} from './load-config.js';
export { accessKeyEncryptionKeyFileOf, KeyMaterialError, keyMaterialToBackUp } from './key-material.js';
export { secretConfigFileWarning } from './secret-file-mode.js';
export { hasS3 } from './s3-configured.js';
