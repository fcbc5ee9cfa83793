/**
 * The console with more plans, events and stage devices than one page holds (the s13 scale walkthrough), in
 * real Chromium against a real edgefleet-server process: the Overview finds a rollout under way and a failed
 * stage however many plans there are; the Deployments list is newest first and pages; a plan's events are
 * newest first with "Show older events"; a stage's table says which of its devices it shows, pages and filters
 * by status.
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useConsoleServer } from './browser.js';

const ui = useConsoleServer({});
const { api } = ui;

const DEVICES = 120;
const CANCELLED = 110;
// More than the 100 plans the Overview and Deployments pages once read (the first page, by name).
const OLDER_PLANS = 105;
const deviceName = (i: number) => `cam-${String(i).padStart(3, '0')}`;

/** The plan `name`: one UNDEPLOY model config (no package needed) and one stage of the given selection. */
async function createPlan(name: string, handle: string, deviceSelection: Record<string, unknown>) {
  const created = await api('POST', '/api/v1/deployment-plans', ui.plane.adminToken, {
    name,
    fleetName: 'big',
    modelConfigs: [{ modelHandle: handle, state: 'UNDEPLOY' }],
    stages: [{ name: 'all', deviceSelection }],
  });
  expect(created.status).toBe(201);
}

describe('console at scale (s13)', { timeout: 180_000 }, () => {
  it('overview, plan list, plan events and stage devices beyond the first page', async () => {
    const admin = ui.plane.adminToken;
    expect(
      (
        await api('POST', '/api/v1/fleets', admin, {
          name: 'big',
          outputConfig: { s3OutputLocation: 's3://big/' },
        })
      ).status,
    ).toBe(201);
    const names = Array.from({ length: DEVICES }, (_, i) => deviceName(i));
    for (const batch of [names.slice(0, 100), names.slice(100)]) {
      const registered = await api('POST', '/api/v1/fleets/big/devices', admin, {
        devices: batch.map((name) => ({ name })),
      });
      expect(registered.status).toBe(201);
    }
    // The oldest plans, last by name too: on neither list's first page.
    await createPlan('zz-rollout', 'h-rollout', { subsetType: 'PERCENTAGE', percentage: 100 });
    expect(
      (await api('POST', '/api/v1/deployment-plans/zz-rollout/stages/all/start', admin, {})).status,
    ).toBe(200);
    for (let i = 0; i < CANCELLED; i++) {
      const cancelled = await api(
        'POST',
        `/api/v1/deployment-plans/zz-rollout/devices/${deviceName(i)}/cancel`,
        admin,
      );
      expect(cancelled.status).toBe(200);
    }
    await createPlan('zz-failed', 'h-failed', { subsetType: 'SELECTION', deviceNames: [deviceName(0)] });
    // A stage FAILS when its devices report failures; this test has no device, so the stage's row is set FAILED
    // in the server's own database, as the failure would leave it.
    const db = new Database(join(ui.plane.dataDir, 'state.db'), { timeout: 10_000 });
    try {
      db.prepare(
        "UPDATE deployment_stages SET status = 'FAILED', status_message = 'canary failed', started_at = ?, ended_at = ? WHERE plan_name = 'zz-failed'",
      ).run(Date.now(), Date.now());
    } finally {
      db.close();
    }
    for (let i = 0; i < OLDER_PLANS; i++) {
      await createPlan(`a-${String(i).padStart(2, '0')}`, `h-${i}`, {
        subsetType: 'PERCENTAGE',
        percentage: 10,
      });
    }

    const page = await ui.signIn(admin);
    // Overview: found by the server's stage-status filter, not in a first page of plans.
    await page.getByTestId('active-rollouts').getByRole('link', { name: 'zz-rollout' }).waitFor();
    await page.getByRole('link', { name: 'zz-failed' }).waitFor();
    expect(await page.getByText('No failed packaging jobs or deployment stages.').count()).toBe(0);

    // Deployments: newest first, 50 a page; the oldest plans are on page 3.
    await page.getByRole('link', { name: 'Deployments' }).click();
    await page.locator('tr[data-plan="a-104"]').waitFor();
    const rows = page.locator('tr[data-plan]');
    expect(await rows.count()).toBe(50);
    expect(await rows.first().getAttribute('data-plan')).toBe('a-104');
    expect(await page.locator('tr[data-plan="zz-rollout"]').count()).toBe(0);
    const pager = page.getByRole('navigation', { name: 'Plan pages' });
    await pager.getByRole('button', { name: 'Next' }).click();
    await page.locator('tr[data-plan="a-54"]').waitFor();
    await pager.getByRole('button', { name: 'Next' }).click();
    await page.locator('tr[data-plan="zz-rollout"]').waitFor();
    expect(await pager.getByTestId('plans-page').textContent()).toBe('Page 3');
    expect(await rows.evaluateAll((all) => all.map((row) => row.getAttribute('data-plan')))).toEqual([
      'a-04',
      'a-03',
      'a-02',
      'a-01',
      'a-00',
      'zz-failed',
      'zz-rollout',
    ]);
    expect(await pager.getByRole('button', { name: 'Next' }).isDisabled()).toBe(true);
    await pager.getByRole('button', { name: 'Previous' }).click();
    await page.locator('tr[data-plan="a-54"]').waitFor();
    expect(await page.locator('tr[data-plan="zz-rollout"]').count()).toBe(0);

    // The plan page: events newest first, a page at a time; the latest is on the first page.
    await page.goto(`${ui.plane.operatorUrl}/#/deployments/zz-rollout`);
    const events = page.getByTestId('plan-events').locator('li');
    await expect.poll(() => events.count()).toBe(100);
    expect(await events.first().textContent()).toContain(
      `DeviceCancelled stage all device ${deviceName(CANCELLED - 1)}:`,
    );
    await page.getByRole('button', { name: 'Show older events' }).click();
    // PlanCreated, StageStarted and one DeviceCancelled per cancelled device.
    await expect.poll(() => events.count()).toBe(CANCELLED + 2);
    expect(await events.last().getAttribute('data-event')).toBe('PlanCreated');
    expect(await page.getByRole('button', { name: 'Show older events' }).count()).toBe(0);

    // The stage's table: which devices it shows of how many, pages, and a status filter.
    const stage = page.locator('[data-stage="all"]');
    const shown = stage.getByTestId('stage-devices-shown');
    await expect.poll(() => shown.textContent()).toBe(`Devices 1–100 of ${DEVICES} shown, by name.`);
    expect(await stage.locator('tr[data-stage-device]').count()).toBe(100);
    const stagePager = page.getByRole('navigation', { name: 'Stage all device pages' });
    await stagePager.getByRole('button', { name: 'Next' }).click();
    await expect.poll(() => shown.textContent()).toBe(`Devices 101–${DEVICES} of ${DEVICES} shown, by name.`);
    await stage.locator(`tr[data-stage-device="${deviceName(DEVICES - 1)}"]`).waitFor();
    await stage.getByLabel('Devices in status').selectOption('READYTODEPLOY');
    await expect.poll(() => shown.textContent()).toBe('READYTODEPLOY devices 1–10 shown, by name.');
    expect(await stage.locator('tr[data-stage-device]').count()).toBe(DEVICES - CANCELLED);
    expect(await stagePager.count()).toBe(0);
    await stage.getByLabel('Devices in status').selectOption('STOPPED');
    await expect
      .poll(() => shown.textContent())
      .toBe(`STOPPED devices 1–100 of ${CANCELLED} shown, by name.`);
    await stage.getByLabel('Devices in status').selectOption('FAILED');
    await expect.poll(() => shown.textContent()).toBe('No FAILED devices.');
    await page.context().close();
  });
});
