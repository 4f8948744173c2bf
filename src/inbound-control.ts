/** @module Who may use the proxy port: HTTP Basic credentials (RFC 7617) and a sender address allowlist (CIDR, RFC 4632 / RFC 4291 §2.3); loopback-only when neither is configured. */

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFailure, readTextFile, withoutBom } from './text-file.js';
import type { IncomingHttpHeaders } from 'node:http';
import { BlockList, isIP } from 'node:net';
import { ConfigError, shownAddress, type ConfigProblem } from './errors.js';

/** What {@link InboundControl.check} decided: 403 for `forbidden`, 401 + {@link BASIC_AUTH_CHALLENGE} for `unauthorized`. */
export type InboundDecision = 'ok' | 'forbidden' | 'unauthorized';

/**
 * `WWW-Authenticate` value for a 401 (RFC 7617 §2). `charset="UTF-8"` (§2.1)
 * because passwords are compared as their UTF-8 bytes.
 */
export const BASIC_AUTH_CHALLENGE = 'Basic realm="oauth-sidecar", charset="UTF-8"';

// ---------------------------------------------------------------------------
// Basic auth (RFC 7617)
// ---------------------------------------------------------------------------

/** Users from a basic-auth file. Holds SHA-256 digests only; never exposes them. */
export interface BasicAuthVerifier {
  /** Where the users came from (file path), for logs. */
  readonly source: string;
  readonly userCount: number;
  /**
   * Whether `password` (raw bytes) is `user`'s. Same work whether or not the
   * user exists: one SHA-256 and one `timingSafeEqual` of 32-byte digests.
   */
  verify(user: string, password: Uint8Array): boolean;
}

const SHA256_PREFIX = 'sha256:';
const SHA256_HEX_LENGTH = 64;
const HEX_DIGITS = /^[0-9a-fA-F]+$/;
const LINE_OWS = /^[ \t]+|[ \t]+$/g;
// C0 controls and DEL; RFC 7617 §2 forbids them in user-id and password.
const CONTROL_CHAR = /[\x00-\x1f\x7f]/;
/** Compared against when the user is unknown, so a miss costs the same as a wrong password. */
const UNKNOWN_USER_DIGEST = randomBytes(32);

function sha256(data: string | Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

const EMPTY_DIGEST = sha256('');

/**
 * Reads and parses a basic-auth file (see `parseBasicAuthFile`); an unreadable file is a `ConfigError` too. Its
 * problems name `setting`, where the file was named (`--basic-auth-file`, `SIDECAR_BASIC_AUTH_FILE`…).
 */
export async function readBasicAuthFile(file: string, setting = 'basic-auth-file'): Promise<BasicAuthVerifier> {
  let text: string;
  try {
    text = await readTextFile(file);
  } catch (err) {
    throw new ConfigError([{ source: file, field: setting, message: readFailure(err, 'user list') }]);
  }
  return parseBasicAuthFile(text, file, setting);
}

/**
 * Parses a basic-auth file: one `user:password` or `user:sha256:<hex>` per line
 * (the hex SHA-256 of the password's UTF-8 bytes, e.g. `printf %s "$PW" | sha256sum`).
 * Blank lines and lines starting with `#` are ignored; spaces and tabs around a
 * line are trimmed, so a password cannot begin or end with them, and a
 * plaintext password cannot begin with `sha256:`. The user name ends at the
 * first `:` (RFC 7617 §2), so the password may contain `:`.
 *
 * @throws ConfigError listing every malformed line (by number, never its content).
 */
export function parseBasicAuthFile(text: string, source: string, setting?: string): BasicAuthVerifier {
  const problems: ConfigProblem[] = [];
  const digests = new Map<string, Buffer>();
  const firstLine = new Map<string, number>();
  const lines = withoutBom(text).split('\n');
  for (let i = 0; i < lines.length; i++) {
    const field = setting === undefined ? `line ${i + 1}` : `${setting} line ${i + 1}`;
    let line = lines[i]!;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    line = line.replace(LINE_OWS, '');
    if (line === '' || line.startsWith('#')) continue;

    const problem = (message: string): void => {
      problems.push({ source, field, message });
    };
    const colon = line.indexOf(':');
    if (colon === -1) {
      problem('expected user:password or user:sha256:<hex>');
      continue;
    }
    if (CONTROL_CHAR.test(line)) {
      problem('contains a control character');
      continue;
    }
    const user = line.slice(0, colon);
    const secret = line.slice(colon + 1);
    if (user === '') {
      problem('empty user name');
      continue;
    }
    if (secret === '') {
      problem('empty password');
      continue;
    }
    let digest: Buffer;
    if (secret.startsWith(SHA256_PREFIX)) {
      const hex = secret.slice(SHA256_PREFIX.length);
      if (hex.length !== SHA256_HEX_LENGTH || !HEX_DIGITS.test(hex)) {
        problem(`sha256 digest must be ${SHA256_HEX_LENGTH} hex digits`);
        continue;
      }
      digest = Buffer.from(hex, 'hex');
      // The digest of nothing: what `printf %s "$PW" | sha256sum` gives when $PW is unset or misspelled.
      if (digest.equals(EMPTY_DIGEST)) {
        problem('empty password (the sha256 digest of an empty string)');
        continue;
      }
    } else {
      digest = sha256(secret);
    }
    const earlier = firstLine.get(user);
    if (earlier !== undefined) {
      problem(`duplicate user (first defined on line ${earlier})`);
      continue;
    }
    firstLine.set(user, i + 1);
    digests.set(user, digest);
  }
  if (problems.length === 0 && digests.size === 0) {
    problems.push({ source, field: '', message: 'no users defined; every request would be refused' });
  }
  if (problems.length > 0) throw new ConfigError(problems);

  return Object.freeze({
    source,
    userCount: digests.size,
    verify(user: string, password: Uint8Array): boolean {
      const expected = digests.get(user);
      const same = timingSafeEqual(sha256(password), expected ?? UNKNOWN_USER_DIGEST);
      return same && expected !== undefined;
    },
  });
}

const BASIC_SCHEME = 'basic';
const CHAR_SPACE = 0x20;
const CHAR_TAB = 0x09;
const CHAR_EQUALS = 0x3d;
const BYTE_COLON = 0x3a;

/** base64 alphabet (RFC 4648 §4), indexed by char code. */
const BASE64 = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') BASE64[c.charCodeAt(0)] = 1;

/**
 * The user and password bytes from an `Authorization: Basic <base64(user:password)>`
 * value (RFC 7617 §2; scheme case-insensitive, RFC 9110 §11.1), or `undefined`
 * when it is absent, another scheme, not base64, or has no `:`. The user is
 * decoded as UTF-8; the password stays bytes.
 */
export function parseBasicCredentials(header: string | undefined): { user: string; password: Buffer } | undefined {
  if (header === undefined || header.length <= BASIC_SCHEME.length + 1) return undefined;
  if (header.charCodeAt(BASIC_SCHEME.length) !== CHAR_SPACE) return undefined;
  if (header.slice(0, BASIC_SCHEME.length).toLowerCase() !== BASIC_SCHEME) return undefined;
  let start = BASIC_SCHEME.length + 1;
  let end = header.length;
  while (start < end && header.charCodeAt(start) === CHAR_SPACE) start++;
  while (end > start && isOws(header.charCodeAt(end - 1))) end--;
  if (!isBase64(header, start, end)) return undefined;
  const decoded = Buffer.from(header.slice(start, end), 'base64');
  const colon = decoded.indexOf(BYTE_COLON);
  if (colon === -1) return undefined;
  return { user: decoded.toString('utf8', 0, colon), password: decoded.subarray(colon + 1) };
}

/** Whether the `Authorization` header carries a known user's password (constant-time comparison). */
export function checkBasicAuth(verifier: BasicAuthVerifier, authorization: string | undefined): boolean {
  const credentials = parseBasicCredentials(authorization);
  return credentials !== undefined && verifier.verify(credentials.user, credentials.password);
}

function isOws(code: number): boolean {
  return code === CHAR_SPACE || code === CHAR_TAB;
}

/** base64 with optional padding (at most two `=`, only at the end); empty is not credentials. */
function isBase64(s: string, start: number, end: number): boolean {
  let data = end;
  while (data > start && end - data < 2 && s.charCodeAt(data - 1) === CHAR_EQUALS) data--;
  if (data === start || (data - start) % 4 === 1) return false;
  for (let i = start; i < data; i++) {
    const code = s.charCodeAt(i);
    if (code > 127 || BASE64[code] !== 1) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Sender allowlist
// ---------------------------------------------------------------------------

/** Sender addresses allowed to use the proxy port. */
export interface SenderAllowlist {
  /** The entries as configured (trimmed), for logs. */
  readonly entries: readonly string[];
  /** Whether a socket's `remoteAddress` is covered; IPv4-mapped IPv6 matches IPv4 entries. */
  allows(remoteAddress: string | undefined): boolean;
}

const MAPPED_PREFIX = '::ffff:';

/**
 * Builds an allowlist from CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`) and bare
 * addresses (`192.0.2.7`, `::1`). An entry with host bits set (`10.1.2.3/8`) is
 * refused rather than silently widened, as are zone indexes (`fe80::1%eth0`).
 *
 * @param field config path of the list, for messages: problems name `field[i]`.
 * @throws ConfigError naming every invalid entry.
 */
export function parseAllowlist(cidrs: readonly string[], source: string, field = 'allowlist'): SenderAllowlist {
  const problems: ConfigProblem[] = [];
  const blocks = new BlockList();
  const entries: string[] = [];
  if (cidrs.length === 0) {
    problems.push({ source, field, message: 'is empty; every sender would be refused (remove it or list addresses)' });
  }
  for (let i = 0; i < cidrs.length; i++) {
    const entry = cidrs[i]!.trim();
    const problem = (message: string): void => {
      problems.push({ source, field: `${field}[${i}]`, message: `${shownAddress(entry)}: ${message}` });
    };
    if (entry.includes(',')) {
      // `--allow-cidr 10.0.0.0/8,10.1.0.0/16`: commas separate entries only in SIDECAR_ALLOW_CIDRS.
      problem('one address or CIDR block per --allow-cidr (or per list item); commas separate them only in SIDECAR_ALLOW_CIDRS');
      continue;
    }
    const slash = entry.indexOf('/');
    const address = slash === -1 ? entry : entry.slice(0, slash);
    if (address.includes('%')) {
      problem('zone indexes are not supported');
      continue;
    }
    const version = isIP(address);
    if (version === 0) {
      problem('not an IPv4 or IPv6 address or CIDR block');
      continue;
    }
    const family = version === 4 ? 'ipv4' : 'ipv6';
    if (slash === -1) {
      blocks.addAddress(address, family);
      entries.push(entry);
      continue;
    }
    const prefixText = entry.slice(slash + 1);
    const maxPrefix = version === 4 ? 32 : 128;
    const prefix = /^[0-9]{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
    if (!(prefix <= maxPrefix)) {
      problem(`prefix length must be 0 to ${maxPrefix}`);
      continue;
    }
    const bytes = version === 4 ? ipv4Bytes(address) : ipv6Bytes(address);
    if (clearHostBits(bytes, prefix)) {
      problem(`host bits are set; the block is ${formatAddress(bytes)}/${prefix}`);
      continue;
    }
    blocks.addSubnet(address, prefix, family);
    entries.push(entry);
  }
  if (problems.length > 0) throw new ConfigError(problems);

  const frozenEntries = Object.freeze(entries);
  return Object.freeze({
    entries: frozenEntries,
    allows(remoteAddress: string | undefined): boolean {
      if (remoteAddress === undefined || remoteAddress === '') return false;
      // Socket addresses are canonical: a colon means IPv6; no isIP regex per request.
      const v6 = remoteAddress.includes(':');
      if (blocks.check(remoteAddress, v6 ? 'ipv6' : 'ipv4')) return true;
      // `::ffff:10.1.2.3` from a dual-stack socket. node's BlockList already maps
      // these; checking the IPv4 form as well does not depend on that.
      if (v6 && remoteAddress.includes('.') && remoteAddress.slice(0, MAPPED_PREFIX.length).toLowerCase() === MAPPED_PREFIX) {
        return blocks.check(remoteAddress.slice(MAPPED_PREFIX.length), 'ipv4');
      }
      return false;
    },
  });
}

function ipv4Bytes(address: string): Uint8Array {
  return Uint8Array.from(address.split('.'), Number);
}

/** 16 bytes of a valid (`isIP` = 6), zone-less IPv6 address, including `::` and an embedded IPv4 tail. */
function ipv6Bytes(address: string): Uint8Array {
  const groups = (part: string): number[] => {
    if (part === '') return [];
    const out: number[] = [];
    for (const group of part.split(':')) {
      if (group.includes('.')) {
        const [a, b, c, d] = ipv4Bytes(group);
        out.push((a! << 8) | b!, (c! << 8) | d!);
      } else {
        out.push(parseInt(group, 16));
      }
    }
    return out;
  };
  const gap = address.indexOf('::');
  const head = groups(gap === -1 ? address : address.slice(0, gap));
  const tail = gap === -1 ? [] : groups(address.slice(gap + 2));
  const words = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[2 * i] = words[i]! >> 8;
    bytes[2 * i + 1] = words[i]! & 0xff;
  }
  return bytes;
}

/** Zeroes the bits after `prefix` in place; true when any was set. */
function clearHostBits(bytes: Uint8Array, prefix: number): boolean {
  let changed = false;
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, prefix - 8 * i));
    const mask = (0xff << (8 - keep)) & 0xff;
    const masked = bytes[i]! & mask;
    if (masked !== bytes[i]) {
      bytes[i] = masked;
      changed = true;
    }
  }
  return changed;
}

function formatAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join('.');
  const words: string[] = [];
  for (let i = 0; i < 16; i += 2) words.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return words.join(':');
}

// ---------------------------------------------------------------------------
// Listen address and the combined check
// ---------------------------------------------------------------------------

const LOCALHOST = 'localhost';

/**
 * Whether a listen host only accepts local connections: `localhost`,
 * `127.0.0.0/8`, `::1` (any spelling, optionally in brackets) and their
 * IPv4-mapped forms. `0.0.0.0`, `::`, empty and anything else are not (nor
 * `localhost.`, which resolvers send to DNS). The sidecar checks the address it
 * bound as well (`sidecar.ts`): `localhost` resolves through `/etc/hosts`.
 */
export function isLoopbackHost(host: string): boolean {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  // Not `localhost.`: glibc looks a name with a trailing dot up in DNS, not in /etc/hosts.
  if (h === LOCALHOST) return true;
  const version = isIP(h);
  if (version === 4) return h.startsWith('127.');
  if (version !== 6 || h.includes('%')) return false;
  const bytes = ipv6Bytes(h);
  let zeros = 0;
  while (zeros < 10 && bytes[zeros] === 0) zeros++;
  if (zeros === 10 && bytes[10] === 0xff && bytes[11] === 0xff) return bytes[12] === 127; // ::ffff:127.x.y.z
  for (let i = zeros; i < 15; i++) if (bytes[i] !== 0) return false;
  return bytes[15] === 1; // ::1
}

export interface InboundControlOptions {
  /** Require these users' credentials (401 otherwise). */
  readonly basicAuth?: BasicAuthVerifier | undefined;
  /** Only these senders (403 otherwise). */
  readonly allowlist?: SenderAllowlist | undefined;
  /**
   * Accept any sender address. Without it, an allowlist or basic auth, only
   * loopback senders are accepted. Cannot be combined with `allowlist`.
   */
  readonly allowAnySender?: boolean | undefined;
  /**
   * Host names (or addresses) a loopback-only listener accepts besides loopback addresses and `localhost` /
   * `*.localhost` (names that `/etc/hosts` or Kubernetes `hostAliases` point at 127.0.0.1, an address an iptables
   * redirect brings senders from).
   */
  readonly allowHosts?: readonly string[] | undefined;
}

export interface InboundControl {
  /** For the startup log, e.g. `allowlist (2 entries) + basic auth (3 users)`. */
  readonly summary: string;
  /** Decides one request from its socket's `remoteAddress` and its `Authorization` header. */
  check(remoteAddress: string | undefined, authorization: string | undefined): InboundDecision;
  /** Whether the sender rule (allowlist, or loopback only) lets this address in at all: known when it connects. */
  senderAllowed(remoteAddress: string | undefined): boolean;
  /** Why a request that passed `check` still comes from a web page and is refused (see `webPageRefusal`), or undefined. */
  webPageRefusal(headers: IncomingHttpHeaders): string | undefined;
}

/**
 * The proxy port's gate. The sender address is checked first (an outsider gets
 * 403 without learning that credentials exist), then basic auth; with both
 * configured both must pass. With neither, only loopback senders pass unless
 * `allowAnySender` is set.
 *
 * @throws ConfigError when `allowAnySender` is combined with `allowlist`.
 */
export function createInboundControl(options: InboundControlOptions, source = 'inbound'): InboundControl {
  const { basicAuth, allowlist, allowAnySender = false } = options;
  if (allowAnySender && allowlist !== undefined) {
    throw new ConfigError([{ source, field: 'allowAnySender', message: 'cannot be combined with an allowlist' }]);
  }
  // Sender rule: the allowlist if given; otherwise anyone when basic auth guards
  // the port or the operator opened it explicitly; otherwise loopback only.
  const anySender = allowlist === undefined && (allowAnySender || basicAuth !== undefined);
  const senderOk: (remoteAddress: string | undefined) => boolean =
    allowlist !== undefined ? (a) => allowlist.allows(a) : anySender ? () => true : isLoopbackAddress;

  const parts = [
    allowlist !== undefined
      ? `allowlist (${allowlist.entries.length} entries)`
      : anySender
        ? 'any sender'
        : 'loopback senders only',
  ];
  if (basicAuth !== undefined) parts.push(`basic auth (${basicAuth.userCount} users)`);
  // Loopback senders only, and nothing else to prove: a web page in a browser on this machine is such a sender.
  const hostCheck = allowlist === undefined && !anySender ? new LoopbackHostCheck(options.allowHosts ?? []) : undefined;

  return Object.freeze({
    summary: parts.join(' + '),
    check(remoteAddress: string | undefined, authorization: string | undefined): InboundDecision {
      if (!senderOk(remoteAddress)) return 'forbidden';
      if (basicAuth !== undefined && !checkBasicAuth(basicAuth, authorization)) return 'unauthorized';
      return 'ok';
    },
    senderAllowed: senderOk,
    webPageRefusal: (headers: IncomingHttpHeaders) => webPageRefusal(headers, hostCheck),
  });
}

/**
 * The sidecar adds credentials to whatever reaches it, so a web page must not be able to send through it:
 * any page open in a browser on the same machine can send requests to `127.0.0.1` (cross-site request
 * forgery: a form POST runs an integration flow), and a page whose name is re-pointed at 127.0.0.1 (DNS
 * rebinding) can even read the answers. Legacy senders send neither `Origin` nor `Sec-Fetch-Site`; browsers
 * send `Origin` on every cross-origin and every POST request, and `Sec-Fetch-Site` on every request to
 * `localhost` and loopback addresses (Fetch Metadata goes to "potentially trustworthy" URLs only; `none` is a
 * person typing the address). A rebound page sends neither, but its own name as `Host`, which a loopback-only
 * listener therefore refuses unless it is a loopback address, `localhost`, `*.localhost` (never resolved through
 * DNS, RFC 6761 §6.3) or an allowed name; so is `0.0.0.0` (routed to this machine, no Fetch Metadata). An
 * allowed name gets no Fetch Metadata either: a page can send GETs to it blind (see the README).
 */
function webPageRefusal(headers: IncomingHttpHeaders, hostCheck: LoopbackHostCheck | undefined): string | undefined {
  if (headers.origin !== undefined) return 'requests from web pages (Origin) are not forwarded';
  const site = headers['sec-fetch-site'];
  if (site !== undefined && site !== 'none') return 'requests from web pages (Sec-Fetch-Site) are not forwarded';
  if (hostCheck !== undefined && !hostCheck.allows(headers.host)) {
    return 'Host is not a loopback address, localhost or an --allow-host name: refused as a web page (DNS rebinding, or an address browsers send no Fetch Metadata to)';
  }
  return undefined;
}

/**
 * A loopback address browsers deem "potentially trustworthy" (Secure Contexts §3.1: 127.0.0.0/8 and ::1) and send
 * Fetch Metadata to. Not `::ffff:127.0.0.1`, which Linux routes to a 127.0.0.1 listener too: to a browser it is
 * like 0.0.0.0, and a page's `<img>` GET there carries neither `Origin` nor `Sec-Fetch-Site`.
 */
function isTrustworthyAddress(address: string): boolean {
  if (!isLoopbackHost(address)) return false;
  if (isIP(address) !== 6) return true;
  const bytes = ipv6Bytes(address);
  return !(bytes[10] === 0xff && bytes[11] === 0xff);
}

/** An IPv6 address in the one form a URL writes it in (lower case, shortest; no brackets), as `--allow-host` and `NO_PROXY` keep it; anything else as it is. */
export function normalAddress(host: string): string {
  if (isIP(host) !== 6 || host.includes('%')) return host;
  return new URL(`http://[${host}]`).hostname.slice(1, -1);
}

/** The Host a loopback listener accepts; the last verdict is kept, as a sender sends the same Host every time. */
class LoopbackHostCheck {
  readonly #allowed: ReadonlySet<string>;
  #lastHost: string | undefined;
  #lastVerdict = false;

  constructor(allowHosts: readonly string[]) {
    this.#allowed = new Set(allowHosts.map((h) => h.toLowerCase()));
  }

  allows(host: string | undefined): boolean {
    // HTTP/1.0 senders may send none, and RFC 9112 §3.2 allows an empty one; browsers always send a name.
    if (host === undefined || host === '') return true;
    if (host === this.#lastHost) return this.#lastVerdict;
    const verdict = this.#decide(host);
    this.#lastHost = host;
    this.#lastVerdict = verdict;
    return verdict;
  }

  #decide(host: string): boolean {
    // An IPv6 address without brackets (not valid syntax, but unambiguous).
    if (isIP(host) !== 0) return isTrustworthyAddress(host) || this.#allowed.has(normalAddress(host));
    // `name:port`, `[v6]:port`, `v4:port`, `name`: drop the port.
    const bracket = host.startsWith('[') ? host.indexOf(']') : -1;
    let name = (bracket > 0 ? normalAddress(host.slice(1, bracket)) : host.replace(/:\d*$/, '')).toLowerCase();
    if (name.endsWith('.')) name = name.slice(0, -1);
    if (this.#allowed.has(name)) return true; // a name or an address the operator allowed (e.g. behind a redirect)
    // An address is not re-pointed by DNS, but only a loopback one is "potentially trustworthy" to a browser, which
    // sends Fetch Metadata there: `http://0.0.0.0:8080/` (which Linux routes to this machine) gets none.
    if (isIP(name) !== 0) return isTrustworthyAddress(name);
    return name === LOCALHOST || name.endsWith(`.${LOCALHOST}`);
  }
}

/** The settings that choose inbound control, as a user sets them: flag (variable). */
const INBOUND_CONTROL_OPTIONS =
  '--basic-auth-file (SIDECAR_BASIC_AUTH_FILE), --allow-cidr (SIDECAR_ALLOW_CIDRS) or --allow-any-sender (SIDECAR_ALLOW_ANY_SENDER=true)';
/** The same, as keys of a routes file. */
const INBOUND_CONTROL_FILE_KEYS = 'inbound.basicAuthFile, inbound.allowCidrs or inbound.allowAnySender';

/**
 * Config-time rule: a proxy port reachable from other hosts must be protected
 * by basic auth or an allowlist, or opened explicitly with `allowAnySender`.
 * Returns the problem (if any) for the caller's single `ConfigError`; it names the
 * flags and variables to set, and the file's keys when a routes file is in use.
 */
export function exposureProblems(
  listenHost: string,
  options: ExposureOptions,
  source: string,
  field = 'listen',
  names: { readonly configFile?: boolean; readonly subject?: string } = {},
): ConfigProblem[] {
  if (isLoopbackHost(listenHost)) return [];
  if (options.basicAuth !== undefined || options.allowlist !== undefined || options.allowAnySender === true) return [];
  const fileKeys = names.configFile ? `, or ${INBOUND_CONTROL_FILE_KEYS} in the config file` : '';
  return [
    {
      source,
      field,
      message: `${names.subject ?? shownAddress(listenHost)} is not a loopback address: choose inbound control with ${INBOUND_CONTROL_OPTIONS}${fileKeys}`,
    },
  ];
}

/** The inbound control a listener has, as `exposureProblems` reads it. */
export interface ExposureOptions {
  readonly basicAuth?: unknown;
  readonly allowlist?: unknown;
  readonly allowAnySender?: boolean | undefined;
}

/** The configured inbound settings (config.ts `InboundConfig`) as `exposureProblems` reads them. */
export function exposureOf(inbound: { readonly basicAuthFile?: string | undefined; readonly allowCidrs: readonly string[]; readonly allowAnySender: boolean }): ExposureOptions {
  return { basicAuth: inbound.basicAuthFile, allowlist: inbound.allowCidrs.length > 0 ? inbound.allowCidrs : undefined, allowAnySender: inbound.allowAnySender };
}

/**
 * Run-time rule, after the listener is bound: a host the config took for loopback (`localhost`) resolves through
 * `/etc/hosts` or DNS, and only the address it led to says who can connect. Without inbound control it must be a
 * loopback one; the problem names the host given and the address bound.
 */
export function boundExposureProblems(
  listenHost: string,
  boundAddress: string,
  options: ExposureOptions,
  source: string,
  names: { readonly configFile?: boolean } = {},
): ConfigProblem[] {
  const subject = `${JSON.stringify(listenHost)} was bound to ${boundAddress}, which`;
  return exposureProblems(boundAddress, options, source, 'listen', { ...names, subject });
}

/** A socket `remoteAddress` (canonical form) on the loopback interface. */
function isLoopbackAddress(remoteAddress: string | undefined): boolean {
  if (remoteAddress === undefined) return false;
  return (
    remoteAddress.startsWith('127.') ||
    remoteAddress === '::1' ||
    remoteAddress.startsWith('::ffff:127.')
  );
}
