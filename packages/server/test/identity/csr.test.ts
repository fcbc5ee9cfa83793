import { describe, expect, it } from 'vitest';
import { CsrError, parseCsr } from '../../src/identity/index.js';
import { createCsr, deviceKey, type DeviceKeyType } from '../support/device.js';

describe('parseCsr', () => {
  it.each<DeviceKeyType>(['ecdsa-p256', 'ecdsa-p384', 'ed25519'])(
    'accepts a %s CSR and returns its key',
    (type) => {
      const key = deviceKey(type);
      const parsed = parseCsr(createCsr(key, 'dev-1'));
      expect(parsed.publicKeyPem).toBe(key.publicKeyPem);
    },
  );

  it('refuses a CSR whose signature does not match its content', () => {
    expect(() => parseCsr(createCsr(deviceKey(), 'dev-1', { tamper: true }))).toThrow(
      /signature does not verify/,
    );
  });

  it('refuses RSA keys, naming what it accepts', () => {
    expect(() => parseCsr(createCsr(deviceKey('rsa'), 'dev-1'))).toThrow(/rsa; expected ECDSA .* or Ed25519/);
  });

  it('refuses text that is not a PEM CSR', () => {
    expect(() => parseCsr('hello')).toThrow(CsrError);
    expect(() =>
      parseCsr('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----'),
    ).toThrow(/not valid PKCS#10/);
  });
});
