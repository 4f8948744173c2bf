/**
 * Typed failures with stable codes.
 *
 * Every failure the sidecar can meet is a `SidecarError` with a `code` from one
 * union, so callers `switch (err.code)` instead of matching messages. Messages
 * are written for the person who has to fix the problem and never contain a
 * secret, a private key or a token: callers build them from field names,
 * sources, client ids and status codes only.
 */

export type ErrorCode =
  /** Configuration or service key is unusable (exit code 2). */
  | 'CONFIG_INVALID'
  /** The token server refused the client (RFC 6749 §5.2 invalid_client, unauthorized_client, 400/401/403). */
  | 'TOKEN_REJECTED'
  /** The token server could not be reached: refused, reset, DNS, TLS. */
  | 'TOKEN_UNREACHABLE'
  /** The token server did not answer in time. */
  | 'TOKEN_TIMEOUT'
  /** The token server answered 5xx. */
  | 'TOKEN_SERVER_ERROR'
  /** The token server answered 429 (XSUAA limits /oauth/token per subaccount). */
  | 'TOKEN_RATE_LIMITED'
  /** The token server answered 200 with something that is not a usable token. */
  | 'TOKEN_RESPONSE_INVALID'
  /** No route serves the request path. */
  | 'ROUTE_NOT_FOUND'
  /** Not a request the sidecar forwards: absolute-form target, CONNECT, TRACE, malformed. */
  | 'REQUEST_REFUSED'
  /** Inbound basic auth missing or wrong. */
  | 'SENDER_UNAUTHORIZED'
  /** Sender address not in the allowlist, or a request from a web page (inbound-control `webPageRefusal`). */
  | 'SENDER_FORBIDDEN'
  /** The connection was accepted while `--max-connections` others were being served (`connection-limit.ts`). */
  | 'TOO_MANY_CONNECTIONS'
  /** The upstream could not be reached or reset the connection. */
  | 'UPSTREAM_UNREACHABLE'
  /** The upstream's certificate is not trusted or the TLS handshake failed. */
  | 'UPSTREAM_TLS'
  /** The upstream did not answer in time. */
  | 'UPSTREAM_TIMEOUT'
  /** The upstream asked for a CSRF token and the fetch did not yield one. */
  | 'CSRF_FETCH_FAILED'
  /** A bug: never expected, always logged. */
  | 'INTERNAL';

export interface SidecarErrorOptions {
  cause?: unknown;
  /** Seconds after which a retry makes sense (from `Retry-After` or our own backoff). */
  retryAfter?: number;
  /**
   * A more specific status for `REQUEST_REFUSED` than its 400: 405 for a method the sidecar never forwards, 417
   * for an expectation it cannot meet, 505 for a protocol version it does not speak.
   */
  refusalStatus?: 405 | 417 | 505;
}

export class SidecarError extends Error {
  readonly code: ErrorCode;
  readonly retryAfter: number | undefined;
  readonly refusalStatus: 405 | 417 | 505 | undefined;

  constructor(code: ErrorCode, message: string, options: SidecarErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SidecarError';
    this.code = code;
    this.retryAfter = options.retryAfter;
    this.refusalStatus = options.refusalStatus;
  }
}

/** One problem in the configuration: where it is and what is wrong. */
export interface ConfigProblem {
  /** Where the value came from: a file path, `--flag`, `ENV_VAR`, `VCAP_SERVICES`… */
  source: string;
  /** The field, e.g. `oauth.clientid`, `routes[1].prefix`; empty when the whole source is wrong. */
  field: string;
  message: string;
  /** A read that may succeed later (the process was out of file descriptors): no fault of what was read. */
  transient?: true;
}

/** Port 0 is a listener's "any port", never one to connect to: refused at start, not a 502 on every request. */
export const PORT_ZERO_PROBLEM = 'has port 0, which is no port to connect to';

/** Every problem found in one pass, so the user fixes them all at once (exit code 2). */
export class ConfigError extends SidecarError {
  readonly problems: readonly ConfigProblem[];

  constructor(problems: readonly ConfigProblem[]) {
    super('CONFIG_INVALID', formatProblems(problems));
    this.name = 'ConfigError';
    this.problems = problems;
  }

  /** Every problem is `transient`: nothing is wrong with the configuration itself, it could not be read now. */
  get transient(): boolean {
    return this.problems.length > 0 && this.problems.every((p) => p.transient === true);
  }
}

function formatProblems(problems: readonly ConfigProblem[]): string {
  const lines = problems.map((p) => `  - ${p.field ? `${p.field}: ` : ''}${p.message} (${shownSource(p.source)})`);
  return `invalid configuration:\n${lines.join('\n')}`;
}

/**
 * A source as a message may show it. Sources are file paths, flags, variable names and a few fixed words; a
 * value given where a path belongs may instead be a secret (a key's JSON, a PEM, base64, `user:password`),
 * and a message about it — "does not exist (…)" — must not carry it. Shown: what looks like a path (a
 * separator or a file extension), a flag or a variable name, or a fixed word; nothing with quotes, braces
 * around JSON, line breaks, a PEM header or a long base64 run.
 */
export function shownSource(source: string): string {
  return isShowableSource(source) ? source : 'the value given, not shown: it could be a secret (a path written with a directory, such as ./users, is shown)';
}

function isShowableSource(s: string): boolean {
  if (s.length > 1024 || /[\n\r"'`]/.test(s) || s.includes('-----BEGIN') || /[A-Za-z0-9+=]{40,}/.test(s)) return false;
  if (/^--[a-z][a-z-]*$/.test(s) || /^[A-Z][A-Z0-9_]*$/.test(s) || FIXED_SOURCES.has(s)) return true;
  // `user:password` (a password may hold `/` or end like an extension, a user name `\` or `/`: `CORP\svc:…`): any
  // colon but a drive letter's (`C:\keys`). A real path with a colon is not shown either; the message still names
  // the setting.
  if (s.slice(/^[A-Za-z]:[/\\]/.test(s) ? 2 : 0).includes(':')) return false;
  return /[/\\]/.test(s) || /\.[A-Za-z0-9]{1,8}$/.test(s);
}

/**
 * An address as a message may quote it (a listen address, an allowlist entry): only when it is made of the
 * characters of host names, IP addresses, ports and CIDR blocks. A secret pasted into the wrong variable
 * (`user:password@host`, base64, JSON) is not shown; the message still names the setting.
 */
export function shownAddress(value: string): string {
  return /^[0-9A-Za-z.:[\]/%*_, -]{0,100}$/.test(value) ? JSON.stringify(value) : 'the value (not shown: it could be a secret)';
}

const FIXED_SOURCES: ReadonlySet<string> = new Set(['command line', 'environment', 'default', 'flags']);

/** Token failures that a retry may cure; rejections and bad responses are final. */
export function isTransientTokenError(err: unknown): boolean {
  return (
    err instanceof SidecarError &&
    (err.code === 'TOKEN_UNREACHABLE' ||
      err.code === 'TOKEN_TIMEOUT' ||
      err.code === 'TOKEN_SERVER_ERROR' ||
      err.code === 'TOKEN_RATE_LIMITED')
  );
}

/** The one HTTP answer a failure gets: status, stable code, and a message safe to show a sender. */
export interface HttpFailure {
  status: number;
  code: ErrorCode;
  message: string;
  /** Seconds, for `Retry-After`. */
  retryAfter: number | undefined;
}

const STATUS: Readonly<Record<ErrorCode, number>> = {
  CONFIG_INVALID: 500,
  TOKEN_REJECTED: 502,
  TOKEN_RESPONSE_INVALID: 502,
  TOKEN_UNREACHABLE: 503,
  TOKEN_TIMEOUT: 503,
  TOKEN_SERVER_ERROR: 503,
  TOKEN_RATE_LIMITED: 503,
  ROUTE_NOT_FOUND: 404,
  REQUEST_REFUSED: 400,
  SENDER_UNAUTHORIZED: 401,
  SENDER_FORBIDDEN: 403,
  TOO_MANY_CONNECTIONS: 503,
  UPSTREAM_UNREACHABLE: 502,
  UPSTREAM_TLS: 502,
  UPSTREAM_TIMEOUT: 504,
  CSRF_FETCH_FAILED: 502,
  INTERNAL: 500,
};

/** Transient token failures tell the sender when to retry (RFC 9110 §10.2.3). */
const DEFAULT_RETRY_AFTER_S = 5;

/** Map any failure to its HTTP answer; unknown errors become a 500 without details. */
export function toHttpFailure(err: unknown): HttpFailure {
  if (!(err instanceof SidecarError)) {
    return { status: 500, code: 'INTERNAL', message: 'internal error in the sidecar (logged)', retryAfter: undefined };
  }
  const status = err.code === 'REQUEST_REFUSED' && err.refusalStatus !== undefined ? err.refusalStatus : STATUS[err.code];
  const retryAfter = status === 503 ? (err.retryAfter ?? DEFAULT_RETRY_AFTER_S) : err.retryAfter;
  return { status, code: err.code, message: err.message, retryAfter };
}
