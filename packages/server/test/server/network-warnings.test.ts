import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deviceEndpointFor } from '../../src/server/network-warnings.js';
import { startTestServer, type TestServer } from '../support/server.js';

describe('deviceEndpointFor', () => {
  it('puts an IPv6 address in brackets, and a host name or IPv4 address as it is', () => {
    expect(deviceEndpointFor('::1', 8443)).toBe('https://[::1]:8443');
    expect(deviceEndpointFor('fleet.example', 8443)).toBe('https://fleet.example:8443');
    expect(deviceEndpointFor('192.0.2.2', 8443)).toBe('https://192.0.2.2:8443');
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
