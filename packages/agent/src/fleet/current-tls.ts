import { DeviceApiClient, type DeviceTlsIdentity } from './device-api.js';

/**
 * One thing built from the device's certificate files as they are now (a device API client, an HTTPS agent):
 * the files are read on every `get()`, and the thing is built again, the old one closed, only when they
 * changed. So a certificate the fleet client renewed, or a re-enrollment, is used at once by every user of the
 * device API, not only after the old certificate expired or was revoked. A request still running on the old
 * one fails and is retried by its caller: renewals are rare.
 */
export class CurrentTls<T> {
  #current: { value: T; tls: DeviceTlsIdentity } | undefined;

  constructor(
    private readonly read: () => Promise<DeviceTlsIdentity>,
    private readonly build: (tls: DeviceTlsIdentity) => T,
    private readonly dispose: (value: T) => void,
  ) {}

  async get(): Promise<T> {
    const tls = await this.read();
    const current = this.#current;
    if (
      current !== undefined &&
      current.tls.certPem === tls.certPem &&
      current.tls.keyPem === tls.keyPem &&
      current.tls.caPem === tls.caPem
    )
      return current.value;
    if (current !== undefined) this.dispose(current.value);
    const value = this.build(tls);
    this.#current = { value, tls };
    return value;
  }

  close(): void {
    if (this.#current !== undefined) this.dispose(this.#current.value);
    this.#current = undefined;
  }
}

/** A device API client of the certificate files as they are now (read by `read` before each use). */
export function currentDeviceApi(
  endpoint: string,
  read: () => Promise<DeviceTlsIdentity>,
  options: { timeoutMs: number },
): CurrentTls<DeviceApiClient> {
  return new CurrentTls(
    read,
    (tls) => new DeviceApiClient(endpoint, tls, options),
    (client) => client.close(),
  );
}
