import { describe, expect, it } from 'vitest';
import { commandPrefix } from '../../src/cli/invocation.js';

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
