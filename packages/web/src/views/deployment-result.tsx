import { StatusBadge, TableHead, When } from '../components/ui.js';
import { href } from '../router.js';

/** One model of a device's DeploymentResult, as the server stores it (times in epoch milliseconds). */
interface ResultModel {
  ModelHandle?: string;
  ModelName?: string;
  ModelVersion?: string;
  DesiredState?: string;
  State?: string;
  Status?: string;
  StatusReason?: string;
  RollbackFailureReason?: string;
}

interface DeploymentResult {
  DeploymentName?: string;
  DeploymentStatus?: string;
  DeploymentStatusMessage?: string;
  DeploymentStartTime?: number;
  DeploymentEndTime?: number;
  DeploymentModels?: ResultModel[];
}

const text = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);

/**
 * The device's last DeploymentResult, read field by field: the API describes it as the device sent it (checked
 * by the server's device contract), so anything of another type is left out rather than shown raw.
 */
export function readDeploymentResult(value: unknown): DeploymentResult | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const raw = value as Record<string, unknown>;
  const time = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
  const models = Array.isArray(raw.DeploymentModels) ? raw.DeploymentModels : [];
  const result: DeploymentResult = {
    DeploymentModels: models
      .filter((m): m is Record<string, unknown> => typeof m === 'object' && m !== null)
      .map((m) => {
        const model: ResultModel = {};
        for (const key of [
          'ModelHandle',
          'ModelName',
          'ModelVersion',
          'DesiredState',
          'State',
          'Status',
          'StatusReason',
          'RollbackFailureReason',
        ] as const) {
          const field = text(m[key]);
          if (field !== undefined) model[key] = field;
        }
        return model;
      }),
  };
  const name = text(raw.DeploymentName);
  const status = text(raw.DeploymentStatus);
  const message = text(raw.DeploymentStatusMessage);
  const started = time(raw.DeploymentStartTime);
  const ended = time(raw.DeploymentEndTime);
  if (name !== undefined) result.DeploymentName = name;
  if (status !== undefined) result.DeploymentStatus = status;
  if (message !== undefined) result.DeploymentStatusMessage = message;
  if (started !== undefined) result.DeploymentStartTime = started;
  if (ended !== undefined) result.DeploymentEndTime = ended;
  return result;
}

const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());

/** The last deployment result a device reported: plan, status, times, and each model's outcome and reason. */
export function DeploymentResultView({ result }: { result: DeploymentResult }) {
  return (
    <div class="deployment-result" role="group" aria-label="Last deployment result">
      <h3>Last deployment result</h3>
      <dl class="facts">
        <dt>Plan</dt>
        <dd>
          {result.DeploymentName !== undefined ? (
            <a href={href(`/deployments/${encodeURIComponent(result.DeploymentName)}`)}>
              {result.DeploymentName}
            </a>
          ) : (
            '–'
          )}
        </dd>
        <dt>Status</dt>
        <dd data-testid="deployment-result-status">
          {result.DeploymentStatus !== undefined ? <StatusBadge status={result.DeploymentStatus} /> : '–'}
          {result.DeploymentStatusMessage !== undefined ? ` ${result.DeploymentStatusMessage}` : ''}
        </dd>
        <dt>Started</dt>
        <dd>
          <When at={iso(result.DeploymentStartTime)} />
        </dd>
        <dt>Ended</dt>
        <dd>
          <When at={iso(result.DeploymentEndTime)} />
        </dd>
      </dl>
      {(result.DeploymentModels ?? []).length > 0 ? (
        <table>
          <TableHead columns={['Handle', 'Model', 'Version', 'Desired', 'State', 'Status', 'Reason']} />
          <tbody>
            {(result.DeploymentModels ?? []).map((model, index) => (
              <tr key={`${model.ModelHandle ?? ''}-${index}`} data-result-model={model.ModelHandle}>
                <td>{model.ModelHandle ?? '–'}</td>
                <td>{model.ModelName ?? '–'}</td>
                <td>{model.ModelVersion ?? '–'}</td>
                <td>{model.DesiredState ?? '–'}</td>
                <td>{model.State ?? '–'}</td>
                <td>{model.Status !== undefined ? <StatusBadge status={model.Status} /> : '–'}</td>
                <td>
                  {[
                    model.StatusReason,
                    model.RollbackFailureReason && `rollback failed: ${model.RollbackFailureReason}`,
                  ]
                    .filter(Boolean)
                    .join('; ') || '–'}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </div>
  );
}
