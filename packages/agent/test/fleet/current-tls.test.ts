import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CurrentTls } from '../../src/fleet/index.js';

// What lets the capture destination, the deployment poller and the package downloads use a renewed
// certificate at once: the files are read on every get, and the client is rebuilt only when they changed.
describe('CurrentTls', () => {
  it('reads the certificate files on every get and rebuilds (closing the old) only when they changed', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ef-tls-'));
    const certFile = join(dir, 'cert.pem');
    const keyFile = join(dir, 'key.pem');
    await writeFile(certFile, 'cert-1');
    await writeFile(keyFile, 'key-1');
    const built: string[] = [];
    const closed: string[] = [];
    const current = new CurrentTls(
      async () => ({ certPem: await readFile(certFile, 'utf8'), keyPem: await readFile(keyFile, 'utf8') }),
      (tls) => {
        built.push(tls.certPem);
        return { cert: tls.certPem };
      },
      (client) => closed.push(client.cert),
    );

    const first = await current.get();
    expect(await current.get()).toBe(first);
    expect(built).toEqual(['cert-1']);

    // A renewal replaces both files: the next get builds a client for them and closes the old one.
    await writeFile(certFile, 'cert-2');
    await writeFile(keyFile, 'key-2');
    const second = await current.get();
    expect(second).toEqual({ cert: 'cert-2' });
    expect(built).toEqual(['cert-1', 'cert-2']);
    expect(closed).toEqual(['cert-1']);

    current.close();
    expect(closed).toEqual(['cert-1', 'cert-2']);
  });

  it('fails a get whose files cannot be read, and keeps the client it has', async () => {
    let fail = false;
    const current = new CurrentTls(
      async () => {
        if (fail) throw new Error('sagemaker_edge_provider_aws_cert_file /x: ENOENT');
        return { certPem: 'c', keyPem: 'k' };
      },
      () => ({}),
      () => undefined,
    );
    const client = await current.get();
    fail = true;
    await expect(current.get()).rejects.toThrow(/ENOENT/);
    fail = false;
    expect(await current.get()).toBe(client);
  });
});
