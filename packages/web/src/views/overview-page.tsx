import { useState } from 'preact/hooks';
import { must } from '../api/client.js';
import { useLive } from '../api/live.js';
import { useApp } from '../app-context.js';
import { useAction } from '../components/use-action.js';
import { useLoad } from '../components/use-load.js';
import { ErrorNote, Section, Stat, StatusBadge, TableHead, When } from '../components/ui.js';
import { href } from '../router.js';

const FLEETS_SHOWN = 100;
/** Device changes reload the fleet reports at most this often. */
const DEVICE_REPORTS_EVERY_MS = 10_000;
/** Plans with a stage under way, and with a failed stage, each asked of the server (newest first). */
const ROLLOUT_PLANS_SHOWN = 20;
const FAILED_PLANS_SHOWN = 5;
/** Stage statuses of a rollout under way. */
const ACTIVE_STAGE = ['STARTING', 'INPROGRESS', 'STOPPING'] as const;

export function OverviewPage() {
  const { api, live, canWrite } = useApp();
  const fleets = useLoad(async () => {
    const list = must(await api.GET('/api/v1/fleets', { params: { query: { limit: FLEETS_SHOWN } } }));
    return Promise.all(
      list.fleets.map(async (fleet) =>
        must(await api.GET('/api/v1/fleets/{fleet}/report', { params: { path: { fleet: fleet.name } } })),
      ),
    );
  }, []);
  const failures = useLoad(
    async () =>
      must(await api.GET('/api/v1/packaging-jobs', { params: { query: { status: 'FAILED', limit: 5 } } }))
        .jobs,
    [],
  );
  // Filtered by the server, so a rollout or a failure is found however many plans there are (the first page
  // of all plans by name missed them once there were more than a page).
  const plans = useLoad(async () => {
    const [active, failed] = await Promise.all([
      api.GET('/api/v1/deployment-plans', {
        params: { query: { limit: ROLLOUT_PLANS_SHOWN, order: 'newest', stageStatus: [...ACTIVE_STAGE] } },
      }),
      api.GET('/api/v1/deployment-plans', {
        params: { query: { limit: FAILED_PLANS_SHOWN, order: 'newest', stageStatus: ['FAILED'] } },
      }),
    ]);
    const activePage = must(active);
    return {
      active: activePage.plans,
      moreActive: activePage.nextToken !== undefined,
      failed: must(failed).plans,
    };
  }, []);
  useLive(live, ['fleets', 'models'], fleets.reload);
  // Heartbeats name `devices` every few seconds in a busy fleet, and each reload asks every shown fleet's report.
  useLive(live, ['devices'], fleets.reload, { minIntervalMs: DEVICE_REPORTS_EVERY_MS });
  useLive(live, ['packaging'], failures.reload);
  useLive(live, ['deployments'], plans.reload);
  const activeStatuses = new Set<string>(ACTIVE_STAGE);
  const rollouts = (plans.data?.active ?? []).flatMap((plan) =>
    plan.stages.filter((stage) => activeStatuses.has(stage.status)).map((stage) => ({ plan, stage })),
  );
  const failedStages = (plans.data?.failed ?? []).flatMap((plan) =>
    plan.stages.filter((stage) => stage.status === 'FAILED').map((stage) => ({ plan, stage })),
  );

  const reports = fleets.data ?? [];
  const totals = reports.reduce(
    (sum, report) => ({
      registered: sum.registered + report.deviceStats.registeredDeviceCount,
      online: sum.online + report.deviceStats.connectedDeviceCount,
      neverSeen: sum.neverSeen + report.deviceStats.neverSeenDeviceCount,
    }),
    { registered: 0, online: 0, neverSeen: 0 },
  );
  const agentVersions = new Map<string, number>();
  const modelsInUse = new Map<string, number>();
  for (const report of reports) {
    for (const agent of report.agentVersions) {
      agentVersions.set(agent.version, (agentVersions.get(agent.version) ?? 0) + agent.agentCount);
    }
    for (const model of report.modelStats) {
      const key = `${model.modelName} ${model.modelVersion}`;
      modelsInUse.set(
        key,
        (modelsInUse.get(key) ?? 0) + model.connectedDeviceCount + model.offlineDeviceCount,
      );
    }
  }

  return (
    <>
      <div class="stats" aria-label="Fleet totals">
        <Stat label="Fleets" value={reports.length} />
        <Stat label="Devices" value={totals.registered} />
        <Stat label="Online" value={totals.online} testId="online-total" />
        <Stat
          label="Offline"
          value={totals.registered - totals.online - totals.neverSeen}
          testId="offline-total"
        />
        <Stat label="Never seen" value={totals.neverSeen} testId="never-seen-total" />
      </div>
      <ErrorNote error={fleets.error} />
      <Section title="Fleets" actions={canWrite ? <CreateFleet onCreated={fleets.reload} /> : undefined}>
        {reports.length === 0 && !fleets.loading ? <p class="muted">No fleets yet.</p> : null}
        <table>
          <TableHead columns={['Fleet', 'Devices', 'Online', 'Offline', 'Never seen', 'Models']} />
          <tbody>
            {reports.map((report) => (
              <tr key={report.fleetName} data-fleet={report.fleetName}>
                <td>
                  <a href={href(`/devices?fleet=${encodeURIComponent(report.fleetName)}`)}>
                    {report.fleetName}
                  </a>
                  {report.description ? <div class="muted">{report.description}</div> : null}
                  {report.outputOutage ? (
                    <div class="warning" role="alert" data-testid="fleet-output-outage">
                      {report.outputOutage.message}
                    </div>
                  ) : null}
                </td>
                <td>{report.deviceStats.registeredDeviceCount}</td>
                <td data-testid="fleet-online">{report.deviceStats.connectedDeviceCount}</td>
                <td>
                  {report.deviceStats.registeredDeviceCount -
                    report.deviceStats.connectedDeviceCount -
                    report.deviceStats.neverSeenDeviceCount}
                </td>
                <td>{report.deviceStats.neverSeenDeviceCount}</td>
                <td>{report.modelStats.map((m) => `${m.modelName} ${m.modelVersion}`).join(', ') || '–'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </Section>
      <div class="columns">
        <Section title="Agent versions">
          <Counts entries={agentVersions} empty="No agent has reported yet." />
        </Section>
        <Section title="Models in use">
          <Counts entries={modelsInUse} empty="No device reports a model yet." />
        </Section>
        <Section title="Active rollouts">
          <ErrorNote error={plans.error} />
          {rollouts.length === 0 ? <p class="muted">No rollout under way.</p> : null}
          <ul class="plain" data-testid="active-rollouts">
            {rollouts.map(({ plan, stage }) => (
              <li key={`${plan.name}/${stage.name}`}>
                <StatusBadge status={stage.status} />{' '}
                <a href={href(`/deployments/${encodeURIComponent(plan.name)}`)}>{plan.name}</a> stage{' '}
                {stage.name} ({plan.fleetName}): {stage.successCount} deployed, {stage.pendingCount} pending,{' '}
                {stage.failedCount} failed
              </li>
            ))}
          </ul>
          {plans.data?.moreActive === true ? (
            <p class="muted" data-testid="more-rollouts">
              The {ROLLOUT_PLANS_SHOWN} newest plans with a rollout under way are shown; see{' '}
              <a href={href('/deployments')}>Deployments</a> for all plans.
            </p>
          ) : null}
        </Section>
        <Section title="Recent failures">
          <ErrorNote error={failures.error} />
          {(failures.data ?? []).length === 0 && failedStages.length === 0 ? (
            <p class="muted">No failed packaging jobs or deployment stages.</p>
          ) : null}
          <ul class="plain">
            {failedStages.map(({ plan, stage }) => (
              <li key={`${plan.name}/${stage.name}`}>
                <StatusBadge status={stage.status} /> deployment{' '}
                <a href={href(`/deployments/${encodeURIComponent(plan.name)}`)}>{plan.name}</a> stage{' '}
                {stage.name} <When at={stage.endedAt ?? plan.updatedAt} />:{' '}
                {stage.statusMessage ?? `${stage.failedCount} failed`}
              </li>
            ))}
            {(failures.data ?? []).map((job) => (
              <li key={job.name}>
                <StatusBadge status={job.status} /> packaging <a href={href('/packaging')}>{job.name}</a>{' '}
                <When at={job.updatedAt} />: {job.statusMessage ?? 'no message'}
              </li>
            ))}
          </ul>
        </Section>
      </div>
    </>
  );
}

function Counts({ entries, empty }: { entries: Map<string, number>; empty: string }) {
  if (entries.size === 0) return <p class="muted">{empty}</p>;
  return (
    <ul class="plain">
      {[...entries].map(([name, count]) => (
        <li key={name}>
          {name}: <strong>{count}</strong>
        </li>
      ))}
    </ul>
  );
}

function CreateFleet({ onCreated }: { onCreated(): void }) {
  const { api } = useApp();
  const [open, setOpen] = useState(false);
  const action = useAction();
  if (!open) {
    return (
      <button type="button" onClick={() => setOpen(true)}>
        Create fleet
      </button>
    );
  }
  return (
    <form
      class="inline-form"
      aria-label="Create fleet"
      onSubmit={async (event) => {
        event.preventDefault();
        const form = new FormData(event.currentTarget);
        const description = String(form.get('description') ?? '');
        const result = await api.POST('/api/v1/fleets', {
          body: {
            name: String(form.get('name') ?? ''),
            outputConfig: { s3OutputLocation: String(form.get('output') ?? '') },
            ...(description !== '' ? { description } : {}),
          },
        });
        await action.run(async () => {
          must(result);
          setOpen(false);
          onCreated();
        });
      }}
    >
      <label>
        Name <input name="name" required autoComplete="off" />
      </label>
      <label>
        Output location <input name="output" required defaultValue="s3://edgefleet-output/" />
      </label>
      <label>
        Description <input name="description" />
      </label>
      <button type="submit">Create</button>
      <button type="button" class="secondary" onClick={() => setOpen(false)}>
        Cancel
      </button>
      <ErrorNote error={action.error} />
    </form>
  );
}
