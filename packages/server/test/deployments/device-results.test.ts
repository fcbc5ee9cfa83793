import { describe, expect, it } from 'vitest';
import { classifyResult } from '../../src/deployments/device-results.js';
import { isProgressOfEndedAttempt, isStaleProgress } from '../../src/deployments/result-outcome.js';

describe('classifyResult (a DeploymentResult as the agent sends it)', () => {
  const failedModel = {
    ModelHandle: 'mlp',
    ModelVersion: '3.0',
    DesiredState: 'DEPLOY',
    State: 'DEPLOY',
    Status: 'FAIL',
    StatusReason: 'version 3.0 of mlp did not load',
  } as const;

  it('waits while the device is still under way, even with one model already FAIL', () => {
    // ROLLBACK_ON_FAILURE: mlp failed, aux is still being taken back; the device reports INPROGRESS.
    for (const status of ['INPROGRESS', 'HELD'])
      expect(
        classifyResult({
          DeploymentName: 'mixed',
          DeploymentStatus: status,
          DeploymentModels: [
            failedModel,
            { ModelHandle: 'aux', DesiredState: 'DEPLOY' as const, State: 'DEPLOY' as const },
          ],
        }),
      ).toMatchObject({ kind: 'progress' });
  });

  it('says a progress status once when the device message only restates it (F-stage-status-msg)', () => {
    const progress = (DeploymentStatus: string, DeploymentStatusMessage?: string) =>
      classifyResult({
        DeploymentName: 'p',
        DeploymentStatus,
        ...(DeploymentStatusMessage ? { DeploymentStatusMessage } : {}),
      });
    expect(progress('INPROGRESS', 'in progress')).toEqual({ kind: 'progress', message: 'INPROGRESS' });
    expect(progress('INPROGRESS', 'health window: 3 s left')).toEqual({
      kind: 'progress',
      message: 'INPROGRESS: health window: 3 s left',
    });
    expect(progress('HELD', 'held by the application')).toEqual({
      kind: 'progress',
      message: 'HELD: held by the application',
    });
  });

  it('fails a final FAIL report, naming each reason once', () => {
    const outcome = classifyResult({
      DeploymentName: 'mixed',
      DeploymentStatus: 'FAIL',
      DeploymentStatusMessage: 'mlp: version 3.0 of mlp did not load',
      DeploymentModels: [failedModel],
    });
    expect(outcome).toEqual({
      kind: 'failure',
      message: 'mlp: version 3.0 of mlp did not load',
      afterSwitch: false,
    });
  });

  it('still reads reports without an overall status by their models', () => {
    expect(
      classifyResult({ DeploymentName: 'p', DeploymentModels: [{ ...failedModel, StatusReason: 'bad' }] }),
    ).toEqual({ kind: 'failure', message: 'mlp: bad', afterSwitch: false });
  });

  it('tells a failure after the switch by any failed model saying so (absent, and nothing else says: not after)', () => {
    const report = (flags: (boolean | undefined)[]) =>
      classifyResult({
        DeploymentName: 'p',
        DeploymentStatus: 'FAIL',
        DeploymentModels: flags.map((flag, i) => ({
          ...failedModel,
          ModelHandle: `m${i}`,
          ...(flag !== undefined && { FailedAfterSwitch: flag }),
        })),
      });
    expect(report([undefined])).toMatchObject({ kind: 'failure', afterSwitch: false });
    expect(report([false, false])).toMatchObject({ kind: 'failure', afterSwitch: false });
    expect(report([false, true])).toMatchObject({ kind: 'failure', afterSwitch: true });
  });

  it('infers a failure after the switch from a result without the member that says a rollback was attempted', () => {
    const withoutMember = (status: string, model: Record<string, string> = {}) =>
      classifyResult({
        DeploymentName: 'p',
        DeploymentStatus: status,
        DeploymentModels: [{ ...failedModel, ...model }],
      });
    expect(withoutMember('FAIL', { RollbackFailureReason: 'version 2.0 did not load again' })).toMatchObject({
      kind: 'failure',
      afterSwitch: true,
    });
    expect(withoutMember('ROLLEDBACK')).toMatchObject({ kind: 'failure', afterSwitch: true });
    expect(withoutMember('Rolled-Back')).toMatchObject({ kind: 'failure', afterSwitch: true });
    expect(withoutMember('FAIL')).toMatchObject({ kind: 'failure', afterSwitch: false });
    // No failed model listed (none at all, or none marked FAIL): the overall status alone says it.
    for (const DeploymentModels of [undefined, [], [{ ModelHandle: 'mlp', Status: 'SUCCESS' as const }]]) {
      expect(
        classifyResult({
          DeploymentName: 'p',
          DeploymentStatus: 'ROLLEDBACK',
          ...(DeploymentModels && { DeploymentModels }),
        }),
      ).toMatchObject({ kind: 'failure', afterSwitch: true });
      expect(
        classifyResult({
          DeploymentName: 'p',
          DeploymentStatus: 'FAIL',
          ...(DeploymentModels && { DeploymentModels }),
        }),
      ).toMatchObject({ kind: 'failure', afterSwitch: false });
    }
    // The member, where present, is the agent's word: an EdgeFleet agent's rollback of a model that failed
    // before its switch is retried.
    expect(
      classifyResult({
        DeploymentName: 'p',
        DeploymentStatus: 'ROLLEDBACK',
        DeploymentModels: [{ ...failedModel, FailedAfterSwitch: false }],
      }),
    ).toMatchObject({ kind: 'failure', afterSwitch: false });
  });
});

describe('which progress reports a kept final result outranks', () => {
  const final = (start?: number) =>
    JSON.stringify({
      DeploymentName: 'p',
      DeploymentStatus: 'SUCCESS',
      ...(start !== undefined && { DeploymentStartTime: start }),
    });
  const progress = (start?: number, name = 'p') => ({
    DeploymentName: name,
    DeploymentStatus: 'INPROGRESS',
    ...(start !== undefined && { DeploymentStartTime: start }),
  });

  it("on the device's row: stale unless both start times are there and differ, or it is another deployment", () => {
    expect(isStaleProgress(final(100), progress(100))).toBe(true);
    expect(isStaleProgress(final(100), progress(160))).toBe(false);
    // Without a start time on either, nothing shows it newer: the final result stays (before: kept only when
    // both lacked one).
    expect(isStaleProgress(final(), progress())).toBe(true);
    expect(isStaleProgress(final(100), progress())).toBe(true);
    expect(isStaleProgress(final(), progress(100))).toBe(true);
    expect(isStaleProgress(final(100), progress(100, 'q'))).toBe(false);
    expect(isStaleProgress(JSON.stringify(progress(100)), progress(100))).toBe(false);
    expect(isStaleProgress('not json', progress(100))).toBe(false);
  });

  it("on an INPROGRESS target: only a report carrying the ended attempt's start time", () => {
    expect(isProgressOfEndedAttempt(final(100), progress(100))).toBe(true);
    expect(isProgressOfEndedAttempt(final(100), progress(160))).toBe(false);
    expect(isProgressOfEndedAttempt(final(), progress())).toBe(false);
    expect(isProgressOfEndedAttempt(final(100), progress())).toBe(false);
    expect(isProgressOfEndedAttempt(final(), progress(100))).toBe(false);
  });
});
