import { PackageFileError } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { packageFailure } from '../../src/models/model-errors.js';

// Red-team F-H: a package file gone or unreadable while the agent reads it is the package's fault, named; the
// tests run as root, whom permissions do not stop, so the error the reader throws is given here.
describe('packageFailure', () => {
  it.each([
    ['unreadable', 'model.onnx cannot be opened (EACCES); expected a readable regular file'],
    ['missing', 'model.onnx does not exist; expected a regular file'],
  ] as const)('answers a %s package file FAILED_PRECONDITION naming it, not INTERNAL', (problem, message) => {
    const failure = packageFailure(new PackageFileError(problem, 'model.onnx', message), '/pkg');
    expect(failure.code).toBe('FAILED_PRECONDITION');
    expect(failure.message).toBe(`model package /pkg cannot be used: ${message}`);
  });

  it.each([
    ['EMFILE', 'RESOURCE_EXHAUSTED'],
    ['ENFILE', 'RESOURCE_EXHAUSTED'],
    ['ENOMEM', 'RESOURCE_EXHAUSTED'],
    ['EIO', 'UNAVAILABLE'],
  ] as const)(
    "answers a file the agent could not open for its own lack (%s) %s, not the package's fault",
    (code, want) => {
      const error = new PackageFileError(
        'unreadable',
        'model.onnx',
        `model.onnx cannot be opened (${code}); expected a readable regular file`,
        code,
      );
      const failure = packageFailure(error, '/pkg');
      expect({ code: failure.code, message: failure.message }).toEqual({
        code: want,
        message: `the agent could not read model package /pkg (${code}); try again later`,
      });
    },
  );

  it('leaves other failures INTERNAL', () => {
    expect(packageFailure(new Error('boom'), '/pkg').code).toBe('INTERNAL');
  });
});
