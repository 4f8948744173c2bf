/**
 * Classify what went wrong on an outbound connection, from undici and Node
 * error codes, without ever echoing an error message (which may carry URLs
 * with proxy credentials), and tell a failed connection to the HTTPS proxy
 * from one to the target.
 */

export type NetworkFailure =
  | 'timeout'
  /** The peer's certificate is not trusted: a missing CA, the typical on-premise trap. */
  | 'tls-trust'
  /** Any other TLS failure: handshake alert, our client certificate refused, protocol. */
  | 'tls'
  | 'refused'
  | 'reset'
  | 'dns'
  /** The corporate proxy refused the CONNECT or failed. */
  | 'proxy'
  | 'aborted'
  /** The sidecar itself is out of file descriptors (EMFILE, ENFILE): nothing was sent, and the peer is not to blame. */
  | 'descriptors'
  | 'other';

const TIMEOUT_CODES = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ETIMEDOUT',
  'ESOCKETTIMEDOUT',
]);
const TLS_TRUST_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'INVALID_PURPOSE',
]);

/** What to do about a `tls-trust` failure: a missing CA is the usual cause, but not of every code in it. */
export function trustAdvice(code: string): string {
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'the certificate does not name this host: check the host of the URL (a CA would not help)';
  // OpenSSL's X509_V_ERR_INVALID_PURPOSE: the chain is trusted, but its extended key usage excludes serverAuth.
  if (code === 'INVALID_PURPOSE') {
    return 'the certificate is not issued for TLS servers (its extended key usage, or its chain\'s, excludes server authentication): check the host of the URL, and whether a TLS-inspecting proxy issues such certificates (a CA would not help)';
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') return "the certificate is outside its validity (or this machine's clock is wrong)";
  return 'add the issuing CA with --ca';
}

export interface ClassifiedFailure {
  failure: NetworkFailure;
  /** The machine code (e.g. `ECONNREFUSED`), safe to show. */
  code: string;
  /**
   * `host:port` of the HTTPS proxy when the connection that failed was the one to the proxy (see
   * `markProxyConnectFailure`): the target was never contacted. Undefined for a direct connection (no proxy, or
   * the target is in NO_PROXY) and for failures behind the proxy (a refused CONNECT is `failure: 'proxy'`).
   */
  proxy?: string;
}

export function classifyNetworkError(err: unknown): ClassifiedFailure {
  const e = innermost(err);
  const proxy = proxyConnectFailureOf(err);
  // undici reports a refused CONNECT as an abort whose message carries the proxy's status.
  const proxyStatus = typeof e.message === 'string' ? PROXY_REFUSED.exec(e.message)?.[1] : undefined;
  if (proxyStatus) return { failure: 'proxy', code: `proxy answered ${proxyStatus}` };
  const code = typeof e.code === 'string' ? e.code : typeof e.name === 'string' ? e.name : 'UNKNOWN';
  return { failure: failureOf(code, e), code, ...(proxy !== undefined && { proxy }) };
}

/**
 * Errors of connections to the HTTPS proxy, with its `host:port`. The dispatcher records them where it
 * connects to the proxy, the one place that knows which connection that is: the error alone cannot tell (an
 * ECONNREFUSED carries the proxy's resolved address, not the host HTTPS_PROXY names; undici's connect timeout
 * carries no address at all), and a target in NO_PROXY is connected to directly.
 */
const proxyConnectFailures = new WeakMap<object, string>();

/** Record that `err` came from connecting to the HTTPS proxy `proxy` (`host:port`, as `proxyEndpoint` gives it). */
export function markProxyConnectFailure(err: unknown, proxy: string): void {
  if (typeof err === 'object' && err !== null) proxyConnectFailures.set(err, proxy);
}

function proxyConnectFailureOf(err: unknown): string | undefined {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && typeof current === 'object' && current !== null; depth++) {
    const proxy = proxyConnectFailures.get(current);
    if (proxy !== undefined) return proxy;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/**
 * What to do about the HTTPS proxy's failure `code` (a `proxy answered NNN` or another code), said after a dash:
 * a 407 asks for credentials (none in HTTPS_PROXY, or refused), which no NO_PROXY fixes.
 */
export function proxyAdvice(code: string): string {
  return code === 'proxy answered 407'
    ? 'the proxy wants credentials, or refused those in HTTPS_PROXY: give http://user:password@host:port (special characters percent-encoded)'
    : 'check HTTPS_PROXY/NO_PROXY';
}

/** `host:port` of a proxy URL with the port it is reached on (80/443 when none is given), never its credentials. */
export function proxyEndpoint(proxyUrl: string): string | undefined {
  try {
    const url = new URL(proxyUrl);
    if (!url.hostname) return undefined;
    return `${url.hostname}:${url.port || (url.protocol === 'https:' ? '443' : '80')}`;
  } catch {
    return undefined;
  }
}

/**
 * What a failed connection to the HTTPS proxy means, for a message that goes on after `upstream <host>: ` or
 * `token server <host>: `, e.g. `the HTTPS proxy 10.0.0.1:3128 refused the connection (ECONNREFUSED) — check
 * HTTPS_PROXY`.
 */
export function proxyConnectFailureText(proxy: string, failure: NetworkFailure, code: string): string {
  switch (failure) {
    case 'refused':
      return `the HTTPS proxy ${proxy} refused the connection (${code}) — check HTTPS_PROXY`;
    case 'dns':
      return `the HTTPS proxy ${proxy} does not resolve (${code}) — check HTTPS_PROXY`;
    case 'timeout':
      // The header timer runs only once the CONNECT is written: the proxy took it and did not answer.
      if (code === 'UND_ERR_HEADERS_TIMEOUT') return `the HTTPS proxy ${proxy} took the CONNECT but did not answer it in time (${code}) — it may not reach the host, or needs longer than the connect limit`;
      return `the HTTPS proxy ${proxy} did not answer in time (${code}) — check HTTPS_PROXY`;
    case 'reset':
      return `the HTTPS proxy ${proxy} closed the connection without answering (${code}) — check HTTPS_PROXY, and that the proxy reaches the host`;
    case 'tls-trust':
      return `the certificate of the HTTPS proxy ${proxy} is not trusted (${code}) — ${proxyTrustAdvice(code)}`;
    case 'tls':
      return `the TLS handshake with the HTTPS proxy ${proxy} failed (${code}) — check HTTPS_PROXY`;
    default:
      return `the connection to the HTTPS proxy ${proxy} failed (${code}) — check HTTPS_PROXY`;
  }
}

/** What to do about an https:// proxy's certificate: as `trustAdvice`, but its CAs come from elsewhere. */
export function proxyTrustAdvice(code: string): string {
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'the certificate does not name the proxy: check the host in HTTPS_PROXY';
  if (code === 'INVALID_PURPOSE') return 'the certificate is not issued for TLS servers: check the host in HTTPS_PROXY (a CA would not help)';
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') return "the certificate is outside its validity (or this machine's clock is wrong)";
  return "an https:// proxy is verified against Node's CA store and NODE_EXTRA_CA_CERTS, not --ca";
}

const PROXY_REFUSED = /^Proxy response \((\d{3})\)/;

function failureOf(code: string, e: { name?: unknown; message?: unknown }): NetworkFailure {
  if (TIMEOUT_CODES.has(code) || code === 'TimeoutError') return 'timeout';
  if (TLS_TRUST_CODES.has(code)) return 'tls-trust';
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || code === 'EPROTO') return 'tls';
  if (code === 'ECONNREFUSED') return 'refused';
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'UND_ERR_SOCKET' || code === 'UND_ERR_CLOSED') return 'reset';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'dns';
  if (code === 'UND_ERR_ABORTED' || code === 'AbortError' || code === 'ABORT_ERR') return 'aborted';
  if (code === 'EMFILE' || code === 'ENFILE') return 'descriptors';
  if (code === 'UND_ERR_PRX_TLS' || (e.name === 'ProxyError' || /proxy/i.test(String(e.name ?? '')))) return 'proxy';
  return 'other';
}

/** undici wraps socket errors in `cause`; the innermost one with a code tells most. */
function innermost(err: unknown): { code?: unknown; name?: unknown; message?: unknown } {
  let current: unknown = err;
  for (let depth = 0; depth < 5; depth++) {
    if (typeof current !== 'object' || current === null) break;
    const c = current as { code?: unknown; cause?: unknown; name?: unknown };
    // UND_ERR_PRX_TLS wraps the TLS error of the connection to an https:// proxy: its cause says what failed.
    const hasSpecific = typeof c.code === 'string' && c.code !== 'UND_ERR_SOCKET' && c.code !== 'UND_ERR_ABORTED' && c.code !== 'UND_ERR_PRX_TLS';
    if (hasSpecific || c.cause === undefined) return c;
    current = c.cause;
  }
  return typeof err === 'object' && err !== null ? (err as { code?: unknown }) : {};
}

/** What a `descriptors` failure says: the sidecar's own limit, not the peer. */
export function descriptorsText(code: string): string {
  return `the sidecar is out of file descriptors (${code}) — raise its open-file limit (ulimit -n, docker run --ulimit nofile=N) or lower --max-connections`;
}

/**
 * undici's words for an answer it could not read from a peer that was reached (a parser error, a head over its
 * limit, a body shorter or longer than its length, `ERR_ASSERTION`: a status under 100, which its parser asserts
 * against): not the network's fault. In a head, asking again would get the same; a body that ends early may be a
 * connection cut instead (the token client retries those).
 */
const MALFORMED_ANSWER: ReadonlySet<string> = new Set(['HTTPParserError', 'UND_ERR_HEADERS_OVERFLOW', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'ERR_ASSERTION']);

export function isMalformedAnswer(code: string | undefined): boolean {
  return code !== undefined && (MALFORMED_ANSWER.has(code) || code.startsWith('HPE_'));
}

/** What a malformed answer says, by its code. */
export function malformedAnswerText(code: string): string {
  return `answered with a malformed response (${code === 'ERR_ASSERTION' ? 'an impossible status or framing' : code})`;
}
