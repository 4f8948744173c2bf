/** `oauth-sidecar check`: per route, load the service key, fetch a token, call the upstream, and explain each failure with its fix. */
import type { X509Certificate } from 'node:crypto';
import type { Dispatcher } from 'undici';
import { wallTimeOf } from './clock.js';
import type { Config, RouteConfig } from './config.js';
import { loadCredentials, type Credentials, type LoadedCredentials } from './credentials.js';
import { createDispatcher, goesThroughProxy, type OutboundNetwork } from './dispatcher.js';
import { ConfigError, shownSource, SidecarError } from './errors.js';
import { exposureOf, exposureProblems, readBasicAuthFile } from './inbound-control.js';
import { decodeJwtClaims, type JwtClaims } from './jwt.js';
import { classifyNetworkError, proxyAdvice, proxyEndpoint, proxyTrustAdvice, trustAdvice, type ClassifiedFailure, type NetworkFailure } from './network-error.js';
import { intermediateExpiry, oneLineDn, parseCertificates } from './pem.js';
import { MIN_REDACT_LENGTH, redact } from './redaction.js';
import { EXPIRY_WARNING_DAYS, shownUrl } from './service-key.js';
import { createTokenClient, parseJsonBody, printableAscii, type AccessToken, type RetryPolicy, type TokenClient } from './token-client.js';

/** The role an HTTPS sender adapter requires unless the iFlow names a custom User Role. */
export const DEFAULT_CHECK_ROLE = 'ESBMessaging.send';
/** Under the `/http` servlet, which authenticates every request: a 404 there still proves the token was accepted. */
export const DEFAULT_RUNTIME_CHECK_PATH = '/http/';
/** The OData API's service document: answers 200 to any valid api-plan token. */
export const DEFAULT_API_CHECK_PATH = '/api/v1/';

/**
 * One attempt only: a diagnosis reports the first failure instead of hiding it behind retries.
 * (`maxRetryAfterMs: 0` also keeps a 429 from waiting.)
 */
const NO_RETRY: RetryPolicy = { maxAttempts: 1, baseDelayMs: 0, maxDelayMs: 0, maxRetryAfterMs: 0 };
/** Enough of a body to recognise the CF router, an MPL ID, an OAuth error or a login page; the body is never printed. */
const MAX_BODY_BYTES = 16 * 1024;
const MAX_SCOPES_SHOWN = 20;
const DAY_MS = 86_400_000;
/** More than this between the token's `iat` and the local clock is worth a warning. */
const MAX_CLOCK_SKEW_MS = 120_000;

const CSRF_HEADER = 'x-csrf-token';
const CSRF_FETCH = 'Fetch';
const CSRF_REQUIRED = 'required';
const MPL_HEADER = 'sap_messageprocessinglogid';
const CF_ROUTER_ERROR_HEADER = 'x-cf-routererror';
const CF_ROUTE_MISSING = /Requested route \('([^'\s]{1,253})'\) does not exist/;
const MPL_IN_BODY = /MPL ID for the failed message is\s*:?\s*([A-Za-z0-9_-]{8,64})/i;
/** `<sub>.it-cpi018.cfapps.eu10-003.hana.ondemand.com`: the API (management) host; the runtime host has `-rt`. */
const API_HOST = /^[^.]+\.it-cpi[^.]*\.cfapps\./i;
const RUNTIME_HOST_MARK = /-rt\./i;
const HTML_TYPE = /^\s*(?:text\/html|application\/xhtml\+xml)\s*(?:;|$)/i;
/**
 * What gives an HTML page away as an interactive login, in the order they are named: a password field (an IdP's or a
 * proxy's login form), a SAML HTTP-POST binding form (SAMLRequest/SAMLResponse, SAML 2.0 Bindings §3.5), a script
 * or link sending the browser to an OAuth authorization endpoint (SAP's application router answers 200 with such a
 * page), a form posted to a login or single sign-on address. Bounded repetitions: the body is up to 16 KiB.
 */
const LOGIN_PAGE_SIGNS: ReadonlyArray<readonly [RegExp, string]> = [
  [/<input\b[^>]{0,512}?\btype\s*=\s*["']?password["'\s/>]/i, 'a password field'],
  [/<input\b[^>]{0,512}?\bname\s*=\s*["']?SAML(?:Request|Response)["'\s/>]/i, 'a SAML form post'],
  [
    /(?:location(?:\.href)?\s*=|location\.(?:replace|assign)\(|http-equiv\s*=\s*["']?refresh)[^<]{0,512}?\/(?:oauth2?|openid-connect)\/(?:[\w.-]+\/){0,2}auth(?:orize)?\b/i,
    'a redirect to an OAuth authorization endpoint',
  ],
  [/<form\b[^>]{0,512}?\baction\s*=\s*["']?[^"'\s>?]{0,512}?\b(?:log-?[io]n|sign-?in|sso|saml2?|j_security_check)\b/i, 'a login form'],
];

const KEY_TYPE_NAMES: Readonly<Record<Credentials['kind'], string>> = {
  'client-secret': 'ClientId/Secret',
  certificate: 'Certificate (SAP-generated)',
  'external-certificate': 'External Certificate',
};

export type Level = 'ok' | 'warn' | 'FAIL';

/** One verdict with the fixes that go with it. */
export interface Finding {
  level: Level;
  message: string;
  hints: readonly string[];
}

export interface CheckOptions {
  /** Upstream path to GET (after the upstream's base path); default `/http/` (`/api/v1/` on an API host). */
  path?: string;
  /** Role the token must carry; default `ESBMessaging.send` (none on an API host). */
  role?: string;
  out: (line: string) => void;
  now?: () => number;
}

export interface RouteCheckResult {
  name: string;
  /** Worst level met. */
  level: Level;
  /** The route failed because its service key or settings are unusable (exit code 2 material). */
  configInvalid: boolean;
}

export interface CheckReport {
  ok: boolean;
  routes: RouteCheckResult[];
  /** The inbound basic-auth file cannot be read or parsed (exit code 2 material, like a broken service key). */
  inboundInvalid: boolean;
}

/** Check every route: `ok` only when every route passes (warnings allowed), and the verdict of each (for exit codes). */
export async function checkRoutes(config: Readonly<Config>, options: CheckOptions): Promise<CheckReport> {
  const secrets = new Set<string>();
  const out = redacting(options.out, secrets, hiddenPaths(config));
  const now = options.now ?? Date.now;
  const count = config.routes.length;
  out(`oauth-sidecar check: ${count} route${count === 1 ? '' : 's'} from ${shownSource(config.routesSource)}`);
  const network = describeNetwork(config);
  for (const finding of network) printFinding(out, finding);
  const inbound = await describeInbound(config);
  if (inbound) printFinding(out, inbound);
  const inboundInvalid = inbound?.level === 'FAIL';
  const exposure = describeExposure(config);
  if (exposure) printFinding(out, exposure);
  const results: RouteCheckResult[] = [];
  for (const route of config.routes) {
    out('');
    out(`route ${route.name} (prefix ${route.prefix})`);
    const section = new Section(out);
    const configInvalid = await checkRoute(route, config, options, now, section, secrets);
    results.push({ name: route.name, level: section.level, configInvalid });
  }
  out('');
  const failed = results.filter((r) => r.level === 'FAIL');
  const warned = results.filter((r) => r.level === 'warn');
  out(summaryLine(results.length, failed.map((r) => r.name), warned.length));
  if (inboundInvalid) out(formatLine('FAIL', 'the inbound basic-auth file is unusable: serve would refuse to start'));
  if (exposure) out(formatLine('warn', 'the proxy listener is not loopback and has no inbound control: serve would refuse to start'));
  return { ok: failed.length === 0 && !inboundInvalid, routes: results, inboundInvalid };
}

/** The final line: `ok   …` or `FAIL …`. */
export function summaryLine(total: number, failed: readonly string[], warned: number): string {
  const routes = `${total} route${total === 1 ? '' : 's'}`;
  const warnings = warned > 0 ? ` (${warned} with warnings)` : '';
  if (failed.length === 0) return formatLine('ok', `summary: ${routes} checked, all pass${warnings}`);
  return formatLine('FAIL', `summary: ${failed.length} of ${routes} failed: ${failed.join(', ')}${warnings}`);
}

/** `ok   message`, `warn message`, `FAIL message`. */
export function formatLine(level: Level, message: string): string {
  return `${level.padEnd(4)} ${message}`;
}

/** A fix or explanation under a finding, indented past the level column. */
export function formatHint(hint: string): string {
  return `       ${hint}`;
}

// ---------------------------------------------------------------------------
// One route

async function checkRoute(
  route: RouteConfig,
  config: Readonly<Config>,
  options: CheckOptions,
  now: () => number,
  section: Section,
  secrets: Set<string>,
): Promise<boolean> {
  let loaded: LoadedCredentials;
  try {
    loaded = await loadCredentials(route.credentials, { now: new Date(now()) });
  } catch (err) {
    for (const finding of credentialFailure(err)) section.add(finding);
    return err instanceof ConfigError || (err instanceof SidecarError && err.code === 'CONFIG_INVALID');
  }
  const { credentials } = loaded;
  if (credentials.kind === 'client-secret') secrets.add(credentials.clientSecret);
  else secrets.add(credentials.key);
  for (const finding of describeCredentials(loaded, now())) section.add(finding);

  const upstream = route.upstream ?? credentials.url;
  if (!upstream) {
    section.fail(`no upstream: the service key ${shownSource(credentials.source)} has no url`, 'set --upstream URL (or upstream: on the route)');
    return true;
  }
  const upstreamUrl = new URL(upstream);
  const apiHost = isApiHost(upstreamUrl.hostname);
  section.ok(`upstream: ${upstreamUrl.origin}${upstreamUrl.pathname.replace(/\/+$/, '')} (${route.upstream ? 'configured' : "the service key's url"})`);
  const role = options.role ?? (apiHost ? undefined : DEFAULT_CHECK_ROLE);

  const client = createTokenClient({
    credentials,
    settings: route.token,
    network: config.network,
    attemptTimeoutMs: config.tokenTimeoutMs,
    retry: NO_RETRY,
  });
  let token: AccessToken;
  try {
    token = await client.fetchToken();
  } catch (err) {
    section.add(explainTokenError(err, { credentials, network: config.network, timeoutMs: config.tokenTimeoutMs }));
    section.fail('upstream not called: no token');
    return false;
  } finally {
    await client.close();
  }
  secrets.add(token.value);
  const claims = decodeJwtClaims(token.value);
  for (const finding of describeToken(token, claims, client, credentials)) section.add(finding);
  const scopes = token.scopes.length > 0 ? token.scopes : (claims?.scope ?? []);
  // An opaque token without a `scope` field says nothing of its roles: not granted, nor missing.
  const scopesKnown = token.scopes.length > 0 || claims !== undefined;
  const roleGranted = role === undefined || !scopesKnown ? undefined : scopeGrantsRole(scopes, role);
  const scopeAsked = route.token.scope ?? route.token.params['scope'];
  section.add(describeScopes(scopes, role, roleGranted, { apiHost, scopeAsked, known: scopesKnown }));

  // An upstream with a path of its own (`--upstream https://host/http`) has the servlet in it already: the path
  // checked, given or not, is appended to it.
  const basePath = upstreamUrl.pathname.replace(/\/+$/, '');
  const path = normalisePath(options.path ?? (basePath !== '' ? '/' : apiHost ? DEFAULT_API_CHECK_PATH : DEFAULT_RUNTIME_CHECK_PATH));
  const target = `${basePath}${path}`;
  const shown = `${upstreamUrl.origin}${target}`;
  const context: UpstreamContext = {
    url: shown,
    pathGiven: options.path !== undefined,
    basePath,
    csrf: route.csrf,
    role,
    roleGranted,
    scopeAsked,
    apiHost,
    network: config.network,
    timeoutMs: route.timeouts.responseMs,
    connectTimeoutMs: route.timeouts.connectMs,
    secrets,
  };
  try {
    const answer = await callUpstream(upstreamUrl.origin, target, token.value, route, config.network);
    for (const finding of explainUpstreamAnswer(answer, context)) section.add(finding);
  } catch (err) {
    section.add(explainUpstreamError(err, context));
  }
  return false;
}

/** What loading the key found: one FAIL per problem for a broken key. */
export function credentialFailure(err: unknown): Finding[] {
  if (err instanceof ConfigError) {
    return [
      finding('FAIL', `the service key is unusable (${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}):`),
      ...err.problems.map((p) => finding('FAIL', `${p.field ? `${p.field}: ` : ''}${p.message} (${shownSource(p.source)})`)),
    ];
  }
  if (err instanceof SidecarError) return [finding('FAIL', `${err.code}: ${err.message}`)];
  return [finding('FAIL', `could not load the service key (unexpected ${(err as Error)?.name ?? 'error'})`)];
}

/** Source, key type, client id, token URL, certificate facts and load notices. */
export function describeCredentials(loaded: LoadedCredentials, now: number): Finding[] {
  const { credentials, notices } = loaded;
  const findings = [
    finding('ok', `service key: ${shownSource(credentials.source)}`),
    finding('ok', `key type: ${KEY_TYPE_NAMES[credentials.kind]}, clientid ${credentials.clientId}`),
    finding('ok', `token URL: ${shownUrl(credentials.tokenUrl)}`),
  ];
  if (credentials.kind !== 'client-secret') findings.push(...describeCertificate(credentials.certificate, credentials.notAfter, now));
  for (const notice of notices) {
    // Expiry is reported by describeCertificate, with the subject.
    if (credentials.kind !== 'client-secret' && /expires on|expired on/.test(notice.message)) continue;
    findings.push(finding(notice.level === 'warn' ? 'warn' : 'ok', notice.message));
  }
  return findings;
}

function describeCertificate(chainPem: string, notAfter: Date, now: number): Finding[] {
  const findings: Finding[] = [];
  let chain: X509Certificate[] = [];
  try {
    chain = parseCertificates(chainPem);
  } catch {
    // Already validated by service-key; nothing more to say.
  }
  const [leaf] = chain;
  if (leaf) {
    findings.push(finding('ok', `client certificate: ${oneLineDn(leaf.subject)}, issued by ${oneLineDn(leaf.issuer)}`));
    if (chain.length < 2 && leaf.subject !== leaf.issuer) {
      findings.push(
        finding('warn', 'the certificate chain holds the leaf only', [
          'SAP\'s load balancer passes a client certificate on only with its chain: put the intermediates after the leaf',
        ]),
      );
    }
  }
  // The same window as the service key's own notices (service-key `checkExpiry`, `checkIntermediates`), which these replace.
  const exactDays = (notAfter.getTime() - now) / DAY_MS;
  const daysLeft = Math.floor(exactDays);
  const expiry = `client certificate expires ${notAfter.toISOString()} (in ${daysLeft} day${daysLeft === 1 ? '' : 's'})`;
  findings.push(
    exactDays <= EXPIRY_WARNING_DAYS
      ? finding('warn', expiry, ['create a new service key (or renew the External Certificate) before then; the sidecar picks it up without restart'])
      : finding('ok', expiry),
  );
  const intermediate = leaf ? intermediateExpiry(chain, notAfter) : undefined;
  if (intermediate && (intermediate.notAfter.getTime() - now) / DAY_MS <= EXPIRY_WARNING_DAYS) {
    const days = Math.floor((intermediate.notAfter.getTime() - now) / DAY_MS);
    const when = days < 0 ? `expired ${intermediate.notAfter.toISOString()}` : `expires ${intermediate.notAfter.toISOString()} (in ${days} day${days === 1 ? '' : 's'})`;
    findings.push(
      finding('warn', `intermediate certificate ${oneLineDn(intermediate.certificate.subject)} ${when}, before the client certificate`, [
        'a token server that builds the chain through it refuses the client certificate: put the CA\'s renewed intermediate after the leaf (or create a new service key)',
      ]),
    );
  }
  return findings;
}

/** Client authentication, lifetime and the token's own client id: never the token. */
export function describeToken(token: AccessToken, claims: JwtClaims | undefined, client: Pick<TokenClient, 'authMethod'>, credentials: Credentials): Finding[] {
  const lifetimeS = Math.round((token.expiresAt - token.issuedAt) / 1000);
  const from = { expires_in: 'expires_in', jwt: 'the JWT, exp - iat or exp', default: 'assumed: no expires_in, no JWT exp' }[token.lifetimeSource];
  const findings = [
    finding('ok', `token obtained with ${client.authMethod}: lifetime ${lifetimeS} s (${from}), expires ${new Date(wallTimeOf(token.expiresAt)).toISOString()}`),
  ];
  if (!claims) {
    findings.push(finding('warn', 'the token is opaque (not a JWT): its client id and scopes cannot be read', [
      'CPI expects JWTs; for the Neo token endpoint add --token-param token_format=jwt',
    ]));
    return findings;
  }
  const tokenClientId = stringClaim(claims, 'client_id') ?? stringClaim(claims, 'cid') ?? stringClaim(claims, 'azp');
  if (tokenClientId === undefined) findings.push(finding('warn', 'the token names no client (no client_id, cid or azp claim)'));
  else if (tokenClientId !== credentials.clientId) {
    findings.push(finding('warn', `the token's client id ${tokenClientId} differs from the key's clientid ${credentials.clientId}`));
  } else findings.push(finding('ok', `token client id: ${tokenClientId}`));
  const zone = stringClaim(claims, 'zid');
  if (zone) findings.push(finding('ok', `token zone (subaccount tenant): ${zone}`));
  // The request's time on the wall clock, against which the token server's iat is compared.
  const sentAt = wallTimeOf(token.issuedAt);
  if (claims.iat !== undefined && Math.abs(claims.iat * 1000 - sentAt) > MAX_CLOCK_SKEW_MS) {
    const skewS = Math.round((sentAt - claims.iat * 1000) / 1000);
    findings.push(finding('warn', `the local clock is ${Math.abs(skewS)} s ${skewS > 0 ? 'ahead of' : 'behind'} the token server's`, [
      'synchronise the clock (NTP): tokens are refreshed by their lifetime and may look expired to the upstream',
    ]));
  }
  return findings;
}

/**
 * Granted scopes and whether the role is among them. `scopeAsked`: the scope the token request named (which
 * narrows the token to it); `known`: false for an opaque token without a `scope` field (nothing can be said).
 */
export function describeScopes(
  scopes: readonly string[],
  role: string | undefined,
  granted: boolean | undefined,
  { apiHost, scopeAsked, known = true }: { apiHost: boolean; scopeAsked?: string | undefined; known?: boolean },
): Finding {
  const shown = scopes.length === 0 ? 'none' : scopes.slice(0, MAX_SCOPES_SHOWN).join(' ') + (scopes.length > MAX_SCOPES_SHOWN ? ` (+${scopes.length - MAX_SCOPES_SHOWN} more)` : '');
  if (role !== undefined && !known) {
    return finding('warn', `role ${role} not checked: the token is opaque and its answer named no scopes`, ['the upstream call below shows whether the role is there (a 403 if not)']);
  }
  if (role === undefined) {
    return finding('ok', `granted scopes: ${shown}`, apiHost ? ['API host: pass --check-role ROLE to check a role (e.g. WorkspacePackagesRead)'] : []);
  }
  if (granted) return finding('ok', `role ${role} granted; scopes: ${shown}`);
  if (narrowedOut(role, scopeAsked)) {
    return finding('warn', `role ${role} not among the granted scopes: ${shown}`, [scopeLeavesOut(role, scopeAsked!)]);
  }
  return finding('warn', `role ${role} not among the granted scopes: ${shown}`, apiHost
    ? [`the OData API call needs role ${role}: add it to the api instance's roles (changes take up to 1 h)`]
    : [
        `the integration flow's sender adapter needs role ${role}: add it to the service instance's roles (changes take up to 1 h)`,
        `(if the adapter uses a custom User Role, pass it with --check-role)`,
      ]);
}

/** Whether the scope the token request names (if any) leaves `role` out. */
function narrowedOut(role: string, scopeAsked: string | undefined): boolean {
  return scopeAsked !== undefined && !scopeGrantsRole(scopeAsked.split(/\s+/).filter(Boolean), role);
}

/** The token request asked for a scope that leaves `role` out: the instance may well grant it. */
function scopeLeavesOut(role: string, scopeAsked: string): string {
  return `the token request asks for scope "${printable(scopeAsked, 80)}" (--scope, the route's scope or --token-param scope), which leaves ${role} out: ask for no scope (all the instance grants) or include ${role}`;
}

/** SAP scopes are `<xsappname>.<role>` (e.g. `it-rt-acme!b196.ESBMessaging.send`): compare by suffix. */
export function scopeGrantsRole(scopes: readonly string[], role: string): boolean {
  return scopes.some((scope) => scope === role || scope.endsWith(`.${role}`));
}

/** The API (management) host `<sub>.it-cpi<nnn>.cfapps…`, as opposed to the runtime `…-rt.cfapps…`. */
export function isApiHost(hostname: string): boolean {
  return API_HOST.test(hostname) && !RUNTIME_HOST_MARK.test(hostname);
}

// ---------------------------------------------------------------------------
// Token failures

export interface TokenErrorContext {
  credentials: Pick<Credentials, 'kind' | 'tokenUrl' | 'source'>;
  network: OutboundNetwork;
  timeoutMs: number;
}

/** A token failure, by code, with what to do about it. */
export function explainTokenError(err: unknown, ctx: TokenErrorContext): Finding {
  if (!(err instanceof SidecarError)) {
    return finding('FAIL', `token request failed unexpectedly (${(err as Error)?.name ?? 'error'})`);
  }
  const message = `${err.code}: ${err.message}`;
  const host = hostOf(ctx.credentials.tokenUrl);
  const certKey = ctx.credentials.kind !== 'client-secret';
  switch (err.code) {
    case 'TOKEN_REJECTED':
      if (/refused the token request/.test(err.message)) {
        // The message says which parameter; the client itself was not what the server refused.
        return finding('FAIL', message, ['the token server refused what was asked for, not (necessarily) the client: fix the parameter the message names']);
      }
      if (!/rejected the client credentials/.test(err.message)) {
        return finding('FAIL', message, ['the token URL answered, but not as an OAuth token endpoint: copy tokenurl from the service key (…/oauth/token)']);
      }
      return finding('FAIL', message, certKey
        ? [
            'the certificate must be the one of this service key (or the External Certificate registered for clientid), with its whole chain',
            'the token URL must be the authentication.cert host (<sub>.authentication.cert.<region>.hana.ondemand.com)',
            'a TLS-inspecting proxy replaces the client certificate: exempt the token host from inspection',
          ]
        : [
            'the secret is wrong or was rotated (service key deleted and re-created): copy clientid and clientsecret from the current service key',
            'a secret from another subaccount or instance does not work here: clientid, clientsecret and tokenurl must come from the same key',
            'the sidecar form-encodes id and secret before base64 (RFC 6749 §2.3.1); a token server that does not decode them accepts --token-auth post',
          ]);
    case 'TOKEN_UNREACHABLE': {
      const classified = classifyNetworkError(err.cause);
      if (classified.proxy !== undefined) return tokenProxyFailure(err, host, { ...classified, proxy: classified.proxy });
      return finding('FAIL', message, networkHints(classified.failure, host, ctx.network, 'token', classified.code, certKey));
    }
    case 'TOKEN_TIMEOUT': {
      const classified = classifyNetworkError(err.cause);
      if (classified.proxy !== undefined) return tokenProxyFailure(err, host, { ...classified, proxy: classified.proxy });
      // Not the connect limit: the connection was made and the request sent (an attempt's bound that runs out while
      // connecting ends when the connect step does, as a connect timeout).
      const connected = classified.code !== 'UND_ERR_CONNECT_TIMEOUT' && classified.code !== 'ETIMEDOUT';
      return finding('FAIL', message, [
        ...networkHints('timeout', host, ctx.network, 'token', connected ? 'UND_ERR_HEADERS_TIMEOUT' : classified.code),
        `raise --token-timeout (now ${ctx.timeoutMs} ms) only if the server is known to be slow`,
      ]);
    }
    case 'TOKEN_RATE_LIMITED':
      return finding('FAIL', message, [
        `XSUAA allows 60 token requests/s per subaccount: something else is fetching tokens per request; retry in ${err.retryAfter ?? 1} s`,
        'clients should cache tokens until they expire (the sidecar does)',
      ]);
    case 'TOKEN_SERVER_ERROR':
      return finding('FAIL', message, ['the token server failed: retry later and check the SAP BTP status page for the region']);
    case 'TOKEN_RESPONSE_INVALID':
      return finding('FAIL', message, ['tokenurl must be the OAuth token endpoint (…/oauth/token); a proxy login page also looks like this']);
    default:
      return finding('FAIL', message);
  }
}

/** Fixes for a connection failure to the token server or the upstream (`host`: `host[:port]`). */
export function networkHints(failure: NetworkFailure, host: string, network: OutboundNetwork, peer: 'token' | 'upstream', code = '', certKey = false): string[] {
  // Only a connection that went through the proxy may be the proxy's business; one NO_PROXY sends direct is not.
  const proxy = goesThroughProxy(network, host) ? proxyHost(network.httpsProxy) : undefined;
  const viaProxy = proxy ? [`outbound HTTPS goes through the proxy ${proxy}: check HTTPS_PROXY/NO_PROXY and that the proxy allows CONNECT to ${host}`] : [];
  const direct = network.httpsProxy && !proxy ? [`${host} is reached directly, not through HTTPS_PROXY (NO_PROXY names it): if only the proxy reaches it, take it out of NO_PROXY`] : [];
  const around = [...viaProxy, ...direct];
  const noProxySet = !network.httpsProxy;
  switch (failure) {
    case 'tls-trust':
      // A name mismatch or an expired certificate is not cured by a CA.
      if (trustAdvice(code) !== trustAdvice('')) return [`${trustAdvice(code)} (${host})`];
      return [
        peer === 'upstream'
          ? `add --ca FILE with the root CA of ${host}'s certificate (the load balancer's root: take it from the CPI connectivity test (TLS) download)`
          : `add --ca FILE with the root CA of ${host}'s certificate`,
        ...(proxy ? [`a TLS-inspecting proxy (${proxy}) re-signs certificates: add the corporate CA with --ca`] : []),
      ];
    case 'tls':
      // A port that answers in plain HTTP (or another protocol): no certificate is in question.
      if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG') {
        return [`${host} does not speak TLS on that port (plain HTTP?): check the port and the https:// URL`, ...around];
      }
      // Only the token request presents a client certificate (certificate keys); the upstream call never does.
      return [
        peer === 'token' && certKey
          ? `the TLS handshake with ${host} failed: the server may have refused the client certificate (whole chain, supported root)`
          : `the TLS handshake with ${host} failed: no protocol version or cipher both sides support, or something between (a TLS-inspecting proxy) broke it`,
        ...around,
      ];
    case 'proxy':
      // The message says what to do with HTTPS_PROXY (proxyAdvice); what it cannot tell is left.
      if (code === 'proxy answered 407') return [`with the right credentials, a proxy that still answers 407 refuses this user a CONNECT to ${host}: ask its operators`];
      return [`the proxy ${proxyHost(network.httpsProxy) ?? '(HTTPS_PROXY)'} failed: check HTTPS_PROXY/NO_PROXY and that it allows CONNECT to ${host}`];
    case 'dns':
      return [`${host} does not resolve: check the host in the service key${noProxySet ? '; a network that resolves only through a proxy needs HTTPS_PROXY' : ''}`, ...around];
    case 'timeout': {
      const noConnection = `a firewall may drop the packets${noProxySet ? '; a network that needs a proxy needs HTTPS_PROXY' : ''}`;
      // Connected, and the request went out: the server is slow, not the network closed.
      // (Through a proxy too: its CONNECT was answered, or this would be the proxy's failure.)
      if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return [`${host} accepted the connection and the request but did not answer in time: the server is slow or stuck`];
      if (code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ETIMEDOUT') return [`no connection to ${host}: ${noConnection}`, ...around];
      return [`no answer from ${host} in time: no connection (${noConnection}), or a slow server`, ...around];
    }
    case 'refused':
    case 'reset':
      return [`the connection to ${host} was ${failure === 'refused' ? 'refused' : 'reset'}: check host and port, firewall rules${noProxySet ? ', and whether a proxy (HTTPS_PROXY) is needed' : ''}`, ...around];
    default:
      return around;
  }
}

/**
 * A token request whose connection to the HTTPS proxy failed: the token client's message already names the proxy
 * (`token server <host>: the HTTPS proxy <proxy> refused …`), not the token server it never reached; the hints
 * are the proxy's.
 */
function tokenProxyFailure(err: SidecarError, host: string, { failure, code, proxy }: Required<ClassifiedFailure>): Finding {
  return finding('FAIL', `${err.code}: ${err.message}`, proxyHints(failure, proxy, host, code));
}

/** Fixes for a failed connection to the HTTPS proxy `proxy` (`host:port`) on the way to `host`. */
function proxyHints(failure: NetworkFailure, proxy: string, host: string, code: string): string[] {
  const notContacted = `${host} was not contacted`;
  const noProxy = `check HTTPS_PROXY/NO_PROXY: a host to be reached directly, not through the proxy, belongs in NO_PROXY`;
  switch (failure) {
    case 'refused':
      return [`nothing accepts connections at ${proxy}: check the host and port in HTTPS_PROXY (${notContacted})`, noProxy];
    case 'dns':
      return [`the proxy's host name does not resolve: check it in HTTPS_PROXY (${notContacted})`, noProxy];
    case 'timeout':
      if (code === 'UND_ERR_HEADERS_TIMEOUT') {
        return [
          `the proxy ${proxy} may not reach ${host} (its own firewall or DNS), or be overloaded: ask its operators, or try ${host} from the proxy's network`,
          "or it is slower than the route's connect limit (timeouts.connectMs; the token request's: the smaller of 5 s and --token-timeout): raise it",
          noProxy,
        ];
      }
      return [`no connection to the proxy ${proxy}: check HTTPS_PROXY; a firewall may drop the packets (${notContacted})`, noProxy];
    case 'reset':
      return [`the proxy ${proxy} closed the connection before answering the CONNECT: check the port in HTTPS_PROXY (is it the proxy?), and whether the proxy reaches ${host}`, noProxy];
    case 'tls-trust':
      // A name mismatch, a wrong purpose or an expired certificate is not cured by a CA.
      if (proxyTrustAdvice(code) !== proxyTrustAdvice('')) return [`${proxyTrustAdvice(code)} (${proxy})`, noProxy];
      return [
        `an https:// proxy is verified against Node's CA store and NODE_EXTRA_CA_CERTS (--ca is for the servers behind it): give its CA with NODE_EXTRA_CA_CERTS, or use its http:// address`,
        noProxy,
      ];
    default:
      return [`the proxy ${proxy} failed before ${host} was reached: check HTTPS_PROXY`, noProxy];
  }
}

// ---------------------------------------------------------------------------
// The upstream call

/** What the check saw from the upstream: status, headers and the start of the body (never printed). */
export interface UpstreamAnswer {
  status: number;
  headers: Readonly<Record<string, string | string[] | undefined>>;
  body: string;
}

export interface UpstreamContext {
  /** `https://host/path` as called, for messages. */
  url: string;
  /** The user named the path (`--check-path`); a 404 on the default path is only a warning. */
  pathGiven: boolean;
  /** The upstream URL's own path (no trailing `/`), to which the path checked is appended; `''` for none. */
  basePath?: string;
  csrf: 'auto' | 'off';
  role: string | undefined;
  roleGranted: boolean | undefined;
  /** The scope the token request named, if any: a token narrowed to it may lack a role the instance grants. */
  scopeAsked?: string | undefined;
  /** The API (management) host, not an integration-flow runtime: no sender adapter, the api plan's roles. */
  apiHost?: boolean;
  network: OutboundNetwork;
  timeoutMs: number;
  /** The route's connect limit (TCP and TLS), shorter than `timeoutMs`. */
  connectTimeoutMs: number;
  /** The route's secret, key and token: taken out of a server's text before it is cut (see `printable`). */
  secrets?: ReadonlySet<string>;
}

/**
 * GET with the token and `X-CSRF-Token: Fetch`: a CSRF-protected sender adapter
 * (SAP's default) answers the fetch without running the integration flow.
 */
async function callUpstream(origin: string, path: string, token: string, route: RouteConfig, network: OutboundNetwork): Promise<UpstreamAnswer> {
  const dispatcher = createDispatcher({
    network,
    connectTimeoutMs: route.timeouts.connectMs,
    headersTimeoutMs: route.timeouts.responseMs,
    bodyTimeoutMs: route.timeouts.idleMs,
    connections: 1,
  });
  try {
    const response = await dispatcher.request({
      origin,
      path,
      method: 'GET',
      headers: { authorization: `Bearer ${token}`, [CSRF_HEADER]: CSRF_FETCH, accept: '*/*' },
    });
    // The start of the body explains an error; one that stalls (a streaming flow) must not turn the answer
    // already received into "no answer" after the idle timeout.
    const waitMs = Math.min(route.timeouts.responseMs, route.timeouts.idleMs, MAX_BODY_WAIT_MS);
    return { status: response.statusCode, headers: response.headers, body: await readStart(response.body, MAX_BODY_BYTES, waitMs) };
  } finally {
    await dispatcher.close();
  }
}

/** Up to `limit` bytes of the body, or what came within `waitMs`. */
async function readStart(body: Dispatcher.ResponseData['body'], limit: number, waitMs: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  const timer = setTimeout(() => body.destroy(), waitMs);
  try {
    for await (const chunk of body) {
      chunks.push(chunk as Buffer);
      size += (chunk as Buffer).length;
      if (size >= limit) {
        body.destroy();
        break;
      }
    }
  } catch {
    // Cut short (the wait, or the connection): the status, the headers and what came are the answer.
  } finally {
    clearTimeout(timer);
  }
  return Buffer.concat(chunks).toString('utf8').slice(0, limit);
}

/** How long the start of the upstream's body is waited for once its head has come. */
const MAX_BODY_WAIT_MS = 5_000;

/** What the upstream's answer means, with fixes. */
export function explainUpstreamAnswer(answer: UpstreamAnswer, ctx: UpstreamContext): Finding[] {
  const { status } = answer;
  const seen = `GET ${ctx.url} answered ${status}`;
  const mpl = mplIdOf(answer);
  if (status >= 200 && status < 300) return explainSuccess(answer, ctx, seen, mpl);
  if (status >= 300 && status < 400) {
    const location = headerOf(answer.headers, 'location');
    return [finding('FAIL', `${seen} (redirect${location ? ` to ${safeUrl(location)}` : ''})`, [
      'a redirect (often to a login page) means this is not an integration-flow or API endpoint: use the url of the service key',
    ])];
  }
  switch (status) {
    case 401:
      return [finding('FAIL', `${seen}: the token was not accepted${oauthErrorOf(answer, ctx.secrets)}`, [
        'a token of an api-plan key does not work on the -rt (integration-flow) host, nor the reverse: use the key of the matching instance',
        'the token must come from the subaccount of this tenant: clientid/tokenurl of another subaccount give tokens the runtime rejects',
        'an expired token is rejected too: check the clock of this machine',
      ])];
    case 403:
      return [explainForbidden(answer, ctx, seen)];
    case 404:
      return [explainNotFound(answer, ctx, seen)];
    case 405:
      return [finding('warn', `${seen}: the token was accepted, but the endpoint does not allow GET`, ['pass --check-path with an endpoint that answers GET to check further'])];
    case 429:
      return [finding('FAIL', `${seen}: rate limited`, ['too many requests to the runtime: retry later'])];
    default:
      break;
  }
  if (status >= 500) {
    if (mpl) {
      return [finding('FAIL', `${seen}: the integration flow failed (MPL ID ${mpl})`, [
        `Monitor > Message Processing: open the message with MPL ID ${mpl} for the error`,
        'the check sends a GET without a body: an iFlow that needs a payload may fail on it alone; the token and role were accepted',
      ])];
    }
    if (status === 500) {
      return [finding('FAIL', `${seen} without an MPL ID: the integration flow, the runtime or something in front of it failed`, [
        'Monitor > Message Processing: a failed message there shows the error; if there is none, the request did not reach an iFlow',
        'the check sends a GET without a body: an iFlow that needs a payload may fail on it alone',
      ])];
    }
    return [finding('FAIL', `${seen}: the runtime is unavailable or timed out`, ['retry later; check that the tenant and the iFlow are started (Monitor > Manage Integration Content)'])];
  }
  return [finding('FAIL', `${seen}${oauthErrorOf(answer, ctx.secrets)}`)];
}

function explainSuccess(answer: UpstreamAnswer, ctx: UpstreamContext, seen: string, mpl: string | undefined): Finding[] {
  const login = loginPageOf(answer);
  if (login !== undefined) return [explainLoginPage(ctx, seen, login)];
  const findings = [finding('ok', `${seen}: the token is accepted`)];
  const csrfToken = headerOf(answer.headers, CSRF_HEADER);
  if (csrfToken !== undefined && csrfToken.toLowerCase() !== CSRF_REQUIRED) {
    findings.push(
      ctx.csrf === 'auto'
        ? finding('ok', 'the endpoint is CSRF protected (it answered the token fetch without running the iFlow); the sidecar fetches CSRF tokens (csrf auto)')
        : finding('warn', 'the endpoint is CSRF protected but csrf is off: POST/PUT/PATCH/DELETE will get 403', [
            'set csrf auto (--csrf auto or csrf: auto on the route), or switch off "CSRF Protected" in the sender adapter',
          ]),
    );
  } else if (mpl) {
    findings.push(finding('ok', `the integration flow ran (MPL ID ${mpl})`));
  }
  return findings;
}

/**
 * A 2xx login page: something answered that does not take Bearer tokens (a UI or design-time host, an identity
 * provider, a proxy that wants a login). A failure, not a warning: senders would get the same page as a 2xx and
 * take it for the integration flow's answer.
 */
function explainLoginPage(ctx: UpstreamContext, seen: string, sign: string): Finding {
  const host = hostOf(ctx.url);
  const proxy = goesThroughProxy(ctx.network, host) ? proxyHost(ctx.network.httpsProxy) : undefined;
  return finding('FAIL', `${seen} with an HTML login page (${sign}): the token was not used, no integration flow answered`, [
    "use the url of the service key: integration flows answer on the runtime host (<sub>.it-cpi<nnn>-rt.cfapps.<region>.hana.ondemand.com), not on the Integration Suite's UI (design-time) host",
    proxy
      ? `or the proxy ${proxy} (a TLS-inspecting one) wants a login: exempt ${host} from its authentication, or list it in NO_PROXY if it is reachable directly`
      : `or an identity provider or a proxy in front of ${host} wants an interactive login: the runtime must be reached without it`,
    'senders would get this page as a successful answer',
  ]);
}

/** What marks `answer` as an HTML login page (e.g. `a password field`), else undefined; only HTML is looked at. */
export function loginPageOf(answer: Pick<UpstreamAnswer, 'headers' | 'body'>): string | undefined {
  const type = headerOf(answer.headers, 'content-type');
  if (type === undefined || !HTML_TYPE.test(type)) return undefined;
  return LOGIN_PAGE_SIGNS.find(([pattern]) => pattern.test(answer.body))?.[1];
}

function explainForbidden(answer: UpstreamAnswer, ctx: UpstreamContext, seen: string): Finding {
  if (headerOf(answer.headers, CSRF_HEADER)?.toLowerCase() === CSRF_REQUIRED) {
    // The check's GET is itself a token fetch (`X-CSRF-Token: Fetch`), the one the sidecar would make: refused, the
    // sidecar's would be too (502 CSRF_FETCH_FAILED on every POST), and GETs get this 403 as it is.
    return ctx.csrf === 'auto'
      ? finding('FAIL', `${seen} with X-CSRF-Token: Required to a CSRF token fetch: the endpoint is CSRF protected, but refuses the fetch the sidecar would make`, [
          'something between strips the X-CSRF-Token header (a proxy, a WAF), or the endpoint hands out no tokens on GET',
          // The OData API has no sender adapter: its CSRF protection cannot be switched off.
          ctx.apiHost
            ? 'the sidecar would answer modifying requests with 502 CSRF_FETCH_FAILED: the OData API always wants the token, so what strips the header must be fixed'
            : 'the sidecar would answer modifying requests with 502 CSRF_FETCH_FAILED; switch off "CSRF Protected" in the sender adapter if it cannot be fixed',
        ])
      : finding('FAIL', `${seen} with X-CSRF-Token: Required: the endpoint is CSRF protected but csrf is off`, [
          ctx.apiHost ? 'set csrf auto (--csrf auto or csrf: auto on the route): the OData API always wants the token' : 'set csrf auto (--csrf auto or csrf: auto on the route), or switch off "CSRF Protected" in the sender adapter',
        ]);
  }
  if (ctx.apiHost || ctx.role === undefined) {
    // The API (management) host: no sender adapter, no ESBMessaging.send; its roles are the api plan's.
    const checked = ctx.role === undefined || ctx.roleGranted === undefined ? undefined : ctx.roleGranted ? 'granted' : 'missing';
    return finding('FAIL', `${seen}: the token was accepted but lacks the role the API requires`, [
      "the OData API wants the roles of an instance of plan api (e.g. WorkspacePackagesRead, MonitoringDataRead): a key of an integration-flow instance has none of them",
      checked === undefined
        ? ctx.role === undefined
          ? "add the role to the api instance's roles (changes take up to 1 h), and check for it with --check-role"
          : `the token's scopes cannot be read (an opaque token): add ${ctx.role} to the api instance's roles if it is missing (changes take up to 1 h)`
        : checked === 'granted'
          ? `the token carries ${ctx.role}: this call needs another role, or the grant has not reached the API yet (up to 1 h)`
          : narrowedOut(ctx.role!, ctx.scopeAsked)
            ? scopeLeavesOut(ctx.role!, ctx.scopeAsked!)
            : `add ${ctx.role} to the api instance's roles (changes take up to 1 h; a new service key is not needed)`,
    ]);
  }
  const role = ctx.role;
  const why =
    ctx.roleGranted === true
      ? [
          `the token carries ${role}, so the sender adapter probably requires a custom User Role (Monitor > Manage Security > User Roles): add that role to the service instance and check it with --check-role`,
          'role changes take up to 1 h to reach the runtime (cached)',
        ]
      : ctx.roleGranted === false && narrowedOut(role, ctx.scopeAsked)
        ? [scopeLeavesOut(role, ctx.scopeAsked!)]
        : [
          `the sender adapter's User Role (${role === DEFAULT_CHECK_ROLE ? `default ${role}` : role}) must be among the service instance's roles: add it (cockpit: the instance's parameters, "roles")`,
          'role changes take up to 1 h to reach the runtime (cached); a new service key is not needed',
        ];
  return finding('FAIL', `${seen}: the token was accepted but lacks the role the endpoint requires`, why);
}

function explainNotFound(answer: UpstreamAnswer, ctx: UpstreamContext, seen: string): Finding {
  const routerHost = cfRouterMissingRoute(answer);
  if (routerHost !== undefined) {
    return finding('FAIL', `${seen} from the Cloud Foundry router: no application serves ${routerHost || 'this host'}`, [
      'the host is wrong (a typo, another region or tenant) or the runtime is not provisioned: use the url of the integration-flow service key (<sub>.it-cpi<nnn>-rt.cfapps.<region>.hana.ondemand.com)',
    ]);
  }
  if (!ctx.pathGiven) {
    const base = ctx.basePath ?? '';
    const advice = base === '' ? 'pass --check-path /http/<address of your iFlow>' : `pass --check-path /<address of your iFlow> (it is appended to the upstream's ${base})`;
    return finding('warn', `${seen}: the host accepted the token, but this path is no integration flow`, [`${advice} to check the iFlow and its role`]);
  }
  return finding('FAIL', `${seen}: no integration flow at this path (the runtime answered, not the router)`, [
    "check the iFlow's address in its HTTPS sender adapter (case-insensitive, unique per tenant)",
    'and the servlet: /http/<address> for the HTTPS adapter, /cxf/<address> for SOAP',
    'a deployed endpoint appears 30 s to 3 min after deployment (Monitor > Manage Integration Content shows it)',
  ]);
}

/** A failed upstream call (no HTTP answer), with fixes. */
export function explainUpstreamError(err: unknown, ctx: UpstreamContext): Finding {
  const classified = classifyNetworkError(err);
  const { failure, code } = classified;
  const host = hostOf(ctx.url);
  if (classified.proxy !== undefined) {
    const proxy = classified.proxy;
    const atProxy: Partial<Record<NetworkFailure, string>> = {
      refused: `the HTTPS proxy ${proxy} refused the connection`,
      dns: `the HTTPS proxy ${proxy} does not resolve`,
      timeout:
        code === 'UND_ERR_HEADERS_TIMEOUT'
          ? `the HTTPS proxy ${proxy} took the CONNECT to ${host} but did not answer it within ${ctx.connectTimeoutMs} ms`
          : code === 'UND_ERR_CONNECT_TIMEOUT'
            ? `no connection to the HTTPS proxy ${proxy} within ${ctx.connectTimeoutMs} ms`
            : `no connection to the HTTPS proxy ${proxy}`,
      reset: `the HTTPS proxy ${proxy} closed the connection without answering`,
      'tls-trust': `the certificate of the HTTPS proxy ${proxy} is not trusted`,
      tls: `the TLS handshake with the HTTPS proxy ${proxy} failed`,
    };
    return finding('FAIL', `GET ${ctx.url}: ${atProxy[failure] ?? `the connection to the HTTPS proxy ${proxy} failed`} (${code})`, proxyHints(failure, proxy, host, code));
  }
  // The connect limit (TCP and TLS) is not --upstream-timeout: say which one ran out, and advise for it.
  const connecting = code === 'UND_ERR_CONNECT_TIMEOUT';
  const what: Record<NetworkFailure, string> = {
    'tls-trust': `the certificate of ${host} is not trusted`,
    tls: `the TLS handshake with ${host} failed`,
    timeout: connecting ? `no connection (TCP and TLS) within ${ctx.connectTimeoutMs} ms` : `no answer within ${ctx.timeoutMs} ms`,
    refused: `${host} refused the connection`,
    reset: `${host} reset the connection`,
    dns: `${host} does not resolve`,
    proxy: 'the HTTPS proxy failed',
    aborted: 'the request was aborted',
    descriptors: 'this process is out of file descriptors',
    other: 'the request failed',
  };
  const hints = networkHints(failure, host, ctx.network, 'upstream', code);
  // As serve says it: what HTTPS_PROXY needs (a 407: credentials), before what it cannot tell.
  if (failure === 'proxy') hints.unshift(proxyAdvice(code));
  if (failure === 'timeout' && !connecting) hints.push('a slow iFlow needs a larger --upstream-timeout (timeouts.responseMs on the route)');
  return finding('FAIL', `GET ${ctx.url}: ${what[failure]} (${code})`, hints);
}

/** The host of a CF router "Requested route ('…') does not exist" 404 (`''` when only the header says so), else undefined. */
export function cfRouterMissingRoute(answer: Pick<UpstreamAnswer, 'headers' | 'body'>): string | undefined {
  const match = CF_ROUTE_MISSING.exec(answer.body);
  if (match) return match[1];
  return headerOf(answer.headers, CF_ROUTER_ERROR_HEADER) !== undefined ? '' : undefined;
}

/** The message processing log id from the correlation header or the failure text. */
export function mplIdOf(answer: Pick<UpstreamAnswer, 'headers' | 'body'>): string | undefined {
  const header = headerOf(answer.headers, MPL_HEADER);
  if (header && /^[A-Za-z0-9_-]{8,64}$/.test(header)) return header;
  return MPL_IN_BODY.exec(answer.body)?.[1];
}

// ---------------------------------------------------------------------------
// Output

/** Collects findings for one route and remembers the worst level. */
class Section {
  level: Level = 'ok';

  constructor(private readonly out: (line: string) => void) {}

  add(f: Finding): void {
    if (f.level === 'FAIL' || (f.level === 'warn' && this.level === 'ok')) this.level = f.level;
    printFinding(this.out, f);
  }

  fail(message: string, ...hints: string[]): void {
    this.add(finding('FAIL', message, hints));
  }

  ok(message: string): void {
    this.add(finding('ok', message));
  }
}

function printFinding(out: (line: string) => void, f: Finding): void {
  out(formatLine(f.level, f.message));
  for (const hint of f.hints) out(formatHint(hint));
}

function finding(level: Level, message: string, hints: readonly string[] = []): Finding {
  return { level, message, hints };
}

/**
 * Defence in depth: whatever a message may carry, the secret, the key and the token never reach the output, nor
 * does a configured path that `shownSource` would not show (messages built elsewhere, e.g. a client key pair's
 * `cert, key` source in a notice, may quote it).
 */
function redacting(out: (line: string) => void, secrets: ReadonlySet<string>, hidden: ReadonlySet<string>): (line: string) => void {
  return (line) => {
    let text = redact(line, secrets);
    for (const value of hidden) {
      if (text.includes(value)) text = text.split(value).join(shownSource(value));
    }
    out(text);
  };
}

/** The configured paths (and path-like settings) that do not look like paths: a value pasted in the wrong place. */
function hiddenPaths(config: Readonly<Config>): Set<string> {
  const values = [config.routesSource, config.inbound.basicAuthFile, config.nodeExtraCaFile, ...config.caFiles];
  for (const route of config.routes) {
    const { source, clientCert } = route.credentials;
    if (source.kind === 'path') values.push(source.path);
    else if (source.kind === 'binding-root') values.push(source.root);
    if (clientCert?.kind === 'files') values.push(clientCert.certFile, clientCert.keyFile);
    else if (clientCert?.kind === 'tls-dir') values.push(clientCert.dir);
  }
  return new Set(values.filter((v): v is string => v !== undefined && v.length >= MIN_REDACT_LENGTH && shownSource(v) !== v));
}


/** The inbound basic-auth file, read and parsed as `serve` would (its problems by line number, never content). */
async function describeInbound(config: Readonly<Config>): Promise<Finding | undefined> {
  const file = config.inbound.basicAuthFile;
  if (!file) return undefined;
  try {
    const users = await readBasicAuthFile(file, config.inbound.basicAuthFileSetting);
    return finding('ok', `inbound basic auth: ${users.userCount} user${users.userCount === 1 ? '' : 's'} in ${shownSource(file)}`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return finding(
      'FAIL',
      `inbound basic auth file: ${err.problems.map((p) => `${p.field}: ${p.message}`).join('; ')} (${shownSource(file)})`,
      ['one user:password or user:sha256:<hex> per line; blank lines and # comments are ignored'],
    );
  }
}

/**
 * A proxy listener that `serve` would refuse (config.ts checks it for `serve` only): `check` does not listen, so
 * it runs — the image's own 0.0.0.0 is such a listener until inbound control is chosen — and says so instead.
 */
function describeExposure(config: Readonly<Config>): Finding | undefined {
  const { listen, inbound } = config;
  const [problem] = exposureProblems(listen.host, exposureOf(inbound), 'listen', 'listen', { configFile: config.routesSource !== 'flags' });
  if (!problem) return undefined;
  return finding('warn', `proxy listener: ${problem.message}`, ['serve would refuse to start with these settings; token and check do not listen, so they run without it']);
}

/** Trust anchors and proxy, once for all routes. */
function describeNetwork(config: Readonly<Config>): Finding[] {
  const findings = [describeTrust(config)];
  const { httpsProxy, noProxy } = config.network;
  if (httpsProxy) {
    // A proxy that is no http(s) URL with a host is refused by `config`.
    findings.push(finding('ok', `outbound HTTPS through the proxy ${proxyHost(httpsProxy)} (HTTPS_PROXY)${noProxy ? `, NO_PROXY ${noProxy}` : ''}`));
  }
  return findings;
}

/**
 * What the TLS clients trust: Node's default store, which is its bundled Mozilla list (OpenSSL's store under
 * --use-openssl-ca, as distribution builds of node have it; the OS store too with --use-system-ca) plus
 * NODE_EXTRA_CA_CERTS, and the --ca files on top.
 */
export function describeTrust(config: Pick<Config, 'caFiles' | 'nodeExtraCaFile'>): Finding {
  const extra = config.nodeExtraCaFile;
  const added = [
    ...(extra ? [`NODE_EXTRA_CA_CERTS ${shownSource(extra)}`] : []),
    ...(config.caFiles.length > 0 ? [`--ca ${config.caFiles.map(shownSource).join(', ')}`] : []),
  ];
  const store = "Node's default CA store (its bundled Mozilla list; OpenSSL's under --use-openssl-ca, the OS store's with --use-system-ca)";
  return finding('ok', `trusting ${store}${added.length > 0 ? ` plus ${added.join(' plus ')}` : ' (no NODE_EXTRA_CA_CERTS, no --ca)'}`);
}

// ---------------------------------------------------------------------------
// Small helpers

function normalisePath(path: string): string {
  return path.startsWith('/') ? path : `/${path}`;
}

function headerOf(headers: UpstreamAnswer['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** ` (error: description)` from an OAuth/SAP JSON error body, printable and bounded; `''` otherwise. */
function oauthErrorOf(answer: UpstreamAnswer, secrets: ReadonlySet<string> = new Set()): string {
  try {
    const json = parseJsonBody(answer.body) as Record<string, unknown>;
    const error = typeof json['error'] === 'string' ? printable(json['error'], 60, secrets) : undefined;
    if (!error) return '';
    const description = typeof json['error_description'] === 'string' ? `: ${printable(json['error_description'], 160, secrets)}` : '';
    return ` (${error}${description})`;
  } catch {
    return '';
  }
}

function printable(text: string, max: number, secrets: ReadonlySet<string> = new Set()): string {
  // A server's text may quote the request's credentials (the token, also an opaque one): taken out before the
  // cut, which would leave a piece that the output's redaction no longer recognises.
  return printableAscii(redact(text, secrets), max);
}

function stringClaim(claims: JwtClaims, name: string): string | undefined {
  const value = claims[name];
  return typeof value === 'string' && value ? printable(value, 200) : undefined;
}

function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

/** host:port of the proxy (with the port it is reached on, as the sidecar's messages give it), never its credentials. */
function proxyHost(proxy: string | undefined): string | undefined {
  return proxy ? proxyEndpoint(proxy) : undefined;
}

/** A redirect target without query or fragment (they may carry tokens). */
function safeUrl(location: string): string {
  try {
    const url = new URL(location, 'https://upstream.invalid');
    return url.origin === 'https://upstream.invalid' ? url.pathname : `${url.origin}${url.pathname}`;
  } catch {
    return '(unparsable Location)';
  }
}
