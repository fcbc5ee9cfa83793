import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  deviceEndpointFor,
  networkWarnings,
  type NetworkSettings,
} from '../../src/server/network-warnings.js';
import { startTestServer, type TestServer } from '../support/server.js';

describe('deviceEndpointFor', () => {
  it('puts an IPv6 address in brackets, and a host name or IPv4 address as it is', () => {
    expect(deviceEndpointFor('::1', 8443)).toBe('https://[::1]:8443');
    expect(deviceEndpointFor('fleet.example', 8443)).toBe('https://fleet.example:8443');
    expect(deviceEndpointFor('192.0.2.2', 8443)).toBe('https://192.0.2.2:8443');
  });
});

/** One server on one host: nothing to warn about. */
const local: NetworkSettings = {
  listen: { host: '127.0.0.1', port: 8080 },
  operatorTls: false,
  deviceListen: { host: '127.0.0.1', port: 8443 },
  deviceEndpoint: 'https://localhost:8443',
  deviceServerNames: ['localhost', '127.0.0.1'],
  generatedDeviceCertificate: true,
};
/** A fleet on several hosts, set as the docs say: nothing to warn about. */
const fleet: NetworkSettings = {
  listen: { host: '0.0.0.0', port: 8080 },
  operatorTls: true,
  deviceListen: { host: '0.0.0.0', port: 8443 },
  deviceEndpoint: 'https://fleet.example:8443',
  deviceServerNames: ['fleet.example'],
  generatedDeviceCertificate: true,
};

describe('networkWarnings', () => {
  it('warns of nothing for a server on one host, or a fleet set as the docs say', () => {
    expect(networkWarnings(local)).toEqual([]);
    expect(networkWarnings(fleet)).toEqual([]);
  });

  it('warns when the operator API is served to other hosts in clear', () => {
    expect(networkWarnings({ ...fleet, operatorTls: false })).toEqual([
      expect.stringMatching(/operator API listens on 0\.0\.0\.0:8080 over plain HTTP.*set tls/),
    ]);
  });

  it('warns when devices on other hosts would be handed a loopback endpoint', () => {
    expect(networkWarnings({ ...fleet, deviceEndpoint: 'https://127.0.0.1:8443' })).toEqual([
      expect.stringMatching(
        /hands devices https:\/\/127\.0\.0\.1:8443, this machine's loopback address.*--device-endpoint/,
      ),
    ]);
  });

  it('warns when the endpoint host is not in the generated certificate, but not for a certificate of its own', () => {
    const unnamed = { ...fleet, deviceEndpoint: 'https://other.example:8443' };
    expect(networkWarnings(unnamed)).toEqual([
      expect.stringMatching(
        /certificate names only fleet\.example: devices would refuse it; add other\.example/,
      ),
    ]);
    expect(networkWarnings({ ...unnamed, generatedDeviceCertificate: false })).toEqual([]);
    // Names compare without regard to case, and IPv6 addresses as addresses, however written (N4).
    expect(networkWarnings({ ...fleet, deviceEndpoint: 'https://FLEET.example:8443' })).toEqual([]);
    expect(
      networkWarnings({
        ...fleet,
        deviceEndpoint: 'https://[2001:db8::2]:8443',
        deviceServerNames: ['2001:DB8:0::2'],
      }),
    ).toEqual([]);
  });

  it('warns when devices are handed a URL on another host while the device API listens on loopback only', () => {
    // A server.env from before deviceListen defaulted to loopback: only the endpoint, names and operator API set.
    const upgraded = { ...fleet, deviceListen: { host: '127.0.0.1', port: 8443 } };
    expect(networkWarnings(upgraded)).toEqual([
      expect.stringMatching(
        /hands devices https:\/\/fleet\.example:8443, but the device API listens on 127\.0\.0\.1:8443 only.*set deviceListen \(--device-listen, EDGEFLEET_DEVICE_LISTEN\) to 0\.0\.0\.0:8443.*default changed.*TCP proxy/,
      ),
    ]);
    expect(networkWarnings({ ...upgraded, deviceListen: { host: '::1', port: 8443 } })).toEqual([
      expect.stringMatching(/listens on ::1:8443 only/),
    ]);
    // A loopback endpoint on a loopback device API is the single-host set-up.
    expect(
      networkWarnings({ ...local, deviceEndpoint: 'https://[::1]:8443', deviceServerNames: ['::1'] }),
    ).toEqual([]);
  });

  it('warns that devices on other hosts cannot enroll while the operator API listens on loopback only', () => {
    const operatorLocal = { ...fleet, listen: { host: '127.0.0.1', port: 8080 }, operatorTls: false };
    expect(networkWarnings(operatorLocal)).toEqual([
      expect.stringMatching(
        /device API listens on 0\.0\.0\.0:8443, but the operator API only on 127\.0\.0\.1:8080: devices on other hosts cannot enroll.*device enroll.*set listen.*with tls.*TLS proxy/,
      ),
    ]);
    // Only the device API off-host (the defaults before both were loopback): a loopback endpoint, and no
    // enrolling from other hosts.
    expect(networkWarnings({ ...local, deviceListen: { host: '0.0.0.0', port: 8443 } })).toEqual([
      expect.stringMatching(/this machine's loopback address/),
      expect.stringMatching(/devices on other hosts cannot enroll/),
    ]);
  });
});

describe('a server whose first device server name is an IPv6 address', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({ config: { deviceServerNames: ['::1', 'localhost'] } });
  });
  afterAll(() => t?.stop());

  it('starts, and hands devices a URL that parses', () => {
    const port = new URL(t.server.deviceUrl).port;
    expect(t.server.deviceEndpoint).toBe(`https://[::1]:${port}`);
    expect(t.server.warnings).toEqual([]);
  });
});
