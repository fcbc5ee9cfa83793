import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  assertValidBlobKey,
  BlobNotFoundError,
  createBlobStore,
  parseBlobLocation,
  S3BlobStore,
  type BlobStore,
} from '../../src/blobs/index.js';
import { startTestS3, type TestS3 } from '../support/s3.js';

describe('parseBlobLocation', () => {
  it('reads s3 URIs, file URLs and plain paths', () => {
    expect(parseBlobLocation('s3://my-bucket/some/prefix/', '/base')).toEqual({
      kind: 's3',
      bucket: 'my-bucket',
      prefix: 'some/prefix',
    });
    expect(parseBlobLocation('s3://my-bucket', '/base')).toEqual({
      kind: 's3',
      bucket: 'my-bucket',
      prefix: '',
    });
    expect(parseBlobLocation('file:///var/blobs', '/base')).toEqual({ kind: 'local', root: '/var/blobs' });
    expect(parseBlobLocation('blobs', '/base')).toEqual({ kind: 'local', root: '/base/blobs' });
  });

  it('refuses bad bucket names and other schemes', () => {
    expect(() => parseBlobLocation('s3://Bad_Bucket/x', '/base')).toThrow(/invalid S3 bucket name/);
    expect(() => parseBlobLocation('gs://bucket/x', '/base')).toThrow(/unsupported blob location/);
  });
});

describe('blob keys', () => {
  const segment = fc
    .stringMatching(/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,15}$/)
    .filter((s) => s !== '.' && s !== '..');
  it('accepts every path of safe segments', () => {
    fc.assert(
      fc.property(fc.array(segment, { minLength: 1, maxLength: 6 }), (segments) => {
        expect(() => assertValidBlobKey(segments.join('/'))).not.toThrow();
      }),
    );
  });

  it('refuses any path with a dot-dot, empty or unsafe segment', () => {
    const unsafe = fc.oneof(
      fc.constant('..'),
      fc.constant('.'),
      fc.constant(''),
      fc.stringMatching(/^[a-z]*[\\ :*?"<>|%\u00e9][a-z]*$/),
    );
    fc.assert(
      fc.property(
        fc.array(segment, { maxLength: 3 }),
        unsafe,
        fc.array(segment, { maxLength: 3 }),
        (a, bad, b) => {
          expect(() => assertValidBlobKey([...a, bad, ...b].join('/'))).toThrow(/invalid blob key/);
        },
      ),
    );
  });
});

interface StoreFixture {
  name: string;
  start(): Promise<{ store: BlobStore; stop(): Promise<void> }>;
}

const fixtures: StoreFixture[] = [
  {
    name: 'local folder',
    start: async () => {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-blobs-'));
      const store = createBlobStore(parseBlobLocation(dir, '/'));
      return { store, stop: () => rm(dir, { recursive: true, force: true }) };
    },
  },
  {
    name: 's3 (s3rver)',
    start: async () => {
      const s3: TestS3 = await startTestS3();
      const store = createBlobStore(parseBlobLocation(`s3://${s3.bucket}/edge/fleet`, '/'), {
        endpoint: s3.endpoint,
        credentials: s3.credentials,
      });
      return {
        store,
        stop: async () => {
          await store.close();
          await s3.stop();
        },
      };
    },
  },
];

describe.each(fixtures)('blob store: $name', (fixture) => {
  let store: BlobStore;
  let stop: () => Promise<void>;
  beforeAll(async () => {
    ({ store, stop } = await fixture.start());
  });
  afterAll(() => stop());

  it('answers readiness', async () => {
    await expect(store.check()).resolves.toBeUndefined();
  });

  it('stores and returns bytes, strings and streams', async () => {
    const bytes = Buffer.from([0, 1, 2, 250, 255]);
    expect(await store.put('a/bytes.bin', bytes)).toEqual({ key: 'a/bytes.bin', size: 5 });
    expect(Buffer.concat(await (await store.get('a/bytes.bin')).toArray())).toEqual(bytes);

    await store.put('a/text.txt', 'héllo');
    expect(await text(await store.get('a/text.txt'))).toBe('héllo');

    const chunks = ['one ', 'two ', 'three'];
    const size = Buffer.byteLength(chunks.join(''));
    expect(await store.put('a/stream.txt', Readable.from(chunks), { contentLength: size })).toEqual({
      key: 'a/stream.txt',
      size,
    });
    expect(await text(await store.get('a/stream.txt'))).toBe('one two three');
    expect(await store.head('a/stream.txt')).toEqual({ key: 'a/stream.txt', size });
  });

  it('overwrites a key with the new content', async () => {
    await store.put('over/x', 'first, longer content');
    await store.put('over/x', 'second');
    expect(await text(await store.get('over/x'))).toBe('second');
    expect((await store.head('over/x'))?.size).toBe(6);
  });

  it('reports absent blobs', async () => {
    expect(await store.head('missing/blob')).toBeUndefined();
    await expect(store.get('missing/blob')).rejects.toBeInstanceOf(BlobNotFoundError);
  });

  it('deletes, and deleting twice is not an error', async () => {
    await store.put('del/x', 'x');
    await store.delete('del/x');
    await store.delete('del/x');
    expect(await store.head('del/x')).toBeUndefined();
  });

  it('lists by prefix in key order', async () => {
    for (const key of ['list/b/2', 'list/a/1', 'list/b/1', 'listing/other', 'unrelated/z']) {
      await store.put(key, key);
    }
    expect((await store.list('list/')).map((b) => b.key)).toEqual(['list/a/1', 'list/b/1', 'list/b/2']);
    expect((await store.list('list/b')).map((b) => b.key)).toEqual(['list/b/1', 'list/b/2']);
    expect((await store.list('list')).map((b) => b.key)).toEqual([
      'list/a/1',
      'list/b/1',
      'list/b/2',
      'listing/other',
    ]);
    expect(await store.list('nothing-here/')).toEqual([]);
    expect((await store.list('list/a/')).map((b) => b.size)).toEqual([8]);
  });

  it('refuses keys that could escape the store', async () => {
    await expect(store.put('../escape', 'x')).rejects.toThrow(/invalid blob key/);
    await expect(store.get('a/../../etc/passwd')).rejects.toThrow(/invalid blob key/);
    await expect(store.list('../')).rejects.toThrow(/invalid blob key/);
  });

  it('names where a blob lives', () => {
    const location = store.locationOf('pkg/model-1.0.tar.gz');
    expect(location).toMatch(
      /^(file:\/\/\/.*|s3:\/\/edgefleet-test\/edge\/fleet)\/pkg\/model-1\.0\.tar\.gz$/,
    );
  });
});

describe('s3 blob store readiness', () => {
  it('fails when the bucket does not exist', async () => {
    const s3 = await startTestS3();
    const store = new S3BlobStore({
      bucket: 'no-such-bucket',
      prefix: '',
      endpoint: s3.endpoint,
      credentials: s3.credentials,
    });
    try {
      await expect(store.check()).rejects.toThrow();
    } finally {
      await store.close();
      await s3.stop();
    }
  });
});
