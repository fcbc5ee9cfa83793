/** A device's TLS material for calls to the device API in tests (server's and agent's alike). */
export interface TlsIdentity {
  /** Trust for the server's certificate (the device CA). */
  ca: string;
  cert?: string;
  key?: string;
}
