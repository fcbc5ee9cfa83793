import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';

export function ErrorNote({ error }: { error: string | undefined }) {
  if (error === undefined) return null;
  return (
    <p class="error" role="alert">
      {error}
    </p>
  );
}

export function Section({
  title,
  children,
  actions,
}: {
  title: string;
  children: ComponentChildren;
  actions?: ComponentChildren;
}) {
  return (
    <section class="card" aria-label={title}>
      <header class="card-head">
        <h2>{title}</h2>
        {actions}
      </header>
      {children}
    </section>
  );
}

const relative = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });

/** "3 minutes ago", with the exact time on hover. */
export function When({ at }: { at: string | undefined }) {
  if (at === undefined) return <span class="muted">never</span>;
  const ms = Date.parse(at);
  const seconds = Math.round((ms - Date.now()) / 1000);
  const [value, unit]: [number, Intl.RelativeTimeFormatUnit] =
    Math.abs(seconds) < 60
      ? [seconds, 'second']
      : Math.abs(seconds) < 3600
        ? [Math.round(seconds / 60), 'minute']
        : Math.abs(seconds) < 86_400
          ? [Math.round(seconds / 3600), 'hour']
          : [Math.round(seconds / 86_400), 'day'];
  return (
    <time dateTime={at} title={new Date(ms).toLocaleString()}>
      {relative.format(value, unit)}
    </time>
  );
}

/** A big number with its label (totals, stage progress). */
export function Stat({ label, value, testId }: { label: string; value: number; testId?: string }) {
  return (
    <div class="stat">
      <span class="stat-value" data-testid={testId}>
        {value}
      </span>
      <span class="stat-label">{label}</span>
    </div>
  );
}

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge badge-${status.toLowerCase().replace(/[^a-z]/g, '-')}`}>{status}</span>;
}

/** A secret shown once, with a copy button; it is gone when the operator dismisses it. */
export function ShownOnce({
  label,
  secret,
  onDismiss,
}: {
  label: string;
  secret: string;
  onDismiss(): void;
}) {
  const [copied, setCopied] = useState(false);
  return (
    <div class="shown-once" role="status">
      <p>
        <strong>{label}</strong> — shown once; copy it now.
      </p>
      <code class="secret" data-testid="secret">
        {secret}
      </code>
      <div class="row">
        <button
          type="button"
          onClick={() => {
            void navigator.clipboard?.writeText(secret).then(() => setCopied(true));
          }}
        >
          {copied ? 'Copied' : 'Copy'}
        </button>
        <button type="button" class="secondary" onClick={onDismiss}>
          Done
        </button>
      </div>
    </div>
  );
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** A table's header row of plain column titles. */
export function TableHead({ columns }: { columns: string[] }) {
  return (
    <thead>
      <tr>
        {columns.map((column) => (
          <th key={column} scope="col">
            {column}
          </th>
        ))}
      </tr>
    </thead>
  );
}

/**
 * Previous / Page N / Next over a keyset-paged list: `pageTokens` holds the token of each page shown so far (the
 * first is undefined), `nextToken` the one the current page's answer gave. Next waits while that page loads, so a
 * double click cannot skip a page.
 */
export function Pager({
  label,
  pageTokens,
  setPageTokens,
  nextToken,
  loading,
  pageTestId,
}: {
  label: string;
  pageTokens: (string | undefined)[];
  setPageTokens: (tokens: (string | undefined)[]) => void;
  nextToken: string | undefined;
  loading: boolean;
  pageTestId?: string;
}) {
  return (
    <nav class="pager" aria-label={label}>
      <button
        type="button"
        class="secondary"
        disabled={pageTokens.length <= 1}
        onClick={() => setPageTokens(pageTokens.slice(0, -1))}
      >
        Previous
      </button>
      <span data-testid={pageTestId}>Page {pageTokens.length}</span>
      <button
        type="button"
        class="secondary"
        disabled={loading || nextToken === undefined}
        onClick={() => setPageTokens([...pageTokens, nextToken])}
      >
        Next
      </button>
    </nav>
  );
}
