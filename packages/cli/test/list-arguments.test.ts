import { describe, expect, it } from 'vitest';
import { EXIT } from '../src/cli-io.js';
import { edgefleet } from './run-cli.js';

// Refused before any connection is made: no server or agent is needed to see the message.
describe('list commands take no arguments and say what was meant', () => {
  it.each([
    [
      ['device', 'list', 'plant-a'],
      /^edgefleet: device list takes no arguments \(got plant-a\); .*add --fleet plant-a/,
    ],
    [['deployment', 'list', 'plant-a'], /add --fleet plant-a; one plan: .*deployment describe plant-a/],
    [['fleet', 'list', 'plant-a'], /add --name-contains plant-a; one fleet: .*fleet describe plant-a/],
    [['model', 'list', 'resnet'], /one model and its versions: .*model describe resnet/],
    [['packaging', 'list', 'COMPLETED'], /add --status COMPLETED; one job: .*packaging describe COMPLETED/],
    [['token', 'list', 'x'], /token list takes no arguments \(got x\); it lists every API token/],
    [['token', 'list-aws', 'x'], /token list-aws takes no arguments \(got x\); it lists every access key/],
    [['agent', 'list', 'm'], /agent list takes no arguments \(got m\); one loaded model: .*agent describe m/],
  ])('%j', async (argv, message) => {
    const result = await edgefleet(...argv);
    expect(result.code).toBe(EXIT.usage);
    expect(result.stderr).toMatch(message);
    expect(result.stderr).not.toMatch(/too many arguments/);
  });

  it('quotes an argument a shell would change, so the suggestion pastes as is', async () => {
    const result = await edgefleet('fleet', 'list', "it's $HOME");
    expect(result.stderr).toContain(`got 'it'\\''s $HOME'`);
    expect(result.stderr).toContain(`add --name-contains 'it'\\''s $HOME'`);
  });

  it('still lists with options only (the refusal is for stray arguments alone)', async () => {
    // Nothing listens there: getting as far as the connection shows the options were accepted.
    const result = await edgefleet(
      'device',
      'list',
      '--fleet',
      'plant-a',
      '--server',
      'http://127.0.0.1:9',
      '--token',
      'efo_x',
    );
    expect(result.code).toBe(EXIT.failed);
    expect(result.stderr).toMatch(/cannot reach the EdgeFleet server at http:\/\/127\.0\.0\.1:9/);
  });
});
