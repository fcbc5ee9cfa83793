import {
  deploymentResultSchema,
  sendHeartbeatResultSchema,
  type DeploymentResultInput,
  type DeviceIds,
} from '@edgefleet/core';
import type { EngineLogger, UpdateEngine } from './update-engine.js';

/** The device API's route for a DeploymentResult on its own (relative to sagemaker_edge_core_endpoint_override). */
export const DEPLOYMENT_RESULT_PATH = 'api/v1/device/deployments/result';

/** Final results sent per pass at most; more wait for the next pass (the next poll) or a heartbeat. */
export const MAX_RESULTS_PER_PASS = 16;

/** What the reporter needs of the device API client (fleet/device-api.ts's DeviceApiClient). */
export interface DeploymentResultSink {
  post(
    operation: string,
    body: unknown,
    schema: typeof sendHeartbeatResultSchema,
    signal?: AbortSignal,
  ): Promise<unknown>;
}

export interface ResultReporterOptions {
  engine: Pick<UpdateEngine, 'finalResults' | 'reported'>;
  sink: DeploymentResultSink;
  ids: DeviceIds;
  logger: EngineLogger;
}

/**
 * Sends a deployment's final result as soon as it is known, through the device API's result route, instead of
 * waiting for the heartbeat (which carries one result per interval, so results of several deployments queued
 * behind each other). A result counts as reported only once the server answered it; one that fails is left to
 * the heartbeats (still their job) and to the next pass. One pass at a time; kicks during a pass run one more.
 */
export class ResultReporter {
  readonly #o: ResultReporterOptions;
  readonly #abort = new AbortController();
  #pass: Promise<void> | undefined;
  #again = false;
  #lastError = '';

  constructor(options: ResultReporterOptions) {
    this.#o = options;
  }

  /** Sends the final results not yet reported (after this pass, when one is running). */
  kick(): void {
    if (this.#abort.signal.aborted) return;
    if (this.#pass) {
      this.#again = true;
      return;
    }
    this.#pass = this.#run()
      // Never an unhandled rejection (the process would exit): the heartbeat still carries the result.
      .catch((error: unknown) =>
        this.#o.logger.warn(
          { event: 'deployment-result-pass-failed', reason: (error as Error).message },
          `sending final deployment results stopped: ${(error as Error).message}; the heartbeat carries them, or the next try`,
        ),
      )
      .finally(() => {
        this.#pass = undefined;
      });
  }

  /** Cancels the request in flight; resolves once the pass has stopped. */
  async stop(): Promise<void> {
    this.#abort.abort();
    await this.#pass;
  }

  async #run(): Promise<void> {
    do {
      this.#again = false;
      // A macrotask first: the engine calls kick() from inside a transition, which finishes before this reads.
      await new Promise((resolve) => setImmediate(resolve));
      for (const result of this.#o.engine.finalResults(MAX_RESULTS_PER_PASS)) {
        if (this.#abort.signal.aborted) return;
        if (!(await this.#send(result))) return;
      }
    } while (this.#again && !this.#abort.signal.aborted);
  }

  /** One result; false when the server did not accept it (the rest wait too: the server is likely away). */
  async #send(result: DeploymentResultInput): Promise<boolean> {
    // A result the contract refuses is left to the heartbeat, which says so once.
    if (!deploymentResultSchema.safeParse(result).success) return true;
    try {
      await this.#o.sink.post(
        DEPLOYMENT_RESULT_PATH,
        { ...this.#o.ids, DeploymentResult: result },
        sendHeartbeatResultSchema,
        this.#abort.signal,
      );
    } catch (error) {
      if (this.#abort.signal.aborted) return false;
      const message = (error as Error).message;
      // One warning per distinct failure: a server away for an hour is one line, not one per deployment.
      if (message !== this.#lastError)
        this.#o.logger.warn(
          { event: 'deployment-result-send-failed', deployment: result.DeploymentName, reason: message },
          `sending the result of deployment ${result.DeploymentName} failed: ${message}; the heartbeat carries it, or the next try`,
        );
      this.#lastError = message;
      return false;
    }
    this.#lastError = '';
    this.#o.engine.reported(result);
    this.#o.logger.info(
      {
        event: 'deployment-result-sent',
        deployment: result.DeploymentName,
        status: result.DeploymentStatus,
      },
      `deployment ${result.DeploymentName}: result ${result.DeploymentStatus} reported to the server`,
    );
    return true;
  }
}
