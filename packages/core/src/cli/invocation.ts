/**
 * The words that start a command-line program the way the user started it, for hints that name a command to
 * run next. Through `npx` or `npm exec` (npm 7+ sets `npm_command=exec` for both; npm 6's npx left only
 * `npm_execpath` pointing at npx-cli.js) it is `npx <bin>`: in a clone of the repository the binary is in
 * node_modules/.bin, not on PATH. Otherwise (installed globally, linked, or run by path) it is the bare `<bin>`:
 * suggesting `npx` there could make npm download an unrelated registry package of that name.
 */
export function commandPrefix(bin: string, env: Readonly<Record<string, string | undefined>>): string {
  const throughNpx = env.npm_command === 'exec' || /[\\/]npx-cli\.js$/.test(env.npm_execpath ?? '');
  return throughNpx ? `npx ${bin}` : bin;
}
