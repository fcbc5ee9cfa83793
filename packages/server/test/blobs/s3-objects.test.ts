import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Objects } from '../../src/blobs/index.js';
import { startTestS3, type TestS3 } from '../support/s3.js';

const SETTINGS_ADVICE = /set s3\.accessKeyId and s3\.secretAccessKey/;

describe('S3Objects errors (real s3rver)', () => {
  let s3: TestS3;
  beforeAll(async () => {
    s3 = await startTestS3('inputs');
  });
  afterAll(() => s3?.stop());

  const objects = () =>
    new S3Objects({ endpoint: s3.endpoint, forcePathStyle: true, credentials: s3.credentials });

  it('names the settings to set when the store refuses the credentials', async () => {
    const wrong = new S3Objects({
      endpoint: s3.endpoint,
      forcePathStyle: true,
      credentials: { accessKeyId: 'NOT-S3RVER', secretAccessKey: 'nope' },
    });
    await expect(wrong.put('s3://inputs/a.bin', Buffer.from('a'))).rejects.toThrow(SETTINGS_ADVICE);
  });

  it('names the settings to set when the endpoint is not there', async () => {
    const nowhere = new S3Objects({
      endpoint: 'http://edgefleet-no-such-host.invalid:9',
      forcePathStyle: true,
      credentials: s3.credentials,
    });
    await expect(nowhere.put('s3://inputs/a.bin', Buffer.from('a'))).rejects.toThrow(SETTINGS_ADVICE);
  });

  it('says what failed, without settings advice, for a missing bucket or a body that failed (N13)', async () => {
    const missing = objects().put('s3://no-such-bucket/a.bin', Buffer.from('a'));
    await expect(missing).rejects.toThrow(
      `cannot write s3://no-such-bucket/a.bin on the S3 endpoint ${s3.endpoint}: `,
    );
    await expect(missing).rejects.not.toThrow(SETTINGS_ADVICE);

    // The client that sent the body went away mid-upload: its caller aborts the write, as the routes do.
    const body = new Readable({ read() {} });
    body.push(Buffer.alloc(1024));
    const aborted = new AbortController();
    body.once('error', (error) => aborted.abort(error));
    setImmediate(() => body.destroy(new Error('the client went away')));
    const cut = objects().put('s3://inputs/cut.bin', body, { contentLength: 4096, signal: aborted.signal });
    await expect(cut).rejects.toThrow(`cannot write s3://inputs/cut.bin on the S3 endpoint ${s3.endpoint}: `);
    await expect(cut).rejects.not.toThrow(SETTINGS_ADVICE);
  });
});
