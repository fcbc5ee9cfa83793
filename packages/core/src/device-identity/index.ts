// A device's key pair and PKCS#10 CSR: made by `edgefleet device enroll` and by the agent when it renews.
export {
  DEVICE_KEY_TYPES,
  createCsr,
  generateDeviceKey,
  type DeviceKeyPair,
  type DeviceKeyType,
} from './csr.js';
