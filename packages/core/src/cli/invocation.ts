/**
 * The words that start a command-line program the way the user reached it, for hints that name a command to run
 * next. Run by npm (`npx`/`npm exec`, or an npm script such as `npm start`: npm sets `npm_command`; npm 6's npx
 * left only `npm_execpath` pointing at npx-cli.js) it is `npx <bin>`: in a clone of the repository the binary is in
 * node_modules/.bin, not on PATH, and npx finds it there (or installed globally). Otherwise (installed globally,
 * linked, or run by path from a shell) it is the bare `<bin>`: suggesting `npx` there could make npm download an
 * unrelated registry package of that name.
 */
export function commandPrefix(bin: string, env: Readonly<Record<string, string | undefined>>): string {
  const throughNpm = (env.npm_command ?? '') !== '' || /[\\/]npx-cli\.js$/.test(env.npm_execpath ?? '');
  return throughNpm ? `npx ${bin}` : bin;
}

/**
 * `value` as one POSIX shell word that the shell takes literally, so that a printed command can be pasted: as is
 * when it is plain, else single-quoted (inside which only `'` is special: closed, escaped, reopened), so that `$`,
 * backticks, `!` and spaces are not expanded or split.
 */
export function shellWord(value: string): string {
  if (/^[A-Za-z0-9_.:@/=+-]+$/.test(value)) return value;
  return `'${value.replaceAll("'", `'\\''`)}'`;
}
