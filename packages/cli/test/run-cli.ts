import { Writable } from 'node:stream';
import { runCli } from '../src/cli.js';

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
