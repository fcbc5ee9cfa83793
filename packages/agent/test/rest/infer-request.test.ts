import { describe, expect, it } from 'vitest';
import { InferRequestDecoder } from '../../src/rest/infer-request.js';
import { RequestBody } from '../../src/rest/request-body.js';

/** A binary-extension body: the JSON part, then the tensor bytes (each chunk its own memory, as Node gives). */
function binaryBody(json: unknown, tail: Uint8Array, split = false) {
  const header = Buffer.from(JSON.stringify(json));
  const whole = Buffer.concat([header, tail]);
  const chunks = split ? [whole.subarray(0, 5), whole.subarray(5)].map((c) => Buffer.from(c)) : [whole];
  return { body: new RequestBody(chunks, whole.length), header: String(header.length) };
}

const request = (size = 8, name = 'x') => ({
  inputs: [{ name, shape: [1, size / 4], datatype: 'FP32', parameters: { binary_data_size: size } }],
  outputs: [{ name: 'y', parameters: { binary_data: true } }],
});

/** What decoding gives, or the error's message: to compare two decoders. */
function outcome(decoder: InferRequestDecoder, body: RequestBody, header: string): unknown {
  try {
    const decoded = decoder.decode(body, header);
    return {
      ...decoded,
      inputs: decoded.inputs.map((t) => ({ ...t, name: t.name.toString(), data: Array.from(t.data) })),
    };
  } catch (error) {
    return (error as Error).message;
  }
}

describe('InferRequestDecoder: remembered JSON parts', () => {
  it('decodes a repeated JSON part as the first time, with each request’s own tensor bytes and shapes', () => {
    const decoder = new InferRequestDecoder();
    const first = binaryBody(request(), Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
    const second = binaryBody(request(), Uint8Array.from([9, 9, 9, 9, 8, 8, 8, 8]), true);
    const a = decoder.decode(first.body, first.header);
    expect(decoder.remembered).toBe(1);
    const b = decoder.decode(second.body, second.header);
    expect(decoder.remembered).toBe(1);
    expect(Array.from(a.inputs[0]!.data)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(Array.from(b.inputs[0]!.data)).toEqual([9, 9, 9, 9, 8, 8, 8, 8]);
    expect(outcome(new InferRequestDecoder(), second.body, second.header)).toEqual(
      outcome(decoder, second.body, second.header),
    );
    // Nothing one request's tensors hold is shared with the next one's.
    (a.inputs[0]!.shape as number[]).push(7);
    expect(decoder.decode(second.body, second.header).inputs[0]!.shape).toEqual([1, 2]);
  });

  it('checks what depends on the body on every request, and refuses a remembered part’s bad body as a fresh one', () => {
    const decoder = new InferRequestDecoder();
    const good = binaryBody(request(), new Uint8Array(8));
    decoder.decode(good.body, good.header);
    const short = binaryBody(request(), new Uint8Array(4));
    const expected = outcome(new InferRequestDecoder(), short.body, short.header);
    expect(expected).toMatch(/binary_data_size 8, but only 4 bytes/);
    expect(outcome(decoder, short.body, short.header)).toEqual(expected);
  });

  it('remembers no JSON part with tensor data or an id, none that fails the checks, none over 4 KiB, and at most 64', () => {
    const decoder = new InferRequestDecoder();
    const withData = Buffer.from(
      JSON.stringify({ inputs: [{ name: 'x', shape: [2], datatype: 'FP32', data: [1, 2] }] }),
    );
    decoder.decode(new RequestBody([withData], withData.length), undefined);
    const invalid = binaryBody({ inputs: [{ name: 'x', shape: [-1], datatype: 'FP32' }] }, new Uint8Array(0));
    expect(outcome(decoder, invalid.body, invalid.header)).toMatch(/inputs\[0\]\.shape\[0\]/);
    const twice = binaryBody({ ...request(), outputs: [{ name: 'y' }, { name: 'y' }] }, new Uint8Array(8));
    expect(outcome(decoder, twice.body, twice.header)).toMatch(/requested twice/);
    expect(outcome(decoder, twice.body, twice.header)).toMatch(/requested twice/);
    const large = binaryBody({ ...request(), parameters: { padding: 'p'.repeat(5000) } }, new Uint8Array(8));
    decoder.decode(large.body, large.header);
    // Not even the part whose one fault is in its outputs, though it passed the schema (found again each time).
    expect(decoder.remembered).toBe(0);
    const withId = binaryBody({ ...request(), id: 'request-1' }, new Uint8Array(8));
    decoder.decode(withId.body, withId.header);
    expect(decoder.remembered).toBe(0);
    for (let i = 0; i < 100; i++) {
      const each = binaryBody(request(8, `input-${i}`), new Uint8Array(8));
      decoder.decode(each.body, each.header);
    }
    expect(decoder.remembered).toBe(64);
  });

  it('keeps a part in use while a stream of other parts passes: the least recently used goes first', () => {
    const decoder = new InferRequestDecoder();
    const hot = binaryBody(request(8, 'hot'), new Uint8Array(8));
    decoder.decode(hot.body, hot.header);
    const hotPart = Buffer.from(JSON.stringify(request(8, 'hot')));
    for (let i = 0; i < 200; i++) {
      const each = binaryBody(request(8, `other-${i}`), new Uint8Array(8));
      decoder.decode(each.body, each.header);
      if (i % 10 === 9) {
        // Used every 10 parts: never the least recently used of 64 (the first in, once 64 others came after it).
        expect(decoder.remembers(hotPart)).toBe(true);
        decoder.decode(hot.body, hot.header);
      }
    }
    expect(decoder.remembered).toBe(64);
    expect(decoder.remembers(Buffer.from(JSON.stringify(request(8, 'other-0'))))).toBe(false);
    expect(outcome(decoder, hot.body, hot.header)).toEqual(
      outcome(new InferRequestDecoder(), hot.body, hot.header),
    );
  });

  it('answers like a fresh decoder for random variations of a few JSON parts and bodies', () => {
    const decoder = new InferRequestDecoder();
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const parts = [
      request(8),
      request(16),
      request(8, 'z'),
      { ...request(8), id: 'r' },
      { ...request(8), parameters: { binary_data_output: true } },
      { inputs: [{ name: 'x', shape: [1, 2], datatype: 'FP99', parameters: { binary_data_size: 8 } }] },
      { ...request(8), outputs: [{ name: 'y', parameters: { classification: 2 } }] },
    ];
    for (let i = 0; i < 300; i++) {
      const tail = Uint8Array.from({ length: [4, 8, 12, 16][random(4)]! }, () => random(256));
      const { body, header } = binaryBody(parts[random(parts.length)], tail, random(2) === 1);
      expect(outcome(decoder, body, header)).toEqual(outcome(new InferRequestDecoder(), body, header));
    }
  });
});
