import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { BlobStoreUnavailableError } from '../../src/blobs/index.js';
import { OutageLog } from '../../src/http/outage-log.js';

function collectingLogger() {
  const lines: Array<{ level: number; component: string; msg: string }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level: 'info' }, sink), lines };
}

const storeError = (problem: 'forbidden' | 'unreachable') =>
  new BlobStoreUnavailableError('s3://models/server', 'http://10.0.0.5:9000', problem, 'why');

describe('OutageLog', () => {
  it('logs a store the operator must fix (credentials refused) at error, an unreachable one at warn', () => {
    const { logger, lines } = collectingLogger();
    const log = new OutageLog({ now: () => 0 });
    log.log(logger, 'blobStore', storeError('forbidden'), 'the blob store cannot be used');
    log.log(logger, 'database', storeError('unreachable'), 'the database cannot be used');
    expect(lines.map(({ level, component }) => ({ level, component }))).toEqual([
      { level: 50, component: 'blobStore' },
      { level: 40, component: 'database' },
    ]);
  });

  it('keeps one clock per component: one component logged does not hide another', () => {
    const { logger, lines } = collectingLogger();
    let now = 0;
    const log = new OutageLog({ now: () => now });
    log.log(logger, 'database', new Error('down'), 'database');
    log.log(logger, 'database', new Error('down'), 'database');
    log.log(logger, 'blobStore', storeError('unreachable'), 'blob store');
    now = 59_999;
    log.log(logger, 'database', new Error('down'), 'database');
    expect(lines.map((line) => line.component)).toEqual(['database', 'blobStore']);
    now = 60_000;
    log.log(logger, 'database', new Error('down'), 'database');
    expect(lines.at(-1)).toMatchObject({ component: 'database', requestsNotLogged: 2 });
  });
});
