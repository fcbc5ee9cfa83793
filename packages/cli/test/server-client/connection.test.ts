import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConnectionConfigError, resolveConnection } from '../../src/server-client/index.js';

let dir: string;
let profilesFile: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ef-profiles-'));
  profilesFile = join(dir, 'profiles.json');
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const writeProfiles = (value: unknown) => writeFile(profilesFile, JSON.stringify(value));

describe('resolveConnection', () => {
  it('takes each of server and token from the first source that has it: flags, env, profile', async () => {
    await writeProfiles({
      profiles: { default: { server: 'http://profile:1', token: 'efo_profile' } },
    });
    // Which sources name the server and which the token: every combination.
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.boolean(), fc.boolean(), fc.boolean(), async (fs, es, ft, et) => {
        const flags = { ...(fs && { server: 'http://flag:1' }), ...(ft && { token: 'efo_flag' }) };
        const env = {
          ...(es && { EDGEFLEET_SERVER: 'http://env:1' }),
          ...(et && { EDGEFLEET_TOKEN: 'efo_env' }),
        };
        const got = await resolveConnection(flags, { env, profilesFile });
        expect(got.server).toBe(fs ? 'http://flag:1' : es ? 'http://env:1' : 'http://profile:1');
        expect(got.token).toBe(ft ? 'efo_flag' : et ? 'efo_env' : 'efo_profile');
      }),
      { numRuns: 32 },
    );
  });

  it('chooses the profile by --profile, then EDGEFLEET_PROFILE, then the file’s default', async () => {
    await writeProfiles({
      default: 'lab',
      profiles: {
        lab: { server: 'http://lab:8080/', token: 'efo_lab' },
        prod: { server: 'https://prod.example', token: 'efo_prod' },
      },
    });
    expect(await resolveConnection({}, { env: {}, profilesFile })).toEqual({
      server: 'http://lab:8080',
      token: 'efo_lab',
    });
    expect(await resolveConnection({}, { env: { EDGEFLEET_PROFILE: 'prod' }, profilesFile })).toEqual({
      server: 'https://prod.example',
      token: 'efo_prod',
    });
    expect(
      await resolveConnection({ profile: 'lab' }, { env: { EDGEFLEET_PROFILE: 'prod' }, profilesFile }),
    ).toMatchObject({ server: 'http://lab:8080' });
    // A flag still beats the chosen profile, field by field.
    expect(await resolveConnection({ profile: 'prod', token: 'efo_x' }, { env: {}, profilesFile })).toEqual({
      server: 'https://prod.example',
      token: 'efo_x',
    });
  });

  it('says what is wrong: unknown profile, missing server, bad file, bad URL', async () => {
    await writeProfiles({ profiles: { lab: { server: 'http://lab:1' } } });
    await expect(resolveConnection({ profile: 'nope' }, { env: {}, profilesFile })).rejects.toThrow(
      /no profile "nope" in .*profiles: lab/,
    );
    await expect(resolveConnection({}, { env: {}, profilesFile })).rejects.toThrow(
      /no server given: pass --server/,
    );
    await expect(
      resolveConnection({ profile: 'x' }, { env: {}, profilesFile: join(dir, 'missing.json') }),
    ).rejects.toThrow(/does not exist/);
    await writeFile(profilesFile, '{not json');
    await expect(resolveConnection({}, { env: {}, profilesFile })).rejects.toThrow(/is not JSON/);
    await writeProfiles({ profiles: { lab: { server: 'ftp://x' } } });
    await expect(resolveConnection({ profile: 'lab' }, { env: {}, profilesFile })).rejects.toThrow(
      /profiles\.lab\.server/,
    );
    await expect(
      resolveConnection({ server: 'not a url' }, { env: {}, profilesFile }),
    ).rejects.toBeInstanceOf(ConnectionConfigError);
  });

  it('does not read the profile file when flags and env say everything', async () => {
    await writeFile(profilesFile, '{broken'); // reading it would fail
    expect(
      await resolveConnection({ server: 'http://a:1' }, { env: { EDGEFLEET_TOKEN: 't' }, profilesFile }),
    ).toEqual({ server: 'http://a:1', token: 't' });
    await expect(resolveConnection({ server: 'http://a:1' }, { env: {}, profilesFile })).rejects.toThrow(
      /is not JSON/,
    );
  });
});
