#!/usr/bin/env node
// `edgefleet-agent`: the EdgeFleet device agent, a drop-in for the SageMaker Edge Manager agent binary.
import { disableOnnxRuntimeTelemetry } from './inference/ort-telemetry.js';

// Before anything can load ONNX Runtime, which reads the variable when it loads (see ort-telemetry.ts): the rest
// of the agent is imported only after it.
disableOnnxRuntimeTelemetry();
const { runAgent } = await import('./daemon/index.js');
const exitCode = await runAgent({ args: process.argv.slice(2), cwd: process.cwd() });
// Everything is closed by now; the exit is explicit so that a stray handle (a client connection a library
// keeps) cannot hold a stopped agent up, and a second signal exits at once.
process.exit(exitCode);
