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
import { serverDate } from './http-date.js';

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

  /** The fetch under way, if any: it replaces `current`, which the upstream has just refused. */
  get renewing(): Promise<CsrfCredentials | undefined> | undefined {
    return this.#inflight;
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
 * as a browser would: a load balancer clearing its affinity cookie does not get the stale pair back. An `Expires`
 * is read against the response's own `Date` when it has one (`localNow` otherwise): a local clock an hour ahead
 * must not take a session cookie valid for 30 minutes as expired, and send the token without its session.
 */
export function csrfFromResponse(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  sentCookie?: string,
  localNow: number = Date.now(),
): CsrfCredentials | undefined {
  const now = serverDate(headers['date']) ?? localNow;
  const token = headers['x-csrf-token'];
  if (typeof token !== 'string' || token === '' || token.toLowerCase() === 'required') return undefined;
  const setCookie = headers['set-cookie'];
  const list = setCookie === undefined ? [] : Array.isArray(setCookie) ? setCookie : [setCookie];
  // RFC 6265 §5.3 step 11: a cookie is its name and path (the domain is the upstream's); a later Set-Cookie of
  // the same name and path replaces an earlier one, or removes it when it has already expired.
  const cookies = new Map<string, { name: string; pair: string | undefined }>();
  for (const line of list) {
    // RFC 6265 §5.2: the cookie-pair is everything before the first ';', kept as sent.
    const [first, ...attributes] = line.split(';');
    const pair = first!.trim();
    if (!pair.includes('=')) continue;
    const name = cookieName(pair);
    const { path, expired } = readAttributes(attributes, now);
    const key = `${name}\u0000${path}`;
    cookies.delete(key);
    cookies.set(key, { name, pair: expired ? undefined : pair });
  }
  // The earlier session's cookies carry no path: one goes when the answer names it, set anew or removed.
  const named = new Set([...cookies.values()].map((c) => c.name));
  const pairs = [...cookies.values()].flatMap((c) => (c.pair === undefined ? [] : [c.pair])).join('; ');
  const cookie = sentCookie === undefined ? pairs : joinCookies(withoutCookies(sentCookie, named), pairs);
  return { token, cookie: cookie === '' ? undefined : cookie };
}

/**
 * A Set-Cookie's `Path` (`''` when none) and whether it has already expired (RFC 6265 §5.2.1–5.2.2, §5.3: a
 * `Max-Age` of 0 or less, else an `Expires` in the past; Max-Age wins, and an attribute that does not parse is
 * ignored).
 */
function readAttributes(attributes: readonly string[], now: number): { path: string; expired: boolean } {
  let maxAge: number | undefined;
  let expires: number | undefined;
  let path = '';
  for (const attribute of attributes) {
    const eq = attribute.indexOf('=');
    if (eq === -1) continue;
    const name = attribute.slice(0, eq).trim().toLowerCase();
    const value = attribute.slice(eq + 1).trim();
    if (name === 'max-age' && /^-?\d+$/.test(value)) maxAge = Number(value);
    else if (name === 'expires') expires = parseCookieDate(value) ?? expires;
    else if (name === 'path') path = value;
  }
  const expired = maxAge !== undefined ? maxAge <= 0 : expires !== undefined && expires <= now;
  return { path, expired };
}

/** RFC 6265 §5.1.1's cookie-date algorithm: epoch milliseconds, or undefined for what it does not accept. */
export function parseCookieDate(text: string): number | undefined {
  let time: number[] | undefined;
  let day: number | undefined;
  let month: number | undefined;
  let year: number | undefined;
  // Delimiters: %x09 / %x20-2F / %x3B-40 / %x5B-60 / %x7B-7E.
  for (const token of text.split(/[\x09\x20-\x2f\x3b-\x40\x5b-\x60\x7b-\x7e]+/)) {
    if (token === '') continue;
    let match: RegExpExecArray | null;
    if (time === undefined && (match = /^(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\D|$)/.exec(token))) {
      time = [Number(match[1]), Number(match[2]), Number(match[3])];
    } else if (day === undefined && (match = /^(\d{1,2})(?:\D|$)/.exec(token))) {
      day = Number(match[1]);
    } else if (month === undefined && MONTHS.includes(token.slice(0, 3).toLowerCase())) {
      month = MONTHS.indexOf(token.slice(0, 3).toLowerCase());
    } else if (year === undefined && (match = /^(\d{2,4})(?:\D|$)/.exec(token))) {
      year = Number(match[1]);
    }
  }
  if (time === undefined || day === undefined || month === undefined || year === undefined) return undefined;
  if (year >= 70 && year <= 99) year += 1900;
  else if (year >= 0 && year <= 69) year += 2000;
  const [hour, minute, second] = time as [number, number, number];
  if (day < 1 || day > 31 || year < 1601 || hour > 23 || minute > 59 || second > 59) return undefined;
  const date = Date.UTC(year, month, day, hour, minute, second);
  // A day the month does not have (31 Apr) fails to parse (§5.1.1 step 6).
  return new Date(date).getUTCDate() === day ? date : undefined;
}

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];

/** `cookie` without the pairs named in `names`. */
function withoutCookies(cookie: string, names: ReadonlySet<string>): string {
  return cookie
    .split(';')
    .map((pair) => pair.trim())
    .filter((pair) => pair !== '' && !names.has(cookieName(pair)))
    .join('; ');
}

/** Two `cookie` header values as one, either of which may be empty. */
function joinCookies(first: string, second: string): string {
  return first === '' ? second : second === '' ? first : `${first}; ${second}`;
}

/**
 * `base` with `override`'s cookie pairs in place of those of the same name (RFC 6265 §5.4 `cookie` syntax,
 * pairs kept byte for byte). Used for a sender's own cookies beside the CSRF session's: an upstream reading
 * the first `JSESSIONID` must see the session's, not one the sender's cookie jar kept from an earlier answer.
 */
export function mergeCookies(base: string, override: string): string {
  if (override === '') return base;
  return joinCookies(withoutCookies(base, new Set(override.split(';').map(cookieName))), override);
}

function cookieName(pair: string): string {
  const eq = pair.indexOf('=');
  return (eq === -1 ? pair : pair.slice(0, eq)).trim();
}
