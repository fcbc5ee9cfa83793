import { describe, expect, it } from 'vitest';
import { commandPrefix, shellWord } from '../../src/cli/invocation.js';

describe('commandPrefix', () => {
  it('is npx <bin> when npm ran it: npx or npm exec, an npm script (npm start), npm 6 npx', () => {
    expect(commandPrefix('edgefleet', { npm_command: 'exec' })).toBe('npx edgefleet');
    expect(commandPrefix('edgefleet', { npm_command: 'start' })).toBe('npx edgefleet');
    expect(commandPrefix('edgefleet', { npm_command: 'run-script' })).toBe('npx edgefleet');
    expect(commandPrefix('edgefleet', { npm_execpath: '/usr/lib/node_modules/npm/bin/npx-cli.js' })).toBe(
      'npx edgefleet',
    );
  });

  it('is the bare <bin> otherwise: installed globally or linked, run from a shell', () => {
    expect(commandPrefix('edgefleet-server', {})).toBe('edgefleet-server');
    expect(commandPrefix('edgefleet', { npm_command: '', PATH: '/usr/bin' })).toBe('edgefleet');
  });
});

describe('shellWord', () => {
  it('leaves a plain word as it is and single-quotes anything a shell would expand or split', async () => {
    expect(shellWord('/var/lib/edgefleet-server')).toBe('/var/lib/edgefleet-server');
    expect(shellWord('s3://bucket/a=b+c@d')).toBe('s3://bucket/a=b+c@d');
    const odd = "it's $HOME and `false` !dir";
    expect(shellWord(odd)).toBe(`'it'\\''s $HOME and \`false\` !dir'`);
    // The shell reads it back as the one word it was.
    const { execFileSync } = await import('node:child_process');
    expect(execFileSync('sh', ['-c', `printf %s ${shellWord(odd)}`], { encoding: 'utf8' })).toBe(odd);
    expect(shellWord('')).toBe("''");
  });
});
