import { OnnxModelBuilder } from '@edgefleet/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_ORT_SESSION_CONFIG, InferencePool } from '../../src/inference/index.js';
import { ModelRegistry, type PredictResult } from '../../src/models/index.js';
import { predictTensors, rankLyingModel, scratch } from './helpers.js';
import { agentErrorOf } from '../support/agent-error.js';
import { waitUntil } from '../support/wait-until.js';

// Version 1.0 is the catalogue's tiny (y = 2x + 1), version 2.0 a model with the same input and output that
// answers y = -x: every output says which version computed it, entirely.
let pool: InferencePool;
let files: Awaited<ReturnType<typeof scratch>>;
let v1: string;
let v2: string;

beforeAll(async () => {
  files = await scratch('agent-lifecycle-');
  pool = await InferencePool.start({ workers: 2, session: DEFAULT_ORT_SESSION_CONFIG });
  v1 = await files.catalogue('tiny', 'tiny');
  v2 = await files.custom(
    new OnnxModelBuilder({ graphName: 'negate' })
      .input('x', 'FLOAT32', [1, 16])
      .node('Neg', ['x'], ['y'])
      .output('y', 'FLOAT32', [1, 16])
      .build(),
    'tiny',
  );
});
afterAll(async () => {
  await pool?.close();
  await files?.cleanup();
});

const input = predictTensors('tiny');
const x = new Float32Array(input[0]!.data.slice().buffer);
const expected = { '1.0': x.map((v) => 2 * v + 1), '2.0': x.map((v) => -v) };

/** Which version computed the result; fails the test on a result that is neither (a mix, or garbage). */
function versionOf(result: PredictResult): '1.0' | '2.0' {
  const version = result.model.version as '1.0' | '2.0';
  expect(version === '1.0' || version === '2.0').toBe(true);
  expect(new Float32Array(result.outputs[0]!.data.slice().buffer)).toEqual(expected[version]);
  return version;
}

function sessionKeys(): string[] {
  return pool.stats().models.map((m) => m.key);
}

describe('ModelRegistry: stage and promote', () => {
  it('stages a version that takes no traffic, shows both in describe, and promote switches to it', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: v1, name: 'm' });
    const staged = await models.stage('m', v2);
    expect(staged).toMatchObject({ name: 'm', url: v2, state: 'ready', model: { version: '2.0' } });
    expect(sessionKeys()).toHaveLength(2);
    expect(models.describe('m')).toMatchObject({
      version: '1.0',
      url: v1,
      staged: { state: 'ready', url: v2, key: staged.key },
    });
    expect(models.list()).toHaveLength(1);
    expect(models.list()[0]!.staged).toBeUndefined();
    expect(versionOf(await models.predict('m', input))).toBe('1.0');

    const promoted = await models.promote('m');
    expect(promoted).toMatchObject({ name: 'm', url: v2, version: '2.0' });
    expect(models.describe('m').staged).toBeUndefined();
    expect(versionOf(await models.predict('m', input))).toBe('2.0');
    expect(sessionKeys()).toEqual([staged.key]);
    await models.close();
    expect(sessionKeys()).toEqual([]);
  });

  it('under concurrent predictions, none fails or sees a mix, and every one after promote runs the new version', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: v1, name: 'busy' });
    let switched = false;
    let stop = false;
    const seen = { before: new Set<string>(), after: new Set<string>() };
    // 12 callers on 2 workers: requests are always queued and in flight while the version changes.
    const callers = Array.from({ length: 12 }, async () => {
      let count = 0;
      while (!stop) {
        const startedAfterSwitch = switched;
        const version = versionOf(await models.predict('busy', input));
        (startedAfterSwitch ? seen.after : seen.before).add(version);
        count++;
      }
      return count;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    await models.stage('busy', v2);
    const promoting = models.promote('busy');
    switched = true; // promote switches synchronously, when called
    await promoting;
    // Until a prediction begun after the switch has answered: a fixed sleep could pass, on a loaded machine,
    // before any had, and the check of what those saw below would have nothing to check.
    await waitUntil(() => seen.after.size > 0, 'a prediction begun after the switch to answer', 20_000);
    stop = true;
    const counts = await Promise.all(callers);
    expect(counts.every((n) => n > 0)).toBe(true);
    expect(seen.before).toContain('1.0');
    expect([...seen.after]).toEqual(['2.0']);
    expect(models.describe('busy').requests.failed).toBe(0);
    await models.close();
  });

  it('stage awaits beforeWarmUp once the sessions exist, before their warm-up; a hook that throws fails the stage', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: v1, name: 'hooked' });
    const seen: Array<{ state: string | undefined; sessions: number }> = [];
    const beforeWarmUp = async () => {
      seen.push({ state: models.describe('hooked').staged?.state, sessions: sessionKeys().length });
    };
    await models.stage('hooked', v2, { beforeWarmUp });
    expect(seen).toEqual([{ state: 'creating-sessions', sessions: 2 }]);
    expect(models.describe('hooked').staged?.state).toBe('ready');
    await models.abortStaged('hooked');

    // The warm-up comes after the hook: a version whose warm-up output contradicts its manifest fails after it.
    const liar = await files.custom(rankLyingModel(), 'liar');
    seen.length = 0;
    const warmUpFailure = await agentErrorOf(models.stage('hooked', liar, { beforeWarmUp }));
    expect(warmUpFailure.code).toBe('FAILED_PRECONDITION');
    expect(warmUpFailure.message).toMatch(/warm-up output does not match its manifest/);
    expect(seen).toEqual([{ state: 'creating-sessions', sessions: 2 }]);
    expect(sessionKeys()).toHaveLength(1);

    // A hook that fails (the engine could not record its state) fails the stage; nothing staged stays.
    const hookFailure = await agentErrorOf(
      models.stage('hooked', v2, {
        beforeWarmUp: () => Promise.reject(new Error('attempt to write a readonly database')),
      }),
    );
    expect(hookFailure.message).toMatch(/attempt to write a readonly database/);
    expect(models.describe('hooked').staged).toBeUndefined();
    expect(sessionKeys()).toHaveLength(1);
    expect(versionOf(await models.predict('hooked', input))).toBe('1.0');
    await models.close();
  });

  it('abortStaged unloads a ready staged version; the serving one is untouched and another can be staged', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: v1, name: 'keep' });
    const serving = sessionKeys();
    await models.stage('keep', v2);
    await models.abortStaged('keep');
    expect(models.describe('keep').staged).toBeUndefined();
    expect(sessionKeys()).toEqual(serving);
    expect(versionOf(await models.predict('keep', input))).toBe('1.0');
    await models.stage('keep', v2);
    await models.close();
    expect(sessionKeys()).toEqual([]);
  });

  it('abortStaged during the staged load stops it, fails its stage call and leaves no sessions', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: v1, name: 'early' });
    const serving = sessionKeys();
    const staging = models.stage('early', v2);
    expect(models.describe('early').staged).toMatchObject({ state: 'verifying', url: v2 });
    await models.abortStaged('early');
    const error = await agentErrorOf(staging);
    expect(error.code).toBe('FAILED_PRECONDITION');
    expect(error.message).toMatch(/was aborted .* before its load completed/);
    expect(sessionKeys()).toEqual(serving);
    expect(versionOf(await models.predict('early', input))).toBe('1.0');
    await models.close();
  });

  it('refuses what does not fit, with the reason, and keeps LoadModel semantics for a loaded name', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    expect((await agentErrorOf(models.stage('absent', v2))).code).toBe('NOT_FOUND');
    await models.load({ url: v1, name: 'x' });
    const duplicate = await agentErrorOf(models.load({ url: v2, name: 'x' }));
    expect(duplicate.code).toBe('ALREADY_EXISTS');
    expect((await agentErrorOf(models.promote('x'))).message).toMatch(/no staged version to promote/);
    expect((await agentErrorOf(models.abortStaged('x'))).message).toMatch(/no staged version to abort/);
    const staging = models.stage('x', v2);
    const promoteEarly = await agentErrorOf(models.promote('x'));
    expect(promoteEarly.code).toBe('FAILED_PRECONDITION');
    expect(promoteEarly.message).toMatch(/still loading/);
    expect((await agentErrorOf(models.stage('x', v2))).code).toBe('ALREADY_EXISTS');
    await staging;
    expect((await agentErrorOf(models.stage('x', files.root + '/nothing-here'))).code).toBe('ALREADY_EXISTS');
    await models.abortStaged('x');
    expect((await agentErrorOf(models.stage('x', files.root + '/nothing-here'))).code).toBe('NOT_FOUND');
    expect(models.describe('x').staged).toBeUndefined();
    await models.close();
  });

  it('unload drops the staged version with the serving one', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    await models.load({ url: v1, name: 'gone' });
    await models.stage('gone', v2);
    await models.unload('gone');
    expect(sessionKeys()).toEqual([]);
    expect((await agentErrorOf(models.predict('gone', input))).code).toBe('NOT_FOUND');
    await models.load({ url: v2, name: 'gone' });
    expect(versionOf(await models.predict('gone', input))).toBe('2.0');
    await models.close();
  });

  it('tells observers of the promoted version, so that a restart loads it', async () => {
    const models = new ModelRegistry({ pool, trust: null, cwd: files.root });
    const loaded: string[] = [];
    models.observe({ onLoaded: (model) => loaded.push(`${model.name} ${model.url}`) });
    await models.load({ url: v1, name: 'kept' });
    await models.stage('kept', v2);
    expect(loaded).toEqual([`kept ${v1}`]);
    await models.promote('kept');
    expect(loaded).toEqual([`kept ${v1}`, `kept ${v2}`]);
    await models.close();
  });
});
