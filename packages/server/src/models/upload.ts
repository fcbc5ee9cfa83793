import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DomainError } from '../errors/index.js';

export interface SpooledUpload {
  file: string;
  size: number;
  sha256: string;
  remove(): Promise<void>;
}

/**
 * Streams a request body to a temporary file, hashing as it goes and stopping with 413 as soon as it
 * passes `maxBytes`: an upload never sits in memory and never fills the disk past the limit.
 */
export async function spoolUpload(
  body: Readable,
  options: { dir: string; maxBytes: number },
): Promise<SpooledUpload> {
  await mkdir(options.dir, { recursive: true, mode: 0o700 });
  const file = path.join(options.dir, `upload-${randomBytes(8).toString('hex')}`);
  const hash = createHash('sha256');
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      size += chunk.length;
      if (size > options.maxBytes) {
        callback(
          new DomainError(
            'PayloadTooLarge',
            `the upload is larger than the limit of ${options.maxBytes} bytes`,
            {
              maxBytes: options.maxBytes,
            },
          ),
        );
        return;
      }
      hash.update(chunk);
      callback(null, chunk);
    },
  });
  try {
    await pipeline(body, meter, createWriteStream(file, { mode: 0o600 }));
  } catch (error) {
    await rm(file, { force: true });
    // Drain what is left so the client hears the answer instead of a reset.
    body.resume();
    throw error;
  }
  if (size === 0) {
    await rm(file, { force: true });
    throw new DomainError('ValidationError', 'the upload is empty; send the file as the request body');
  }
  return { file, size, sha256: hash.digest('hex'), remove: () => rm(file, { force: true }) };
}
