/**
 * One client-credentials token request (RFC 6749 §4.4) to the token server of
 * a service key, with the client authentication the key calls for:
 * `client_secret_basic` (RFC 6749 §2.3.1: id and secret form-urlencoded before
 * base64, which XSUAA/UAA requires for ids with `!`/`|` and secrets with
 * `$`/`=`), `client_secret_post`, or mTLS (RFC 8705 §2: the certificate chain
 * on the TLS connection, `client_id` in the body, no secret).
 *
 * Transient failures (network, timeouts, 5xx, 429) are retried with bounded
 * exponential backoff and full jitter, honouring `Retry-After`; rejections
 * (400/401/403) and malformed responses are final. Errors carry stable codes
 * and never the secret, the key or the token.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { setTimeout as sleepFor } from 'node:timers/promises';
import type { Dispatcher } from 'undici';
import { tokenClock, type Clock } from './clock.js';
import type { Credentials } from './credentials.js';
import { redact, secretForms } from './redaction.js';
import { createDispatcher, type OutboundNetwork } from './dispatcher.js';
import { SidecarError, isTransientTokenError } from './errors.js';
import { parseHttpDate, serverDate } from './http-date.js';
import { decodeJwtClaims, type JwtClaims } from './jwt.js';
import { withoutBom } from './text-file.js';
import { classifyNetworkError, descriptorsText, isMalformedAnswer, malformedAnswerText, proxyAdvice, proxyConnectFailureText, trustAdvice } from './network-error.js';

/** Lifetime assumed when the server gives neither `expires_in` nor a JWT `exp`. */
export const DEFAULT_TOKEN_LIFETIME_S = 300;
/**
 * Longest lifetime believed: 24 h, the longest Access Token Validity XSUAA lets an instance or subaccount
 * set. A longer `expires_in` or `exp` is no real token's, and an absurd one (1e13 s, or one overflowing to
 * Infinity) is not a valid date; the token is refreshed at 75 % of the capped lifetime like any other.
 */
export const MAX_TOKEN_LIFETIME_S = 86_400;
/**
 * Longest `Retry-After` believed from the token server: 5 min. Until it ends, senders without a valid token get
 * 503, and nothing but a restart or a rotation shortens it; one stray header (a gateway's, `999999999`, a date
 * in the year 9999) would otherwise close the route for good. A real rate limit (XSUAA counts per second)
 * asks for seconds.
 */
export const MAX_RETRY_AFTER_S = 300;
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
/** Token responses are small; anything larger is refused rather than buffered. */
export const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;

export type TokenAuthMethod = 'basic' | 'post';

/** What to ask the token server for, beyond `grant_type=client_credentials`. */
export interface TokenRequestSettings {
  /** Client authentication for ClientId/Secret keys; certificate keys always use mTLS. */
  auth: TokenAuthMethod;
  scope?: string | undefined;
  resource?: string | undefined;
  audience?: string | undefined;
  /** Extra form parameters, e.g. `token_format=jwt` for the Neo token endpoint. */
  params: Readonly<Record<string, string>>;
}

export interface RetryPolicy {
  /** Attempts per fetch, the first included. */
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** A `Retry-After` longer than this ends the fetch instead of waiting. */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 3, baseDelayMs: 250, maxDelayMs: 4_000, maxRetryAfterMs: 10_000 };

export interface AccessToken {
  readonly value: string;
  /**
   * When the request was sent, on the token clock (`clock.ts`: epoch ms that an NTP step back does not move): the
   * lifetime is counted from here, conservatively.
   */
  readonly issuedAt: number;
  /** On the same clock as `issuedAt`. */
  readonly expiresAt: number;
  readonly scopes: readonly string[];
  /** Where the lifetime came from, for diagnostics. */
  readonly lifetimeSource: 'expires_in' | 'jwt' | 'default';
}

export interface TokenClientOptions {
  credentials: Credentials;
  settings: TokenRequestSettings;
  /** Pool to the token server; carries the client certificate for mTLS. */
  dispatcher: Dispatcher;
  /** Bound on one attempt, connect to last body byte. */
  attemptTimeoutMs: number;
  /** The dispatcher's connect limit (TCP and TLS), for messages; `createTokenClient`'s by default. */
  connectTimeoutMs?: number;
  retry?: RetryPolicy;
  /** The token clock, for `issuedAt`/`expiresAt` (`clock.ts`'s `tokenClock` by default). */
  now?: Clock;
  /** The calendar clock a JWT's `exp` and a `Retry-After` date are read against (`Date.now` by default). */
  wallClock?: Clock;
  random?: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export class TokenClient {
  /** Identifies the token this client obtains: never includes the secret. */
  readonly cacheKey: string;
  readonly credentials: Credentials;
  readonly #settings: TokenRequestSettings;
  readonly #dispatcher: Dispatcher;
  readonly #attemptTimeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #retry: RetryPolicy;
  readonly #now: Clock;
  readonly #wallClock: Clock;
  readonly #random: () => number;
  readonly #sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  readonly #body: string;
  readonly #headers: Record<string, string>;
  readonly #url: URL;
  /** Aborted by `abandon()`: ends the attempts and retry waits of every fetch. */
  readonly #abandoned = new AbortController();
  /** Why `abandon()` was called, for the message of the fetches it ends. */
  #abandonedBecause = 'the sidecar is stopping';

  /** Fetches under way, retry waits included. */
  readonly #fetches = new Set<Promise<AccessToken>>();
  /** Fetches now waiting out a wait the token server asked for (a 429's or 503's `Retry-After`). */
  #serverWaits = 0;

  /**
   * Close the connection pool once its fetches are done, retries included (credentials rotated: a fetch that
   * another route with the same client still waits for goes on to its end).
   */
  async close(): Promise<void> {
    await Promise.allSettled([...this.#fetches]);
    // Abandoned: nothing is left to finish, and a request still connecting would hold a graceful close until the
    // connect limit (undici fails it only then).
    if (this.#abandoned.signal.aborted) await this.#dispatcher.destroy();
    else await this.#dispatcher.close();
  }

  /** Drop the connection pool now, whatever it carries (shutdown, after `abandon()`); idempotent. */
  destroy(): Promise<void> {
    return this.#dispatcher.destroy();
  }

  /**
   * Give up every token request under way, and any later one, at once: nobody is left to use the token
   * (shutdown, or these credentials were replaced). An attempt in flight is aborted and a retry wait ends; the
   * fetch rejects with TOKEN_UNREACHABLE, and `close()` no longer waits for a token server that does not answer.
   */
  abandon(because: 'stopping' | 'replaced' = 'stopping'): void {
    if (this.#abandoned.signal.aborted) return;
    if (because === 'replaced') this.#abandonedBecause = 'these credentials were replaced';
    this.#abandoned.abort();
  }

  constructor(options: TokenClientOptions) {
    this.credentials = options.credentials;
    this.#settings = options.settings;
    this.#dispatcher = options.dispatcher;
    this.#attemptTimeoutMs = options.attemptTimeoutMs;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? connectTimeoutOf(options.attemptTimeoutMs);
    this.#retry = options.retry ?? DEFAULT_RETRY;
    this.#now = options.now ?? tokenClock;
    this.#wallClock = options.wallClock ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#sleep = options.sleep ?? ((ms, signal) => sleepFor(ms, undefined, signal ? { signal } : undefined));
    this.#url = new URL(this.credentials.tokenUrl);
    // Request body and headers never change for a client: build them once.
    this.#body = buildForm(this.credentials, this.#settings);
    this.#headers = buildHeaders(this.credentials, this.#settings);
    this.cacheKey = cacheKeyOf(this.credentials, this.#settings);
    this.#secrets = this.credentials.kind === 'client-secret' ? secretForms(this.credentials.clientId, this.credentials.clientSecret) : [];
  }

  /** What the token server's error text must not echo into a message (see `redaction`). */
  readonly #secrets: readonly string[];

  /** The client authentication actually used, for logs and diagnostics. */
  get authMethod(): 'client_secret_basic' | 'client_secret_post' | 'tls_client_auth' {
    if (this.credentials.kind !== 'client-secret') return 'tls_client_auth';
    return this.#settings.auth === 'post' ? 'client_secret_post' : 'client_secret_basic';
  }

  /**
   * Whether a fetch is waiting out a wait the token server asked for (a `Retry-After` of at most
   * `maxRetryAfterMs`, slept within the fetch): until it ends no new token can be had, which the token provider
   * needs to know before it retires a token on an upstream 401.
   */
  get waitingOnServer(): boolean {
    return this.#serverWaits > 0;
  }

  /** Obtain a new token, retrying transient failures within the policy. */
  fetchToken(signal?: AbortSignal): Promise<AccessToken> {
    const fetch = this.#fetch(signal);
    this.#fetches.add(fetch);
    const forget = (): void => void this.#fetches.delete(fetch);
    fetch.then(forget, forget);
    return fetch;
  }

  async #fetch(signal: AbortSignal | undefined): Promise<AccessToken> {
    const abandoned = this.#abandoned.signal;
    if (abandoned.aborted) throw this.#abandonedError(undefined);
    const stop = signal ? AbortSignal.any([signal, abandoned]) : abandoned;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#attempt(stop);
      } catch (err) {
        if (abandoned.aborted) throw this.#abandonedError(err);
        const delay = this.#retryDelay(err, attempt);
        if (delay === undefined || stop.aborted) throw err;
        const serverAsked = (err as SidecarError).retryAfter !== undefined;
        if (serverAsked) this.#serverWaits++;
        try {
          await this.#sleep(delay, stop);
        } catch {
          // The wait was cut short: by `abandon()`, or by the caller's signal (then the last failure stands).
          throw abandoned.aborted ? this.#abandonedError(err) : err;
        } finally {
          if (serverAsked) this.#serverWaits--;
        }
      }
    }
  }

  #abandonedError(cause: unknown): SidecarError {
    return new SidecarError('TOKEN_UNREACHABLE', `token request to ${this.#url.host} abandoned: ${this.#abandonedBecause}`, {
      cause,
    });
  }

  /** Milliseconds to wait before the next attempt, or undefined to give up. */
  #retryDelay(err: unknown, attempt: number): number | undefined {
    if (attempt >= this.#retry.maxAttempts || !isTransientTokenError(err)) return undefined;
    const e = err as SidecarError;
    if (e.retryAfter !== undefined) {
      const ms = e.retryAfter * 1000;
      return ms <= this.#retry.maxRetryAfterMs ? ms : undefined;
    }
    const ceiling = Math.min(this.#retry.maxDelayMs, this.#retry.baseDelayMs * 2 ** (attempt - 1));
    return Math.round(this.#random() * ceiling);
  }

  async #attempt(outer: AbortSignal | undefined): Promise<AccessToken> {
    const timeout = AbortSignal.timeout(this.#attemptTimeoutMs);
    const signal = outer ? AbortSignal.any([outer, timeout]) : timeout;
    const issuedAt = this.#now();
    const sentAt = this.#wallClock();
    let response: Dispatcher.ResponseData;
    try {
      const request = this.#dispatcher.request({
        origin: this.#url.origin,
        path: this.#url.pathname + this.#url.search,
        method: 'POST',
        headers: this.#headers,
        body: this.#body,
        signal,
      });
      response = await untilAbandoned(request, this.#abandoned.signal);
    } catch (err) {
      throw this.#networkError(err, timeout.aborted);
    }
    // The status decides first: a 5xx or 429 whose body is too large or breaks off is still an outage or a rate
    // limit, retried and its Retry-After honoured, and a 401 still final; only its body (an OAuth error) is lost.
    const text = await readBounded(response.body, MAX_TOKEN_RESPONSE_BYTES).catch((err: unknown) => {
      if (response.statusCode !== 200) return '';
      throw this.#networkError(err, timeout.aborted, 'body');
    });
    if (response.statusCode !== 200) throw this.#statusError(response.statusCode, response.headers, text ?? '');
    if (text === undefined) {
      throw new SidecarError(
        'TOKEN_RESPONSE_INVALID',
        `token server ${this.#url.host} answered 200 with a body over ${MAX_TOKEN_RESPONSE_BYTES} bytes — check that tokenurl of ${this.#where()} is the OAuth token endpoint`,
      );
    }
    return this.#parse(text, issuedAt, serverDate(response.headers['date']) ?? sentAt);
  }

  /**
   * `issuedAt` on the token clock; `serverNow` the calendar time a JWT's `exp` is read against: the token
   * server's own `Date` (RFC 9110 §6.6.1), else the local clock when the request was sent.
   */
  #parse(text: string, issuedAt: number, serverNow: number): AccessToken {
    let json: unknown;
    try {
      json = parseJsonBody(text);
    } catch {
      throw this.#invalid('the body is not JSON');
    }
    if (typeof json !== 'object' || json === null) throw this.#invalid('the body is not a JSON object');
    const body = json as Record<string, unknown>;
    const value = body['access_token'];
    if (typeof value !== 'string' || value.length === 0) throw this.#invalid('it has no access_token');
    // It goes into an Authorization header of every request: a character a header cannot carry would fail
    // each of them (and the token would never be retired). Never quote it: it is the token.
    if (!TOKEN_CHARS.test(value)) {
      throw this.#invalid('its access_token has characters an HTTP header cannot carry (only printable ASCII without spaces is accepted)');
    }
    const type = body['token_type'];
    if (type !== undefined && (typeof type !== 'string' || type.toLowerCase() !== 'bearer')) {
      // Redacted like an error description: a server or proxy that echoes the request must not put its
      // credentials into the message, nor the access_token, should the server have put it there as well.
      throw this.#invalid(`token_type is "${printableAscii(redact(String(type), [...this.#secrets, value]), 40)}", not bearer`);
    }
    const claims = decodeJwtClaims(value);
    const { lifetimeMs, lifetimeSource } = lifetimeOf(body['expires_in'], claims, serverNow);
    const expiresAt = issuedAt + lifetimeMs;
    const scopeField = body['scope'];
    const scopes = typeof scopeField === 'string' ? scopeField.split(' ').filter(Boolean) : (claims?.scope ?? []);
    return { value, issuedAt, expiresAt, scopes, lifetimeSource };
  }

  #where(): string {
    return `service key ${this.credentials.source}`;
  }

  #invalid(why: string): SidecarError {
    return new SidecarError(
      'TOKEN_RESPONSE_INVALID',
      `token server ${this.#url.host} answered 200 but ${why} — check that tokenurl of ${this.#where()} is the OAuth token endpoint`,
    );
  }

  #statusError(status: number, headers: Dispatcher.ResponseData['headers'], text: string): SidecarError {
    const host = this.#url.host;
    const oauth = oauthError(text, this.#secrets);
    const detail = oauth ? ` ${oauth}` : '';
    if (status === 429) {
      const retryAfter = parseRetryAfter(headers['retry-after'], serverDate(headers['date']) ?? this.#wallClock());
      return new SidecarError('TOKEN_RATE_LIMITED', `token server ${host} is rate limiting (429${detail})`, {
        retryAfter: retryAfter ?? 1,
      });
    }
    if (status >= 500) {
      // RFC 9110 §10.2.3: a 503 may say when the service is back (maintenance); honoured as a 429's is.
      const retryAfter = status === 503 ? parseRetryAfter(headers['retry-after'], serverDate(headers['date']) ?? this.#wallClock()) : undefined;
      return new SidecarError('TOKEN_SERVER_ERROR', `token server ${host} failed (${status}${detail})`, { retryAfter });
    }
    const errorCode = oauthErrorCode(text) ?? '';
    // RFC 6749 §5.2: `unauthorized_client` is an authenticated client not allowed this grant (some servers send it
    // with 401): its secret is right, its instance's grant-types are not.
    const parameterFix = status === 400 || (errorCode === 'unauthorized_client' && (status === 401 || status === 403)) ? PARAMETER_ERRORS.get(errorCode) : undefined;
    if (parameterFix !== undefined) {
      // RFC 6749 §5.2: the client is not in question, what it asked for is (a scope the instance does not grant).
      return new SidecarError('TOKEN_REJECTED', `token server refused the token request (${status}${detail}) — ${parameterFix(this.#where())}`);
    }
    if (status === 400 || status === 401 || status === 403) {
      const fix =
        this.credentials.kind === 'client-secret'
          ? `check clientid/clientsecret of ${this.#where()}`
          : `check that the client certificate of ${this.#where()} is valid for clientid and that tokenurl is the authentication.cert host`;
      return new SidecarError('TOKEN_REJECTED', `token server rejected the client credentials (${status}${detail}) — ${fix}`);
    }
    return new SidecarError(
      'TOKEN_REJECTED',
      `token server ${host} answered ${status}${detail} — check tokenurl of ${this.#where()}`,
    );
  }

  /** `stage`: where it failed; a body that breaks off (undici's length mismatch or parser error at the close) is a cut, not a malformed answer. */
  #networkError(err: unknown, timedOut: boolean, stage: 'head' | 'body' = 'head'): SidecarError {
    const host = this.#url.host;
    const { failure, code, proxy } = classifyNetworkError(err);
    // Out of descriptors is the sidecar's own limit, whichever connection met it (to the token server or to a proxy).
    if (failure === 'descriptors') return new SidecarError('TOKEN_UNREACHABLE', `token server ${host} not reached: ${descriptorsText(code)}`, { cause: err });
    if (proxy !== undefined) {
      // The connection to the HTTPS proxy failed (also when the attempt's bound ran out meanwhile: undici does not
      // abort a connection being made): the token server was never contacted, and its name would mislead.
      const message = `token server ${host}: ${proxyConnectFailureText(proxy, failure, code)}`;
      return new SidecarError(failure === 'timeout' ? 'TOKEN_TIMEOUT' : 'TOKEN_UNREACHABLE', message, { cause: err });
    }
    // Reached, and it answered, but with a head undici cannot read (a gateway or a TLS-inspecting proxy in front of
    // it, answering in its place): final, like a body that is no token, not asked again at once. A body that ends
    // early is a connection cut, retried like a reset.
    if (!timedOut && stage === 'head' && isMalformedAnswer(code)) {
      return new SidecarError('TOKEN_RESPONSE_INVALID', `token server ${host} ${malformedAnswerText(code)} — check tokenurl of ${this.#where()}, and what answers for it`, { cause: err });
    }
    switch (timedOut ? 'timeout' : failure) {
      case 'timeout':
        // No connection within the connect limit (TCP and TLS), also when the attempt's bound ran out meanwhile
        // (undici ends a connection being made only at its own limit): say which one ran out.
        if (code === 'UND_ERR_CONNECT_TIMEOUT') {
          return new SidecarError('TOKEN_TIMEOUT', `token server ${host}: no connection (TCP and TLS) within ${this.#connectTimeoutMs} ms`, { cause: err });
        }
        return new SidecarError('TOKEN_TIMEOUT', `token server ${host} did not answer within ${this.#attemptTimeoutMs} ms`, {
          cause: err,
        });
      case 'tls-trust':
        return new SidecarError(
          'TOKEN_UNREACHABLE',
          `token server ${host}: TLS certificate not trusted (${code}) — ${trustAdvice(code)}`,
          { cause: err },
        );
      case 'tls':
        return new SidecarError(
          'TOKEN_UNREACHABLE',
          `token server ${host}: TLS handshake failed (${code})${this.credentials.kind === 'client-secret' ? '' : ' — the client certificate may have been refused'}`,
          { cause: err },
        );
      case 'proxy':
        return new SidecarError('TOKEN_UNREACHABLE', `token server ${host}: the HTTPS proxy failed (${code}) — ${proxyAdvice(code)}`, {
          cause: err,
        });
      default:
        return new SidecarError('TOKEN_UNREACHABLE', `token server ${host} unreachable (${code})`, { cause: err });
    }
  }
}

function buildForm(credentials: Credentials, settings: TokenRequestSettings): string {
  const form = new URLSearchParams({ grant_type: 'client_credentials' });
  if (credentials.kind !== 'client-secret') {
    form.set('client_id', credentials.clientId);
  } else if (settings.auth === 'post') {
    form.set('client_id', credentials.clientId);
    form.set('client_secret', credentials.clientSecret);
  }
  if (settings.scope) form.set('scope', settings.scope);
  if (settings.resource) form.set('resource', settings.resource);
  if (settings.audience) form.set('audience', settings.audience);
  for (const [name, value] of Object.entries(settings.params)) form.set(name, value);
  return form.toString();
}

function buildHeaders(credentials: Credentials, settings: TokenRequestSettings): Record<string, string> {
  const headers: Record<string, string> = {
    'content-type': 'application/x-www-form-urlencoded',
    accept: 'application/json',
  };
  if (credentials.kind === 'client-secret' && settings.auth === 'basic') {
    const userPass = `${formEncode(credentials.clientId)}:${formEncode(credentials.clientSecret)}`;
    headers['authorization'] = `Basic ${Buffer.from(userPass, 'utf8').toString('base64')}`;
  }
  return headers;
}

/** application/x-www-form-urlencoded, as RFC 6749 §2.3.1 requires before base64. */
export function formEncode(value: string): string {
  return new URLSearchParams({ v: value }).toString().slice(2);
}

function cacheKeyOf(credentials: Credentials, settings: TokenRequestSettings): string {
  const parts = [
    credentials.tokenUrl,
    credentials.clientId,
    credentials.kind === 'client-secret' ? `${settings.auth}:${secretMark(credentials.clientSecret)}` : `mtls:${credentials.fingerprint}`,
    settings.scope ?? '',
    settings.resource ?? '',
    settings.audience ?? '',
    ...Object.entries(settings.params)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${k}=${v}`),
  ];
  return createHash('sha256').update(JSON.stringify(parts)).digest('base64url');
}

/** Known to this process only: the secret's mark below cannot be tested against guesses outside it. */
const SECRET_MARK_KEY = randomBytes(32);

/**
 * Which secret a client uses, as part of its cache key but never the secret itself (an HMAC under a key of this
 * process): two routes with the same client id but different secrets (one of them wrong, or not rotated yet) must
 * not share a token, which would hand the wrong one the right one's token and the right one the wrong one's
 * refusal.
 */
function secretMark(secret: string): string {
  return createHmac('sha256', SECRET_MARK_KEY).update(secret).digest('base64url');
}

/**
 * RFC 6749 Appendix A.12: `access-token = 1*VSCHAR` (0x20–0x7E); the space is left out too, since RFC 6750
 * §2.1 puts the token after `Bearer ` as one b64token. Anything else cannot go into a header.
 */
const TOKEN_CHARS = /^[\x21-\x7e]+$/;

/**
 * A JWT's lifetime overrules `expires_in` only when shorter by more than this (or than a tenth of it, for a short
 * token): its `exp` has whole seconds and is read against the local clock after the answer's way back, so for a
 * real server it is a little shorter always. Within that slack the safety margin (the last 10 % of the lifetime,
 * at most a minute) keeps the token from being handed out past `exp`.
 */
const JWT_SLACK_MS = 5_000;

/**
 * `expires_in` (when positive) unless the JWT's own lifetime is clearly shorter, else the default; never more
 * than `MAX_TOKEN_LIFETIME_S`.
 */
function lifetimeOf(
  expiresIn: unknown,
  claims: Pick<JwtClaims, 'exp' | 'iat'> | undefined,
  serverNow: number,
): { lifetimeMs: number; lifetimeSource: AccessToken['lifetimeSource'] } {
  const capMs = MAX_TOKEN_LIFETIME_S * 1000;
  const seconds = typeof expiresIn === 'string' ? Number(expiresIn) : expiresIn;
  // Infinity (`1e999` in the JSON) is a lifetime too long to count: capped like any other.
  const fromExpiresIn = typeof seconds === 'number' && seconds > 0 ? Math.min(seconds * 1000, capMs) : undefined;
  const fromJwt = jwtLifetimeMs(claims, serverNow);
  if (fromExpiresIn !== undefined && (fromJwt === undefined || fromExpiresIn <= fromJwt + Math.min(JWT_SLACK_MS, fromJwt / 10))) {
    return { lifetimeMs: fromExpiresIn, lifetimeSource: 'expires_in' };
  }
  if (fromJwt !== undefined) return { lifetimeMs: Math.min(fromJwt, capMs), lifetimeSource: 'jwt' };
  return { lifetimeMs: DEFAULT_TOKEN_LIFETIME_S * 1000, lifetimeSource: 'default' };
}

/**
 * Milliseconds the JWT is still valid for, or undefined: `exp` against `serverNow`, never more than `exp - iat`
 * (the token server's clock against itself). The shorter errs on the safe side: a token the server issued
 * earlier (one it hands out again) keeps only what it has left. `serverNow` is the token server's `Date`, so the
 * local clock does not enter: read against a local clock ahead of the server's by most of a lifetime, an hour's
 * token would last seconds and be fetched again and again. Without a `Date` the local clock stands in; one behind
 * the server's cannot stretch a token past `exp - iat`. A clock that makes the token look expired on arrival
 * (ahead by more than its lifetime) leaves `exp - iat` alone (the token is fresh, as far as can be told).
 */
function jwtLifetimeMs(claims: Pick<JwtClaims, 'exp' | 'iat'> | undefined, serverNow: number): number | undefined {
  const exp = claims?.exp;
  if (exp === undefined || !Number.isFinite(exp)) return undefined;
  const iat = claims?.iat;
  const own = iat !== undefined && Number.isFinite(iat) && iat < exp ? (exp - iat) * 1000 : undefined;
  const left = exp * 1000 - serverNow;
  if (left > 0) return own === undefined ? left : Math.min(own, left);
  return own;
}

/**
 * RFC 6749 §5.2 errors about the request's parameters rather than the client, and what to check for each;
 * `invalid_client`, UAA's `unauthorized` and any other 400 stay "rejected the client credentials".
 */
const PARAMETER_ERRORS: ReadonlyMap<string, (where: string) => string> = new Map([
  ['invalid_scope', () => "check the scope asked for (--scope, a route's scope, --token-param scope): the service instance does not grant it"],
  ['invalid_target', () => 'check --resource and --audience (RFC 8707): the token server does not know that target'],
  ['unsupported_grant_type', (where: string) => `check that tokenurl of ${where} is an OAuth token endpoint that allows client_credentials`],
  ['invalid_request', (where: string) => `check --token-param and tokenurl of ${where}`],
  [
    'unauthorized_client',
    (where: string) =>
      `the client may not use the client_credentials grant: add "client_credentials" to the grant-types of its service instance; some servers (not XSUAA) answer a wrong clientid/clientsecret so too: check those of ${where}`,
  ],
]);

/** The OAuth `error` code of an error body, lower-cased, if there is one. */
function oauthErrorCode(text: string): string | undefined {
  try {
    const code = (parseJsonBody(text) as Record<string, unknown>)['error'];
    return typeof code === 'string' ? code.toLowerCase() : undefined;
  } catch {
    return undefined;
  }
}

/** A token server's JSON body, a byte order mark (some .NET servers send one) ignored. */
export function parseJsonBody(text: string): unknown {
  return JSON.parse(withoutBom(text));
}

/**
 * RFC 6749 §5.2 `error` and a short `error_description`, or undefined; redacted before they are cut, so that
 * no part of an echoed secret survives.
 */
function oauthError(text: string, secrets: readonly string[]): string | undefined {
  try {
    const json = parseJsonBody(text) as Record<string, unknown>;
    const error = typeof json['error'] === 'string' ? printableAscii(redact(json['error'], secrets), 60) : undefined;
    if (!error) return undefined;
    const description = typeof json['error_description'] === 'string' ? printableAscii(redact(json['error_description'], secrets), 160) : '';
    return description ? `${error}: ${description}` : error;
  } catch {
    return undefined;
  }
}

/** RFC 6749 limits these fields to printable ASCII; enforce it and bound the length. */
export function printableAscii(text: string, max: number): string {
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

/**
 * RFC 9110 §10.2.3: delay-seconds or an HTTP-date, as whole seconds from `now`; undefined when absent,
 * unparseable, zero or already past, so that the caller's own backoff applies instead of an immediate retry.
 */
export function parseRetryAfter(value: string | string[] | undefined, now: number): number | undefined {
  const raw = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!raw) return undefined;
  if (/^\d+$/.test(raw)) return Number(raw) > 0 ? Math.min(Number(raw), MAX_RETRY_AFTER_S) : undefined;
  // An HTTP-date names its weekday and month; a number that is not delay-seconds ("1.5", "-1") is not a
  // date, although Date.parse would make one of it.
  if (!/[a-z]/i.test(raw)) return undefined;
  const date = parseHttpDate(raw);
  if (date === undefined) return undefined;
  const seconds = Math.ceil((date - now) / 1000);
  return seconds > 0 ? Math.min(seconds, MAX_RETRY_AFTER_S) : undefined;
}

/**
 * `request`, or a rejection as soon as `abandoned` aborts. undici acts on an abort only once the request has a
 * connection: one still connecting (a token server that takes the connection and never completes TLS) would hold
 * an abandoned fetch, and the senders waiting for it, until the connect limit. A response that comes after all is
 * thrown away.
 */
function untilAbandoned(request: Promise<Dispatcher.ResponseData>, abandoned: AbortSignal): Promise<Dispatcher.ResponseData> {
  return new Promise((resolve, reject) => {
    const onAbandoned = (): void => reject(abandoned.reason);
    abandoned.addEventListener('abort', onAbandoned, { once: true });
    request.then(
      (response) => {
        abandoned.removeEventListener('abort', onAbandoned);
        if (abandoned.aborted) response.body.destroy();
        else resolve(response);
      },
      (err: unknown) => {
        abandoned.removeEventListener('abort', onAbandoned);
        reject(err);
      },
    );
  });
}

/** The body as text, or undefined when it is larger than `limit` (then it is not read further). */
async function readBounded(body: Dispatcher.ResponseData['body'], limit: number): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      body.destroy();
      return undefined;
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export interface TokenClientFactoryOptions {
  credentials: Credentials;
  settings: TokenRequestSettings;
  network: OutboundNetwork;
  /** Bound on one attempt; connect and header timeouts are derived from it. */
  attemptTimeoutMs: number;
  retry?: RetryPolicy;
  now?: Clock;
  wallClock?: Clock;
}

/** How long a token request may take to connect (TCP and TLS): 5 s, or the whole attempt's bound when shorter. */
function connectTimeoutOf(attemptTimeoutMs: number): number {
  return Math.min(DEFAULT_CONNECT_TIMEOUT_MS, attemptTimeoutMs);
}

/** A token client with its own connection pool (carrying the client certificate for mTLS). */
export function createTokenClient(options: TokenClientFactoryOptions): TokenClient {
  const { credentials } = options;
  const dispatcher = createDispatcher({
    network: options.network,
    clientCert: credentials.kind === 'client-secret' ? undefined : { certificate: credentials.certificate, key: credentials.key },
    connectTimeoutMs: connectTimeoutOf(options.attemptTimeoutMs),
    headersTimeoutMs: options.attemptTimeoutMs,
    bodyTimeoutMs: options.attemptTimeoutMs,
    connections: 4,
  });
  return new TokenClient({ ...options, dispatcher });
}
