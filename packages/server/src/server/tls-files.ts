import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';

/** A certificate and its private key, read and checked, as PEM text for a TLS server. */
export interface TlsPair {
  cert: string;
  key: string;
}

/** Why a file could not be read, in words, with the server's uid where permissions are the cause. */
function readFailure(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES' || code === 'EPERM')
    return `permission denied (the server runs as uid ${process.getuid?.() ?? '?'}: give it read access)`;
  if (code === 'EISDIR') return 'it is a folder, not a file';
  return error instanceof Error ? error.message : String(error);
}

/**
 * Reads a TLS certificate and key named by the config keys `<setting>.certFile` and `<setting>.keyFile`
 * (`tls`, `deviceTls`), so that each mistake (a missing or unreadable file, a file that is not what its key
 * says, a key of another certificate) names the key and the file instead of an OpenSSL code.
 */
export async function readTlsPair(
  setting: 'tls' | 'deviceTls',
  files: { certFile: string; keyFile: string },
): Promise<TlsPair> {
  const read = async (key: 'certFile' | 'keyFile') => {
    try {
      return await readFile(files[key], 'utf8');
    } catch (error) {
      throw new Error(`cannot read ${setting}.${key} (${files[key]}): ${readFailure(error)}`, {
        cause: error,
      });
    }
  };
  const cert = await read('certFile');
  const key = await read('keyFile');
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (error) {
    const hint = /PRIVATE KEY-----/.test(cert)
      ? ' (it holds a private key: are certFile and keyFile swapped?)'
      : '';
    throw new Error(`${setting}.certFile (${files.certFile}): not a PEM certificate${hint}`, {
      cause: error,
    });
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    const hint = /CERTIFICATE-----/.test(key)
      ? ' (it holds a certificate: are certFile and keyFile swapped?)'
      : '';
    throw new Error(`${setting}.keyFile (${files.keyFile}): not a PEM private key${hint}`, { cause: error });
  }
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new Error(
      `${setting}.certFile (${files.certFile}) and ${setting}.keyFile (${files.keyFile}) do not match: the key is not the certificate's; expected the private key the certificate was issued for`,
    );
  }
  return { cert, key };
}
