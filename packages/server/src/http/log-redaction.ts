/** Query parameters whose values are secrets or may be (tokens, keys, signatures), by name. */
const SECRET_PARAM = /token|secret|passw|api[-_]?key|access[-_]?key|signature|credential|^auth/i;
/**
 * Values that hold EdgeFleet secrets whatever the parameter is called (operator and enrollment tokens),
 * anywhere in the value (` efo_…`, `Bearer efo_…`).
 */
const SECRET_VALUE = /\bef[a-z]_/i;

function decoded(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return text; // malformed escapes: judge the raw text
  }
}

/**
 * The request URL as the access log may show it: the path, and the query with secret values replaced by
 * `[REDACTED]`. A client that puts a token in the URL (`?token=efo_…`) is refused, but the line about that
 * refusal must not become a copy of the token.
 */
export function redactRequestUrl(url: string): string {
  const queryAt = url.indexOf('?');
  if (queryAt === -1) return url;
  const parts = url
    .slice(queryAt + 1)
    .split('&')
    .map((pair) => {
      const equals = pair.indexOf('=');
      // A bare `?efo_…` is a value without a name.
      if (equals === -1) return SECRET_VALUE.test(decoded(pair)) ? '[REDACTED]' : pair;
      const name = pair.slice(0, equals);
      return SECRET_PARAM.test(decoded(name)) || SECRET_VALUE.test(decoded(pair.slice(equals + 1)))
        ? `${name}=[REDACTED]`
        : pair;
    });
  return `${url.slice(0, queryAt)}?${parts.join('&')}`;
}
