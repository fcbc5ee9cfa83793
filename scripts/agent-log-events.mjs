#!/usr/bin/env node
/**
 * The agent's log events, from a scan of its source: every `event: '…'` (or `` `…${x}…` ``) in packages/agent/src and
 * in the core modules it runs (packages/core/src), with the level of the logger call that writes it. Run it to list
 * them against the table of packages/agent/docs/logs.md: it prints the events the table lacks, as rows to fill in
 * (level, and the log message as a first meaning), and the table's events the code no longer logs; exit 1 if any.
 * packages/agent/test/docs/log-events.test.ts runs the same comparison.
 *
 *   node scripts/agent-log-events.mjs            # compare; rows for what is missing
 *   node scripts/agent-log-events.mjs --all      # every event found, one row each
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
export const LOG_EVENTS_DOC = 'packages/agent/docs/logs.md';
const SOURCES = ['packages/agent/src', 'packages/core/src'];
const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];
const LEVEL_CALL = new RegExp(`\\.(${LEVELS.join('|')})(?:\\?\\.)?\\s*$`);

function* tsFiles(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* tsFiles(path);
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield path;
  }
}

/** Index of the `(` of the innermost call whose arguments hold `at` and that is a logger call, or -1. */
function enclosingLevel(text, at) {
  let depth = 0;
  for (let i = at; i >= 0 && at - i < 4000; i--) {
    const c = text[i];
    if (c === ')') depth++;
    else if (c === '(') {
      if (depth > 0) depth--;
      else {
        const level = LEVEL_CALL.exec(text.slice(Math.max(0, i - 40), i))?.[1];
        if (level) return level;
        if (/\n\s*\n/.test(text.slice(i, at)) || /^\s*\)/.test(text.slice(i + 1, at))) return undefined;
      }
    } else if (c === ';' && depth === 0) return undefined;
  }
  return undefined;
}

/**
 * Levels of the logger calls that pass `name` (an object of fields built first): every `.warn`, `.error`… between
 * the object and the last mention of `name` in the next lines.
 */
function levelsOfFields(text, at) {
  const name = /(?:const|let)\s+(\w+)\s*(?::[^=]+)?=\s*\{[^;]*$/.exec(
    text.slice(Math.max(0, at - 300), at),
  )?.[1];
  if (!name) return [];
  const after = text.slice(at, at + 1500);
  const uses = [...after.matchAll(new RegExp(`\\b${name}\\b`, 'g'))];
  if (uses.length === 0) return [];
  const span = after.slice(0, uses.at(-1).index);
  const calls = new RegExp(`\\.(${LEVELS.join('|')})\\b`, 'g');
  return [...new Set([...span.matchAll(calls)].map((m) => m[1]))];
}

/** Every event the code logs: name (a template's `${…}` as `<…>`), levels, message (first seen), where. */
export function scanLogEvents(root = REPO_ROOT) {
  const events = new Map();
  for (const dir of SOURCES) {
    for (const file of tsFiles(join(root, dir))) {
      const text = readFileSync(file, 'utf8');
      const found = (name, at, levels, message) => {
        const entry = events.get(name) ?? { event: name, levels: new Set(), message, where: [] };
        for (const level of levels) entry.levels.add(level);
        entry.where.push(`${relative(root, file)}:${text.slice(0, at).split('\n').length}`);
        events.set(name, entry);
      };
      for (const match of text.matchAll(/\bevent:\s*(['`])([a-z0-9_${}.<>-]+)\1/g)) {
        const at = match.index;
        const enclosing = enclosingLevel(text, at);
        const message = /^[^}]*\}\s*,\s*\n?\s*(['`])((?:(?!\1).)*)\1/s.exec(text.slice(at, at + 1500))?.[2];
        found(
          match[2].replace(/\$\{(\w+)\}/g, '<$1>'),
          at,
          enclosing ? [enclosing] : levelsOfFields(text, at),
          message,
        );
      }
      // `event: cond ? 'a' : 'b'`: both names, at the call's level.
      for (const match of text.matchAll(/\bevent:\s*[^,\n?]*\?\s*'([a-z0-9_.-]+)'\s*:\s*'([a-z0-9_.-]+)'/g)) {
        const enclosing = enclosingLevel(text, match.index);
        for (const name of [match[1], match[2]])
          found(name, match.index, enclosing ? [enclosing] : [], undefined);
      }
      // An error class naming the event its line is logged with (`readonly event = '…'`): the level is the logger's.
      for (const match of text.matchAll(/\breadonly event\s*=\s*'([a-z0-9_.-]+)'/g))
        found(match[1], match.index, [], undefined);
    }
  }
  return [...events.values()].sort((a, b) => a.event.localeCompare(b.event));
}

/** A code event's name as a pattern: `fleet-<step>-failed` stands for `fleet-heartbeat-failed` and the like. */
export function eventPattern(name) {
  const escaped = name.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/<\w+>/g, '[a-z0-9-]+');
  return new RegExp(`^${escaped}$`);
}

/** The table's rows (under a header row whose first cell is `event`): event (in backticks) → its level cell. */
export function documentedLogEvents(markdown) {
  const rows = new Map();
  for (const match of markdown.matchAll(/^\|\s*`([a-z0-9_-]+)`\s*\|\s*([^|]*)\|.*\n(?!\|\s*-)/gm))
    rows.set(match[1], match[2].trim());
  return rows;
}

/**
 * What the code and the table disagree on. A row stands for the code event of its name, or else for a template
 * it fits (`fleet-heartbeat-failed` for `fleet-<step>-failed`).
 */
export function compareLogEvents(root = REPO_ROOT) {
  const code = scanLogEvents(root);
  const documented = documentedLogEvents(readFileSync(join(root, LOG_EVENTS_DOC), 'utf8'));
  const rowsOf = new Map(code.map((e) => [e, []]));
  const stale = [];
  for (const name of documented.keys()) {
    const event =
      code.find((e) => e.event === name) ??
      code.find((e) => e.event.includes('<') && eventPattern(e.event).test(name));
    if (event) rowsOf.get(event).push(name);
    else stale.push(name);
  }
  const missing = code.filter((e) => rowsOf.get(e).length === 0);
  const wrongLevel = [];
  for (const [e, names] of rowsOf) {
    if (e.levels.size === 0) continue; // logged at a level the scan cannot see (an error's own event)
    for (const name of names) {
      const cell = documented.get(name);
      const levels = cell.split(/[\s,]+/).filter(Boolean);
      if ([...e.levels].some((l) => !levels.includes(l)) || levels.some((l) => !e.levels.has(l)))
        wrongLevel.push(`${name}: the code logs it at ${[...e.levels].join(', ')}, the table says "${cell}"`);
    }
  }
  return { code, missing, stale, wrongLevel };
}

const row = (e) =>
  `| \`${e.event}\` | ${[...e.levels].join(', ') || '?'} | ${e.message ?? '?'} | ? |  <!-- ${e.where.join(', ')} -->`;

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { code, missing, stale, wrongLevel } = compareLogEvents();
  if (process.argv.includes('--all')) {
    for (const e of code) console.log(row(e));
  } else {
    for (const e of missing) console.log(`missing from ${LOG_EVENTS_DOC}: ${row(e)}`);
    for (const n of stale) console.log(`in ${LOG_EVENTS_DOC} but logged nowhere: ${n}`);
    for (const w of wrongLevel) console.log(`level: ${w}`);
    console.log(
      `${code.length} events in the code; ${missing.length} missing, ${stale.length} stale, ${wrongLevel.length} levels differ`,
    );
    process.exitCode = missing.length + stale.length + wrongLevel.length > 0 ? 1 : 0;
  }
}
