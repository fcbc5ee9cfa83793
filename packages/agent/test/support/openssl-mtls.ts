import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** A server's TLS files for mutual TLS: its key and certificate, and the CA its clients' certificates chain to. */
export interface MtlsServerFiles {
  key: Buffer;
  cert: Buffer;
  ca: Buffer;
}

/** `openssl req` arguments for a new unencrypted EC P-256 key, written to the file named next. */
const NEW_EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout'];

/**
 * Certificates made by OpenSSL in `dir` for a real HTTPS peer with client certificates: a CA (`ca.pem`, `ca.key`),
 * a server certificate for 127.0.0.1 (`server.pem`, `server.key`) and a device certificate with the common name
 * `deviceName` (`device.pem`, `device.key`), each valid for a day. Returns the server's files, read.
 */
export async function issueMtlsCertificates(dir: string, deviceName: string): Promise<MtlsServerFiles> {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  /** `<name>.key` (EC P-256) and `<name>.pem`, a certificate for `subject` the CA issues for a day. */
  const issueByCa = (name: string, subject: string, ...x509Args: string[]) => {
    openssl('req', ...NEW_EC_KEY, `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    openssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.pem`,
      '-days',
      '1',
      ...x509Args,
    );
  };
  openssl('req', '-x509', ...NEW_EC_KEY, 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=test-ca');
  await writeFile(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1\n');
  issueByCa('server', '/CN=127.0.0.1', '-extfile', 'server.ext');
  issueByCa('device', `/CN=${deviceName}`);
  const [key, cert, ca] = await Promise.all(
    ['server.key', 'server.pem', 'ca.pem'].map((f) => readFile(join(dir, f))),
  );
  return { key: key!, cert: cert!, ca: ca! };
}
