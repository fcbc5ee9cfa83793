/**
 * What leaves the device about a failed load (the heartbeat's DeployedModelsNotLoaded Reason) names no local
 * path: any reader of the device on the server sees it. The full message stays for the agent's log and status.
 */
import { PackageFileError, PackageVerificationError } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { InferenceError } from '../../src/inference/index.js';
import { AgentError } from '../../src/models/agent-error.js';
import { LoadFailures, loadFailureCategory } from '../../src/state/load-failures.js';

const packageDir = '/var/lib/edgefleet/agent/deployments/packages/8f3a/secret-customer-model';

describe('loadFailureCategory', () => {
  it('says a refused signature by its reason and the package-relative file, without the package folder', () => {
    const refused = new AgentError(
      'FAILED_PRECONDITION',
      `model package ${packageDir} failed signature verification (file-modified): ${packageDir}/model.onnx was modified`,
      {
        cause: new PackageVerificationError('file-modified', `${packageDir}/model.onnx was modified`, {
          path: 'model.onnx',
        }),
      },
    );
    const failures = new LoadFailures(() => 1);
    failures.record('detector', refused);
    expect(failures.get('detector')).toEqual({
      reason: refused.message,
      category: 'the package failed signature verification (file-modified: model.onnx)',
      at: 1,
    });
  });

  it('names no path for a file, runtime, full-disk or other failure', () => {
    const cases: [unknown, string][] = [
      [
        new AgentError('FAILED_PRECONDITION', `model package ${packageDir} cannot be used`, {
          cause: new PackageFileError('unreadable', 'model.onnx', `cannot read ${packageDir}/model.onnx`),
        }),
        'a file of the package cannot be read (unreadable: model.onnx)',
      ],
      [
        new AgentError('FAILED_PRECONDITION', `ONNX Runtime cannot load the model in package ${packageDir}`, {
          cause: new InferenceError('model-rejected', `bad graph in ${packageDir}/model.onnx`),
        }),
        'the runtime refused the model',
      ],
      [
        Object.assign(new Error(`ENOSPC: no space left on device, write '${packageDir}/x'`), {
          code: 'ENOSPC',
        }),
        "the device's storage is full",
      ],
      [
        new AgentError('INTERNAL', `opening model package ${packageDir}: EACCES`),
        'the load failed (INTERNAL)',
      ],
    ];
    for (const [error, category] of cases) {
      expect(loadFailureCategory(error)).toBe(category);
      expect(loadFailureCategory(error)).not.toContain('/var/lib');
    }
  });
});
