import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { redactRequestUrl } from '../../src/http/log-redaction.js';
import { startTestServer } from '../support/server.js';

describe('the access log (issue 15, item 12)', () => {
  it('never holds a token sent in the URL, while the refusal is still logged', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    const t = await startTestServer({ logger: pino({ level: 'info' }, sink) });
    try {
      const secret = t.readToken;
      const refused = await t.call('GET', `/api/v1/fleets?token=${secret}&limit=5`);
      expect(refused.status).toBe(401);
      const other = await t.call('GET', `/api/v1/devices?nameContains=${secret}`);
      expect(other.status).toBe(401);
    } finally {
      await t.stop();
    }
    const log = lines.join('\n');
    expect(log).not.toContain(t.readToken);
    const urls = lines.map((l) => JSON.parse(l) as { url?: string }).flatMap((l) => (l.url ? [l.url] : []));
    expect(urls).toEqual(
      expect.arrayContaining([
        '/api/v1/fleets?token=[REDACTED]&limit=5',
        '/api/v1/devices?nameContains=[REDACTED]',
      ]),
    );
  });

  it('redacts secret parameters however they are spelled, and keeps the rest', () => {
    expect(redactRequestUrl('/x?access_token=abc&Api-Key=k&page=2')).toBe(
      '/x?access_token=[REDACTED]&Api-Key=[REDACTED]&page=2',
    );
    expect(redactRequestUrl('/x?q=%65fe_123')).toBe('/x?q=[REDACTED]');
    expect(redactRequestUrl('/x?bad=%E0%A4%A&tok%65n=1')).toBe('/x?bad=%E0%A4%A&tok%65n=[REDACTED]');
    expect(redactRequestUrl('/plain/path')).toBe('/plain/path');
    // A token without a parameter name, or not at the start of the value.
    expect(redactRequestUrl('/x?efo_abc&page=2')).toBe('/x?[REDACTED]&page=2');
    expect(redactRequestUrl('/x?q=%20efo_abc&r=Bearer+efe_1')).toBe('/x?q=[REDACTED]&r=[REDACTED]');
    expect(redactRequestUrl('/x?q=chef_special&ref_id=2')).toBe('/x?q=chef_special&ref_id=2');
  });
});
