/** Every command's `--help` says each option's default once (commander adds "(default: …)" itself). */
import type { Command } from 'commander';
import { expect, it } from 'vitest';
import { buildProgram } from '../src/cli.js';

function* allCommands(command: Command): Generator<Command> {
  yield command;
  for (const sub of command.commands) yield* allCommands(sub);
}

it('no --help line names its default twice', () => {
  const doubled: string[] = [];
  for (const command of allCommands(buildProgram())) {
    for (const line of command.helpInformation().split('\n'))
      if ((line.match(/\(default: /g) ?? []).length > 1) doubled.push(`${command.name()}: ${line.trim()}`);
  }
  expect(doubled).toEqual([]);
});
