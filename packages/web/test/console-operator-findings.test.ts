/**
 * Findings of the s11 console walkthrough, in real Chromium against a real edgefleet-server process: an expired
 * session says so and keeps what was typed; the plan form refuses a stage tag without `=`; a started stage that
 * selected no device says so; Stop stage and Cancel <device> ask first; register-devices names a bad entry by
 * its value; and the smaller ones (tokens, device page, models, titles, a 400 px window).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeTestModel } from '@edgefleet/core';
import { describe, expect, it } from 'vitest';
import { enrollWithCliProcess } from '../../../test/support/control-plane.js';
import { expireConsoleSessionsNow, useConsoleServer } from './browser.js';

const ui = useConsoleServer({});
const { api, signIn } = ui;

/**
 * Sends one heartbeat as the device enrolled with `configFile` (its certificate and key, the server's CA and its
 * device endpoint, as the agent would read them); resolves with the HTTP status.
 */
async function sendHeartbeat(configFile: string, body: Record<string, unknown>): Promise<number> {
  const config = JSON.parse(await readFile(configFile, 'utf8')) as Record<string, string>;
  const [cert, key, ca] = await Promise.all(
    [
      'sagemaker_edge_provider_aws_cert_file',
      'sagemaker_edge_provider_aws_cert_pk_file',
      'sagemaker_edge_provider_aws_ca_cert_file',
    ].map((name) => readFile(config[name] ?? '', 'utf8')),
  );
  const endpoint = config.sagemaker_edge_core_endpoint_override ?? '';
  const url = new URL('api/v1/device/heartbeat', endpoint.endsWith('/') ? endpoint : `${endpoint}/`);
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: 'POST', cert, key, ca, headers: { 'content-type': 'application/json' } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

describe('console operator findings (s11)', { timeout: 120_000 }, () => {
  it('on an empty server, the register and plan forms say a fleet comes first', async () => {
    const page = await signIn(ui.plane.adminToken);
    await page.getByRole('link', { name: 'Devices' }).click();
    await page.getByRole('form', { name: 'Register devices' }).getByTestId('no-fleet-hint').waitFor();
    await page.getByRole('link', { name: 'Deployments' }).click();
    await page.getByRole('form', { name: 'Create deployment plan' }).getByTestId('no-fleet-hint').waitFor();
    await page.context().close();
  });

  it('an expired session: the cookie outlives it, the server says it expired, and the page keeps what was typed', async () => {
    const page = await signIn(ui.plane.adminToken);
    const session = (await page.evaluate(`fetch('/api/v1/console/session').then((r) => r.json())`)) as {
      expiresAt: string;
    };
    // The browser keeps the cookie a day past the session, so it still sends it once the session has expired.
    const [cookie] = await page.context().cookies();
    expect(cookie?.expires ?? 0).toBeGreaterThan(Date.parse(session.expiresAt) / 1000 + 23 * 3600);

    await page.getByRole('button', { name: 'Create fleet' }).click();
    const form = page.getByRole('form', { name: 'Create fleet' });
    await form.getByLabel('Name').fill('typed-before-expiry');
    expireConsoleSessionsNow(ui.plane.dataDir);
    await form.getByRole('button', { name: 'Create' }).click();

    // Told why, over the page it was on.
    const dialog = page.getByRole('dialog', { name: 'Sign in again' });
    await expect
      .poll(() => dialog.getByTestId('session-ended').textContent())
      .toBe('the console session expired (console.sessionTtlSeconds); sign in again');
    await dialog.getByLabel('Operator API token').fill(ui.plane.adminToken);
    await dialog.getByRole('button', { name: 'Sign in' }).click();
    await dialog.waitFor({ state: 'detached' });
    // What was typed is still there; sent again, it is created.
    expect(await form.getByLabel('Name').inputValue()).toBe('typed-before-expiry');
    await form.getByRole('button', { name: 'Create' }).click();
    await page.locator('tr[data-fleet="typed-before-expiry"]').waitFor();
    expect((await api('GET', '/api/v1/fleets/typed-before-expiry', ui.plane.adminToken)).status).toBe(200);
    await page.context().close();
  });

  it('plan form: a stage tag without = is refused; a started stage that selected no device says so; Stop and Cancel ask first', async () => {
    expect(
      (
        await api('POST', '/api/v1/fleets', ui.plane.adminToken, {
          name: 'yard',
          outputConfig: { s3OutputLocation: 's3://yard/' },
        })
      ).status,
    ).toBe(201);
    const page = await signIn(ui.plane.adminToken);
    // No packaging job on this server: the plan form says where one comes from.
    await page.getByRole('link', { name: 'Deployments' }).click();
    await page.getByTestId('no-job-hint').waitFor();
    expect(await page.getByTestId('no-fleet-hint').count()).toBe(0);

    // Register devices: a bad entry among good ones is named by its value; nothing is registered.
    await page.getByRole('link', { name: 'Devices' }).click();
    const register = page.getByRole('form', { name: 'Register devices' });
    await register.getByLabel('Fleet').selectOption('yard');
    await register.getByLabel('Device names').fill('crane-1 bad_name crane-2');
    await register.getByRole('button', { name: 'Register' }).click();
    await register.getByRole('alert').filter({ hasText: '"bad_name" (devices.1.name): expected' }).waitFor();
    expect((await api('GET', '/api/v1/devices/crane-1', ui.plane.adminToken)).status).toBe(404);
    await register.getByLabel('Device names').fill('crane-1');
    await register.getByRole('button', { name: 'Register' }).click();
    await page.locator('tr[data-device="crane-1"]').waitFor();
    expect(await register.getByTestId('registered').textContent()).toBe(
      'Registered 1 device in fleet yard: crane-1.',
    );

    await page.getByRole('link', { name: 'Deployments' }).click();
    const form = page.getByRole('form', { name: 'Create deployment plan' });
    await form.getByLabel(/^Plan name/).fill('tagged-1');
    await form.getByLabel(/^Fleet/).selectOption('yard');
    const model = form.getByRole('group', { name: 'Model 1' });
    await model.getByLabel(/^Model handle/).fill('old-model');
    await model.getByLabel(/^Source/).selectOption('undeploy');
    expect(await form.getByTestId('no-job-hint').count()).toBe(0);
    const first = form.getByRole('group', { name: 'Stage 1' });
    await first.getByLabel(/^Tags/).fill('site');
    await form.getByRole('button', { name: 'Create plan' }).click();
    await form
      .getByRole('alert')
      .filter({ hasText: 'stage 1 (all): tag "site": expected key=value' })
      .waitFor();
    expect((await api('GET', '/api/v1/deployment-plans/tagged-1', ui.plane.adminToken)).status).toBe(404);

    // key=value is taken; no device of the fleet carries it. A second stage names the device.
    await first.getByLabel(/^Tags/).fill('site=north');
    await form.getByRole('button', { name: 'Add stage' }).click();
    const second = form.getByRole('group', { name: 'Stage 2' });
    await second.getByLabel(/^Stage name/).fill('cranes');
    await second.getByLabel(/^Selection/).selectOption('SELECTION');
    await second.getByLabel(/^Device names/).fill('crane-1');
    await form.getByRole('button', { name: 'Create plan' }).click();
    await page.locator('tr[data-plan="tagged-1"]').waitFor();
    const stored = await api('GET', '/api/v1/deployment-plans/tagged-1', ui.plane.adminToken);
    expect(stored.body.stages[0].deviceSelection).toEqual({
      subsetType: 'PERCENTAGE',
      percentage: 100,
      tags: { site: 'north' },
    });

    // Started, it selects nothing and is DEPLOYED at once: the page says it chose no device.
    await page.locator('tr[data-plan="tagged-1"]').getByRole('link', { name: 'tagged-1' }).click();
    const allCard = page.getByRole('region', { name: 'Stage all' });
    expect(await allCard.getByTestId('stage-selected-none').count()).toBe(0);
    await page.getByRole('button', { name: 'Start stage all' }).click();
    await allCard.getByTestId('stage-status').getByText('DEPLOYED').waitFor();
    await expect
      .poll(() => allCard.getByTestId('stage-selected-none').textContent())
      .toBe(
        "This stage selected no device: none of fleet yard's devices matched 100% of the fleet tagged site=north when it started, so it deployed nothing.",
      );

    // The next stage holds a never-seen device, so it stays in progress. Cancel and Stop ask; dismissed, nothing.
    await page.getByRole('button', { name: 'Start stage cranes' }).click();
    const cranes = page.getByRole('region', { name: 'Stage cranes' });
    await cranes.getByTestId('stage-status').getByText('INPROGRESS').waitFor();
    expect(await cranes.getByTestId('stage-selected-none').count()).toBe(0);
    const dialogs: string[] = [];
    page.on('dialog', (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    await cranes.getByRole('button', { name: 'Cancel crane-1' }).click();
    await page.getByRole('button', { name: 'Stop stage cranes' }).click();
    await expect.poll(() => dialogs.length).toBe(2);
    expect(dialogs).toEqual([
      "Cancel crane-1's deployment? It is stopped for this plan and goes back to what earlier plans gave it.",
      'Stop stage cranes? Devices not finished are stopped, and the stage cannot be started again.',
    ]);
    const plan = await api('GET', '/api/v1/deployment-plans/tagged-1', ui.plane.adminToken);
    expect(plan.body.stages[1]).toMatchObject({ status: 'INPROGRESS', pendingCount: 1 });
    page.removeAllListeners('dialog');
    page.once('dialog', (dialog) => void dialog.accept());
    await page.getByRole('button', { name: 'Stop stage cranes' }).click();
    await cranes.getByTestId('stage-status').getByText('STOPPED').waitFor();
    await page.context().close();
  });

  it('tokens: each Revoke names its token, and the one signed in with is not offered', async () => {
    const ops = await api('POST', '/api/v1/tokens', ui.plane.adminToken, { name: 'ops', scope: 'read-only' });
    expect(ops.status).toBe(201);
    const page = await signIn(ui.plane.adminToken);
    await page.getByRole('link', { name: 'Tokens' }).click();
    await page.getByRole('button', { name: 'Revoke ops', exact: true }).waitFor();
    expect(await page.title()).toBe('API tokens — EdgeFleet console');
    const own = (await page.evaluate(`fetch('/api/v1/console/session').then((r) => r.json())`)) as {
      operator: { name: string };
    };
    const ownRow = page.locator(`tr[data-token="${own.operator.name}"]`);
    await ownRow.getByText('signed in with it').waitFor();
    expect(await ownRow.getByRole('button').count()).toBe(0);
    await page.context().close();
  });

  it('device page: never seen, the enrollment token with its expiry and command, a revoked certificate; models expand; titles; 400 px', async () => {
    const long = `d${'x'.repeat(61)}1`;
    expect(
      (
        await api('POST', '/api/v1/fleets', ui.plane.adminToken, {
          name: 'gates',
          outputConfig: { s3OutputLocation: 's3://gates/' },
        })
      ).status,
    ).toBe(201);
    expect(
      (
        await api('POST', '/api/v1/fleets/gates/devices', ui.plane.adminToken, {
          devices: [{ name: 'gate-1' }, { name: long }],
        })
      ).status,
    ).toBe(201);
    const page = await signIn(ui.plane.adminToken);
    await page.goto(`${ui.plane.operatorUrl}/#/devices/gate-1`);
    await expect
      .poll(() => page.getByTestId('no-models').textContent())
      .toBe('No agent has reported for this device yet: its models show here after its first heartbeat.');
    expect(await page.title()).toBe('Device gate-1 — EdgeFleet console');

    await page.getByRole('button', { name: 'Create enrollment token' }).click();
    const how = (await page.getByTestId('enrollment-how').textContent()) ?? '';
    expect(how).toMatch(/^Single use; expires \S.*\(at .+\)\. On the device/);
    const expires = await page.getByTestId('enrollment-how').locator('time').getAttribute('datetime');
    expect(Date.parse(expires ?? '')).toBeGreaterThan(Date.now());
    expect(how).toContain(
      `EDGEFLEET_ENROLLMENT_TOKEN="$TOKEN" edgefleet device enroll --server ${ui.plane.operatorUrl} --config /etc/edgefleet/agent.json`,
    );

    // Enrolled (the CLI, as on a device), then its certificate revoked: the Certificate row says so.
    const work = await mkdtemp(join(tmpdir(), 'ef-console-findings-'));
    try {
      const token = (await api('POST', '/api/v1/devices/gate-1/enrollment-tokens', ui.plane.adminToken, {}))
        .body.token as string;
      await enrollWithCliProcess(ui.plane, token, join(work, 'agent.json'), '--data-dir', work);
      await page.reload();
      await expect.poll(() => page.getByTestId('identity-status').textContent()).toBe('ENROLLED');
      expect(await page.getByTestId('certificate-revoked').count()).toBe(0);
      page.once('dialog', (dialog) => void dialog.accept());
      await page.getByRole('button', { name: 'Revoke certificate' }).click();
      await expect.poll(() => page.getByTestId('identity-status').textContent()).toBe('REVOKED');
      await expect
        .poll(() => page.getByTestId('certificate-revoked').textContent())
        .toMatch(/^revoked .*, was to expire $/);
    } finally {
      await rm(work, { recursive: true, force: true });
    }

    // Models: the name button opens and closes its versions, and says which.
    const modelDir = await mkdtemp(join(tmpdir(), 'ef-console-model-'));
    try {
      const uploaded = await fetch(`${ui.plane.operatorUrl}/api/v1/models/mlp/versions/1.0`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${ui.plane.adminToken}`,
          'content-type': 'application/octet-stream',
        },
        body: await readFile(await writeTestModel('mlp', modelDir)),
      });
      expect(uploaded.status).toBe(201);
    } finally {
      await rm(modelDir, { recursive: true, force: true });
    }
    await page.getByRole('link', { name: 'Models' }).click();
    const expand = page.getByRole('button', { name: 'mlp', exact: true });
    await expect.poll(() => expand.getAttribute('aria-expanded')).toBe('false');
    await expand.click();
    await page.getByRole('article', { name: 'Version 1.0' }).waitFor();
    expect(await expand.getAttribute('aria-expanded')).toBe('true');
    await expand.click();
    await page.getByRole('article', { name: 'Version 1.0' }).waitFor({ state: 'detached' });
    expect(await expand.getAttribute('aria-expanded')).toBe('false');

    // 400 px: the navigation wraps and a 63-character name wraps; nothing scrolls the page sideways.
    await page.setViewportSize({ width: 400, height: 800 });
    const overflow = () =>
      page.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth');
    await page.getByRole('link', { name: 'Devices' }).click();
    await page.locator('tr[data-device="gate-1"]').waitFor();
    expect(await overflow()).toBe(0);
    await page.goto(`${ui.plane.operatorUrl}/#/devices/${long}`);
    await page.getByRole('heading', { name: `Device ${long}` }).waitFor();
    expect(await overflow()).toBe(0);
    const heading = await page.getByRole('heading', { name: `Device ${long}` }).evaluate((h) => {
      const card = h.closest('.card')?.getBoundingClientRect();
      return { right: h.getBoundingClientRect().right, cardRight: card?.right ?? 0 };
    });
    expect(heading.right).toBeLessThanOrEqual(heading.cardRight);
    await page.context().close();
  });

  it('sign-in with a token that has spaces says it is not an EdgeFleet token, sending nothing', async () => {
    const context = await ui.browser.newContext();
    const page = await context.newPage();
    const signIns: string[] = [];
    page.on('request', (r) => {
      if (r.url().endsWith('/api/v1/console/session') && r.method() === 'POST') signIns.push(r.url());
    });
    await page.goto(ui.plane.operatorUrl);
    await page.getByLabel('Operator API token').fill('garbage with spaces');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page
      .getByRole('alert')
      .filter({
        hasText:
          'that is not an EdgeFleet token: an operator API token is one word beginning with efo_ (as edgefleet-server init or edgefleet token create printed it)',
      })
      .waitFor();
    expect(signIns).toEqual([]);
    // A token of the right form that the server does not know still gets the server's word.
    await page.getByLabel('Operator API token').fill('efo_not-a-real-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'unknown or revoked' }).waitFor();
    await context.close();
  });

  it('device page: a deployed model the device does not serve shows as a warning, live, and goes when loaded again', async () => {
    expect(
      (
        await api('POST', '/api/v1/fleets', ui.plane.adminToken, {
          name: 'berths',
          outputConfig: { s3OutputLocation: 's3://berths/' },
        })
      ).status,
    ).toBe(201);
    expect(
      (
        await api('POST', '/api/v1/fleets/berths/devices', ui.plane.adminToken, {
          devices: [{ name: 'berth-1' }],
        })
      ).status,
    ).toBe(201);
    const work = await mkdtemp(join(tmpdir(), 'ef-console-not-loaded-'));
    try {
      const configFile = join(work, 'agent.json');
      const token = (await api('POST', '/api/v1/devices/berth-1/enrollment-tokens', ui.plane.adminToken, {}))
        .body.token as string;
      await enrollWithCliProcess(ui.plane, token, configFile, '--data-dir', work);
      const base = { DeviceName: 'berth-1', DeviceFleetName: 'berths', AgentVersion: '2.0.0' };
      expect(await sendHeartbeat(configFile, { ...base, Models: [], DeployedModelsNotLoaded: [] })).toBe(200);

      const page = await signIn(ui.plane.adminToken);
      await page.goto(`${ui.plane.operatorUrl}/#/devices/berth-1`);
      await page.getByRole('heading', { name: 'Device berth-1' }).waitFor();
      await page.getByTestId('no-models').waitFor();
      expect(await page.getByTestId('models-not-loaded').count()).toBe(0);
      // Heartbeats of new agent versions until the page shows one (the page reloads once its stream is ready,
      // which may or may not be before the first): live from then on.
      let beat = 0;
      await expect
        .poll(
          async () => {
            beat += 1;
            expect(
              await sendHeartbeat(configFile, {
                ...base,
                AgentVersion: `2.0.${beat}`,
                Models: [],
                DeployedModelsNotLoaded: [],
              }),
            ).toBe(200);
            return page.getByTestId('agent-version').textContent();
          },
          { timeout: 30_000 },
        )
        .toMatch(/^2\.0\.[1-9]/);

      // An application on the device unloads the deployed detector: the next heartbeat says so, and the open
      // page shows it without a reload (the change feed).
      const unloadedAt = new Date(Date.now() - 5 * 60_000);
      expect(
        await sendHeartbeat(configFile, {
          ...base,
          Models: [],
          DeployedModelsNotLoaded: [
            {
              ModelHandle: 'detector',
              DeploymentName: 'dock-rollout',
              ModelName: 'detector',
              ModelVersion: '1.0',
              UnloadedByApplication: true,
              Since: unloadedAt.getTime() / 1000,
              Reason: `unloaded by an application (UnLoadModel or the REST unload) at ${unloadedAt.toISOString()}`,
            },
          ],
        }),
      ).toBe(200);
      const warning = page.getByRole('list', { name: 'Deployed models not loaded' }).getByRole('listitem');
      await expect
        .poll(() => warning.textContent(), { timeout: 30_000 })
        .toBe(
          `detector 1.0 (deployment dock-rollout) is not loaded: unloaded by an application 5 minutes ago (at ${unloadedAt.toLocaleString('en-US')}); it stays unloaded until it is loaded or deployed again`,
        );
      expect(await warning.getByRole('link', { name: 'dock-rollout' }).getAttribute('href')).toBe(
        '#/deployments/dock-rollout',
      );
      await page.getByRole('link', { name: 'Devices', exact: true }).click();
      await expect
        .poll(() => page.locator('tr[data-device="berth-1"]').getByTestId('not-loaded-count').textContent())
        .toBe('1 not loaded');

      // Loaded again: the next heartbeat's empty list, and the warning is gone (the same page load, so its
      // stream, and the feed's snapshot, go on).
      await page.locator('tr[data-device="berth-1"]').getByRole('link', { name: 'berth-1' }).click();
      await warning.waitFor();
      expect(await sendHeartbeat(configFile, { ...base, Models: [], DeployedModelsNotLoaded: [] })).toBe(200);
      await page.getByTestId('models-not-loaded').waitFor({ state: 'detached', timeout: 30_000 });
      await page.context().close();
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});
