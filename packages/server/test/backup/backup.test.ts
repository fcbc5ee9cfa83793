import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupSqlite, inspectStateFile, restoreSqlite } from '../../src/backup/index.js';
import { urlWithoutPassword } from '../../src/backup/backup-command.js';
import { migrateToLatest, migrationNames, openDatabase } from '../../src/storage/index.js';
import { startTestPostgres, type TestPostgres } from '../support/postgres.js';
import { runServerCli, startServerProcess, type ServerProcess } from '../support/process.js';

let cwd: string;
beforeAll(async () => {
  cwd = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-backup-'));
});
afterAll(() => rm(cwd, { recursive: true, force: true }));

const flags = ['--listen', '127.0.0.1:0', '--device-listen', '127.0.0.1:0', '--log-level', 'info'];
const stateFile = () => path.join(cwd, '.edgefleet', 'server', 'state.db');

function operator(server: ServerProcess, token: string) {
  return (method: string, url: string, body?: unknown) =>
    fetch(`${server.operatorUrl}${url}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
}
const fleet = (name: string) => ({ name, outputConfig: { s3OutputLocation: `s3://captures/${name}` } });

describe('edgefleet-server backup and restore (real processes)', { timeout: 120_000 }, () => {
  it('backs up online while fleets are being written, and a restore brings that state back', async () => {
    const init = await runServerCli(['init'], cwd);
    expect(init.code).toBe(0);
    const token = init.stdout.trim();
    const backupFile = path.join(cwd, 'state.backup.db');

    const server = await startServerProcess(flags, cwd);
    let writes: Promise<number[]>;
    try {
      const api = operator(server, token);
      expect((await api('POST', '/api/v1/fleets', fleet('before-backup'))).status).toBe(201);
      // A SageMaker access key: its secret is encrypted with a key file the backup must carry.
      expect((await api('POST', '/api/v1/access-keys', { name: 'boto', scope: 'admin' })).status).toBe(201);
      // Writes keep arriving during the backup: it copies one consistent snapshot regardless.
      writes = Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          api('POST', '/api/v1/fleets', fleet(`during-${i}`)).then((r) => r.status),
        ),
      );
      const backup = await runServerCli(['backup', '--out', backupFile], cwd);
      expect(backup.stderr).toMatch(/backed up .*state\.db to .*state\.backup\.db/);
      expect(backup.code).toBe(0);
      const keyFile = path.join(cwd, '.edgefleet', 'server', 'access-keys', 'encryption.key');
      expect(backup.stderr).toContain(`  ${keyFile}\n`);
      expect(backup.stderr).toContain(`  ${path.join(cwd, '.edgefleet', 'server', 'ca')}\n`);
      expect(backup.stderr).toContain(`  ${path.join(cwd, '.edgefleet', 'server', 'signing')}\n`);
      expect(await writes).toEqual(Array(20).fill(201));
      expect(inspectStateFile(backupFile)).toEqual(migrationNames);

      // An existing --out is refused, not overwritten.
      const again = await runServerCli(['backup', '--out', backupFile], cwd);
      expect(again.code).toBe(1);
      expect(again.stderr).toMatch(/already exists; expected a new file name for --out/);

      expect((await api('POST', '/api/v1/fleets', fleet('after-backup'))).status).toBe(201);
      // Restoring under a running server is refused: it holds the database open.
      const busy = await runServerCli(['restore', '--from', backupFile], cwd);
      expect(busy.code).toBe(1);
      expect(busy.stderr).toMatch(/in use .*stop edgefleet-server before restoring/);
    } finally {
      expect(await server.stop()).toBe(0);
    }

    const restore = await runServerCli(['restore', '--from', backupFile], cwd);
    expect(restore.code).toBe(0);
    expect(restore.stderr).toMatch(/the database it replaced is kept as .*state\.db\.before-restore-/);

    const restarted = await startServerProcess(flags, cwd);
    try {
      const list = await operator(restarted, token)('GET', '/api/v1/fleets?limit=100');
      const names = ((await list.json()) as { fleets: { name: string }[] }).fleets.map((f) => f.name);
      expect(names).toContain('before-backup');
      expect(names).not.toContain('after-backup');
      // A consistent snapshot: each concurrent write is wholly in the backup or not at all.
      expect(names.every((n) => n === 'before-backup' || /^during-\d+$/.test(n))).toBe(true);
    } finally {
      expect(await restarted.stop()).toBe(0);
    }

    // A restore without the access-key encryption key: the server refuses to start, naming the file,
    // rather than making a new key and failing every SageMaker request later. Nothing is created.
    const keyFile = path.join(cwd, '.edgefleet', 'server', 'access-keys', 'encryption.key');
    await rename(keyFile, `${keyFile}.away`);
    const refused = await runServerCli(['serve', ...flags], cwd);
    // 2: a person must restore the file (KeyMaterialError); the unit does not restart it.
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(
      /holds SageMaker access keys encrypted with the key in .*encryption\.key \(sagemaker\.accessKeyEncryptionKeyFile\), but that file does not exist: restore the key file/,
    );
    await expect(stat(keyFile)).rejects.toThrow(/ENOENT/);
    await rename(`${keyFile}.away`, keyFile);
    // The replaced database still holds what was written after the backup.
    const kept = (await readdir(path.dirname(stateFile()))).find((f) => f.includes('before-restore'))!;
    const previous = await openDatabase({
      engine: 'sqlite',
      file: path.join(path.dirname(stateFile()), kept),
    });
    try {
      const rows = await previous.db
        .selectFrom('fleets')
        .select('name')
        .where('name', '=', 'after-backup')
        .execute();
      expect(rows).toHaveLength(1);
    } finally {
      await previous.close();
    }
  });

  it('for PostgreSQL, explains pg_dump and pg_restore without printing the password', async () => {
    const result = await runServerCli(
      [
        'backup',
        '--out',
        path.join(cwd, 'pg.backup'),
        '--database',
        'postgres://edge:s3cret-pw@127.0.0.1:1/fleet',
      ],
      cwd,
    );
    expect(result.code).toBe(1);
    // The configured database itself, as a shell word, not "$EDGEFLEET_DATABASE" (which a config file does not set).
    expect(result.stderr).toContain(
      '  (umask 077 && pg_dump --format=custom --file edgefleet.dump postgres://edge@127.0.0.1:1/fleet)\n',
    );
    expect(result.stderr).toContain(
      '  pg_restore --no-owner --dbname postgres://edge@127.0.0.1:1/fleet edgefleet.dump\n',
    );
    expect(result.stderr).not.toMatch(/s3cret-pw|EDGEFLEET_DATABASE/);
    expect(result.stderr).toMatch(/access-keys\/encryption\.key\n/);
  });
});

describe('urlWithoutPassword', () => {
  it('removes the password and a password parameter, and leaves the rest of the query as written', () => {
    expect(urlWithoutPassword('postgres://edge:pw@h:5432/fleet?options=-c%20search_path%3Dx')).toBe(
      'postgres://edge@h:5432/fleet?options=-c%20search_path%3Dx',
    );
    expect(
      urlWithoutPassword('postgres://edge@h/fleet?options=-c%20search_path%3Dx&password=pw&sslmode=require'),
    ).toBe('postgres://edge@h/fleet?options=-c%20search_path%3Dx&sslmode=require');
    expect(urlWithoutPassword('postgres://edge@h/fleet?password=pw')).toBe('postgres://edge@h/fleet');
    // A path-valued keyword stays: pg_dump needs the file's path, and the path is no secret.
    expect(urlWithoutPassword('postgres://edge@h/fleet?passfile=/etc/pgpass&sslkey=/etc/k.pem')).toBe(
      'postgres://edge@h/fleet?passfile=/etc/pgpass&sslkey=/etc/k.pem',
    );
  });

  it('removes every parameter whose name says it holds a secret, as the masking rule has it', () => {
    expect(urlWithoutPassword('postgres://u@h/db?sslpassword=s3cret')).toBe('postgres://u@h/db');
    expect(urlWithoutPassword('postgres://u@h/db?sslmode=require&PASSWORD=s3cret&pass%77ord=s3cret')).toBe(
      'postgres://u@h/db?sslmode=require',
    );
    // A secret inside another parameter's value cannot be removed as a parameter: it is masked.
    expect(urlWithoutPassword('postgres://u@h/db?application_name=a;sslpassword=s3cret')).toBe(
      'postgres://u@h/db?application_name=a;sslpassword=***',
    );
  });
});

describe('the pg_dump command backup prints, run as printed (real PostgreSQL)', { timeout: 120_000 }, () => {
  const pgBin = ['15', '16', '17', '14', '13']
    .map((v) => `/usr/lib/postgresql/${v}/bin`)
    .find((dir) => existsSync(path.join(dir, 'pg_dump')));
  let postgres: TestPostgres | undefined;
  beforeAll(async () => {
    if (pgBin !== undefined) postgres = await startTestPostgres();
  });
  afterAll(() => postgres?.stop());

  it.skipIf(pgBin === undefined)('dumps the configured database into an owner-only file', async () => {
    const url = await postgres!.createDatabase();
    const dir = await mkdtemp(path.join(cwd, 'pg-'));
    // The database in a config file, as deploy/README.md sets it: no EDGEFLEET_DATABASE in the environment.
    await writeFile(path.join(dir, 'server.json'), JSON.stringify({ database: url }));
    expect((await runServerCli(['init', '-c', 'server.json'], dir)).code).toBe(0);
    const guidance = await runServerCli(['backup', '-c', 'server.json', '--out', 'x'], dir);
    expect(guidance.code).toBe(1);
    const line = guidance.stderr
      .split('\n')
      .find((l) => l.includes('pg_dump --format'))!
      .trim();
    const { EDGEFLEET_DATABASE: _unset, ...env } = process.env;
    await promisify(execFile)('sh', ['-c', line], {
      cwd: dir,
      env: { ...env, PATH: `${pgBin}:${env.PATH}` },
    });
    const dump = path.join(dir, 'edgefleet.dump');
    expect((await stat(dump)).mode & 0o077).toBe(0);
    const { stdout } = await promisify(execFile)(path.join(pgBin!, 'pg_restore'), ['--list', dump]);
    expect(stdout).toMatch(/TABLE public fleets/);
  });
});

describe('restore refuses what is not an EdgeFleet backup, and changes nothing', () => {
  it('writes the backup readable by its owner only, wherever --out is', async () => {
    const dir = await mkdtemp(path.join(cwd, 'mode-'));
    const source = path.join(dir, 'state.db');
    const database = await openDatabase({ engine: 'sqlite', file: source });
    try {
      await migrateToLatest(database.db);
    } finally {
      await database.close();
    }
    const out = path.join(dir, 'shared', 'state.backup.db');
    await mkdir(path.dirname(out), { mode: 0o755 });
    await backupSqlite(source, out);
    expect((await stat(out)).mode & 0o077).toBe(0);
  });

  it('names the problem for a file that is not SQLite and for a foreign SQLite database', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'edgefleet-restore-'));
    try {
      const target = path.join(dir, 'state.db');
      const junk = path.join(dir, 'junk.db');
      await writeFile(junk, 'not a database at all, just text that is long enough to look like a header');
      await expect(restoreSqlite(junk, target)).rejects.toThrow(
        /junk\.db: (not a SQLite database|cannot be opened)/,
      );

      const foreign = path.join(dir, 'foreign.db');
      const other = await openDatabase({ engine: 'sqlite', file: foreign });
      await other.db.schema.createTable('t').addColumn('x', 'text').execute();
      await other.close();
      await expect(restoreSqlite(foreign, target)).rejects.toThrow(/not an EdgeFleet state database/);
      await expect(backupSqlite(foreign, path.join(dir, 'no-such-folder', 'out.db'))).rejects.toThrow(
        /no-such-folder does not exist; expected --out in an existing folder/,
      );
      await expect(backupSqlite(path.join(dir, 'missing.db'), path.join(dir, 'out.db'))).rejects.toThrow(
        /no state database at .*missing\.db/,
      );
      // No state.db appeared and no partial copy was left behind.
      expect((await readdir(dir)).filter((f) => f.startsWith('state.db') || f.includes('partial'))).toEqual(
        [],
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
