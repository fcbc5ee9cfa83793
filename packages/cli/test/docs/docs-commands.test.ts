/**
 * The docs stay true: every relative link in the READMEs and docs resolves (file, and heading when it names
 * one), and every `edgefleet …` command they show names commands and options this CLI has, every
 * `npm run <script>` a script the package has, and every `node <path>` a file the build makes.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli.js';
import { REPO_ROOT } from '../../../../test/support/control-plane.js';

const markdownFiles = [
  'README.md',
  'deploy/README.md',
  ...['agent', 'server', 'cli', 'core', 'web']
    .map((p) => `packages/${p}/README.md`)
    .filter((f) => existsSync(join(REPO_ROOT, f))),
  ...readdirSync(join(REPO_ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
  ...readdirSync(join(REPO_ROOT, 'packages/agent/docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `packages/agent/docs/${f}`),
];
const read = (file: string) => readFileSync(join(REPO_ROOT, file), 'utf8');

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
const slug = (heading: string) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
const anchors = (text: string) =>
  new Set([...text.matchAll(/^#{1,6}\s+(.+)$/gm)].map((m) => slug(m[1]!.replace(/`/g, ''))));

/** Shell lines of the ```sh blocks, continuation lines joined. */
function shellLines(text: string): string[] {
  const lines: string[] = [];
  for (const block of text.matchAll(/```(?:sh|bash|shell)\n([\s\S]*?)```/g))
    lines.push(...block[1]!.replace(/\\\n\s*/g, ' ').split('\n'));
  return lines;
}

/** The `edgefleet …` invocations in a shell line (after `npx`, `$(`, `;`, `&&`, a comment's `on the device:`). */
function edgefleetCalls(line: string): string[][] {
  const calls: string[][] = [];
  for (const match of line.matchAll(/(?:^|[\s($:;])(?:npx\s+)?edgefleet\s+([^|)#;&]*)/g)) {
    // Up to an alternative (` | `), a comment, the end of a `$( … )` or a shell separator.
    const words = match[1]!.trim().split(/\s+/).filter(Boolean);
    calls.push(words);
  }
  return calls;
}

const longOptions = (command: Command) =>
  new Set([...command.options.map((o) => o.long), '--help', '--json'].filter(Boolean) as string[]);

/** Walks the command words; returns a problem, or undefined when the call names real commands and options. */
function checkCall(program: Command, words: string[]): string | undefined {
  let command = program;
  let i = 0;
  for (; i < words.length; i++) {
    const sub = command.commands.find((c) => c.name() === words[i] || c.aliases().includes(words[i]!));
    if (!sub) break;
    command = sub;
  }
  if (command === program && !words.some((w) => ['--help', '-h', '--version', '-V'].includes(w)))
    return `"${words[0]}" is not an edgefleet command`;
  if (command.commands.length > 0 && !words.includes('--help') && !words.includes('…'))
    return `"${words.slice(0, i).join(' ')}" needs a subcommand (${command.commands.map((c) => c.name()).join(', ')})`;
  const known = longOptions(command);
  for (const word of words.slice(i)) {
    const option = /^(--[a-z][a-z0-9-]*)/.exec(word)?.[1];
    if (option && !known.has(option))
      return `"edgefleet ${words.slice(0, i).join(' ')}" has no option ${option}`;
  }
  return undefined;
}

describe('the READMEs and docs', () => {
  it.each(markdownFiles)('%s: every relative link resolves', (file) => {
    // Links in prose only: code blocks and `code spans` hold regular expressions and shell, not links.
    const text = read(file)
      .replace(/```[\s\S]*?```/g, '')
      .replace(/`[^`]*`/g, '');
    const broken: string[] = [];
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/i.test(target!) || target!.startsWith('#')) continue;
      const [path, anchor] = target!.split('#') as [string, string | undefined];
      const absolute = resolve(dirname(join(REPO_ROOT, file)), path);
      if (!existsSync(absolute)) broken.push(`${target} (no ${relative(REPO_ROOT, absolute)})`);
      else if (anchor && absolute.endsWith('.md') && !anchors(readFileSync(absolute, 'utf8')).has(anchor))
        broken.push(`${target} (no heading #${anchor})`);
    }
    // Headings keep their code spans (GitHub's anchor has their text).
    const headings = anchors(read(file));
    for (const [, anchor] of text.matchAll(/\]\(#([^)\s]+)\)/g))
      if (!headings.has(anchor!)) broken.push(`#${anchor} (no such heading)`);
    expect(broken).toEqual([]);
  });

  it.each(markdownFiles)('%s: every edgefleet command, npm script and node path it shows exists', (file) => {
    const program = buildProgram();
    const scripts = Object.keys(
      (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts,
    );
    const problems: string[] = [];
    for (const line of shellLines(read(file))) {
      for (const words of edgefleetCalls(line)) {
        const problem = checkCall(program, words);
        if (problem) problems.push(`${line.trim()}  →  ${problem}`);
      }
      for (const [, script] of line.matchAll(/npm run ([\w:-]+)/g))
        if (!scripts.includes(script!)) problems.push(`${line.trim()}  →  no npm script "${script}"`);
      for (const [, path] of line.matchAll(/node ((?:packages|scripts|bench|deploy)\/[\w./-]+)/g)) {
        // dist/ files are built from src/: the source must exist.
        const source = path!.replace(/\/dist\/(.*)\.js$/, '/src/$1.ts');
        if (!existsSync(join(REPO_ROOT, source))) problems.push(`${line.trim()}  →  no ${source}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('finds the commands it checks (the check itself works)', () => {
    const program = buildProgram();
    expect(edgefleetCalls('npx edgefleet agent list --socket x # comment')).toEqual([
      ['agent', 'list', '--socket', 'x'],
    ]);
    expect(checkCall(program, ['deploy', 'create'])).toBe('"deploy" is not an edgefleet command');
    expect(checkCall(program, ['agent', 'list', '--sock', 'x'])).toBe(
      '"edgefleet agent list" has no option --sock',
    );
    expect(checkCall(program, ['device', 'enroll', '--server', 'u', '--config', 'c'])).toBeUndefined();
    expect(shellLines(read('README.md')).some((l) => l.includes('edgefleet fleet create'))).toBe(true);
    expect(shellLines(read('docs/cli.md')).flatMap(edgefleetCalls).length).toBeGreaterThan(20);
  });
});
