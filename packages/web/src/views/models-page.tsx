import { useState } from 'preact/hooks';
import { must } from '../api/client.js';
import { useLive } from '../api/live.js';
import { uploadModel } from '../api/upload.js';
import { useApp } from '../app-context.js';
import { ErrorNote, formatBytes, Section, TableHead, When } from '../components/ui.js';
import { useAction } from '../components/use-action.js';
import { useLoad } from '../components/use-load.js';

export function ModelsPage() {
  const { api, live, canWrite } = useApp();
  const [selected, setSelected] = useState<string | undefined>();
  const models = useLoad(
    async () => must(await api.GET('/api/v1/models', { params: { query: { limit: 500 } } })).models,
    [],
  );
  const versions = useLoad(
    async () =>
      selected === undefined
        ? []
        : must(
            await api.GET('/api/v1/models/{model}/versions', {
              params: { path: { model: selected }, query: { limit: 500 } },
            }),
          ).versions,
    [selected],
  );
  useLive(live, ['models'], () => {
    models.reload();
    versions.reload();
  });
  return (
    <>
      {canWrite ? <UploadModel onUploaded={models.reload} /> : null}
      <Section title="Models">
        <ErrorNote error={models.error} />
        {(models.data ?? []).length === 0 && !models.loading ? (
          <p class="muted">No model uploaded yet.</p>
        ) : null}
        <table>
          <TableHead columns={['Model', 'Description', 'Versions', 'Latest', 'Updated']} />
          <tbody>
            {(models.data ?? []).map((model) => (
              <tr key={model.name} data-model={model.name}>
                <td>
                  <button
                    type="button"
                    class="link"
                    // It opens (and closes) the model's versions below the table.
                    aria-expanded={selected === model.name}
                    onClick={() => setSelected(selected === model.name ? undefined : model.name)}
                  >
                    {model.name}
                  </button>
                </td>
                <td data-testid="model-description">{model.description ?? ''}</td>
                <td>{model.versionCount}</td>
                <td>{model.latestVersion ?? '–'}</td>
                <td>
                  <When at={model.updatedAt} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </Section>
      {selected !== undefined ? (
        <Section title={`Versions of ${selected}`}>
          <ErrorNote error={versions.error} />
          {(versions.data ?? []).map((version) => (
            <article class="version" key={version.version} aria-label={`Version ${version.version}`}>
              <h3>
                {version.version}{' '}
                <span class="muted">
                  ({version.sourceKind}, {formatBytes(version.sizeBytes)})
                </span>
              </h3>
              <p class="muted">
                sha256 <code>{version.sha256}</code>, uploaded <When at={version.createdAt} />
              </p>
              {version.warning !== undefined ? (
                <p class="warning" data-testid="version-warning">
                  {version.warning}
                </p>
              ) : null}
              <table>
                <TableHead columns={['Tensor', 'Kind', 'Type', 'Shape']} />
                <tbody>
                  {[
                    ...version.inputs.map((t) => ({ ...t, kind: 'input' })),
                    ...version.outputs.map((t) => ({ ...t, kind: 'output' })),
                  ].map((tensor) => (
                    <tr key={`${tensor.kind} ${tensor.name}`}>
                      <td>{tensor.name}</td>
                      <td>{tensor.kind}</td>
                      <td>{tensor.dataType}</td>
                      <td>[{tensor.shape.join(', ')}]</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </article>
          ))}
        </Section>
      ) : null}
    </>
  );
}

function UploadModel({ onUploaded }: { onUploaded(): void }) {
  const { csrfToken } = useApp();
  const [progress, setProgress] = useState<number | undefined>();
  // The last upload's warning (a package the server's devices will refuse): shown until the next upload.
  const [warning, setWarning] = useState<string | undefined>();
  const action = useAction();
  return (
    <Section title="Upload a model">
      <form
        class="inline-form"
        aria-label="Upload model"
        onSubmit={async (event) => {
          event.preventDefault();
          const formElement = event.currentTarget;
          const form = new FormData(formElement);
          const file = form.get('file');
          if (!(file instanceof File) || file.size === 0) {
            action.setError('choose an .onnx model or a .tar.gz package');
            return;
          }
          setProgress(0);
          setWarning(undefined);
          await action.run(async () => {
            const description = String(form.get('description') ?? '');
            let answer: { warning?: string };
            try {
              answer = await uploadModel({
                model: String(form.get('model') ?? ''),
                version: String(form.get('version') ?? ''),
                ...(description !== '' ? { description } : {}),
                file,
                csrfToken,
                onProgress: setProgress,
              });
            } catch (failure) {
              setProgress(undefined);
              throw failure;
            }
            setWarning(answer.warning);
            formElement.reset();
            onUploaded();
          });
        }}
      >
        <label>
          Model name <input name="model" required autoComplete="off" />
        </label>
        <label>
          Version <input name="version" required autoComplete="off" />
        </label>
        <label>
          Description <input name="description" />
        </label>
        <label>
          File <input name="file" type="file" accept=".onnx,.tar.gz,.tgz" required />
        </label>
        <button type="submit">Upload</button>
        {progress !== undefined ? (
          <progress max={1} value={progress} aria-label="Upload progress" data-testid="upload-progress">
            {Math.round(progress * 100)}%
          </progress>
        ) : null}
        <ErrorNote error={action.error} />
        {warning !== undefined ? (
          <p class="warning" role="status" data-testid="upload-warning">
            Uploaded, but: {warning}
          </p>
        ) : null}
      </form>
    </Section>
  );
}
