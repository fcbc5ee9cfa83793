/** Counts the rows that selects from one table return, through a Kysely plugin (a seam on the real database). */
import type { KyselyPlugin, QueryId, RootOperationNode } from 'kysely';

/** The plugin sees each query, then its result: rows of selects whose FROM is `table` are counted. */
export function rowsReadFrom(table: string): { plugin: KyselyPlugin; rows: () => number } {
  const fromTable = new WeakSet<QueryId>();
  let rows = 0;
  const tableOf = (node: RootOperationNode) =>
    node.kind === 'SelectQueryNode'
      ? node.from?.froms
          .map((f) => (f as { table?: { identifier?: { name?: string } } }).table?.identifier?.name ?? '')
          .join(',')
      : undefined;
  return {
    plugin: {
      transformQuery: (args) => {
        if (tableOf(args.node) === table) fromTable.add(args.queryId);
        return args.node;
      },
      transformResult: async (args) => {
        if (fromTable.has(args.queryId)) rows += args.result.rows.length;
        return args.result;
      },
    },
    rows: () => rows,
  };
}
