/**
 * Exit statuses of `edgefleet-agent` (documented in packages/agent/README.md). 2, 3 and 4 need a person: the same
 * start would fail the same way, so the shipped systemd unit does not restart on them (RestartPreventExitStatus);
 * a supervisor that restarts on 4 anyway gets the agent running once the other agent stops.
 */
export const EXIT_CODES = {
  /** Stopped cleanly (SIGTERM/SIGINT), or printed --help / --version. */
  OK: 0,
  /** An unexpected failure while starting or running, or a folder lock that failed for a reason that may pass. */
  FAILURE: 1,
  /** The command line or the config file cannot be used; the message names the option or key. */
  BAD_CONFIG: 2,
  /**
   * The data root's database was written by a newer agent (a downgrade): a person must act, as for a bad config,
   * so the same code, which the unit does not restart on.
   */
  NEWER_DATABASE: 2,
  /** The socket path cannot be served: a file is there (no -f), a live process answers on it, or bind failed. */
  SOCKET_UNAVAILABLE: 3,
  /**
   * Another agent holds the data root (sagemaker_edge_local_data_root_path) or the Disk capture folder
   * (sagemaker_edge_core_capture_data_disk_path): stop it, then start this one.
   */
  DATA_ROOT_IN_USE: 4,
} as const;
export type ExitCode = (typeof EXIT_CODES)[keyof typeof EXIT_CODES];

/** A reason the agent cannot start, with the exit status it should end with. */
export class StartupError extends Error {
  override readonly name = 'StartupError';
  constructor(
    readonly exitCode: ExitCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
