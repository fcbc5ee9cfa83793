// The device key and CSR live in core, shared with the agent's certificate renewal.
export {
  DEVICE_KEY_TYPES,
  createCsr,
  generateDeviceKey,
  type DeviceKeyPair,
  type DeviceKeyType,
} from '@edgefleet/core';
