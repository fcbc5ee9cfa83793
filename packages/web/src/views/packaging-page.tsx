import { useState } from 'preact/hooks';
import { must } from '../api/client.js';
import { useLive } from '../api/live.js';
import { useApp } from '../app-context.js';
import { ErrorNote, formatBytes, Section, StatusBadge, TableHead, When } from '../components/ui.js';
import { submitForm, useAction } from '../components/use-action.js';
import { useLoad } from '../components/use-load.js';

const ARTIFACT_ROUTE = '/api/v1/packaging-jobs/{job}/artifact';

export function PackagingPage() {
  const { api, live, canWrite } = useApp();
  const jobs = useLoad(
    async () => must(await api.GET('/api/v1/packaging-jobs', { params: { query: { limit: 100 } } })).jobs,
    [],
  );
  useLive(live, ['packaging'], jobs.reload);
  return (
    <>
      {canWrite ? <StartJob onStarted={jobs.reload} /> : null}
      <Section title="Packaging jobs">
        <ErrorNote error={jobs.error} />
        {(jobs.data ?? []).length === 0 && !jobs.loading ? <p class="muted">No packaging job yet.</p> : null}
        <table>
          <TableHead columns={['Job', 'Model', 'Status', 'Updated', 'Package']} />
          <tbody>
            {(jobs.data ?? []).map((job) => (
              <tr key={job.name} data-job={job.name}>
                <td>{job.name}</td>
                <td>
                  {job.modelName} {job.modelVersion}
                </td>
                <td data-testid="job-status">
                  <StatusBadge status={job.status} />
                  {job.statusMessage !== undefined ? <div class="muted">{job.statusMessage}</div> : null}
                </td>
                <td>
                  <When at={job.updatedAt} />
                </td>
                <td>
                  {job.artifact !== undefined ? (
                    <a href={ARTIFACT_ROUTE.replace('{job}', encodeURIComponent(job.name))} download>
                      Download ({formatBytes(job.artifact.sizeBytes)})
                    </a>
                  ) : (
                    '–'
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </Section>
    </>
  );
}

/**
 * Version names newest first, the model's latest at the top: the server lists them by name, where `10.0` comes
 * before `2.0`. The latest is offered even when it is not among the (at most 500) listed.
 */
function newestFirst(
  versions: readonly { version: string; createdAt: string }[],
  latest: string | undefined,
): string[] {
  const names = [...versions]
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt))
    .map((v) => v.version)
    .filter((name) => name !== latest);
  return latest === undefined || versions.length === 0 ? names : [latest, ...names];
}

function StartJob({ onStarted }: { onStarted(): void }) {
  const { api } = useApp();
  const action = useAction();
  const [chosenModel, setChosenModel] = useState<string | undefined>();
  const models = useLoad(
    async () => must(await api.GET('/api/v1/models', { params: { query: { limit: 500 } } })).models,
    [],
  );
  const uploaded = (models.data ?? []).filter((model) => model.latestVersion !== undefined);
  const model = uploaded.find((m) => m.name === chosenModel) ?? uploaded[0];
  // Every uploaded version of the chosen model, not only its latest: an older one (or a hotfix uploaded
  // before a newer version) must be packageable too.
  const versions = useLoad(
    async () =>
      model === undefined
        ? { model: undefined, versions: [] }
        : {
            model: model.name,
            versions: must(
              await api.GET('/api/v1/models/{model}/versions', {
                params: { path: { model: model.name }, query: { limit: 500 } },
              }),
            ).versions,
          },
    [model?.name],
  );
  // Until the chosen model's versions arrive, offer none rather than the previous model's.
  const offered = newestFirst(
    versions.data?.model === model?.name ? (versions.data?.versions ?? []) : [],
    model?.latestVersion,
  );
  return (
    <Section title="Start a packaging job">
      <form
        class="inline-form"
        aria-label="Start packaging job"
        onSubmit={submitForm(action, async (form) => {
          must(
            await api.POST('/api/v1/packaging-jobs', {
              body: {
                name: String(form.get('name') ?? ''),
                modelName: String(form.get('model') ?? ''),
                modelVersion: String(form.get('version') ?? ''),
              },
            }),
          );
          onStarted();
        })}
      >
        <label>
          Job name <input name="name" required autoComplete="off" />
        </label>
        <label>
          Model
          <select
            name="model"
            required
            value={model?.name ?? ''}
            onChange={(event) => setChosenModel(event.currentTarget.value)}
          >
            {uploaded.map((m) => (
              <option key={m.name} value={m.name}>
                {m.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Version
          {/* Keyed by the model, so that a newly chosen model starts at its latest version. */}
          <select name="version" required key={model?.name}>
            {offered.map((version) => (
              <option key={version} value={version} selected={version === model?.latestVersion}>
                {version}
                {version === model?.latestVersion ? ' (latest)' : ''}
              </option>
            ))}
          </select>
        </label>
        <button type="submit">Start</button>
        <ErrorNote error={action.error} />
        <ErrorNote error={versions.error} />
      </form>
    </Section>
  );
}
