import { describe, expect, it } from 'vitest';
import { commandPrefix } from '../../src/cli/invocation.js';

describe('commandPrefix', () => {
  it('is npx <bin> under npx or npm exec (npm 7+), and under npm 6 npx', () => {
    expect(commandPrefix('edgefleet', { npm_command: 'exec' })).toBe('npx edgefleet');
    expect(commandPrefix('edgefleet', { npm_execpath: '/usr/lib/node_modules/npm/bin/npx-cli.js' })).toBe(
      'npx edgefleet',
    );
  });

  it('is the bare <bin> otherwise: installed globally, or run by an npm script', () => {
    expect(commandPrefix('edgefleet-server', {})).toBe('edgefleet-server');
    expect(
      commandPrefix('edgefleet', {
        npm_command: 'run-script',
        npm_execpath: '/usr/lib/node_modules/npm/bin/npm-cli.js',
      }),
    ).toBe('edgefleet');
  });
});
