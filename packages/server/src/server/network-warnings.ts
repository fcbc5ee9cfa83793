import { isIP } from 'node:net';
import { canonicalHost, isLoopbackHost } from '@edgefleet/core';
import type { ListenAddress } from '../config/index.js';

export interface NetworkSettings {
  listen: ListenAddress;
  /** Whether the operator API is served over HTTPS. */
  operatorTls: boolean;
  deviceListen: ListenAddress;
  /** The device API URL enrollment hands to devices. */
  deviceEndpoint: string;
  deviceServerNames: readonly string[];
  /** Whether the device API's certificate is generated from deviceServerNames (not the operator's own). */
  generatedDeviceCertificate: boolean;
}

/** The device API URL for a server name and port; an IPv6 address goes in brackets, as a URL needs. */
export function deviceEndpointFor(serverName: string, port: number): string {
  return `https://${isIP(serverName) === 6 ? `[${serverName}]` : serverName}:${port}`;
}

/**
 * What the operator should hear at start about how the server meets the network: an operator API served in clear
 * to other hosts; a device API that devices on other hosts would be told to reach at this machine's own loopback
 * address, or under a name its certificate does not carry; devices handed a URL on another host while the device API
 * listens on loopback only; and a device API served to other hosts while the operator API, through which devices
 * enroll, is not.
 */
export function networkWarnings(settings: NetworkSettings): string[] {
  const warnings: string[] = [];
  if (!isLoopbackHost(settings.listen.host) && !settings.operatorTls) {
    warnings.push(
      `the operator API listens on ${settings.listen.host}:${settings.listen.port} over plain HTTP: API tokens and console session cookies cross the network in clear; set tls (certFile, keyFile) to serve it over HTTPS, or listen on 127.0.0.1 behind a TLS proxy`,
    );
  }
  const endpointHost = new URL(settings.deviceEndpoint).hostname;
  const deviceApiOffHost = !isLoopbackHost(settings.deviceListen.host);
  if (deviceApiOffHost && isLoopbackHost(endpointHost)) {
    warnings.push(
      `the device API listens on ${settings.deviceListen.host}:${settings.deviceListen.port}, but enrollment hands devices ${settings.deviceEndpoint}, this machine's loopback address: devices on other hosts would call themselves; set deviceEndpoint (--device-endpoint, EDGEFLEET_DEVICE_ENDPOINT) to the URL devices reach, and deviceServerNames (--device-server-names, EDGEFLEET_DEVICE_SERVER_NAMES) to its host name`,
    );
  } else if (
    settings.generatedDeviceCertificate &&
    !settings.deviceServerNames.some((name) => canonicalHost(name) === canonicalHost(endpointHost))
  ) {
    warnings.push(
      `enrollment hands devices ${settings.deviceEndpoint}, but the device API's certificate names only ${settings.deviceServerNames.join(', ')}: devices would refuse it; add ${endpointHost} to deviceServerNames (--device-server-names, EDGEFLEET_DEVICE_SERVER_NAMES)`,
    );
  }
  if (!deviceApiOffHost && !isLoopbackHost(endpointHost)) {
    // Before deviceListen defaulted to loopback, setting deviceEndpoint alone served other hosts: an upgraded
    // server.env that does so now turns every remote device away, and nothing else would say why.
    warnings.push(
      `enrollment hands devices ${settings.deviceEndpoint}, but the device API listens on ${settings.deviceListen.host}:${settings.deviceListen.port} only: devices on other hosts cannot reach it; set deviceListen (--device-listen, EDGEFLEET_DEVICE_LISTEN) to 0.0.0.0:${settings.deviceListen.port} (its default changed to 127.0.0.1:8443 in this version), or ignore this if a TCP proxy on this host forwards to it`,
    );
  }
  if (deviceApiOffHost && isLoopbackHost(settings.listen.host)) {
    // `edgefleet device enroll` posts to the operator API: the device API needs a certificate it cannot have yet.
    warnings.push(
      `the device API listens on ${settings.deviceListen.host}:${settings.deviceListen.port}, but the operator API only on ${settings.listen.host}:${settings.listen.port}: devices on other hosts cannot enroll, since \`edgefleet device enroll\` posts to the operator API; set listen (--listen, EDGEFLEET_LISTEN) off loopback with tls (certFile, keyFile), or serve it to them through a TLS proxy (behind one, this warning is expected)`,
    );
  }
  return warnings;
}
