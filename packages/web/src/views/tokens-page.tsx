import { useState } from 'preact/hooks';
import { errorMessage, must } from '../api/client.js';
import { useLive } from '../api/live.js';
import { useApp } from '../app-context.js';
import { ErrorNote, Section, ShownOnce, StatusBadge, When } from '../components/ui.js';
import { submitForm, useAction } from '../components/use-action.js';
import { useLoad } from '../components/use-load.js';

export function TokensPage() {
  const { api, live, canWrite, operator } = useApp();
  const [secret, setSecret] = useState<string | undefined>();
  const action = useAction();
  const tokens = useLoad(
    async () => must(await api.GET('/api/v1/tokens', { params: { query: { limit: 500 } } })).tokens,
    [],
  );
  useLive(live, ['tokens'], tokens.reload);
  return (
    <>
      {canWrite ? (
        <Section title="Create a token">
          <form
            class="inline-form"
            aria-label="Create token"
            onSubmit={submitForm(action, async (form) => {
              const scope = form.get('scope') === 'admin' ? 'admin' : 'read-only';
              const created = must(
                await api.POST('/api/v1/tokens', { body: { name: String(form.get('name') ?? ''), scope } }),
              );
              setSecret(created.token);
              tokens.reload();
            })}
          >
            <label>
              Name <input name="name" required autoComplete="off" />
            </label>
            <label>
              Scope
              <select name="scope">
                <option value="read-only">read-only</option>
                <option value="admin">admin</option>
              </select>
            </label>
            <button type="submit">Create</button>
          </form>
          <ErrorNote error={action.error} />
          {secret !== undefined ? (
            <ShownOnce label="API token" secret={secret} onDismiss={() => setSecret(undefined)} />
          ) : null}
        </Section>
      ) : null}
      <Section title="API tokens">
        <ErrorNote error={tokens.error} />
        <table>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Scope</th>
              <th scope="col">Created</th>
              <th scope="col">State</th>
              {canWrite ? <th scope="col">Actions</th> : null}
            </tr>
          </thead>
          <tbody>
            {(tokens.data ?? []).map((token) => (
              <tr key={token.id} data-token={token.name}>
                <td>{token.name}</td>
                <td>{token.scope}</td>
                <td>
                  <When at={token.createdAt} />
                </td>
                <td>
                  <StatusBadge status={token.revokedAt !== undefined ? 'revoked' : 'active'} />
                </td>
                {canWrite ? (
                  <td>
                    {token.id === operator.tokenId ? (
                      // The server refuses a token revoking itself (409): not offered.
                      <span class="muted">signed in with it</span>
                    ) : token.revokedAt === undefined ? (
                      <button
                        type="button"
                        class="danger"
                        // A screen reader's list of buttons says which token each one revokes.
                        aria-label={`Revoke ${token.name}`}
                        onClick={async () => {
                          if (
                            !window.confirm(
                              `Revoke token ${token.name}? Consoles signed in with it are signed out.`,
                            )
                          )
                            return;
                          const result = await api.DELETE('/api/v1/tokens/{id}', {
                            params: { path: { id: token.id } },
                          });
                          if (result.error !== undefined) action.setError(errorMessage(result.error));
                          tokens.reload();
                        }}
                      >
                        Revoke
                      </button>
                    ) : null}
                  </td>
                ) : null}
              </tr>
            ))}
          </tbody>
        </table>
      </Section>
    </>
  );
}
