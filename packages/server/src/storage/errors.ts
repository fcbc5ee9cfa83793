/** Recognises constraint violations from either engine, so callers can turn them into 409 answers. */
function codeOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null || !('code' in error)) return undefined;
  const code = (error as { code: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

export function isUniqueViolation(error: unknown): boolean {
  const code = codeOf(error);
  // PostgreSQL unique_violation; better-sqlite3 SQLITE_CONSTRAINT_UNIQUE / PRIMARYKEY.
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

export function isForeignKeyViolation(error: unknown): boolean {
  const code = codeOf(error);
  if (code === '23503' || code === 'SQLITE_CONSTRAINT_FOREIGNKEY') return true;
  // SQLite reports ON DELETE RESTRICT as SQLITE_CONSTRAINT_TRIGGER with this message.
  return (
    code?.startsWith('SQLITE_CONSTRAINT') === true &&
    error instanceof Error &&
    error.message.includes('FOREIGN KEY constraint failed')
  );
}
