/** @module Header hygiene for the forward path: hop-by-hop and `Connection`-listed fields are dropped both ways (RFC 9110 §7.6.1), sender credentials and forwarding claims never reach the upstream. */

import type { IncomingHttpHeaders } from 'node:http';
import { REDACTED } from './redaction.js';

/** Header object in the shape undici's `headers` option and node's `res.writeHead` both accept. */
export type HeaderRecord = Record<string, string | string[]>;

/** Headers the sidecar itself sets, added after filtering (names are matched case-insensitively). */
export type ExtraHeaders = Readonly<Record<string, string | string[]>>;

export interface HeaderFilterOptions {
  /**
   * Written into the result after filtering, replacing any value of the same
   * name that survived it (e.g. `authorization: Bearer …`, `x-request-id`).
   * They are trusted as given: never pass hop-by-hop names here.
   */
  readonly extra?: ExtraHeaders;
  /**
   * Responses only: what the sidecar added to the request that is not the sender's to have — the access token,
   * and on a CSRF route its session's token and ids. An upstream that echoes the request's headers
   * back (a flow returning its message headers, a `WWW-Authenticate` quoting the token) would hand them to the
   * sender; each is replaced by `[redacted]` in any value holding it.
   */
  readonly secrets?: readonly string[] | undefined;
}

/**
 * Connection-specific fields, meaningful for one hop only: `connection` and the
 * fields RFC 9110 §7.6.1 tells intermediaries to remove (`proxy-connection`,
 * `keep-alive`, `te`, `transfer-encoding`, `upgrade`), plus `trailer` (RFC 2616
 * §13.5.1) because the sidecar does not forward trailer fields.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Always dropped towards the upstream:
 * - hop-by-hop fields, and `close`: a connection option, reserved as a field name (RFC 9110 §18.4);
 * - the sender's credentials (`authorization`, `proxy-authorization`): the sidecar
 *   sets its own Bearer token and inbound secrets must not travel on;
 * - `host` (undici sets the upstream's) and `expect` (node's server already answered
 *   100-continue; undici throws NotSupportedError on it);
 * - `forwarded` (RFC 7239) and the de-facto client-address fields — the sender's
 *   claims are not trusted; `x-forwarded-*` is matched by prefix (request direction only);
 * - `x-original-url`, `x-original-uri`, `x-rewrite-url`, `x-envoy-original-path`: some
 *   servers and frameworks take the request's path from them, which would reach paths
 *   outside the sender's route with the route's token.
 */
const REQUEST_DROP: ReadonlySet<string> = new Set([
  ...HOP_BY_HOP,
  'close',
  'authorization',
  'proxy-authorization',
  'host',
  'expect',
  'forwarded',
  'x-real-ip',
  'x-client-ip',
  'x-cluster-client-ip',
  'true-client-ip',
  'x-original-url',
  'x-original-uri',
  'x-rewrite-url',
  'x-envoy-original-path',
]);

/**
 * Always dropped towards the sender: hop-by-hop fields, and `proxy-authenticate` and `proxy-authentication-info`,
 * which address the sidecar as the upstream's client (RFC 9110 §11.7.1, §11.7.3), not the sender.
 */
const RESPONSE_DROP: ReadonlySet<string> = new Set([...HOP_BY_HOP, 'close', 'proxy-authenticate', 'proxy-authentication-info']);

/**
 * Never removed on the say-so of a `Connection` option: it frames the message
 * (RFC 9110 §8.6), and listing it violates RFC 9110 §7.6.1 ("MUST NOT send a
 * connection option corresponding to a field … intended for all recipients").
 */
const FRAMING = 'content-length';

const X_FORWARDED = 'x-forwarded-';
const CHAR_X = 0x78;
const CHAR_SPACE = 0x20;
const CHAR_TAB = 0x09;
const PROTO_KEY = '__proto__';

/** tchar (RFC 9110 §5.6.2), indexed by char code; lower-case input only needs a-z but A-Z costs nothing. */
const TCHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") {
  TCHAR[c.charCodeAt(0)] = 1;
}

/**
 * Headers to send upstream with undici, from the sender's `req.headers`.
 *
 * Drops {@link HOP_BY_HOP}, every field named in `Connection` (except
 * `content-length`), `close`, `authorization`, `proxy-authorization`, `host`,
 * `expect`, `forwarded` and `x-forwarded-*`. Everything else is copied by
 * reference — values byte for byte, arrays as the same array. Names are matched
 * case-insensitively and written lower-case. The input is not modified.
 *
 * For headers parsed by node:http's strict parser (never `insecureHTTPParser`)
 * the result passes undici 7's `Request` validation: names are tokens, values
 * contain no CTL but HTAB, `content-length` is digits only, and every name
 * undici rejects (`transfer-encoding`, `keep-alive`, `upgrade`, `connection`,
 * `expect`) or treats specially (`host`) is gone.
 */
export function requestHeadersForUpstream(
  incoming: Readonly<IncomingHttpHeaders>,
  opts?: HeaderFilterOptions,
): HeaderRecord {
  return filter(incoming, REQUEST_DROP, true, opts?.extra, undefined);
}

/**
 * Headers to write to the sender with `res.writeHead`, from undici's response
 * `headers` (lower-case names, repeated fields — notably `set-cookie` — as arrays).
 *
 * Drops {@link HOP_BY_HOP}, `close`, `proxy-authenticate` and every field named
 * in `Connection` (except `content-length`); keeps everything else, arrays
 * intact. node's server decides its own framing and connection handling.
 */
export function responseHeadersForSender(
  upstream: Readonly<Record<string, string | string[] | undefined>>,
  opts?: HeaderFilterOptions,
): HeaderRecord {
  return filter(upstream, RESPONSE_DROP, false, opts?.extra, opts?.secrets);
}

function filter(
  source: Readonly<Record<string, string | string[] | undefined>>,
  drop: ReadonlySet<string>,
  dropForwarding: boolean,
  extra: ExtraHeaders | undefined,
  secrets: readonly string[] | undefined,
): HeaderRecord {
  const out: HeaderRecord = {};
  const connection = source['connection'];
  const named = connection === undefined ? undefined : connectionOptions(connection, drop);
  // Object.keys, not for…in: own keys only, whatever has been added to Object.prototype.
  const names = Object.keys(source);
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    const value = source[name];
    if (value === undefined) continue;
    // node:http and undici already lower-case names; V8 returns the same string then.
    const lower = name.toLowerCase();
    if (drop.has(lower)) continue;
    if (named !== undefined && named.has(lower)) continue;
    if (dropForwarding && lower.charCodeAt(0) === CHAR_X && lower.startsWith(X_FORWARDED)) continue;
    put(out, lower, secrets === undefined ? value : withoutSecrets(value, secrets));
  }
  if (extra !== undefined) {
    const extraNames = Object.keys(extra);
    for (let i = 0; i < extraNames.length; i++) {
      const name = extraNames[i]!;
      put(out, name.toLowerCase(), extra[name]!);
    }
  }
  return out;
}

function withoutSecrets(value: string | string[], secrets: readonly string[]): string | string[] {
  if (typeof value !== 'string') return value.map((v) => withoutSecrets(v, secrets) as string);
  let out = value;
  for (let i = 0; i < secrets.length; i++) {
    const secret = secrets[i]!;
    // Most values are shorter than any secret: one length comparison each.
    if (out.length >= secret.length && out.includes(secret)) out = out.split(secret).join(REDACTED);
  }
  return out;
}

/** Assigns without ever touching the prototype: undici delivers a `__proto__` response field as an own key. */
function put(out: HeaderRecord, name: string, value: string | string[]): void {
  if (name === PROTO_KEY) {
    Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
  } else {
    out[name] = value;
  }
}

/**
 * The lower-case connection options (RFC 9110 §7.6.1: `#connection-option`,
 * each a token) that name a field not already dropped; `undefined` when there
 * are none, so `Connection: keep-alive` / `close` allocate nothing. Tokens that
 * are not valid (junk, empty list elements) cannot name a field and are skipped.
 */
function connectionOptions(value: string | string[], drop: ReadonlySet<string>): Set<string> | undefined {
  if (typeof value === 'string') return addOptions(value, drop, undefined);
  let named: Set<string> | undefined;
  for (let i = 0; i < value.length; i++) named = addOptions(value[i]!, drop, named);
  return named;
}

function addOptions(value: string, drop: ReadonlySet<string>, named: Set<string> | undefined): Set<string> | undefined {
  const lower = value.toLowerCase();
  const length = lower.length;
  let pos = 0;
  while (pos <= length) {
    let end = lower.indexOf(',', pos);
    if (end === -1) end = length;
    let start = pos;
    let stop = end;
    while (start < stop && isOws(lower.charCodeAt(start))) start++;
    while (stop > start && isOws(lower.charCodeAt(stop - 1))) stop--;
    if (stop > start && isToken(lower, start, stop)) {
      const option = lower.slice(start, stop);
      if (option !== FRAMING && !drop.has(option)) (named ??= new Set()).add(option);
    }
    pos = end + 1;
  }
  return named;
}

function isOws(code: number): boolean {
  return code === CHAR_SPACE || code === CHAR_TAB;
}

function isToken(s: string, start: number, stop: number): boolean {
  for (let i = start; i < stop; i++) {
    const code = s.charCodeAt(i);
    if (code > 127 || TCHAR[code] !== 1) return false;
  }
  return true;
}
