/**
 * The update engine's state machine, one per model handle (after Mender client's update states). Every
 * transition is written to the local database before its effect, so after a crash the engine resumes from the
 * state recorded:
 *
 *   Idle ──► Downloading ──► Verifying ──► Loading ──► WarmingUp ──► Switching ──► HealthCheck ──► Committed
 *               │               │             │            │              │              │
 *               │ 404, bad      │ bad sum,    │ refused,   │ warm-up      │ (update      │ failures in the window,
 *               │ checksum,     │ signature,  │ no memory, │ output off   │  lock holds  │ model gone, crash loop
 *               │ disk full     │ wrong model,│ manifest   │ its manifest,│  it back)    ▼
 *               ▼               │ downgrade   │ mismatch   │ no memory    │          RollingBack ──► RolledBack
 *             Failed ◄──────────┴─────────────┴────────────┘              │              │
 *               ▲                                                         │              └─ rollback itself fails ──► Failed
 *               └──── (nothing switched: the old version still serves) ◄──┘
 *
 * Loading stages the new version beside the old (the registry creates its sessions); WarmingUp is recorded
 * from the registry's beforeWarmUp hook, once the sessions exist and before their warm-up runs (a version that
 * fails either never takes a request). A first install has no old version: it loads, warm-up included, in
 * Loading and goes on to HealthCheck. Switching promotes it: requests in flight finish on the old version, new
 * ones go to the new. A model of a ROLLBACK_ON_FAILURE deployment waits in HealthCheck until every model of
 * the deployment passed; if one fails, the others roll back too. Committed, RolledBack and Failed are final
 * for that deployment; the next deployment for the handle starts again from Idle.
 *
 * Resuming after a crash (the registry has restored what `loaded_models` recorded):
 *   Downloading → download again (the partial file is resumed with an HTTP Range request);
 *   Verifying   → verify again from the downloaded file;
 *   Loading, Switching → if the new version already serves the handle, HealthCheck; else stage it again;
 *   WarmingUp   → as Loading (back to Loading first: the staged version did not survive the crash);
 *   HealthCheck → the window starts again (a restart counts; too many restarts roll back);
 *   RollingBack → roll back again (idempotent: it ends with the previous version serving).
 * A restart counts only where the new version serves the handle (after its switch): one before the switch, while
 * the old version still serves, is no sign of a bad version.
 */
export const DEPLOYMENT_STATES = [
  'Idle',
  'Downloading',
  'Verifying',
  'Loading',
  'WarmingUp',
  'Switching',
  'HealthCheck',
  'Committed',
  'RollingBack',
  'RolledBack',
  'Failed',
] as const;
export type DeploymentState = (typeof DEPLOYMENT_STATES)[number];

/** States a deployment ends in. */
export const FINAL_STATES: ReadonlySet<DeploymentState> = new Set([
  'Idle',
  'Committed',
  'RolledBack',
  'Failed',
]);

/** Which state may follow which (anything else is a bug in the engine, refused before it is written). */
const TRANSITIONS: Readonly<Record<DeploymentState, readonly DeploymentState[]>> = {
  Idle: ['Downloading', 'Switching', 'Committed', 'Failed'],
  Downloading: ['Verifying', 'Failed'],
  Verifying: ['Loading', 'Downloading', 'Failed'],
  Loading: ['WarmingUp', 'HealthCheck', 'Failed', 'RollingBack'],
  WarmingUp: ['Switching', 'Loading', 'Failed', 'RollingBack'],
  Switching: ['HealthCheck', 'Loading', 'Committed', 'Failed', 'RollingBack'],
  HealthCheck: ['Committed', 'RollingBack'],
  RollingBack: ['RolledBack', 'Failed'],
  Committed: ['Downloading', 'Switching', 'Committed', 'Failed', 'RollingBack'],
  RolledBack: ['Downloading', 'Switching', 'Committed', 'Failed'],
  Failed: ['Downloading', 'Switching', 'Committed', 'Failed'],
};

export function isDeploymentState(value: string): value is DeploymentState {
  return (DEPLOYMENT_STATES as readonly string[]).includes(value);
}

export function canTransition(from: DeploymentState, to: DeploymentState): boolean {
  return TRANSITIONS[from].includes(to);
}

/**
 * Compares two package versions segment by segment (numbers numerically, others as text): negative when a is
 * older. "1.10" is newer than "1.9"; "2" equals "2.0".
 */
export function compareVersions(a: string, b: string): number {
  const split = (v: string) => v.split(/[.\-+_]/);
  const left = split(a);
  const right = split(b);
  for (let i = 0; i < Math.max(left.length, right.length); i++) {
    const x = left[i] ?? '0';
    const y = right[i] ?? '0';
    const nx = /^\d+$/.test(x) ? Number(x) : NaN;
    const ny = /^\d+$/.test(y) ? Number(y) : NaN;
    const order = Number.isNaN(nx) || Number.isNaN(ny) ? x.localeCompare(y) : nx - ny;
    if (order !== 0) return Math.sign(order);
  }
  return 0;
}
