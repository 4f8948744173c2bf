/** The dot-segment rule every path the sidecar routes, forwards or is configured with must pass. */

/**
 * Whether `pathname` has a `.` or `..` segment, as the upstream may see it: also percent-encoded (`%2e`),
 * split by an encoded or a back slash (`%2f`, `%5c`, `\`), or followed by `;` parameters (`..;`, which
 * Tomcat treats as `..`). The upstream removes dot segments when it resolves the path (RFC 3986 §5.2.4), so
 * `/orders/../api` would leave the route's prefix and its rewrite behind and reach any path on that host
 * with the route's token. Such requests are refused rather than normalised: no sender needs them.
 */
export function hasDotSegment(pathname: string): boolean {
  // Fast path: most paths have neither a dot, an escape nor a back slash.
  if (!/[.%\\]/.test(pathname)) return false;
  const plain = pathname.replace(/%2e/gi, '.').replace(/%2f|%5c|\\/gi, '/');
  for (const segment of plain.split('/')) {
    const name = segment.split(';', 1)[0];
    if (name === '.' || name === '..') return true;
  }
  return false;
}
