/** Query parameters whose values are secrets or may be (tokens, keys, signatures), by name. */
const SECRET_PARAM = /token|secret|passw|api[-_]?key|access[-_]?key|signature|credential|^auth/i;
/** Values that are EdgeFleet secrets whatever the parameter is called (operator and enrollment tokens). */
const SECRET_VALUE = /^ef[a-z]_/i;

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
      if (equals === -1) return pair;
      const name = pair.slice(0, equals);
      let value = pair.slice(equals + 1);
      try {
        value = decodeURIComponent(value.replace(/\+/g, ' '));
      } catch {
        // Malformed escapes: judge the raw text.
      }
      let decodedName = name;
      try {
        decodedName = decodeURIComponent(name);
      } catch {
        // as above
      }
      return SECRET_PARAM.test(decodedName) || SECRET_VALUE.test(value) ? `${name}=[REDACTED]` : pair;
    });
  return `${url.slice(0, queryAt)}?${parts.join('&')}`;
}
