import 'uplot/dist/uPlot.min.css';
import './styles.css';
import { render } from 'preact';
import { useEffect, useMemo, useState } from 'preact/hooks';
import { createApiClient, errorMessage } from './api/client.js';
import { LiveUpdates } from './api/live.js';
import { AppContextValue, type AppContext, type Operator } from './app-context.js';
import { ErrorNote } from './components/ui.js';
import { href, matchRoute, useHashPath } from './router.js';
import { views } from './views/index.js';

interface Session {
  operator: Operator;
  csrfToken: string;
}

type Theme = 'light' | 'dark';

function initialTheme(): Theme {
  const saved = window.localStorage.getItem('edgefleet-theme');
  if (saved === 'light' || saved === 'dark') return saved;
  return window.matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

function App() {
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [theme, setTheme] = useState<Theme>(initialTheme);
  const [connected, setConnected] = useState(false);
  const [refusal, setRefusal] = useState<string | undefined>();
  const [ended, setEnded] = useState<string | undefined>();
  /**
   * The session expired while a page was open: the page stays (inert, behind the sign-in dialog) so that what
   * was typed in its forms is still there after signing in again. Only then: after a revocation or a sign-out
   * (another tab's) the page goes, so that another token cannot send what the earlier operator typed.
   */
  const [reauth, setReauth] = useState(false);
  /** Part of the page's key: a new value mounts the page afresh, dropping what was typed in it. */
  const [pageGeneration, setPageGeneration] = useState(0);
  const path = useHashPath();
  const holder = useMemo(() => ({ session: undefined as Session | undefined, signIns: 0 }), []);
  holder.session = session ?? undefined;
  const api = useMemo(
    () =>
      createApiClient({
        csrfToken: () => holder.session?.csrfToken,
        signIns: () => holder.signIns,
        onSignedOut: (ended) => {
          setEnded(ended?.message);
          if (holder.session !== undefined && ended?.reason === 'expired') setReauth(true);
          else {
            setReauth(false);
            setSession(null);
          }
        },
      }),
    [holder],
  );
  const live = useMemo(
    () => new LiveUpdates(async () => (await api.GET('/api/v1/console/session')).response.status !== 401),
    [api],
  );

  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    window.localStorage.setItem('edgefleet-theme', theme);
  }, [theme]);

  useEffect(() => {
    void api.GET('/api/v1/console/session').then((result) => {
      const error = result.error as { message?: string; details?: { sessionEnded?: string } } | undefined;
      // A cookie whose session ended (its token revoked, expired): say so above the sign-in form.
      if (error?.details?.sessionEnded === 'revoked' || error?.details?.sessionEnded === 'expired')
        setEnded(error.message);
      setSession(
        result.data !== undefined
          ? { operator: result.data.operator, csrfToken: result.data.csrfToken }
          : null,
      );
    });
  }, [api]);

  useEffect(() => {
    if (session === null || session === undefined || reauth) return undefined;
    live.onStateChange = setConnected;
    live.onRefusal = setRefusal;
    live.start();
    return () => live.stop();
  }, [session, live, reauth]);

  if (session === undefined) return <p class="loading">Loading…</p>;
  const signIn = (
    <SignIn
      api={api}
      ended={ended}
      inDialog={reauth}
      onSignedIn={(signedIn) => {
        holder.signIns += 1;
        setEnded(undefined);
        // Another token signed in over an expired session: the earlier operator's page (and what was typed in
        // it) is not this one's to send; it starts afresh.
        if (reauth && signedIn.operator.tokenId !== holder.session?.operator.tokenId)
          setPageGeneration((n) => n + 1);
        setSession(signedIn);
        if (reauth) {
          setReauth(false);
          live.reloadAll();
        }
      }}
    />
  );
  if (session === null) return signIn;

  const context: AppContext = {
    api,
    live,
    operator: session.operator,
    csrfToken: session.csrfToken,
    canWrite: session.operator.scope === 'admin',
    theme,
  };
  const [pathOnly] = path.split('?');
  const visible = views.filter((view) => view.adminOnly !== true || context.canWrite);
  const matched = visible
    .map((view) => ({ view, params: matchRoute(view.path, pathOnly ?? '/') }))
    .find((entry) => entry.params !== undefined);
  const Page = matched?.view.component;
  const subject = Object.values(matched?.params ?? {})[0];
  return (
    <AppContextValue.Provider value={context}>
      {reauth ? (
        <div class="sign-in-again" role="dialog" aria-modal="true" aria-label="Sign in again">
          {signIn}
        </div>
      ) : null}
      <a class="skip" href="#main" inert={reauth}>
        Skip to content
      </a>
      <header class="top" inert={reauth}>
        <span class="brand">EdgeFleet</span>
        <nav aria-label="Main">
          {visible
            .filter((view) => view.nav !== undefined)
            .map((view) => (
              <a
                key={view.path}
                href={href(view.path)}
                aria-current={matched?.view.path === view.path ? 'page' : undefined}
              >
                {view.nav}
              </a>
            ))}
        </nav>
        <span class={connected ? 'live live-on' : 'live'} title="Live updates" data-testid="live">
          {connected ? 'live' : 'offline'}
        </span>
        {!connected && refusal !== undefined ? (
          <p class="warning live-refused" role="status" data-testid="live-refused">
            Live updates paused: {refusal}. This tab tries again by itself every 30-60 s.
          </p>
        ) : null}
        <span class="who" data-testid="operator">
          {session.operator.name} ({session.operator.scope})
        </span>
        <button
          type="button"
          class="secondary"
          aria-label={`Switch to ${theme === 'dark' ? 'light' : 'dark'} theme`}
          onClick={() => setTheme(theme === 'dark' ? 'light' : 'dark')}
        >
          {theme === 'dark' ? 'Light' : 'Dark'}
        </button>
        <button
          type="button"
          class="secondary"
          onClick={async () => {
            await api.DELETE('/api/v1/console/session');
            live.stop();
            // A 401 answered meanwhile (the session had ended) may have asked to sign in again over this page.
            setReauth(false);
            setSession(null);
          }}
        >
          Sign out
        </button>
      </header>
      <DocumentTitle
        title={`${matched?.view.title ?? 'Not found'}${subject !== undefined ? ` ${subject}` : ''}`}
      />
      <main id="main" tabIndex={-1} inert={reauth}>
        <h1>{matched?.view.title ?? 'Not found'}</h1>
        {Page !== undefined && matched?.params !== undefined ? (
          <Page key={`${pageGeneration} ${path}`} params={matched.params} />
        ) : (
          <p>
            No such page. <a href={href('/')}>Go to the overview</a>.
          </p>
        )}
      </main>
    </AppContextValue.Provider>
  );
}

/** Tabs, history and screen readers tell pages apart by the title: the page, and what it shows (a device, a plan). */
function DocumentTitle({ title }: { title: string }) {
  useEffect(() => {
    document.title = `${title} — EdgeFleet console`;
  }, [title]);
  return null;
}

/** An operator API token as the server makes them (efo_ and base64url): one word, no spaces. */
const OPERATOR_TOKEN_PATTERN = /^efo_\S+$/;

function SignIn({
  api,
  ended,
  inDialog,
  onSignedIn,
}: {
  api: AppContext['api'];
  /** Over the page the session ended on (that page keeps what was typed), rather than the whole window. */
  inDialog: boolean;
  /** Why the previous session ended, when the server said (its token revoked, expired). */
  ended: string | undefined;
  onSignedIn(session: Session): void;
}) {
  const [error, setError] = useState<string | undefined>();
  const content = (
    <>
      {inDialog ? null : <DocumentTitle title="Sign in" />}
      {inDialog ? <h2>Sign in again</h2> : <h1>EdgeFleet console</h1>}
      {ended !== undefined ? (
        <p role="status" class="note" data-testid="session-ended">
          {ended}
        </p>
      ) : null}
      <form
        aria-label="Sign in"
        onSubmit={async (event) => {
          event.preventDefault();
          const token = String(new FormData(event.currentTarget).get('token') ?? '').trim();
          // Said here in the console's words: sent, a token with spaces is no bearer token at all, and the
          // server's answer would be about the Authorization header.
          if (!OPERATOR_TOKEN_PATTERN.test(token)) {
            setError(
              'that is not an EdgeFleet token: an operator API token is one word beginning with efo_ (as edgefleet-server init or edgefleet token create printed it)',
            );
            return;
          }
          // The token goes once, as the bearer token; from then on the HttpOnly cookie stands in for it.
          const result = await api.POST('/api/v1/console/session', {
            headers: { authorization: `Bearer ${token}` },
          });
          if (result.data === undefined) {
            setError(errorMessage(result.error));
            return;
          }
          onSignedIn({ operator: result.data.operator, csrfToken: result.data.csrfToken });
        }}
      >
        <label>
          Operator API token
          <input name="token" type="password" autoComplete="off" required placeholder="efo_…" />
        </label>
        <button type="submit">Sign in</button>
        <ErrorNote error={error} />
        <p class="muted">
          Use the admin token <code>edgefleet-server init</code> (or <code>npm start</code>) printed, or one
          made with <code>edgefleet token create</code>. It is exchanged for a session cookie and not kept by
          the browser.
        </p>
        {inDialog ? (
          <p class="muted">The page behind keeps what you typed: send it again once signed in.</p>
        ) : null}
      </form>
    </>
  );
  return inDialog ? (
    <div class="sign-in">{content}</div>
  ) : (
    <main class="sign-in" id="main">
      {content}
    </main>
  );
}

const root = document.getElementById('app');
if (root !== null) render(<App />, root);
