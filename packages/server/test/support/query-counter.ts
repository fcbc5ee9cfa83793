/** Counts the statements a Kysely instance runs, through a plugin (a seam on the real database). */
import type { KyselyPlugin } from 'kysely';

/** Every query passes through a plugin's transformQuery: each is one statement run. */
export function queryCounter(): { plugin: KyselyPlugin; count: () => number } {
  let count = 0;
  return {
    plugin: {
      transformQuery: (args) => {
        count += 1;
        return args.node;
      },
      transformResult: async (args) => args.result,
    },
    count: () => count,
  };
}
