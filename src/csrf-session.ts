/**
 * The CSRF session of one route, as SAP Cloud Integration's HTTPS sender
 * adapter ("CSRF Protected", on by default) requires it: a modifying request
 * answered `403` with `X-CSRF-Token: Required` needs a token fetched with
 * `X-CSRF-Token: Fetch`, and the token is bound to the HTTP session, so the
 * cookies of the fetch response go with it — byte for byte, because
 * re-encoded cookie values break the load balancer's affinity.
 *
 * One fetch at a time per route, shared by every request that needs it.
 */

export interface CsrfCredentials {
  /** Value for the `x-csrf-token` request header. */
  token: string;
  /** Value for the `cookie` request header (`a=1; b=2`), or undefined when none were set. */
  cookie: string | undefined;
}

export class CsrfSession {
  #current: CsrfCredentials | undefined;
  #inflight: Promise<CsrfCredentials | undefined> | undefined;

  get current(): CsrfCredentials | undefined {
    return this.#current;
  }

  /**
   * Replace the session via `fetch` unless another request already did so
   * since `stale` was read; concurrent callers share one fetch. A fetch under
   * way is joined first, whatever session the caller had: it replaces the
   * current session because that one was just refused, so handing that one out
   * would spend the caller's one renewal on a refused token.
   */
  renew(stale: CsrfCredentials | undefined, fetch: () => Promise<CsrfCredentials | undefined>): Promise<CsrfCredentials | undefined> {
    if (this.#inflight) return this.#inflight;
    if (this.#current !== undefined && this.#current !== stale) return Promise.resolve(this.#current);
    const inflight = fetch()
      .then((credentials) => {
        this.#current = credentials;
        return credentials;
      })
      .finally(() => {
        this.#inflight = undefined;
      });
    this.#inflight = inflight;
    return inflight;
  }
}

/** RFC 9110 §9.2.1: safe methods need no CSRF token. */
export function isModifying(method: string): boolean {
  return method !== 'GET' && method !== 'HEAD' && method !== 'OPTIONS' && method !== 'TRACE';
}

/** Does a 403 ask for a CSRF token (rather than deny a role)? */
export function isCsrfRequired(status: number, headers: Readonly<Record<string, string | string[] | undefined>>): boolean {
  const value = headers['x-csrf-token'];
  return status === 403 && typeof value === 'string' && value.toLowerCase() === 'required';
}

/**
 * The session from a fetch response: the token and a `cookie` header built from its `Set-Cookie`s. A fetch
 * sent with the cookies of an earlier session (`sentCookie`) keeps those the server did not replace: a
 * session it still accepts sets no new cookie, and the token is bound to it. A `Set-Cookie` that has already
 * expired (`Max-Age` of 0 or less, or an `Expires` in the past: RFC 6265 §5.3 steps 11–12) removes its cookie,
 * as a browser would: a load balancer clearing its affinity cookie does not get the stale pair back.
 */
export function csrfFromResponse(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  sentCookie?: string,
  now: number = Date.now(),
): CsrfCredentials | undefined {
  const token = headers['x-csrf-token'];
  if (typeof token !== 'string' || token === '' || token.toLowerCase() === 'required') return undefined;
  const setCookie = headers['set-cookie'];
  const list = setCookie === undefined ? [] : Array.isArray(setCookie) ? setCookie : [setCookie];
  // Name → pair, or null for a removal; a later Set-Cookie of the same name wins.
  const set = new Map<string, string | null>();
  for (const line of list) {
    // RFC 6265 §5.2: the cookie-pair is everything before the first ';', kept as sent.
    const [first, ...attributes] = line.split(';');
    const pair = first!.trim();
    if (!pair.includes('=')) continue;
    const name = cookieName(pair);
    set.delete(name);
    set.set(name, expired(attributes, now) ? null : pair);
  }
  const pairs = [...set.values()].filter((pair): pair is string => pair !== null).join('; ');
  const kept = sentCookie === undefined ? '' : withoutCookies(sentCookie, new Set(set.keys()));
  const cookie = kept === '' ? pairs : pairs === '' ? kept : `${kept}; ${pairs}`;
  return { token, cookie: cookie === '' ? undefined : cookie };
}

/** RFC 6265 §5.2.1–5.2.2, §5.3: whether a Set-Cookie's attributes say it has expired (Max-Age wins over Expires). */
function expired(attributes: readonly string[], now: number): boolean {
  let maxAge: number | undefined;
  let expires: number | undefined;
  for (const attribute of attributes) {
    const eq = attribute.indexOf('=');
    if (eq === -1) continue;
    const name = attribute.slice(0, eq).trim().toLowerCase();
    const value = attribute.slice(eq + 1).trim();
    if (name === 'max-age' && /^-?\d+$/.test(value)) maxAge = Number(value);
    else if (name === 'expires') {
      const date = Date.parse(value);
      if (Number.isFinite(date)) expires = date;
    }
  }
  if (maxAge !== undefined) return maxAge <= 0;
  return expires !== undefined && expires <= now;
}

/** `cookie` without the pairs named in `names`. */
function withoutCookies(cookie: string, names: ReadonlySet<string>): string {
  return cookie
    .split(';')
    .map((pair) => pair.trim())
    .filter((pair) => pair !== '' && !names.has(cookieName(pair)))
    .join('; ');
}

/**
 * `base` with `override`'s cookie pairs in place of those of the same name (RFC 6265 §5.4 `cookie` syntax,
 * pairs kept byte for byte). Used for a sender's own cookies beside the CSRF session's: an upstream reading
 * the first `JSESSIONID` must see the session's, not one the sender's cookie jar kept from an earlier answer.
 */
export function mergeCookies(base: string, override: string): string {
  if (override === '') return base;
  const names = new Set(override.split(';').map(cookieName));
  const kept = base.split(';').map((pair) => pair.trim()).filter((pair) => pair !== '' && !names.has(cookieName(pair)));
  return kept.length > 0 ? `${kept.join('; ')}; ${override}` : override;
}

function cookieName(pair: string): string {
  const eq = pair.indexOf('=');
  return (eq === -1 ? pair : pair.slice(0, eq)).trim();
}
