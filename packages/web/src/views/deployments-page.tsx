import { useEffect, useState } from 'preact/hooks';
import { must, type ApiPaths } from '../api/client.js';
import { useLive } from '../api/live.js';
import { useApp } from '../app-context.js';
import { ErrorNote, Pager, Section, Stat, StatusBadge, TableHead, When } from '../components/ui.js';
import { submitForm, useAction } from '../components/use-action.js';
import { useDraftList } from '../components/use-draft-list.js';
import { useLoad } from '../components/use-load.js';
import { href } from '../router.js';

type CreatePlanBody =
  ApiPaths['/api/v1/deployment-plans']['post']['requestBody']['content']['application/json'];
type StageInput = NonNullable<CreatePlanBody['stages']>[number];
type ModelConfigInput = CreatePlanBody['modelConfigs'][number];
type SubsetType = StageInput['deviceSelection']['subsetType'];
type FailurePolicy = NonNullable<StageInput['failureHandlingPolicy']>;

/** Plans per page of the list (newest first, paged by the server). */
const PLANS_SHOWN = 50;
/** Devices per page of a stage's table; the counts above it cover every device of the stage. */
const STAGE_DEVICES_SHOWN = 100;
/** Events per page of a plan's history (newest first; "Show older" pages on). */
const EVENTS_SHOWN = 100;

/** The plan list, newest first and paged, and (for write tokens) the form that creates a plan. */
export function DeploymentsPage() {
  const { api, live, canWrite } = useApp();
  // Tokens of the pages before this one, so "Previous" can go back without the server keeping state.
  const [pageTokens, setPageTokens] = useState<(string | undefined)[]>([undefined]);
  const pageToken = pageTokens[pageTokens.length - 1];
  const plans = useLoad(
    async () =>
      must(
        await api.GET('/api/v1/deployment-plans', {
          params: {
            query: {
              limit: PLANS_SHOWN,
              order: 'newest',
              ...(pageToken !== undefined ? { nextToken: pageToken } : {}),
            },
          },
        }),
      ),
    [pageToken],
  );
  useLive(live, ['deployments'], plans.reload);
  const shown = plans.data?.plans ?? [];
  return (
    <>
      {canWrite ? <CreatePlan onCreated={plans.reload} /> : null}
      <Section title="Deployment plans (newest first)">
        <ErrorNote error={plans.error} />
        {shown.length === 0 && !plans.loading && pageTokens.length === 1 ? (
          <p class="muted">No deployment plan yet.</p>
        ) : null}
        <table>
          <TableHead
            columns={['Plan', 'Fleet', 'Models', 'Stages', 'Deployed / pending / failed', 'Updated']}
          />
          <tbody>
            {shown.map((plan) => (
              <tr key={plan.name} data-plan={plan.name}>
                <td>
                  <a href={href(`/deployments/${encodeURIComponent(plan.name)}`)}>{plan.name}</a>
                </td>
                <td>{plan.fleetName}</td>
                <td>{plan.modelConfigs.map(describeModelConfig).join(', ')}</td>
                <td>
                  {plan.stages.map((stage) => (
                    <span key={stage.name} class="stage-chip">
                      {stage.name} <StatusBadge status={stage.status} />{' '}
                    </span>
                  ))}
                </td>
                <td>
                  {plan.successCount} / {plan.pendingCount} / {plan.failedCount}
                </td>
                <td>
                  <When at={plan.updatedAt} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        <Pager
          label="Plan pages"
          pageTokens={pageTokens}
          setPageTokens={setPageTokens}
          nextToken={plans.data?.nextToken}
          loading={plans.loading}
          pageTestId="plans-page"
        />
      </Section>
    </>
  );
}

function describeModelConfig(config: {
  modelHandle: string;
  state: string;
  packagingJobName?: string;
  modelName?: string;
  modelVersion?: string;
}): string {
  if (config.state === 'UNDEPLOY') return `${config.modelHandle} (undeploy)`;
  const source = config.packagingJobName ?? `${config.modelName ?? ''} ${config.modelVersion ?? ''}`;
  return `${config.modelHandle} ← ${source}`;
}

/** Where a model config's package comes from, or UNDEPLOY (remove the handle's model). */
type ModelSource = 'job' | 'uploaded' | 'undeploy';

interface ModelConfigDraft {
  key: number;
  handle: string;
  source: ModelSource;
  /** A COMPLETED packaging job (source job). */
  job: string;
  /** An uploaded signed package (source uploaded). */
  modelName: string;
  modelVersion: string;
}

function newModelConfig(key: number): ModelConfigDraft {
  return { key, handle: '', source: 'job', job: '', modelName: '', modelVersion: '' };
}

/** A draft as the API wants it: only the fields of its source; the server checks the rest. */
function toModelConfigInput(draft: ModelConfigDraft, defaultJob: string): ModelConfigInput {
  const modelHandle = draft.handle.trim();
  if (draft.source === 'undeploy') return { modelHandle, state: 'UNDEPLOY' };
  if (draft.source === 'uploaded') {
    return { modelHandle, modelName: draft.modelName.trim(), modelVersion: draft.modelVersion.trim() };
  }
  return { modelHandle, packagingJobName: draft.job !== '' ? draft.job : defaultJob };
}

interface StageDraft {
  key: number;
  name: string;
  subsetType: SubsetType;
  /** The percentage, the device names (comma-separated) or the name text, by subset type. */
  value: string;
  /** key=value pairs, comma-separated (EdgeFleet: devices must carry every one). */
  tags: string;
  failureHandlingPolicy: FailurePolicy;
}

const SUBSET_VALUE_LABEL: Record<SubsetType, string> = {
  PERCENTAGE: 'Percentage of the fleet',
  SELECTION: 'Device names (comma-separated)',
  NAMECONTAINS: 'Device name contains',
};

/** The first stage covers all devices by default; the ones added after it are numbered. */
function newStage(key: number, index: number): StageDraft {
  return {
    key,
    name: index === 0 ? 'all' : `stage-${index + 1}`,
    subsetType: 'PERCENTAGE',
    value: '100',
    tags: '',
    failureHandlingPolicy: 'ROLLBACK_ON_FAILURE',
  };
}

/**
 * A draft as the API wants it; the server validates the rest and its message is shown as it is. A tag without
 * `=` is refused here, as the CLI refuses it: sent as `key: ""` it would select only devices whose tag is the
 * empty string (usually none), not every device carrying the key. `key=` says that on purpose.
 */
function toStageInput(draft: StageDraft, index: number): StageInput {
  const tags = Object.fromEntries(
    draft.tags
      .split(',')
      .map((pair) => pair.trim())
      .filter((pair) => pair !== '')
      .map((pair) => {
        const at = pair.indexOf('=');
        if (at <= 0) {
          throw new Error(
            `stage ${index + 1} (${draft.name.trim()}): tag ${JSON.stringify(pair)}: expected key=value ` +
              '(devices must carry the tag with that value; key= for an empty value)',
          );
        }
        return [pair.slice(0, at).trim(), pair.slice(at + 1).trim()];
      }),
  );
  const selection: StageInput['deviceSelection'] =
    draft.subsetType === 'PERCENTAGE'
      ? { subsetType: 'PERCENTAGE', percentage: Number(draft.value) }
      : draft.subsetType === 'SELECTION'
        ? {
            subsetType: 'SELECTION',
            deviceNames: draft.value
              .split(',')
              .map((name) => name.trim())
              .filter((name) => name !== ''),
          }
        : { subsetType: 'NAMECONTAINS', deviceNameContains: draft.value.trim() };
  return {
    name: draft.name.trim(),
    deviceSelection: Object.keys(tags).length > 0 ? { ...selection, tags } : selection,
    failureHandlingPolicy: draft.failureHandlingPolicy,
  };
}

type PlanOptions = NonNullable<CreatePlanBody['options']>;

/** The options the operator filled in; the server's defaults stand for the rest. */
function planOptions(form: FormData): PlanOptions | undefined {
  const number = (field: string) => {
    const value = String(form.get(field) ?? '');
    return value === '' ? undefined : Number(value);
  };
  const [timeout, advance, abort] = [number('timeout'), number('advance'), number('abort')];
  const options: PlanOptions = {
    ...(timeout !== undefined && { deviceTimeoutSeconds: timeout }),
    ...(advance !== undefined && { autoAdvance: { successPercent: advance } }),
    ...(abort !== undefined && { abort: { failedPercent: abort } }),
    ...(form.get('allowDowngrade') !== null && { allowDowngrade: true }),
  };
  return Object.keys(options).length > 0 ? options : undefined;
}

function CreatePlan({ onCreated }: { onCreated(): void }) {
  const { api } = useApp();
  const action = useAction();
  const stages = useDraftList(newStage);
  const models = useDraftList(newModelConfig);
  // The last create's warnings (uploaded packages the server's devices will refuse): shown until the next create.
  const [warnings, setWarnings] = useState<string[]>([]);
  const fleets = useLoad(
    async () => must(await api.GET('/api/v1/fleets', { params: { query: { limit: 500 } } })).fleets,
    [],
  );
  const jobs = useLoad(
    async () =>
      must(
        await api.GET('/api/v1/packaging-jobs', { params: { query: { status: 'COMPLETED', limit: 500 } } }),
      ).jobs,
    [],
  );
  // The job select shows its first option until the operator picks one; that is the job to send.
  const firstJob = jobs.data?.[0]?.name ?? '';
  return (
    <Section title="Create a deployment plan">
      <form
        class="plan-form"
        aria-label="Create deployment plan"
        onSubmit={submitForm(action, async (form) => {
          setWarnings([]);
          const options = planOptions(form);
          const created = must(
            await api.POST('/api/v1/deployment-plans', {
              body: {
                name: String(form.get('name') ?? ''),
                fleetName: String(form.get('fleet') ?? ''),
                modelConfigs: models.items.map((model) => toModelConfigInput(model, firstJob)),
                stages: stages.items.map(toStageInput),
                ...(options !== undefined && { options }),
              },
            }),
          );
          setWarnings(created.warnings ?? []);
          stages.reset();
          models.reset();
          onCreated();
        })}
      >
        <div class="inline-form">
          <label>
            Plan name <input name="name" required autoComplete="off" />
          </label>
          <label>
            Fleet
            <select name="fleet" required>
              {(fleets.data ?? []).map((fleet) => (
                <option key={fleet.name} value={fleet.name}>
                  {fleet.name}
                </option>
              ))}
            </select>
          </label>
          {fleets.data?.length === 0 ? (
            <p class="muted" data-testid="no-fleet-hint">
              A plan deploys to a fleet: create one first on the <a href={href('/')}>Overview</a>.
            </p>
          ) : null}
          <label>
            Device timeout (s) <input name="timeout" type="number" min={10} placeholder="3600" />
          </label>
          <label>
            Auto-advance at (% deployed) <input name="advance" type="number" min={1} max={100} />
          </label>
          <label>
            Abort at (% failed) <input name="abort" type="number" min={1} max={100} />
          </label>
          <label title="A rollback plan: devices may install a version older than the one they run (anti-rollback lets only such a plan do it)">
            <input name="allowDowngrade" type="checkbox" /> Allow downgrade (rollback plan)
          </label>
        </div>
        <fieldset>
          <legend>Models</legend>
          {models.items.map((model, index) => (
            <div class="inline-form" key={model.key} role="group" aria-label={`Model ${index + 1}`}>
              <DraftField
                label="Model handle"
                required
                noAutoComplete
                value={model.handle}
                onValue={(value) => models.update(model.key, { handle: value })}
              />
              <label>
                Source
                <select
                  value={model.source}
                  onChange={(e) => models.update(model.key, { source: e.currentTarget.value as ModelSource })}
                >
                  <option value="job">Packaging job</option>
                  <option value="uploaded">Uploaded signed package</option>
                  <option value="undeploy">Undeploy (remove the model)</option>
                </select>
              </label>
              {model.source === 'job' ? (
                <label>
                  Packaging job
                  <select
                    required
                    value={model.job !== '' ? model.job : firstJob}
                    onChange={(e) => models.update(model.key, { job: e.currentTarget.value })}
                  >
                    {(jobs.data ?? []).map((job) => (
                      <option key={job.name} value={job.name}>
                        {job.name} ({job.modelName} {job.modelVersion})
                      </option>
                    ))}
                  </select>
                </label>
              ) : null}
              {model.source === 'job' && jobs.data?.length === 0 ? (
                <p class="muted" data-testid="no-job-hint">
                  No completed packaging job yet: start one on <a href={href('/packaging')}>Packaging</a>, or
                  choose another source.
                </p>
              ) : null}
              {model.source === 'uploaded' ? (
                <>
                  <DraftField
                    label="Model name"
                    required
                    noAutoComplete
                    value={model.modelName}
                    onValue={(value) => models.update(model.key, { modelName: value })}
                  />
                  <DraftField
                    label="Model version"
                    required
                    noAutoComplete
                    value={model.modelVersion}
                    onValue={(value) => models.update(model.key, { modelVersion: value })}
                  />
                </>
              ) : null}
              {models.items.length > 1 ? (
                <button type="button" class="secondary" onClick={() => models.remove(model.key)}>
                  Remove model {index + 1}
                </button>
              ) : null}
            </div>
          ))}
          <button type="button" class="secondary" onClick={models.add}>
            Add model
          </button>
        </fieldset>
        <fieldset>
          <legend>Stages, in the order they run</legend>
          {stages.items.map((stage, index) => (
            <div class="inline-form" key={stage.key} role="group" aria-label={`Stage ${index + 1}`}>
              <DraftField
                label="Stage name"
                required
                value={stage.name}
                onValue={(value) => stages.update(stage.key, { name: value })}
              />
              <label>
                Selection
                <select
                  value={stage.subsetType}
                  onChange={(e) => {
                    const subsetType = e.currentTarget.value as SubsetType;
                    stages.update(stage.key, { subsetType, value: subsetType === 'PERCENTAGE' ? '100' : '' });
                  }}
                >
                  <option value="PERCENTAGE">Percentage</option>
                  <option value="SELECTION">Device names</option>
                  <option value="NAMECONTAINS">Name contains</option>
                </select>
              </label>
              <DraftField
                label={SUBSET_VALUE_LABEL[stage.subsetType]}
                required
                percentage={stage.subsetType === 'PERCENTAGE'}
                value={stage.value}
                onValue={(value) => stages.update(stage.key, { value })}
              />
              <DraftField
                label="Tags (key=value, …)"
                value={stage.tags}
                onValue={(value) => stages.update(stage.key, { tags: value })}
              />
              <label>
                On failure
                <select
                  value={stage.failureHandlingPolicy}
                  onChange={(e) =>
                    stages.update(stage.key, {
                      failureHandlingPolicy: e.currentTarget.value as FailurePolicy,
                    })
                  }
                >
                  <option value="ROLLBACK_ON_FAILURE">Roll back</option>
                  <option value="DO_NOTHING">Do nothing</option>
                </select>
              </label>
              {stages.items.length > 1 ? (
                <button type="button" class="secondary" onClick={() => stages.remove(stage.key)}>
                  Remove stage {index + 1}
                </button>
              ) : null}
            </div>
          ))}
          <button type="button" class="secondary" onClick={stages.add}>
            Add stage
          </button>
        </fieldset>
        <button type="submit">Create plan</button>
        <ErrorNote error={action.error} />
        {warnings.map((warning) => (
          <p key={warning} class="warning" role="status" data-testid="plan-warning">
            Created, but: {warning}
          </p>
        ))}
      </form>
    </Section>
  );
}

/** One plan: its stages with start/stop and live per-device progress, and its event history. */
export function DeploymentPage({ params }: { params: Record<string, string> }) {
  const { api, live, canWrite } = useApp();
  const name = params.plan ?? '';
  const plan = useLoad(
    async () => must(await api.GET('/api/v1/deployment-plans/{plan}', { params: { path: { plan: name } } })),
    [name],
  );
  // Pages of events shown, newest first; "Show older" adds one. A live reload reads them all again.
  const [eventPages, setEventPages] = useState(1);
  useEffect(() => setEventPages(1), [name]);
  const events = useLoad(async () => {
    const shown: EventView[] = [];
    let nextToken: string | undefined;
    for (let read = 0; read < eventPages; read++) {
      const page = must(
        await api.GET('/api/v1/deployment-plans/{plan}/events', {
          params: {
            path: { plan: name },
            query: {
              limit: EVENTS_SHOWN,
              order: 'newest',
              ...(nextToken !== undefined ? { nextToken } : {}),
            },
          },
        }),
      );
      shown.push(...page.events);
      nextToken = page.nextToken;
      if (nextToken === undefined) break;
    }
    return { events: shown, more: nextToken !== undefined };
  }, [name, eventPages]);
  useLive(live, ['deployments'], () => {
    plan.reload();
    events.reload();
  });
  const view = plan.data;
  return (
    <>
      <p>
        <a href={href('/deployments')}>← All deployment plans</a>
      </p>
      <ErrorNote error={plan.error} />
      {view !== undefined ? (
        <Section title={`Plan ${view.name}`}>
          <dl class="facts">
            <dt>Fleet</dt>
            <dd>{view.fleetName}</dd>
            <dt>Models</dt>
            <dd>{view.modelConfigs.map(describeModelConfig).join(', ')}</dd>
            <dt>Devices deployed / pending / failed</dt>
            <dd data-testid="plan-counts">
              {view.successCount} / {view.pendingCount} / {view.failedCount}
            </dd>
            <dt>Device timeout</dt>
            <dd>
              {view.options.deviceTimeoutSeconds} s, {view.options.maxRetries} retries
            </dd>
            <dt>Downgrade</dt>
            <dd data-testid="plan-downgrade">
              {view.options.allowDowngrade ? 'allowed (rollback plan)' : 'refused (anti-rollback)'}
            </dd>
            <dt>Created</dt>
            <dd>
              <When at={view.createdAt} />
            </dd>
          </dl>
        </Section>
      ) : null}
      {(view?.stages ?? []).map((stage, index, stages) => (
        <StageCard
          key={stage.name}
          planName={name}
          fleetName={view?.fleetName ?? ''}
          stage={stage}
          failedBefore={stages.slice(0, index).filter((earlier) => earlier.status === 'FAILED')}
          canWrite={canWrite}
          onChanged={plan.reload}
        />
      ))}
      <Section title="Events (newest first)">
        <ErrorNote error={events.error} />
        {(events.data?.events ?? []).length === 0 && !events.loading ? (
          <p class="muted">No events yet.</p>
        ) : null}
        <ol class="plain" data-testid="plan-events">
          {(events.data?.events ?? []).map((event) => (
            <li key={event.id} data-event={event.kind}>
              <When at={event.at} /> <strong>{event.kind}</strong>
              {event.stageName !== undefined ? ` stage ${event.stageName}` : ''}
              {event.deviceName !== undefined ? ` device ${event.deviceName}` : ''}: {event.message}
            </li>
          ))}
        </ol>
        {events.data?.more === true ? (
          <button
            type="button"
            class="secondary"
            disabled={events.loading}
            onClick={() => setEventPages(eventPages + 1)}
          >
            Show older events
          </button>
        ) : null}
      </Section>
    </>
  );
}

type EventView =
  ApiPaths['/api/v1/deployment-plans/{plan}/events']['get']['responses']['200']['content']['application/json']['events'][number];

type StageView =
  ApiPaths['/api/v1/deployment-plans/{plan}']['get']['responses']['200']['content']['application/json']['stages'][number];

const STOPPABLE = new Set(['INPROGRESS', 'STARTING']);
/** Device statuses the server lets an operator cancel (not taken yet, or taken and not finished). */
const CANCELLABLE = new Set(['READYTODEPLOY', 'INPROGRESS']);

function StageCard({
  planName,
  fleetName,
  stage,
  failedBefore,
  canWrite,
  onChanged,
}: {
  planName: string;
  fleetName: string;
  stage: StageView;
  /** Earlier stages of the plan that FAILED: the server starts this one only when forced. */
  failedBefore: StageView[];
  canWrite: boolean;
  onChanged(): void;
}) {
  const { api, live } = useApp();
  const action = useAction();
  const started = stage.startedAt !== undefined;
  // The table's status filter ('' for all) and the tokens of the pages before this one (as the devices list).
  const [statusFilter, setStatusFilter] = useState<DeviceStatusFilter>('');
  const [pageTokens, setPageTokens] = useState<(string | undefined)[]>([undefined]);
  const pageToken = pageTokens[pageTokens.length - 1];
  const devices = useLoad(async () => {
    if (!started) return { devices: [], complete: true, nextToken: undefined };
    const page = must(
      await api.GET('/api/v1/deployment-plans/{plan}/stages/{stage}/devices', {
        params: {
          path: { plan: planName, stage: stage.name },
          query: {
            limit: STAGE_DEVICES_SHOWN,
            ...(statusFilter !== '' ? { status: statusFilter } : {}),
            ...(pageToken !== undefined ? { nextToken: pageToken } : {}),
          },
        },
      }),
    );
    return {
      devices: page.devices,
      // Every device of the stage is on screen: the whole list, on its only page.
      complete: page.nextToken === undefined && statusFilter === '' && pageToken === undefined,
      nextToken: page.nextToken,
    };
  }, [planName, stage.name, started, statusFilter, pageToken]);
  useLive(live, ['deployments'], devices.reload);
  const stageParams = { params: { path: { plan: planName, stage: stage.name } } };
  const shown = devices.data?.devices ?? [];
  // The server counts pending devices (not taken yet, or taken); which of them are in progress is known
  // exactly only when every device of the stage is shown.
  const inProgress =
    devices.data?.complete === true
      ? shown.filter((device) => device.status === 'INPROGRESS').length
      : undefined;
  // A started stage that chose no device finishes DEPLOYED at once: say so, or it reads as a success.
  const selectedNone =
    started &&
    stage.pendingCount + stage.successCount + stage.failedCount + stage.stoppedCount === 0 &&
    devices.data?.complete === true &&
    shown.length === 0;
  const controls = canWrite ? (
    <div class="row">
      {stage.status === 'READYTODEPLOY' ? (
        <button
          type="button"
          onClick={() =>
            action.run(async () => {
              // A canary exists to stop the rollout: going on after a FAILED stage is a decision, asked for.
              const force = failedBefore.length > 0;
              if (
                force &&
                !window.confirm(
                  `${failedBefore
                    .map(
                      (failed) =>
                        `Stage ${failed.name} FAILED${failed.statusMessage !== undefined ? ` (${failed.statusMessage})` : ''}.`,
                    )
                    .join('\n')}\nStart stage ${stage.name} anyway?`,
                )
              )
                return;
              must(
                await api.POST('/api/v1/deployment-plans/{plan}/stages/{stage}/start', {
                  ...stageParams,
                  body: { force },
                }),
              );
              onChanged();
            })
          }
        >
          Start stage {stage.name}
        </button>
      ) : null}
      {STOPPABLE.has(stage.status) ? (
        <button
          type="button"
          class="danger"
          onClick={() =>
            action.run(async () => {
              // Irreversible: a stopped stage cannot be started again.
              if (
                !window.confirm(
                  `Stop stage ${stage.name}? Devices not finished are stopped, and the stage cannot be started again.`,
                )
              )
                return;
              must(await api.POST('/api/v1/deployment-plans/{plan}/stages/{stage}/stop', stageParams));
              onChanged();
            })
          }
        >
          Stop stage {stage.name}
        </button>
      ) : null}
    </div>
  ) : undefined;
  return (
    <Section title={`Stage ${stage.name}`} actions={controls}>
      <div data-stage={stage.name}>
        <p>
          <span data-testid="stage-status">
            <StatusBadge status={stage.status} />
          </span>{' '}
          {describeSelection(stage.deviceSelection)}; on failure:{' '}
          {stage.failureHandlingPolicy === 'ROLLBACK_ON_FAILURE' ? 'roll back' : 'do nothing'}
          {stage.statusMessage !== undefined ? <span class="muted"> — {stage.statusMessage}</span> : null}
        </p>
        <div class="stats" aria-label={`Stage ${stage.name} progress`}>
          <Stat
            label={inProgress !== undefined ? 'Pending' : 'Pending or in progress'}
            value={stage.pendingCount - (inProgress ?? 0)}
          />
          {inProgress !== undefined ? <Stat label="In progress" value={inProgress} /> : null}
          <Stat label="Deployed" value={stage.successCount} testId="stage-deployed" />
          <Stat label="Failed" value={stage.failedCount} />
          <Stat label="Stopped" value={stage.stoppedCount} />
        </div>
        <ErrorNote error={action.error ?? devices.error} />
        {selectedNone ? (
          <p class="warning" data-testid="stage-selected-none">
            This stage selected no device: none of fleet {fleetName}'s devices matched{' '}
            {describeSelection(stage.deviceSelection)} when it started, so it deployed nothing.
          </p>
        ) : null}
        {started ? (
          <div class="row">
            <label>
              Devices in status
              <select
                value={statusFilter}
                onChange={(e) => {
                  setStatusFilter(e.currentTarget.value as DeviceStatusFilter);
                  setPageTokens([undefined]);
                }}
              >
                <option value="">any</option>
                {DEVICE_STATUSES.map((status) => (
                  <option key={status} value={status}>
                    {status}
                  </option>
                ))}
              </select>
            </label>
            <span class="muted" data-testid="stage-devices-shown">
              {describeShown({
                first: (pageTokens.length - 1) * STAGE_DEVICES_SHOWN + 1,
                count: shown.length,
                total: matchingCount(stage, statusFilter),
                status: statusFilter,
              })}
            </span>
          </div>
        ) : null}
        {started ? (
          <table>
            <thead>
              <tr>
                <th scope="col">Device</th>
                <th scope="col">Status</th>
                <th scope="col">Reason</th>
                <th scope="col">Attempts</th>
                <th scope="col">Last seen</th>
                {canWrite ? <th scope="col">Action</th> : null}
              </tr>
            </thead>
            <tbody>
              {shown.map((device) => (
                <tr key={device.deviceName} data-stage-device={device.deviceName}>
                  <td>
                    <a href={href(`/devices/${encodeURIComponent(device.deviceName)}`)}>
                      {device.deviceName}
                    </a>
                  </td>
                  <td>
                    <StatusBadge status={device.status} />
                  </td>
                  <td>{device.statusMessage ?? '–'}</td>
                  <td>{device.attempts}</td>
                  <td>
                    <When at={device.lastSeenAt} />
                  </td>
                  {canWrite ? (
                    <td>
                      {CANCELLABLE.has(device.status) ? (
                        <button
                          type="button"
                          class="danger"
                          onClick={() =>
                            action.run(async () => {
                              // Irreversible: the device is STOPPED for this plan.
                              if (
                                !window.confirm(
                                  `Cancel ${device.deviceName}'s deployment? It is stopped for this plan and goes back to what earlier plans gave it.`,
                                )
                              )
                                return;
                              must(
                                await api.POST('/api/v1/deployment-plans/{plan}/devices/{device}/cancel', {
                                  params: { path: { plan: planName, device: device.deviceName } },
                                }),
                              );
                              devices.reload();
                              onChanged();
                            })
                          }
                        >
                          Cancel {device.deviceName}
                        </button>
                      ) : null}
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        ) : null}
        {started && (pageTokens.length > 1 || devices.data?.nextToken !== undefined) ? (
          <Pager
            label={`Stage ${stage.name} device pages`}
            pageTokens={pageTokens}
            setPageTokens={setPageTokens}
            nextToken={devices.data?.nextToken}
            loading={devices.loading}
          />
        ) : null}
        {started ? null : (
          <p class="muted" data-testid="stage-not-started">
            {stage.status === 'READYTODEPLOY'
              ? 'Not started: its devices are chosen when it starts.'
              : // Stopped (or its plan aborted) before it started: no device was chosen, and it cannot start now.
                `Never started: ${stage.status} before it started, so no device was chosen; it cannot be started.`}
          </p>
        )}
      </div>
    </Section>
  );
}

/** Deployment statuses a stage's devices can be in, for the table's filter. */
const DEVICE_STATUSES = ['READYTODEPLOY', 'INPROGRESS', 'DEPLOYED', 'FAILED', 'STOPPED'] as const;
type DeviceStatusFilter = (typeof DEVICE_STATUSES)[number] | '';

/** How many of the stage's devices the filter matches, from the stage's counts; undefined when they don't say. */
function matchingCount(stage: StageView, status: DeviceStatusFilter): number | undefined {
  if (status === '') return stage.successCount + stage.pendingCount + stage.failedCount + stage.stoppedCount;
  if (status === 'DEPLOYED') return stage.successCount;
  if (status === 'FAILED') return stage.failedCount;
  if (status === 'STOPPED') return stage.stoppedCount;
  // The server counts READYTODEPLOY and INPROGRESS together as pending.
  return undefined;
}

/** "Devices 101–200 of 250 shown, by name": which part of the stage's devices the table holds. */
function describeShown(page: { first: number; count: number; total?: number; status: DeviceStatusFilter }) {
  const which = page.status === '' ? 'devices' : `${page.status} devices`;
  if (page.count === 0) return page.first === 1 ? `No ${which}.` : `No more ${which}.`;
  const range = `${page.first}–${page.first + page.count - 1}`;
  return `${which[0]!.toUpperCase()}${which.slice(1)} ${range}${page.total !== undefined ? ` of ${page.total}` : ''} shown, by name.`;
}

function describeSelection(selection: StageView['deviceSelection']): string {
  const base =
    selection.subsetType === 'PERCENTAGE'
      ? `${selection.percentage ?? 0}% of the fleet`
      : selection.subsetType === 'SELECTION'
        ? `devices ${(selection.deviceNames ?? []).join(', ')}`
        : `devices whose name contains “${selection.deviceNameContains ?? ''}”`;
  const tags = Object.entries(selection.tags ?? {});
  return tags.length === 0 ? base : `${base} tagged ${tags.map(([k, v]) => `${k}=${v}`).join(', ')}`;
}

/** A labelled input bound to one field of a draft (model or stage) in the plan form. */
function DraftField({
  label,
  value,
  onValue,
  required = false,
  noAutoComplete = false,
  percentage = false,
}: {
  label: string;
  value: string;
  onValue(value: string): void;
  required?: boolean;
  /** Names and versions the browser's history would only get wrong. */
  noAutoComplete?: boolean;
  /** A number input from 0 to 100. */
  percentage?: boolean;
}) {
  const onInput = (e: { currentTarget: HTMLInputElement }) => onValue(e.currentTarget.value);
  return (
    <label>
      {label}
      {percentage ? (
        <input required={required} type="number" min={0} max={100} value={value} onInput={onInput} />
      ) : (
        <input
          required={required}
          autoComplete={noAutoComplete ? 'off' : undefined}
          value={value}
          onInput={onInput}
        />
      )}
    </label>
  );
}
