import { createHash, randomBytes } from 'node:crypto';

/**
 * A new random bearer secret with a recognisable prefix (so a leaked one is easy to spot in logs and
 * scanners). 32 random bytes: far beyond guessing, which is why a plain SHA-256 (rather than a slow
 * password hash) is the right way to store it.
 */
export function newSecret(prefix: string): string {
  return `${prefix}${randomBytes(32).toString('base64url')}`;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

export function newId(): string {
  return randomBytes(8).toString('hex');
}

/** The secret of an `Authorization: Bearer <secret>` header, if the header has that form. */
export function bearerTokenOf(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}
