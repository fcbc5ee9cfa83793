import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, expect } from 'vitest';
import { runCli } from '../src/cli.js';
import {
  removeControlPlane,
  startControlPlane,
  type ControlPlane,
} from '../../../test/support/control-plane.js';

class Capture extends Writable {
  text = '';
  isTTY = false;
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

/** Runs `edgefleet` in-process, as a user would type it, capturing what it prints. */
export async function edgefleet(
  ...argv: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await runCli(argv, { stdout, stderr: stderr as unknown as NodeJS.WriteStream });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

/**
 * `edgefleet … --server <plane> --token <admin> --json`, its answer parsed; a non-zero exit throws with what the
 * CLI printed on stderr.
 */
export function operatorCli(plane: {
  operatorUrl: string;
  adminToken: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the tests read answers field by field
}): (...args: string[]) => Promise<any> {
  return async (...args) => {
    const result = await edgefleet(
      ...args,
      '--server',
      plane.operatorUrl,
      '--token',
      plane.adminToken,
      '--json',
    );
    if (result.code !== 0) throw new Error(`edgefleet ${args.join(' ')}: ${result.stderr}`);
    return JSON.parse(result.stdout);
  };
}

/** A control plane for a test file, and the CLI run against it as its admin. */
export interface OperatorCliFixture {
  /** The control plane; set once the file's tests run. */
  readonly plane: ControlPlane;
  /** The scratch folder asked for; set once the file's tests run. */
  readonly work: string;
  /** `edgefleet … --server <plane> --token <admin>`. */
  ef(...args: string[]): ReturnType<typeof edgefleet>;
  /** `ef(…, '--json')`, expecting exit 0 and nothing on stderr; resolves with the parsed answer. */
  json(...args: string[]): Promise<any>; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/**
 * Starts a control plane (and, with `scratchPrefix`, makes a scratch folder) before the file's tests; removes
 * them after.
 */
export function useOperatorCli(scratchPrefix?: string): OperatorCliFixture {
  let plane: ControlPlane | undefined;
  let work: string | undefined;
  beforeAll(async () => {
    plane = await startControlPlane();
    if (scratchPrefix !== undefined) work = await mkdtemp(join(tmpdir(), scratchPrefix));
  });
  afterAll(() => removeControlPlane(plane, work));
  const fixture: OperatorCliFixture = {
    get plane() {
      if (!plane) throw new Error('the control plane starts in beforeAll');
      return plane;
    },
    get work() {
      if (work === undefined) throw new Error('no scratch folder: pass useOperatorCli a prefix');
      return work;
    },
    ef: (...args) =>
      edgefleet(...args, '--server', fixture.plane.operatorUrl, '--token', fixture.plane.adminToken),
    async json(...args) {
      const result = await fixture.ef(...args, '--json');
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      return JSON.parse(result.stdout);
    },
  };
  return fixture;
}
