import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import {
  appliedMigrations,
  isForeignKeyViolation,
  isUniqueViolation,
  maskUrlCredentials,
  migrateToLatest,
  migrationNames,
  openDatabase,
  parseDatabaseLocation,
  type ServerDatabase,
} from '../../src/storage/index.js';
import { outageAwarePool } from '../../src/storage/database.js';
import { databaseEngines } from '../support/engines.js';

const engines = await databaseEngines();

describe('parseDatabaseLocation', () => {
  it('reads postgres URLs, sqlite: prefixes and plain paths', () => {
    expect(parseDatabaseLocation('postgres://u:p@h:5432/db', '/base')).toEqual({
      engine: 'postgres',
      url: 'postgres://u:p@h:5432/db',
    });
    expect(parseDatabaseLocation('postgresql://h/db', '/base').engine).toBe('postgres');
    expect(parseDatabaseLocation('sqlite:state.db', '/base')).toEqual({
      engine: 'sqlite',
      file: '/base/state.db',
    });
    expect(parseDatabaseLocation('/abs/x.db', '/base')).toEqual({ engine: 'sqlite', file: '/abs/x.db' });
  });

  it('refuses empty values and other schemes', () => {
    expect(() => parseDatabaseLocation('  ', '/base')).toThrow(/empty/);
    expect(() => parseDatabaseLocation('mysql://h/db', '/base')).toThrow(/unsupported database location/);
  });

  it('masks the password of a mistyped or malformed URL in its error', () => {
    const typos = [
      'postgress://edgefleet:secret@127.0.0.1:55432/edgefleet',
      'postgres:/edgefleet:secret@127.0.0.1/edgefleet',
      'postgres//edgefleet:secret@127.0.0.1/edgefleet',
      'postgres:edgefleet:secret@127.0.0.1/edgefleet',
      'mysql://edgefleet:se@cr:et@host/db',
      'edgefleet:secret@127.0.0.1:5432/edgefleet',
      // A '/' in the password, once found by the property below.
      'postgres//edgefleet:se/cret@127.0.0.1/edgefleet',
    ];
    for (const typo of typos) {
      const message = errorOf(() => parseDatabaseLocation(typo, '/base'));
      expect(message).toMatch(/unsupported database location .*expected postgres:\/\//);
      expect(message).not.toContain('secret');
      expect(message).not.toMatch(/cr:et/);
    }
    expect(errorOf(() => parseDatabaseLocation('postgress://edgefleet:secret@h:5/db', '/base'))).toContain(
      '"postgress://edgefleet:***@h:5/db"',
    );
  });

  it('refuses a libpq keyword string, or a path holding password=, without showing the password', () => {
    const refused = [
      'host=h user=u password=secret dbname=e',
      "host=h password='se cret' dbname=e",
      'host = h password = secret',
      'password=secret',
      'sqlite:/var/lib/x.db?password=secret',
      '/var/lib/host=h password=secret',
    ];
    for (const value of refused) {
      const message = errorOf(() => parseDatabaseLocation(value, '/base'));
      expect(message).toMatch(/unsupported database location .*libpq keyword string is not supported/);
      expect(message).not.toMatch(/secret|cret/);
    }
    expect(errorOf(() => parseDatabaseLocation('host=h dbname=e', '/base'))).toMatch(/libpq keyword string/);
    // One '=' in a path is a file name, not a keyword string.
    expect(parseDatabaseLocation('/var/lib/a=b.db', '/base')).toEqual({
      engine: 'sqlite',
      file: '/var/lib/a=b.db',
    });
  });

  it('never shows the password of any URL-like value it refuses (property)', () => {
    const word = fc.stringMatching(/^[a-z0-9.-]{1,12}$/);
    fc.assert(
      fc.property(
        fc.constantFrom('postgress://', 'mysql://', 'postgres:/', 'postgres//', 'pg:', ''),
        word,
        // Any characters at all, unescaped as a typo would leave them; the marker makes the check exact.
        fc.string({ unit: 'grapheme', maxLength: 20 }),
        word,
        fc.constantFrom('', ':5432', '/db', ':5432/db?sslmode=require'),
        (scheme, user, secret, host, rest) => {
          const password = `PW${secret}`;
          const url = `${scheme}${user}:${password}@${host}${rest}`;
          let message = '';
          try {
            parseDatabaseLocation(url, '/base');
          } catch (error) {
            message = (error as Error).message;
          }
          expect(message).toMatch(/unsupported database location/);
          expect(message).not.toContain(password);
        },
      ),
    );
  });

  it('never shows the password of any libpq keyword string it refuses (property)', () => {
    const word = fc.stringMatching(/^[a-z0-9.-]{1,12}$/);
    fc.assert(
      fc.property(
        fc.constantFrom('', 'sqlite:', 'file:', '/var/lib/'),
        word,
        // Any characters at all: quoted as libpq needs them when they hold whitespace or quotes.
        fc.string({ unit: 'grapheme', maxLength: 20 }),
        fc.boolean(),
        fc.constantFrom(' ', '  ', '\t', '\n'),
        fc.constantFrom('', ' dbname=e', ' sslmode=require'),
        (prefix, host, secret, quote, space, rest) => {
          const password = `PW${secret}`;
          const value =
            quote || /[\s'\\]/.test(password) ? `'${password.replace(/[\\']/g, '\\$&')}'` : password;
          const dsn = `${prefix}host=${host}${space}password=${value}${rest}`;
          const message = errorOf(() => parseDatabaseLocation(dsn, '/base'));
          expect(message).toMatch(/unsupported database location/);
          expect(message).not.toContain(password);
        },
      ),
    );
  });
});

describe('maskUrlCredentials', () => {
  it('masks user:password@ and password= forms, and leaves values without a password alone', () => {
    expect(maskUrlCredentials('postgres://u:p@h:5432/db')).toBe('postgres://u:***@h:5432/db');
    expect(maskUrlCredentials('postgres://u:p@ss:w@rd@h/db')).toBe('postgres://u:***@h/db');
    expect(maskUrlCredentials('postgres://h/db?user=u&password=p&sslmode=require')).toBe(
      'postgres://h/db?user=u&password=***&sslmode=require',
    );
    expect(maskUrlCredentials('host=h password=p dbname=e')).toBe('host=h password=*** dbname=e');
    expect(maskUrlCredentials("host=h\tPASSWORD = 'p \\' q' dbname=e")).toBe(
      'host=h\tPASSWORD = *** dbname=e',
    );
    expect(maskUrlCredentials('postgres://u@h/db')).toBe('postgres://u@h/db');
    expect(maskUrlCredentials('postgres://h:5432/db')).toBe('postgres://h:5432/db');
  });

  it('masks every query parameter and keyword whose name says it is a secret, and only those', () => {
    expect(maskUrlCredentials('postgres://h/db?sslpassword=k&sslmode=require&sslkey=/etc/k.pem')).toBe(
      'postgres://h/db?sslpassword=***&sslmode=require&sslkey=/etc/k.pem',
    );
    // Path-valued keywords name a file, not a secret: the path helps in an error.
    expect(maskUrlCredentials('host=h sslkey=/etc/k.pem passfile=/etc/pgpass sslrootcert=/ca.pem')).toBe(
      'host=h sslkey=/etc/k.pem passfile=/etc/pgpass sslrootcert=/ca.pem',
    );
    expect(maskUrlCredentials('postgres://h/db?ssl%6Bey=/k&api_key=s')).toBe(
      'postgres://h/db?ssl%6Bey=/k&api_key=***',
    );
    expect(maskUrlCredentials('postgres://h/db?application_name=a;client_secret=s;x&PassWord=p')).toBe(
      'postgres://h/db?application_name=a;client_secret=***&PassWord=***',
    );
    // A name a URL parser decodes: pass%77ord is password.
    expect(maskUrlCredentials('postgres://h/db?pass%77ord=p')).toBe('postgres://h/db?pass%77ord=***');
    expect(maskUrlCredentials("host=h sslpassword='a b' sslmode=verify-full")).toBe(
      'host=h sslpassword=*** sslmode=verify-full',
    );
    expect(maskUrlCredentials('https://minio:9000/?X-Amz-Signature=abc&X-Amz-Date=1')).toBe(
      'https://minio:9000/?X-Amz-Signature=***&X-Amz-Date=1',
    );
  });

  it('lets no generated secret through, in the user info, a query parameter or a keyword string', () => {
    const names = [
      'password',
      'PASSWORD',
      'sslpassword',
      'pass%77ord',
      'client_secret',
      'token',
      'access_token',
      'apiKey',
    ];
    // Upper case and punctuation: the secret cannot be a piece of the lower-case text around it.
    const secretChars = fc.constantFrom(...'ABCDEFGHJKLMNPQRSTUVWXYZ0123456789!$()*+,;:@/?#=~%'.split(''));
    const secret = fc.string({ unit: secretChars, minLength: 6, maxLength: 24 });
    const spacedSecret = fc.string({
      unit: fc.constantFrom(..."ABCDEFGHJKLMNPQRSTUVWXYZ0123456789 '=@".split('')),
      minLength: 6,
      maxLength: 24,
    });
    const placed = fc.oneof(
      fc.tuple(secret).map(([s]) => [s, `postgres://user:${s}@db.example:5432/edgefleet`] as const),
      fc
        .tuple(secret, fc.constantFrom(...names), fc.boolean(), fc.boolean())
        .map(([s, name, encoded, first]) => {
          const v = encoded ? encodeURIComponent(s) : s.replace(/&/g, '');
          const query = first ? `${name}=${v}&sslmode=require` : `sslmode=require&${name}=${v}`;
          return [v, `postgres://db.example:5432/edgefleet?${query}`] as const;
        }),
      fc.tuple(secret, fc.constantFrom(...names.filter((n) => !n.includes('%')))).map(([s, name]) => {
        const v = s.replace(/[\s']/g, '');
        return [v, `host=db.example ${name}=${v} dbname=edgefleet`] as const;
      }),
      fc.tuple(spacedSecret, fc.constantFrom('password', 'sslpassword')).map(([s, name]) => {
        const quoted = s.replace(/\\/g, '\\\\').replace(/'/g, "\\'");
        // The quoted value as written, and the secret it stands for.
        return [quoted, `host=db.example ${name} = '${quoted}' dbname=edgefleet`, s] as const;
      }),
    );
    fc.assert(
      fc.property(placed, ([secretValue, value, meant]) => {
        const masked = maskUrlCredentials(value);
        expect(masked).not.toContain(secretValue);
        if (meant !== undefined) expect(masked).not.toContain(meant);
        expect(masked).toContain('***');
      }),
      { numRuns: 2000 },
    );
  });
});

function errorOf(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error('expected an error');
}

describe.each(engines)('state database on $engine', (fixture) => {
  const opened: ServerDatabase[] = [];
  afterEach(async () => {
    for (const database of opened.splice(0)) await database.close();
  });
  const open = async (location?: Awaited<ReturnType<typeof fixture.createLocation>>) => {
    const database = await openDatabase(location ?? (await fixture.createLocation()));
    opened.push(database);
    return database;
  };

  it.skipIf(!fixture.available)('applies every migration once, in order', async () => {
    const database = await open();
    const first = await migrateToLatest(database.db);
    expect(first.map((r) => r.migrationName)).toEqual(migrationNames);
    expect(await migrateToLatest(database.db)).toEqual([]);
    expect(await appliedMigrations(database.db)).toEqual(migrationNames);
  });

  // Replicas share PostgreSQL only; a SQLite file belongs to one server process.
  it.skipIf(!fixture.available || fixture.engine !== 'postgres')(
    'two servers migrating one database at once apply each migration once',
    async () => {
      const location = await fixture.createLocation();
      const [a, b] = [await open(location), await open(location)];
      const results = await Promise.all([migrateToLatest(a.db), migrateToLatest(b.db)]);
      const applied = results.flat().map((r) => r.migrationName);
      expect(applied.sort()).toEqual([...migrationNames].sort());
      expect(await appliedMigrations(b.db)).toEqual(migrationNames);
    },
  );

  it.skipIf(!fixture.available)('round-trips epoch milliseconds and counts as numbers', async () => {
    const database = await open();
    await migrateToLatest(database.db);
    const at = 1_900_000_000_123;
    await database.db
      .insertInto('device_metric_batches')
      .values({
        device_name: 'd',
        fleet_name: 'f',
        received_at: at,
        first_timestamp: at,
        last_timestamp: at,
        metric_count: 1,
        metrics: JSON.stringify([['m', null, null, null, 0.125, at]]),
      })
      .execute();
    const row = await database.db.selectFrom('device_metric_batches').selectAll().executeTakeFirstOrThrow();
    expect(row.received_at).toBe(at);
    expect(row.metric_count).toBe(1);
    expect(JSON.parse(row.metrics)).toEqual([['m', null, null, null, 0.125, at]]);
    const { count } = await database.db
      .selectFrom('device_metric_batches')
      .select((eb) => eb.fn.countAll<number>().as('count'))
      .executeTakeFirstOrThrow();
    expect(count).toBe(1);
  });

  it.skipIf(!fixture.available)('reports unique and foreign-key violations recognisably', async () => {
    const database = await open();
    await migrateToLatest(database.db);
    const fleet = {
      name: 'f1',
      description: null,
      output_s3_location: 's3://b/p',
      output_kms_key_id: null,
      role_arn: null,
      tags: '[]',
      created_at: 1,
      updated_at: 1,
    };
    await database.db.insertInto('fleets').values(fleet).execute();
    const duplicate = await database.db
      .insertInto('fleets')
      .values(fleet)
      .execute()
      .catch((e: unknown) => e);
    expect(isUniqueViolation(duplicate)).toBe(true);
    expect(isForeignKeyViolation(duplicate)).toBe(false);

    const device = {
      name: 'd1',
      fleet_name: 'no-such-fleet',
      description: null,
      iot_thing_name: null,
      tags: '[]',
      registered_at: 1,
      updated_at: 1,
      agent_version: null,
      last_heartbeat_at: null,
      deployment_result: null,
    };
    const orphan = await database.db
      .insertInto('devices')
      .values(device)
      .execute()
      .catch((e: unknown) => e);
    expect(isForeignKeyViolation(orphan)).toBe(true);

    // A fleet with devices cannot be deleted; a device's tags go with it.
    await database.db
      .insertInto('devices')
      .values({ ...device, fleet_name: 'f1' })
      .execute();
    await database.db.insertInto('device_tags').values({ device_name: 'd1', key: 'k', value: 'v' }).execute();
    const restricted = await database.db
      .deleteFrom('fleets')
      .where('name', '=', 'f1')
      .execute()
      .catch((e: unknown) => e);
    expect(isForeignKeyViolation(restricted)).toBe(true);
    await database.db.deleteFrom('devices').where('name', '=', 'd1').execute();
    expect(await database.db.selectFrom('device_tags').selectAll().execute()).toEqual([]);
  });

  it.skipIf(!fixture.available)('keeps its state across close and reopen', async () => {
    const location = await fixture.createLocation();
    const first = await openDatabase(location);
    await migrateToLatest(first.db);
    await first.db.insertInto('server_settings').values({ key: 'k', value: 'v' }).execute();
    await first.close();
    const second = await open(location);
    expect(await migrateToLatest(second.db)).toEqual([]);
    const rows = await sql<{ value: string }>`select value from server_settings where key = 'k'`.execute(
      second.db,
    );
    expect(rows.rows).toEqual([{ value: 'v' }]);
  });
});

const postgresFixture = engines.find((fixture) => fixture.engine === 'postgres')!;

describe('the PostgreSQL pool as Kysely sees it', () => {
  it.skipIf(!postgresFixture.available)(
    'hands Kysely the same client object for the same connection, so its per-connection set-up runs once',
    async () => {
      const location = await postgresFixture.createLocation();
      if (location.engine !== 'postgres') throw new Error('expected a PostgreSQL location');
      const pool = new pg.Pool({ connectionString: location.url, max: 1 });
      let created = 0;
      const db = new Kysely<Record<string, never>>({
        dialect: new PostgresDialect({
          pool: outageAwarePool(pool, 'test'),
          onCreateConnection: () => {
            created += 1;
            return Promise.resolve();
          },
        }),
      });
      try {
        for (let i = 0; i < 3; i += 1) await sql`select 1`.execute(db);
        expect(created).toBe(1);
      } finally {
        await db.destroy();
      }
    },
  );
});
