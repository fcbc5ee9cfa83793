/**
 * Python with gRPC C-core, as SageMaker Edge Manager applications run: an interpreter with `grpc` and
 * `google.protobuf`, and protoc with gRPC's Python plugin to generate `agent_pb2` / `agent_pb2_grpc` from the
 * agent's proto at test time. Debian's packages (.ci/run installs them) are looked for first.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { REPO_ROOT } from '../daemon/process-helpers.js';

/** The Debian packages that provide the tools, for the message that says how to get them. */
export const PYTHON_GRPC_PACKAGES =
  'python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc';

/** The agent's proto folder (relative to the repository root, as docs/python-client.md gives it to protoc). */
export const PROTO_DIR = 'packages/core/src/proto';

export interface PythonGrpcTools {
  python: string;
  protoc: string;
  plugin: string;
}

/** `name` in /usr/bin, then along PATH. */
function findExecutable(name: string): string | undefined {
  const folders = ['/usr/bin', ...(process.env.PATH ?? '').split(delimiter).filter(Boolean)];
  return folders.map((folder) => join(folder, name)).find((path) => existsSync(path));
}

/**
 * The tools, or what is missing. The interpreter is Debian's /usr/bin/python3 when it has the modules (a
 * pyenv `python3` may come first on PATH without them), else `python3` on PATH.
 */
export function findPythonGrpcTools(): { tools: PythonGrpcTools } | { missing: string[] } {
  const python = ['/usr/bin/python3', 'python3'].find(
    (candidate) =>
      spawnSync(candidate, ['-c', 'import grpc, google.protobuf'], { stdio: 'ignore' }).status === 0,
  );
  const protoc = findExecutable('protoc');
  const plugin = findExecutable('grpc_python_plugin');
  const missing = [
    ...(python === undefined ? ['a python3 with grpc and google.protobuf'] : []),
    ...(protoc === undefined ? ['protoc'] : []),
    ...(plugin === undefined ? ['grpc_python_plugin'] : []),
  ];
  if (python === undefined || protoc === undefined || plugin === undefined) return { missing };
  return { tools: { python, protoc, plugin } };
}

/** Generates agent_pb2.py and agent_pb2_grpc.py into `outDir` (made if needed) from the agent's proto. */
export async function generateStubs(tools: PythonGrpcTools, outDir: string): Promise<void> {
  await mkdir(outDir, { recursive: true });
  const result = spawnSync(
    tools.protoc,
    [
      '-I',
      PROTO_DIR,
      `--python_out=${outDir}`,
      `--grpc_python_out=${outDir}`,
      `--plugin=protoc-gen-grpc_python=${tools.plugin}`,
      'agent.proto',
    ],
    { cwd: REPO_ROOT, encoding: 'utf8' },
  );
  if (result.status !== 0)
    throw new Error(
      `protoc failed (${result.status ?? result.signal}): ${result.stderr}${result.error ?? ''}`,
    );
}

export interface PythonRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `python script args…` with `stubsDir` on PYTHONPATH and `env` on top of this process's environment; killed
 * (SIGKILL) if it is still running when `signal` aborts (the test's end).
 */
export function runPython(
  tools: PythonGrpcTools,
  script: string,
  options: { args?: string[]; stubsDir: string; env?: Record<string, string>; signal?: AbortSignal },
): Promise<PythonRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(tools.python, [script, ...(options.args ?? [])], {
      env: { ...process.env, ...options.env, PYTHONPATH: options.stubsDir, PYTHONDONTWRITEBYTECODE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(options.signal && { signal: options.signal, killSignal: 'SIGKILL' as const }),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
