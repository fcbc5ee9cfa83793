import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseEngines } from '../support/engines.js';
import { startTestServer, type TestServer } from '../support/server.js';

const engines = await databaseEngines();

describe.each(engines)('device routes on $engine', (fixture) => {
  let t: TestServer;
  beforeAll(async () => {
    if (!fixture.available) return;
    t = await startTestServer({ database: await fixture.createLocation() });
    for (const fleet of ['cams', 'gates']) {
      const created = await t.call('POST', '/api/v1/fleets', {
        token: t.adminToken,
        body: { name: fleet, outputConfig: { s3OutputLocation: `s3://captures/${fleet}` } },
      });
      expect(created.status).toBe(201);
    }
  });
  afterAll(() => t?.stop());
  const register = (fleet: string, body: unknown) =>
    t.call('POST', `/api/v1/fleets/${fleet}/devices`, { token: t.adminToken, body });
  const names = (body: { devices: { name: string }[] }) => body.devices.map((d) => d.name);

  it.skipIf(!fixture.available)('registers several devices at once, tagged, not yet enrolled', async () => {
    const response = await register('cams', {
      devices: [
        { name: 'cam-1', description: 'door', iotThingName: 'thing:cam-1' },
        { name: 'cam-2' },
        { name: 'cam-3' },
      ],
      tags: [
        { key: 'site', value: 'berlin' },
        { key: 'line', value: '1' },
      ],
    });
    expect(response.status).toBe(201);
    expect(names(response.body)).toEqual(['cam-1', 'cam-2', 'cam-3']);
    const described = await t.call('GET', '/api/v1/devices/cam-1', { token: t.readToken });
    expect(described.status).toBe(200);
    expect(described.body).toMatchObject({
      name: 'cam-1',
      fleetName: 'cams',
      description: 'door',
      iotThingName: 'thing:cam-1',
      registrationStatus: 'REGISTERED',
      status: 'offline',
      identity: { status: 'NOT_ENROLLED' },
      models: [],
      tags: [
        { key: 'site', value: 'berlin' },
        { key: 'line', value: '1' },
      ],
    });
    expect(described.body.latestHeartbeat).toBeUndefined();
    expect(described.body.agentVersion).toBeUndefined();
    expect((await t.call('GET', '/api/v1/fleets/cams', { token: t.readToken })).body.deviceCount).toBe(3);
  });

  it.skipIf(!fixture.available)(
    'names a refused list entry by its value, not only its index (among 60 pasted names, no counting)',
    async () => {
      const refused = await register('gates', {
        devices: [{ name: 'good-1' }, { name: 'bad_name' }, { name: 'good-2' }, { name: 'x'.repeat(101) }],
      });
      expect(refused.status).toBe(400);
      const message = refused.body.message as string;
      expect(message).toMatch(
        /^invalid request body: "bad_name" \(devices\.1\.name\): expected 1-63 letters, digits and inner hyphens/,
      );
      // A value too long to quote is named by its path only.
      expect(message).toContain('; devices.3.name: ');
      expect(message).not.toContain('x'.repeat(101));
      // Said once, with its length (not once for the length and again for the pattern).
      expect(message.split('devices.3.name').length).toBe(2);
      expect(message).toMatch(
        /devices\.3\.name: expected 1-63 letters, digits and inner hyphens \(e\.g\. fleet-1\); this one is 101 characters long$/,
      );
      expect((await t.call('GET', '/api/v1/devices/good-1', { token: t.readToken })).status).toBe(404);
    },
  );

  it.skipIf(!fixture.available)('registers all or none', async () => {
    const clash = await register('gates', { devices: [{ name: 'gate-1' }, { name: 'cam-2' }] });
    expect(clash).toMatchObject({
      status: 409,
      body: { code: 'Conflict', details: { devices: ['cam-2'], fleets: { 'cam-2': 'cams' } } },
    });
    // The fleet it is in is named (N4).
    expect(clash.body.message).toBe(
      'device(s) already registered: cam-2 (in fleet cams); device names are unique across fleets: deregister one first to move it',
    );
    expect((await t.call('GET', '/api/v1/devices/gate-1', { token: t.readToken })).status).toBe(404);

    const unknownFleet = await register('no-fleet', { devices: [{ name: 'x-1' }] });
    expect(unknownFleet).toMatchObject({
      status: 404,
      body: { code: 'NotFound', details: { fleet: 'no-fleet' } },
    });

    const twice = await register('gates', { devices: [{ name: 'g' }, { name: 'g' }] });
    expect(twice).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
    const tooMany = await register('gates', {
      devices: Array.from({ length: 101 }, (_, i) => ({ name: `d${i}` })),
    });
    expect(tooMany).toMatchObject({ status: 400 });
    expect(await register('gates', { devices: [] })).toMatchObject({ status: 400 });
    expect(await register('gates', { devices: [{ name: 'bad_name' }] })).toMatchObject({ status: 400 });
    expect(await register('gates', { devices: [{ name: 'ok', description: 'x'.repeat(41) }] })).toMatchObject(
      {
        status: 400,
      },
    );
  });

  it.skipIf(!fixture.available)('filters by fleet, tags, name, online status and model', async () => {
    await register('gates', {
      devices: [{ name: 'gate-1' }, { name: 'gate-2' }],
      tags: [{ key: 'site', value: 'paris' }],
    });
    // Simulate heartbeat state directly in the database (the heartbeat route is tested on its own).
    await t.server.database.db
      .updateTable('devices')
      .set({ last_heartbeat_at: Date.now(), agent_version: '1.2.0' })
      .where('name', 'in', ['cam-2', 'gate-1'])
      .execute();
    // gate-2 was heard from a day ago: offline, but not never seen.
    await t.server.database.db
      .updateTable('devices')
      .set({ last_heartbeat_at: Date.now() - 86_400_000 })
      .where('name', '=', 'gate-2')
      .execute();
    await t.server.database.db
      .insertInto('device_models')
      .values({
        device_name: 'gate-2',
        model_name: 'resnet',
        model_version: '3',
        latest_sample_time: null,
        latest_inference_time: null,
      })
      .execute();
    const list = async (query: string) => {
      const response = await t.call('GET', `/api/v1/devices?${query}`, { token: t.readToken });
      expect(response.status, query).toBe(200);
      return names(response.body);
    };
    expect(await list('fleet=gates')).toEqual(['gate-1', 'gate-2']);
    expect(await list('tag=site')).toEqual(['cam-1', 'cam-2', 'cam-3', 'gate-1', 'gate-2']);
    expect(await list('tag=site=paris')).toEqual(['gate-1', 'gate-2']);
    expect(await list('tag=site=berlin&tag=line=1')).toEqual(['cam-1', 'cam-2', 'cam-3']);
    expect(await list('tag=site=berlin&tag=line=2')).toEqual([]);
    expect(await list('nameContains=GATE')).toEqual(['gate-1', 'gate-2']);
    expect(await list('status=online')).toEqual(['cam-2', 'gate-1']);
    expect(await list('status=offline&fleet=cams')).toEqual(['cam-1', 'cam-3']);
    expect(await list('status=offline')).toEqual(['cam-1', 'cam-3', 'gate-2']);
    // No heartbeat ever (N13): what the console and the fleet report call never seen.
    expect(await list('status=never-seen')).toEqual(['cam-1', 'cam-3']);
    expect(await list('modelName=resnet')).toEqual(['gate-2']);
    expect(await list(`latestHeartbeatAfter=${new Date(Date.now() - 60_000).toISOString()}`)).toEqual([
      'cam-2',
      'gate-1',
    ]);

    const summary = await t.call('GET', '/api/v1/devices?fleet=gates', { token: t.readToken });
    expect(summary.body.devices[0]).toMatchObject({
      name: 'gate-1',
      status: 'online',
      agentVersion: '1.2.0',
    });
    expect(summary.body.devices[1]).toMatchObject({
      name: 'gate-2',
      models: [{ name: 'resnet', version: '3' }],
    });

    expect(await t.call('GET', '/api/v1/devices?status=sleeping', { token: t.readToken })).toMatchObject({
      status: 400,
    });
    // An empty tag filter: the answer names the value and what a filter looks like.
    const badTag = await t.call('GET', '/api/v1/devices?tag=', { token: t.readToken });
    expect(badTag.status).toBe(400);
    expect(badTag.body.message).toMatch(/tag: expected key or key=value .*not ""/);
  });

  it.skipIf(!fixture.available)('pages through devices', async () => {
    const seen: string[] = [];
    let next: string | undefined;
    do {
      const page = await t.call('GET', `/api/v1/devices?limit=2${next ? `&nextToken=${next}` : ''}`, {
        token: t.readToken,
      });
      seen.push(...names(page.body));
      next = page.body.nextToken;
    } while (next);
    expect(seen).toEqual(['cam-1', 'cam-2', 'cam-3', 'gate-1', 'gate-2']);
  });

  it.skipIf(!fixture.available)(
    'sorts by last heartbeat or registration, paging stably on ties',
    async () => {
      const db = t.server.database.db;
      const base = Date.now() - 3_600_000;
      // gate-1 and gate-2 share a heartbeat, so the name breaks the tie; cam-3 has never been seen.
      const seen: Record<string, number | null> = {
        'cam-1': base + 3000,
        'cam-2': base + 1000,
        'cam-3': null,
        'gate-1': base + 2000,
        'gate-2': base + 2000,
      };
      for (const [name, at] of Object.entries(seen)) {
        await db.updateTable('devices').set({ last_heartbeat_at: at }).where('name', '=', name).execute();
      }
      const registered = ['gate-2', 'cam-3', 'gate-1', 'cam-1', 'cam-2'];
      for (const [i, name] of registered.entries()) {
        await db
          .updateTable('devices')
          .set({ registered_at: base + i })
          .where('name', '=', name)
          .execute();
      }
      const all = async (query: string, limit: number) => {
        const collected: string[] = [];
        let next: string | undefined;
        do {
          const page = await t.call(
            'GET',
            `/api/v1/devices?${query}&limit=${limit}${next ? `&nextToken=${next}` : ''}`,
            { token: t.readToken },
          );
          expect(page.status, query).toBe(200);
          collected.push(...names(page.body));
          next = page.body.nextToken;
        } while (next);
        return collected;
      };
      const bySeen = ['cam-3', 'cam-2', 'gate-1', 'gate-2', 'cam-1'];
      for (const limit of [1, 2, 50]) {
        expect(await all('sortBy=lastSeen', limit)).toEqual(bySeen);
        expect(await all('sortBy=lastSeen&sortOrder=desc', limit)).toEqual([...bySeen].reverse());
        expect(await all('sortBy=registered', limit)).toEqual(registered);
        expect(await all('sortBy=registered&sortOrder=desc', limit)).toEqual([...registered].reverse());
        expect(await all('sortBy=name&sortOrder=desc', limit)).toEqual([
          'gate-2',
          'gate-1',
          'cam-3',
          'cam-2',
          'cam-1',
        ]);
      }
      expect(await all('sortBy=lastSeen&sortOrder=desc&fleet=gates', 1)).toEqual(['gate-2', 'gate-1']);

      const first = await t.call('GET', '/api/v1/devices?sortBy=lastSeen&limit=2', { token: t.readToken });
      const token = first.body.nextToken as string;
      // A token continues only the order it was taken in.
      expect(
        await t.call('GET', `/api/v1/devices?sortBy=registered&limit=2&nextToken=${token}`, {
          token: t.readToken,
        }),
      ).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
      expect(
        await t.call('GET', `/api/v1/devices?sortBy=lastSeen&sortOrder=desc&nextToken=${token}`, {
          token: t.readToken,
        }),
      ).toMatchObject({ status: 400 });
      // A hand-made token of the right listing whose key has the wrong type or range for the order.
      const forged = (listing: string, position: unknown) =>
        Buffer.from(JSON.stringify({ l: listing, a: JSON.stringify(position) })).toString('base64url');
      for (const [query, listing, position] of [
        ['sortBy=lastSeen', 'devices by lastSeen asc', ['abc', 'cam-1']],
        ['sortBy=registered&sortOrder=desc', 'devices by registered desc', [1e300, 'cam-1']],
        ['sortBy=name', 'devices by name asc', [5, 'cam-1']],
      ] as const) {
        expect(
          await t.call('GET', `/api/v1/devices?${query}&nextToken=${forged(listing, position)}`, {
            token: t.readToken,
          }),
          query,
        ).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
      }
      const badSort = await t.call('GET', '/api/v1/devices?sortBy=age', { token: t.readToken });
      expect(badSort).toMatchObject({ status: 400, body: { code: 'ValidationError' } });
      expect(JSON.stringify(badSort.body)).toContain('sortBy');
      expect(JSON.stringify(badSort.body)).toContain('lastSeen');
      expect(await t.call('GET', '/api/v1/devices?sortOrder=up', { token: t.readToken })).toMatchObject({
        status: 400,
      });
    },
  );

  it.skipIf(!fixture.available)('updates a device, replacing its tags', async () => {
    const updated = await t.call('PATCH', '/api/v1/devices/cam-3', {
      token: t.adminToken,
      body: { description: 'yard', iotThingName: null, tags: [{ key: 'site', value: 'hamburg' }] },
    });
    expect(updated).toMatchObject({
      status: 200,
      body: { description: 'yard', tags: [{ key: 'site', value: 'hamburg' }] },
    });
    const byTag = await t.call('GET', '/api/v1/devices?tag=site=hamburg', { token: t.readToken });
    expect(names(byTag.body)).toEqual(['cam-3']);
    expect(
      await t.call('PATCH', '/api/v1/devices/cam-3', { token: t.readToken, body: { description: 'x' } }),
    ).toMatchObject({ status: 403 });
    expect(
      await t.call('PATCH', '/api/v1/devices/nope', { token: t.adminToken, body: { description: 'x' } }),
    ).toMatchObject({ status: 404 });
  });

  it.skipIf(!fixture.available)(
    'deregisters a device and revokes every certificate it was issued',
    async () => {
      await register('gates', { devices: [{ name: 'gone' }] });
      const registeredAt = Date.parse(
        (await t.call('GET', '/api/v1/devices/gone', { token: t.readToken })).body.registeredAt,
      );
      await t.server.database.db
        .insertInto('device_certificates')
        .values({
          serial: 'aa01',
          device_name: 'gone',
          fleet_name: 'gates',
          fingerprint_sha256: 'ff'.repeat(32),
          subject: 'CN=gone',
          not_before: registeredAt,
          not_after: registeredAt + 86_400_000,
          issued_at: registeredAt,
          revoked_at: null,
          revocation_reason: null,
        })
        .execute();
      expect(
        (await t.call('GET', '/api/v1/devices/gone', { token: t.readToken })).body.identity,
      ).toMatchObject({
        status: 'ENROLLED',
        certificate: { serial: 'aa01' },
      });
      expect(await t.call('DELETE', '/api/v1/devices/gone', { token: t.readToken })).toMatchObject({
        status: 403,
      });
      expect((await t.call('DELETE', '/api/v1/devices/gone', { token: t.adminToken })).status).toBe(204);
      expect((await t.call('GET', '/api/v1/devices/gone', { token: t.readToken })).status).toBe(404);
      const certificate = await t.server.database.db
        .selectFrom('device_certificates')
        .selectAll()
        .where('serial', '=', 'aa01')
        .executeTakeFirstOrThrow();
      expect(certificate.revocation_reason).toBe('deregistered');
      expect(certificate.revoked_at).not.toBeNull();

      // Registered again under the same name it starts over, unenrolled; the old certificate stays revoked.
      expect((await register('gates', { devices: [{ name: 'gone' }] })).status).toBe(201);
      const fresh = await t.call('GET', '/api/v1/devices/gone', { token: t.readToken });
      expect(fresh.body.identity).toEqual({ status: 'NOT_ENROLLED' });
      expect((await t.call('DELETE', '/api/v1/devices/never-was', { token: t.adminToken })).status).toBe(404);
    },
  );
});
