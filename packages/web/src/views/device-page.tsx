import { useState } from 'preact/hooks';
import { must } from '../api/client.js';
import { useLive } from '../api/live.js';
import { useApp } from '../app-context.js';
import { TimeChart, type ChartSeries } from '../components/chart.js';
import { ErrorNote, Section, ShownOnce, StatusBadge, TableHead, When } from '../components/ui.js';
import { useAction } from '../components/use-action.js';
import { useLoad } from '../components/use-load.js';
import { href } from '../router.js';
import { DeploymentResultView, readDeploymentResult } from './deployment-result.js';

/** The device chart's shortest time between live reloads. */
const METRICS_RELOAD_MIN_MS = 10_000;

/** Chart windows on offer; the server aggregates the stored series into about 120 buckets per window. */
const CHART_WINDOWS = [
  { label: 'last 15 minutes', ms: 15 * 60_000 },
  { label: 'last hour', ms: 3600_000 },
  { label: 'last 24 hours', ms: 86_400_000 },
];
const BUCKETS_PER_CHART = 120;
/** Warn this long before a device certificate expires. */
const EXPIRY_WARNING_MS = 30 * 86_400_000;

interface MetricSeries {
  metricName: string;
  modelName?: string;
  modelVersion?: string;
  points: { timestamp: string; avg: number }[];
}

/** Legend names of the device-wide metrics (the per-model ones are named by their model). */
const DEVICE_METRIC_LABELS: Record<string, string> = {
  CpuUtilization: 'CPU (%)',
  MemoryRssBytes: 'Memory RSS (MiB)',
};

/** Aligns several series on one time axis (uPlot's data shape), one series per model or per metric. */
function chartData(series: MetricSeries[], scale = 1): { times: number[]; series: ChartSeries[] } {
  const times = [...new Set(series.flatMap((s) => s.points.map((p) => Date.parse(p.timestamp) / 1000)))].sort(
    (a, b) => a - b,
  );
  return {
    times,
    series: series.map((s) => {
      const byTime = new Map(s.points.map((p) => [Date.parse(p.timestamp) / 1000, p.avg / scale]));
      return {
        label:
          s.modelName !== undefined
            ? `${s.modelName} ${s.modelVersion ?? ''}`.trim()
            : (DEVICE_METRIC_LABELS[s.metricName] ?? s.metricName),
        values: times.map((t) => {
          const value = byTime.get(t);
          return value === undefined ? null : Math.round(value * 100) / 100;
        }),
      };
    }),
  };
}

export function DevicePage({ params }: { params: Record<string, string> }) {
  const name = params.device ?? '';
  const { api, live, canWrite } = useApp();
  const [enrollment, setEnrollment] = useState<{ token: string; expiresAt: string } | undefined>();
  const action = useAction();
  const [windowMs, setWindowMs] = useState(CHART_WINDOWS[0]?.ms ?? 3600_000);
  const device = useLoad(
    async () => must(await api.GET('/api/v1/devices/{device}', { params: { path: { device: name } } })),
    [name],
  );
  const certificates = useLoad(
    async () =>
      must(await api.GET('/api/v1/devices/{device}/certificates', { params: { path: { device: name } } }))
        .certificates,
    [name],
  );
  const metrics = useLoad(async () => {
    const until = new Date();
    const since = new Date(until.getTime() - windowMs);
    const step = Math.max(1, Math.round(windowMs / 1000 / BUCKETS_PER_CHART));
    const { series } = must(
      await api.GET('/api/v1/devices/{device}/metrics', {
        params: {
          path: { device: name },
          query: { since: since.toISOString(), until: until.toISOString(), step },
        },
      }),
    );
    return { series, range: [since.getTime() / 1000, until.getTime() / 1000] as [number, number] };
  }, [name, windowMs]);
  const deploymentEvents = useLoad(
    async () =>
      must(
        await api.GET('/api/v1/devices/{device}/deployment-events', {
          params: { path: { device: name }, query: { limit: 20 } },
        }),
      ).events,
    [name],
  );
  useLive(live, ['devices'], () => {
    device.reload();
    certificates.reload();
  });
  // Heartbeats of any device name `devices` at every live poll (seconds apart), and a chart reload aggregates its
  // whole window on the server: redraw at most once a bucket (a 24 h chart's is 12 minutes), never under 10 s.
  useLive(live, ['devices'], metrics.reload, {
    minIntervalMs: Math.max(METRICS_RELOAD_MIN_MS, windowMs / BUCKETS_PER_CHART),
  });
  useLive(live, ['deployments'], deploymentEvents.reload);

  if (device.data === undefined) {
    return <ErrorNote error={device.error} />;
  }
  const d = device.data;
  const certificate = d.identity.certificate;
  const expiresSoon =
    certificate !== undefined &&
    certificate.revokedAt === undefined &&
    Date.parse(certificate.notAfter) - Date.now() < EXPIRY_WARNING_MS;
  const series = metrics.data?.series ?? [];
  const range = metrics.data?.range;
  const pick = (metricName: string) => series.filter((s) => s.metricName === metricName);
  const lastResult = readDeploymentResult(d.deploymentResult);

  return (
    <>
      <p>
        <a href={href('/devices')}>← Devices</a>
      </p>
      <Section title={`Device ${d.name}`}>
        <dl class="facts">
          <dt>Fleet</dt>
          <dd>{d.fleetName}</dd>
          <dt>Status</dt>
          <dd data-testid="device-status">
            <StatusBadge status={d.latestHeartbeat === undefined ? 'never seen' : d.status} />
          </dd>
          <dt>Last heartbeat</dt>
          <dd>
            <When at={d.latestHeartbeat} />
          </dd>
          <dt>Agent version</dt>
          <dd data-testid="agent-version">{d.agentVersion ?? '–'}</dd>
          <dt>Identity</dt>
          <dd data-testid="identity-status">{d.identity.status}</dd>
          <dt>Certificate</dt>
          <dd>
            {certificate === undefined ? (
              '–'
            ) : (
              <>
                serial <code>{certificate.serial}</code>,{' '}
                {certificate.revokedAt !== undefined ? (
                  <span data-testid="certificate-revoked">
                    <StatusBadge status="revoked" /> <When at={certificate.revokedAt} />, was to expire{' '}
                  </span>
                ) : (
                  'expires '
                )}
                <When at={certificate.notAfter} />
                {expiresSoon ? (
                  <span class="badge badge-warning" role="note">
                    expires soon
                  </span>
                ) : null}
              </>
            )}
          </dd>
          <dt>Tags</dt>
          <dd>{d.tags.map((t) => `${t.key}=${t.value}`).join(', ') || '–'}</dd>
          {d.description !== undefined ? (
            <>
              <dt>Description</dt>
              <dd>{d.description}</dd>
            </>
          ) : null}
        </dl>
        {canWrite ? (
          <div class="row" aria-label="Device actions">
            <button
              type="button"
              onClick={() =>
                action.run(async () => {
                  const created = must(
                    await api.POST('/api/v1/devices/{device}/enrollment-tokens', {
                      params: { path: { device: name } },
                      body: {},
                    }),
                  );
                  setEnrollment({ token: created.token, expiresAt: created.expiresAt });
                })
              }
            >
              Create enrollment token
            </button>
            {certificate !== undefined && certificate.revokedAt === undefined ? (
              <button
                type="button"
                class="danger"
                onClick={() =>
                  action.run(async () => {
                    if (!window.confirm(`Revoke the certificate of ${name}? The device stops being served.`))
                      return;
                    must(
                      await api.POST('/api/v1/devices/{device}/certificates/revoke', {
                        params: { path: { device: name } },
                        body: { serial: certificate.serial, reason: 'revoked from the console' },
                      }),
                    );
                    device.reload();
                    certificates.reload();
                  })
                }
              >
                Revoke certificate
              </button>
            ) : null}
            <button
              type="button"
              class="danger"
              onClick={() =>
                action.run(async () => {
                  if (!window.confirm(`Deregister ${name}? Its certificates are revoked.`)) return;
                  const result = await api.DELETE('/api/v1/devices/{device}', {
                    params: { path: { device: name } },
                  });
                  if (result.error !== undefined) must(result);
                  window.location.hash = '#/devices';
                })
              }
            >
              Deregister
            </button>
          </div>
        ) : null}
        <ErrorNote error={action.error} />
        {enrollment !== undefined ? (
          <>
            <ShownOnce
              label="Enrollment token"
              secret={enrollment.token}
              onDismiss={() => setEnrollment(undefined)}
            />
            <p data-testid="enrollment-how">
              Single use; expires <When at={enrollment.expiresAt} /> (at{' '}
              {new Date(enrollment.expiresAt).toLocaleString()}). On the device, with the token in{' '}
              <code>TOKEN</code> (<code>read -rs TOKEN</code> keeps it out of the shell's history):{' '}
              <code>
                EDGEFLEET_ENROLLMENT_TOKEN="$TOKEN" edgefleet device enroll --server {window.location.origin}{' '}
                --config /etc/edgefleet/agent.json
              </code>{' '}
              (the server as this browser reaches it; see docs/cli.md, "Enrolling a device").
            </p>
          </>
        ) : null}
      </Section>
      <Section
        title="Metrics"
        actions={
          <label>
            Window
            <select
              value={String(windowMs)}
              onChange={(event) => setWindowMs(Number(event.currentTarget.value))}
            >
              {CHART_WINDOWS.map((option) => (
                <option key={option.ms} value={String(option.ms)}>
                  {option.label}
                </option>
              ))}
            </select>
          </label>
        }
      >
        <ErrorNote error={metrics.error} />
        {series.length === 0 ? <p class="muted">No metrics stored for this device in this window.</p> : null}
        <div class="charts">
          {pick('CpuUtilization').length > 0 ? (
            <TimeChart range={range} title="CPU %" unit="%" {...chartData(pick('CpuUtilization'))} />
          ) : null}
          {pick('MemoryRssBytes').length > 0 ? (
            <TimeChart
              range={range}
              title="Memory (RSS, MiB)"
              unit="MiB"
              {...chartData(pick('MemoryRssBytes'), 1024 * 1024)}
            />
          ) : null}
          {pick('InferenceCount').length > 0 ? (
            <TimeChart
              range={range}
              title="Inferences per heartbeat"
              {...chartData(pick('InferenceCount'))}
            />
          ) : null}
          {pick('InferenceFailures').length > 0 ? (
            // Requests the model failed: a failing release shows here, not in the counts above.
            <TimeChart
              range={range}
              title="Inference failures per heartbeat"
              {...chartData(pick('InferenceFailures'))}
            />
          ) : null}
          {pick('LatencyAvgMs').length > 0 ? (
            <TimeChart
              range={range}
              title="Inference latency (ms)"
              unit="ms"
              {...chartData(pick('LatencyAvgMs'))}
            />
          ) : null}
        </div>
      </Section>
      <Section title="Models">
        {d.models.length === 0 ? (
          <p class="muted" data-testid="no-models">
            {d.latestHeartbeat === undefined
              ? 'No agent has reported for this device yet: its models show here after its first heartbeat.'
              : 'The agent reports no loaded model.'}
          </p>
        ) : null}
        {(d.deployedModelsNotLoaded ?? []).length > 0 ? (
          <ul class="plain" aria-label="Deployed models not loaded" data-testid="models-not-loaded">
            {(d.deployedModelsNotLoaded ?? []).map((model) => (
              <li key={model.modelHandle} class="warning" data-model-handle={model.modelHandle}>
                <strong>
                  {model.modelHandle}
                  {model.modelName !== undefined && model.modelName !== model.modelHandle
                    ? ` (model ${model.modelName})`
                    : ''}
                  {model.modelVersion !== undefined ? ` ${model.modelVersion}` : ''}
                </strong>{' '}
                (deployment{' '}
                <a href={href(`/deployments/${encodeURIComponent(model.deploymentName)}`)}>
                  {model.deploymentName}
                </a>
                ) is not loaded:{' '}
                {model.unloadedByApplication ? (
                  <>
                    unloaded by an application
                    {model.since !== undefined ? (
                      <>
                        {' '}
                        <When at={model.since} /> (at {new Date(model.since).toLocaleString()})
                      </>
                    ) : null}
                    ; it stays unloaded until it is loaded or deployed again
                  </>
                ) : (
                  model.reason
                )}
              </li>
            ))}
          </ul>
        ) : null}
        <table>
          <TableHead columns={['Model', 'Version', 'Last inference']} />
          <tbody>
            {d.models.map((model) => (
              <tr key={`${model.name} ${model.version}`}>
                <td>{model.name}</td>
                <td>{model.version}</td>
                <td>
                  <When at={model.latestInference} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {lastResult !== undefined ? <DeploymentResultView result={lastResult} /> : null}
      </Section>
      <Section title="Deployment events">
        <ErrorNote error={deploymentEvents.error} />
        {(deploymentEvents.data ?? []).length === 0 && !deploymentEvents.loading ? (
          <p class="muted">No deployment event for this device.</p>
        ) : null}
        <ol class="plain" data-testid="device-deployment-events">
          {(deploymentEvents.data ?? []).map((event) => (
            <li key={event.id} data-event={event.kind}>
              <When at={event.at} /> <strong>{event.kind}</strong> plan{' '}
              <a href={href(`/deployments/${encodeURIComponent(event.planName)}`)}>{event.planName}</a>
              {event.stageName !== undefined ? ` stage ${event.stageName}` : ''}: {event.message}
            </li>
          ))}
        </ol>
      </Section>
      <Section title="Events">
        <ul class="plain">
          {(certificates.data ?? []).flatMap((c) => [
            <li key={`${c.serial}-issued`}>
              <When at={c.issuedAt} /> certificate <code>{c.serial}</code> issued
            </li>,
            ...(c.revokedAt !== undefined
              ? [
                  <li key={`${c.serial}-revoked`}>
                    <When at={c.revokedAt} /> certificate <code>{c.serial}</code> revoked
                  </li>,
                ]
              : []),
          ])}
          <li>
            <When at={d.registeredAt} /> registered in fleet {d.fleetName}
          </li>
        </ul>
      </Section>
    </>
  );
}
