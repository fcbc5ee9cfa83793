import { describe, expect, it } from 'vitest';
import { ConfigError, DEFAULT_MAX_MESSAGE_BYTES, parseCommandLine } from '../../src/config/index.js';

const context = { version: '1.2.3', cwd: '/srv/agent' };

function errorOf(args: string[]): ConfigError {
  try {
    parseCommandLine(args, context);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`expected ${args.join(' ')} to be refused`);
}

describe('parseCommandLine', () => {
  it('reads the SageMaker Edge agent command line', () => {
    const result = parseCommandLine(
      ['-a', '/tmp/sagemaker_edge_agent_example.sock', '-c', 'conf/agent.json', '-f', '-m', '524288000'],
      context,
    );
    expect(result).toEqual({
      kind: 'run',
      options: {
        socketPath: '/tmp/sagemaker_edge_agent_example.sock',
        configPath: '/srv/agent/conf/agent.json',
        removeStaleSocket: true,
        maxMessageBytes: 524288000,
      },
    });
  });

  it('defaults -f to off and -m to gRPC’s 4 MiB, and resolves relative paths against the working folder', () => {
    const result = parseCommandLine(['-c', '/etc/agent.json', '-a', 'agent.sock'], context);
    expect(result).toEqual({
      kind: 'run',
      options: {
        socketPath: '/srv/agent/agent.sock',
        configPath: '/etc/agent.json',
        removeStaleSocket: false,
        maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
      },
    });
  });

  it('accepts the long option names and a unix:// target pasted into -a', () => {
    const result = parseCommandLine(
      ['--address', 'unix:///tmp/x.sock', '--config', 'c.json', '--force', '--max-message-size', '1000'],
      context,
    );
    expect(result.kind === 'run' && result.options).toMatchObject({
      socketPath: '/tmp/x.sock',
      removeStaleSocket: true,
      maxMessageBytes: 1000,
    });
  });

  it('returns --help and --version as text instead of printing or exiting', () => {
    const help = parseCommandLine(['--help'], context);
    expect(help.kind).toBe('help');
    expect(help.kind === 'help' && help.text).toMatch(/-a, --address <socket>/);
    expect(help.kind === 'help' && help.text).toMatch(/-m, --max-message-size <bytes>/);
    expect(parseCommandLine(['--version'], context)).toEqual({ kind: 'version', text: '1.2.3' });
  });

  it('names the option at fault', () => {
    expect(errorOf(['-c', 'x.json']).key).toBe('-a');
    expect(errorOf(['-a', '/tmp/x.sock']).key).toBe('-c');
    const badSize = errorOf(['-a', '/tmp/x.sock', '-c', 'x.json', '-m', 'lots']);
    expect(badSize.key).toBe('-m');
    expect(badSize.message).toMatch(/expected a whole number of bytes/);
    expect(errorOf(['-a', '/tmp/x.sock', '-c', 'x.json', '-m', '0']).key).toBe('-m');
    expect(errorOf(['-a', '/tmp/x.sock', '-c', 'x.json', '-m', '99999999999']).key).toBe('-m');
    expect(errorOf(['-a']).key).toBe('-a');
    const unknown = errorOf(['-a', '/tmp/x.sock', '-c', 'x.json', '--bogus']);
    expect(unknown.key).toBe('--bogus');
    expect(unknown.message).toMatch(/unknown option/);
    expect(errorOf(['-a', '/tmp/x.sock', '-c', 'x.json', 'extra']).message).toMatch(/too many arguments/);
  });

  it('refuses a socket path longer than a Unix socket address can hold', () => {
    const error = errorOf(['-a', `/tmp/${'s'.repeat(120)}.sock`, '-c', 'x.json']);
    expect(error.key).toBe('-a');
    expect(error.message).toMatch(/at most 107/);
  });
});
