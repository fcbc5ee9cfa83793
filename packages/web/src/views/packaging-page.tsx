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

function StartJob({ onStarted }: { onStarted(): void }) {
  const { api } = useApp();
  const action = useAction();
  const models = useLoad(
    async () => must(await api.GET('/api/v1/models', { params: { query: { limit: 500 } } })).models,
    [],
  );
  return (
    <Section title="Start a packaging job">
      <form
        class="inline-form"
        aria-label="Start packaging job"
        onSubmit={submitForm(action, async (form) => {
          const [modelName = '', modelVersion = ''] = String(form.get('model') ?? '').split('\n');
          must(
            await api.POST('/api/v1/packaging-jobs', {
              body: { name: String(form.get('name') ?? ''), modelName, modelVersion },
            }),
          );
          onStarted();
        })}
      >
        <label>
          Job name <input name="name" required autoComplete="off" />
        </label>
        <label>
          Model version
          <select name="model" required>
            {(models.data ?? [])
              .filter((model) => model.latestVersion !== undefined)
              .map((model) => (
                <option key={model.name} value={`${model.name}\n${model.latestVersion ?? ''}`}>
                  {model.name} {model.latestVersion}
                </option>
              ))}
          </select>
        </label>
        <button type="submit">Start</button>
        <ErrorNote error={action.error} />
      </form>
    </Section>
  );
}
