import { useState } from 'preact/hooks';
import { must } from '../api/client.js';
import { useLive } from '../api/live.js';
import { useApp } from '../app-context.js';
import { ErrorNote, Pager, Section, StatusBadge, When } from '../components/ui.js';
import { submitForm, useAction } from '../components/use-action.js';
import { useLoad } from '../components/use-load.js';
import { currentPath, href } from '../router.js';

const PAGE_SIZE = 50;

interface Filters {
  fleet: string;
  status: '' | 'online' | 'offline' | 'never-seen';
  tag: string;
  modelName: string;
  nameContains: string;
}

function statusFilter(value: string | null): Filters['status'] {
  return value === 'online' || value === 'offline' || value === 'never-seen' ? value : '';
}

function filtersFromHash(): Filters {
  const query = new URLSearchParams(currentPath().split('?')[1] ?? '');
  const status = query.get('status');
  return {
    fleet: query.get('fleet') ?? '',
    status: statusFilter(status),
    tag: query.get('tag') ?? '',
    modelName: query.get('modelName') ?? '',
    nameContains: query.get('nameContains') ?? '',
  };
}

type SortBy = 'name' | 'lastSeen' | 'registered';
interface Sort {
  sortBy: SortBy;
  sortOrder: 'asc' | 'desc';
}

/**
 * A column header that sorts the list: a real button (focusable, Enter/Space) inside a header cell whose
 * aria-sort tells assistive technology the current order. Clicking the sorted column reverses it.
 */
function SortHeader({
  label,
  by,
  sort,
  onSort,
}: {
  label: string;
  by: SortBy;
  sort: Sort;
  onSort(next: Sort): void;
}) {
  const active = sort.sortBy === by;
  const ariaSort = active ? (sort.sortOrder === 'asc' ? 'ascending' : 'descending') : 'none';
  return (
    <th scope="col" aria-sort={ariaSort}>
      <button
        type="button"
        class="sort-header"
        data-sort={by}
        onClick={() => onSort({ sortBy: by, sortOrder: active && sort.sortOrder === 'asc' ? 'desc' : 'asc' })}
      >
        {label}
        <span aria-hidden="true">{active ? (sort.sortOrder === 'asc' ? ' ▲' : ' ▼') : ''}</span>
      </button>
    </th>
  );
}

/**
 * The device list: filtered, sorted and paged by the server (keyset on the sort key and name), so it stays
 * fast at any fleet size.
 */
export function DevicesPage() {
  const { api, live, canWrite } = useApp();
  const [filters, setFilters] = useState<Filters>(filtersFromHash);
  const [sort, setSort] = useState<Sort>({ sortBy: 'name', sortOrder: 'asc' });
  // Tokens of the pages before this one, so "Previous" can go back without the server keeping state.
  const [pageTokens, setPageTokens] = useState<(string | undefined)[]>([undefined]);
  const pageToken = pageTokens[pageTokens.length - 1];
  const fleets = useLoad(
    async () => must(await api.GET('/api/v1/fleets', { params: { query: { limit: 500 } } })).fleets,
    [],
  );
  const page = useLoad(async () => {
    const query = {
      limit: PAGE_SIZE,
      sortBy: sort.sortBy,
      sortOrder: sort.sortOrder,
      ...(pageToken !== undefined ? { nextToken: pageToken } : {}),
      ...(filters.fleet !== '' ? { fleet: filters.fleet } : {}),
      ...(filters.status !== '' ? { status: filters.status } : {}),
      ...(filters.tag !== '' ? { tag: filters.tag } : {}),
      ...(filters.modelName !== '' ? { modelName: filters.modelName } : {}),
      ...(filters.nameContains !== '' ? { nameContains: filters.nameContains } : {}),
    };
    return must(await api.GET('/api/v1/devices', { params: { query } }));
  }, [filters, sort, pageToken]);
  useLive(live, ['devices'], page.reload);
  useLive(live, ['fleets'], fleets.reload);

  const applyFilters = (next: Filters) => {
    setFilters(next);
    setPageTokens([undefined]);
  };
  // A page token continues only the order it was taken in: a new order starts again at page 1.
  const applySort = (next: Sort) => {
    setSort(next);
    setPageTokens([undefined]);
  };

  return (
    <>
      <Section title="Filter">
        <form
          class="filters"
          aria-label="Filter devices"
          onSubmit={(event) => {
            event.preventDefault();
            const form = new FormData(event.currentTarget);
            const status = String(form.get('status') ?? '');
            applyFilters({
              fleet: String(form.get('fleet') ?? ''),
              status: statusFilter(status),
              tag: String(form.get('tag') ?? '').trim(),
              modelName: String(form.get('modelName') ?? '').trim(),
              nameContains: String(form.get('nameContains') ?? '').trim(),
            });
          }}
        >
          <label>
            Name contains <input name="nameContains" defaultValue={filters.nameContains} />
          </label>
          <label>
            Fleet
            <select name="fleet" defaultValue={filters.fleet}>
              <option value="">All fleets</option>
              {(fleets.data ?? []).map((fleet) => (
                <option key={fleet.name} value={fleet.name} selected={fleet.name === filters.fleet}>
                  {fleet.name}
                </option>
              ))}
            </select>
          </label>
          <label>
            Status
            <select name="status" defaultValue={filters.status}>
              <option value="">Any</option>
              <option value="online">Online</option>
              <option value="offline">Offline</option>
              <option value="never-seen">Never seen</option>
            </select>
          </label>
          <label>
            Tag <input name="tag" placeholder="key or key=value" defaultValue={filters.tag} />
          </label>
          <label>
            Model <input name="modelName" defaultValue={filters.modelName} />
          </label>
          <button type="submit">Apply</button>
        </form>
      </Section>
      {canWrite ? (
        <RegisterDevices fleets={(fleets.data ?? []).map((f) => f.name)} onDone={page.reload} />
      ) : null}
      <Section title="Devices">
        <ErrorNote error={page.error} />
        <table aria-label="Devices" aria-busy={page.loading}>
          <thead>
            <tr>
              <SortHeader label="Name" by="name" sort={sort} onSort={applySort} />
              <th scope="col">Fleet</th>
              <th scope="col">Status</th>
              <SortHeader label="Last heartbeat" by="lastSeen" sort={sort} onSort={applySort} />
              <SortHeader label="Registered" by="registered" sort={sort} onSort={applySort} />
              <th scope="col">Agent</th>
              <th scope="col">Models</th>
            </tr>
          </thead>
          <tbody>
            {(page.data?.devices ?? []).map((device) => (
              <tr key={device.name} data-device={device.name}>
                <td>
                  <a href={href(`/devices/${encodeURIComponent(device.name)}`)}>{device.name}</a>
                </td>
                <td>{device.fleetName}</td>
                <td>
                  <StatusBadge status={device.latestHeartbeat === undefined ? 'never seen' : device.status} />
                </td>
                <td>
                  <When at={device.latestHeartbeat} />
                </td>
                <td>
                  <When at={device.registeredAt} />
                </td>
                <td>{device.agentVersion ?? '–'}</td>
                <td>
                  {device.models.map((m) => `${m.name} ${m.version}`).join(', ') || '–'}
                  {device.deployedModelsNotLoadedCount ? (
                    // Deployed, yet serving nothing under those handles: the device page says which and why.
                    <>
                      {' '}
                      <span class="badge badge-warning" data-testid="not-loaded-count">
                        {device.deployedModelsNotLoadedCount} not loaded
                      </span>
                    </>
                  ) : null}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {page.data !== undefined && page.data.devices.length === 0 ? (
          <p class="muted">No device matches.</p>
        ) : null}
        <Pager
          label="Pages"
          pageTokens={pageTokens}
          setPageTokens={setPageTokens}
          nextToken={page.data?.nextToken}
          loading={page.loading}
        />
      </Section>
    </>
  );
}

function RegisterDevices({ fleets, onDone }: { fleets: string[]; onDone(): void }) {
  const { api } = useApp();
  const action = useAction();
  // The list is sorted by name and paged: a new device may land on another page, so the form says what it did.
  const [registered, setRegistered] = useState<string | undefined>();
  return (
    <Section title="Register devices">
      <form
        class="inline-form"
        aria-label="Register devices"
        onSubmit={submitForm(action, async (form) => {
          const names = String(form.get('names') ?? '')
            .split(/[\s,]+/)
            .filter(Boolean);
          if (names.length === 0) throw new Error('name at least one device');
          setRegistered(undefined);
          const fleet = String(form.get('fleet') ?? '');
          const done = must(
            await api.POST('/api/v1/fleets/{fleet}/devices', {
              params: { path: { fleet } },
              body: { devices: names.map((name) => ({ name })) },
            }),
          ).devices;
          const shown = done.slice(0, 5).map((device) => device.name);
          setRegistered(
            `Registered ${done.length} device${done.length === 1 ? '' : 's'} in fleet ${fleet}: ` +
              `${shown.join(', ')}${done.length > shown.length ? ', …' : ''}.`,
          );
          onDone();
        })}
      >
        <label>
          Fleet
          <select name="fleet" required>
            {fleets.map((fleet) => (
              <option key={fleet} value={fleet}>
                {fleet}
              </option>
            ))}
          </select>
        </label>
        <label>
          Device names <input name="names" placeholder="camera-1, camera-2" required autoComplete="off" />
        </label>
        <button type="submit" disabled={fleets.length === 0}>
          Register
        </button>
        <ErrorNote error={action.error} />
        {registered !== undefined && action.error === undefined ? (
          <p role="status" data-testid="registered">
            {registered}
          </p>
        ) : null}
        {fleets.length === 0 ? (
          <p class="muted" data-testid="no-fleet-hint">
            A device is registered in a fleet: create one first on the <a href={href('/')}>Overview</a>{' '}
            (Create fleet).
          </p>
        ) : null}
      </form>
    </Section>
  );
}
