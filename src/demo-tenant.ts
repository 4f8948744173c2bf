/** A built-in stand-in for an SAP BTP subaccount (XSUAA token server + Cloud Integration runtime with two demo flows) so that `oauth-sidecar demo` can be tried without an SAP account. */
import {
  createHash,
  generateKeyPairSync,
  randomBytes,
  randomUUID,
  sign,
  timingSafeEqual,
  verify,
  type KeyObject,
} from 'node:crypto';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import type { TLSSocket } from 'node:tls';
import { createDemoPki, type DemoPki } from './demo-pki.js';

export interface DemoTenantOptions {
  /** `expires_in` of issued tokens in seconds (integer ≥ 0; 0 issues already-expired tokens). Default 3600, the integration-flow plan's default. */
  tokenLifetimeS?: number;
}

export interface DemoTenant {
  /** `https://127.0.0.1:<port>/oauth/token` */
  readonly tokenUrl: string;
  /** Origin of the demo runtime, `https://127.0.0.1:<port>`; flows live under `/http/`. */
  readonly url: string;
  /** Temp directory holding the service keys and the CA (mode 0700). */
  readonly dir: string;
  /** ClientId/Secret service key (`{"oauth":{clientid,clientsecret,tokenurl,url,createdate}}`). */
  readonly serviceKeyPath: string;
  /** Certificate service key (`{"oauth":{clientid,certificate,key,certificatedetails,tokenurl,url,createdate}}`). */
  readonly certificateKeyPath: string;
  /** The demo root CA PEM, which must be trusted (`--ca`) to reach both servers. */
  readonly caPath: string;
  readonly clientId: string;
  /** Requests that reached `/oauth/token` so far, successful or not. */
  readonly tokenRequests: number;
  /** Stop both servers (destroying open connections) and remove `dir`. Idempotent. */
  close(): Promise<void>;
}

/** SAP-like identifiers (formats from real it-rt integration-flow keys; values fake). */
export const DEMO_CLIENT_ID = 'sb-demo-0000!b1|it-rt-demo!b1';
/** Contains `$` and `=` like real XSUAA secrets, so client_secret_basic must form-encode it. */
const DEMO_CLIENT_SECRET = '0000-demo$S3cr3t_v4lue=';
export const DEMO_XSAPPNAME = 'it-rt-demo!b1';
export const DEMO_ROLE = 'ESBMessaging.send';
export const DEMO_SCOPE = `${DEMO_XSAPPNAME}.${DEMO_ROLE}`;
/** XSUAA adds it to client-credentials tokens of service-broker clients; request `scope=uaa.resource` alone for a token without the role (→ 403). */
export const UAA_RESOURCE_SCOPE = 'uaa.resource';
/** Everything the demo client may get; granted in full unless the request narrows it with `scope`. */
const CLIENT_SCOPES: readonly string[] = [DEMO_SCOPE, UAA_RESOURCE_SCOPE];

export const TOKEN_PATH = '/oauth/token';
export const TIMESTAMP_PATH = '/http/GetTimestamp';
export const ECHO_PATH = '/http/echo';
export const SERVICE_KEY_FILE = 'service-key.json';
export const CERTIFICATE_KEY_FILE = 'service-key-certificate.json';
export const CA_FILE = 'ca.pem';
/** Largest body the echo flow returns as text, and the most any demo handler holds in memory. */
export const MAX_BUFFERED_BODY_BYTES = 64 * 1024;

const DEFAULT_TOKEN_LIFETIME_S = 3600;
const LOOPBACK = '127.0.0.1';
const TEMP_PREFIX = 'oauth-sidecar-demo-';
const DIR_MODE = 0o700;
const FILE_MODE = 0o600;
const JWT_KID = 'demo-jwt-key';
const JWT_ALG = 'ES256';
const ZONE_ID = 'demo';
const GRANT_TYPE = 'client_credentials';
const FORM_TYPE = 'application/x-www-form-urlencoded';
const JSON_TYPE = 'application/json;charset=UTF-8';
const TEXT_TYPE = 'text/plain;charset=UTF-8';
const HTML_TYPE = 'text/html;charset=utf-8';
const SESSION_COOKIE = 'JSESSIONID';
const AFFINITY_COOKIE = '__VCAP_ID__';
const CSRF_HEADER = 'x-csrf-token';
const CSRF_FETCH = 'fetch';
const CSRF_REQUIRED = 'Required';
const MPL_HEADER = 'sap_messageprocessinglogid';
const REDACTED_BEARER = 'Bearer <redacted>';
/** Tomcat's default session timeout; sessions are also capped in number so the map cannot grow without bound. */
const SESSION_TTL_MS = 30 * 60_000;
const MAX_SESSIONS = 1000;

/** UAA's answers (docs/sap.md §3). */
const BAD_CREDENTIALS = { error: 'unauthorized', error_description: 'Bad credentials' } as const;
const MISSING_GRANT_TYPE = { error: 'invalid_request', error_description: 'Missing grant type' } as const;
/** SAP's 401 for a missing or unusable token (docs/sap.md §5). */
const UNAUTHORISED = {
  error: 'unauthorised',
  error_description: 'An Authentication object was not found in the SecurityContext',
} as const;
const FORBIDDEN_HTML =
  '<!doctype html><html lang="en"><head><title>HTTP Status 403 – Forbidden</title></head>' +
  '<body><h1>HTTP Status 403 – Forbidden</h1></body></html>';

/** Starts the token server and the runtime on 127.0.0.1 (OS-chosen ports) and writes the service keys. */
export async function startDemoTenant(options: DemoTenantOptions = {}): Promise<DemoTenant> {
  const tokenLifetimeS = options.tokenLifetimeS ?? DEFAULT_TOKEN_LIFETIME_S;
  if (!Number.isSafeInteger(tokenLifetimeS) || tokenLifetimeS < 0) {
    throw new RangeError(`tokenLifetimeS must be an integer ≥ 0, got ${tokenLifetimeS}`);
  }
  const pki = await createDemoPki();
  const signing = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  let tokenRequests = 0;
  let tokenUrl = '';

  // Server side of mTLS, like XSUAA: a client certificate is requested but optional (secret clients send
  // none); the handler admits a certificate only when `socket.authorized` says it chains to the demo CA.
  // This is not client-side verification being switched off: the sidecar always verifies servers.
  const tokenServer = new TrackedServer(
    { ...tlsOptions(pki), requestCert: true, rejectUnauthorized: false },
    (req, res) => {
      if (pathOf(req) === TOKEN_PATH) tokenRequests += 1;
      handleTokenRequest(req, res, { pki, privateKey: signing.privateKey, tokenUrl, tokenLifetimeS }).catch((err: unknown) =>
        failRequest(res, err),
      );
    },
  );
  const sessions = new CsrfSessions(randomBytes(14).toString('hex'));
  const runtime = new TrackedServer(tlsOptions(pki), (req, res) => {
    handleRuntimeRequest(req, res, { publicKey: signing.publicKey, issuer: tokenUrl, sessions }).catch((err: unknown) =>
      failRequest(res, err),
    );
  });

  let dir: string | undefined;
  try {
    const [tokenPort, runtimePort] = await Promise.all([tokenServer.listen(), runtime.listen()]);
    tokenUrl = `https://${LOOPBACK}:${tokenPort}${TOKEN_PATH}`;
    const url = `https://${LOOPBACK}:${runtimePort}`;
    dir = await mkdtemp(join(tmpdir(), TEMP_PREFIX));
    await chmod(dir, DIR_MODE);
    const paths = await writeServiceKeys(dir, pki, tokenUrl, url);
    const tempDir = dir;
    let closing: Promise<void> | undefined;
    return {
      tokenUrl,
      url,
      dir: tempDir,
      ...paths,
      clientId: DEMO_CLIENT_ID,
      get tokenRequests() {
        return tokenRequests;
      },
      close() {
        closing ??= Promise.all([tokenServer.close(), runtime.close()]).then(() => rm(tempDir, { recursive: true, force: true }));
        return closing;
      },
    };
  } catch (err) {
    await Promise.all([tokenServer.close(), runtime.close()]);
    if (dir) await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function tlsOptions(pki: DemoPki): { cert: string; key: string; ca: string } {
  return { cert: pki.server.cert, key: pki.server.key, ca: pki.ca };
}

async function writeServiceKeys(
  dir: string,
  pki: DemoPki,
  tokenurl: string,
  url: string,
): Promise<Pick<DemoTenant, 'serviceKeyPath' | 'certificateKeyPath' | 'caPath'>> {
  const createdate = new Date().toISOString();
  const serviceKeyPath = join(dir, SERVICE_KEY_FILE);
  const certificateKeyPath = join(dir, CERTIFICATE_KEY_FILE);
  const caPath = join(dir, CA_FILE);
  const secretKey = { oauth: { clientid: DEMO_CLIENT_ID, clientsecret: DEMO_CLIENT_SECRET, url, createdate, tokenurl } };
  const certificateKey = {
    oauth: {
      clientid: DEMO_CLIENT_ID,
      certificate: pki.client.chain,
      key: pki.client.key,
      certificatedetails: pki.client.details,
      url,
      createdate,
      tokenurl,
    },
  };
  await Promise.all([
    writePrivate(serviceKeyPath, `${JSON.stringify(secretKey, null, 2)}\n`),
    writePrivate(certificateKeyPath, `${JSON.stringify(certificateKey, null, 2)}\n`),
    writePrivate(caPath, pki.ca),
  ]);
  return { serviceKeyPath, certificateKeyPath, caPath };
}

function writePrivate(path: string, content: string): Promise<void> {
  return writeFile(path, content, { mode: FILE_MODE, flag: 'wx' });
}

// ---------------------------------------------------------------------------
// Token server (XSUAA)

interface TokenContext {
  pki: DemoPki;
  privateKey: KeyObject;
  tokenUrl: string;
  tokenLifetimeS: number;
}

async function handleTokenRequest(req: IncomingMessage, res: ServerResponse, ctx: TokenContext): Promise<void> {
  if (pathOf(req) !== TOKEN_PATH) {
    req.resume();
    return sendJson(res, 404, { error: 'not_found', error_description: 'Not Found' });
  }
  if (req.method !== 'POST') {
    req.resume();
    return sendJson(res, 405, { error: 'method_not_allowed', error_description: `Request method '${req.method}' not supported` }, { allow: 'POST' });
  }
  const body = await readLimited(req);
  if (body === undefined) return sendJson(res, 413, { error: 'invalid_request', error_description: 'Request body too large' });
  const form = isForm(req.headers['content-type']) ? new URLSearchParams(body.toString('utf8')) : new URLSearchParams();
  // Like UAA: client authentication first (a Spring Security filter), then the grant.
  if (!authenticateClient(req, form, ctx.pki)) return sendJson(res, 401, BAD_CREDENTIALS);
  const grantType = form.get('grant_type');
  if (!grantType) return sendJson(res, 400, MISSING_GRANT_TYPE);
  if (grantType !== GRANT_TYPE) {
    return sendJson(res, 400, { error: 'unsupported_grant_type', error_description: `Unsupported grant type: ${grantType}` });
  }
  const scope = grantedScopes(form.get('scope'));
  if (!Array.isArray(scope)) return sendJson(res, 400, { error: 'invalid_scope', error_description: `Invalid scope: ${scope.invalid}` });
  const now = Math.floor(Date.now() / 1000);
  const jti = randomUUID().replaceAll('-', '');
  const claims = {
    jti,
    ext_attr: { enhancer: 'XSUAA', subaccountid: ZONE_ID, zdn: ZONE_ID },
    sub: DEMO_CLIENT_ID,
    authorities: scope,
    scope,
    client_id: DEMO_CLIENT_ID,
    cid: DEMO_CLIENT_ID,
    azp: DEMO_CLIENT_ID,
    grant_type: GRANT_TYPE,
    iat: now,
    exp: now + ctx.tokenLifetimeS,
    iss: ctx.tokenUrl,
    zid: ZONE_ID,
    aud: [DEMO_XSAPPNAME, DEMO_CLIENT_ID],
  };
  sendJson(
    res,
    200,
    { access_token: signJwt(claims, ctx.privateKey), token_type: 'bearer', expires_in: ctx.tokenLifetimeS, scope: scope.join(' '), jti },
    { 'cache-control': 'no-store', pragma: 'no-cache' },
  );
}

/** All client scopes, or the requested subset (RFC 6749 §3.3); an unknown one is an error, as in UAA. */
function grantedScopes(requested: string | null): string[] | { invalid: string } {
  if (requested === null || requested.trim() === '') return [...CLIENT_SCOPES];
  const scopes = [...new Set(requested.split(' ').filter(Boolean))];
  const invalid = scopes.filter((s) => !CLIENT_SCOPES.includes(s));
  return invalid.length > 0 ? { invalid: invalid.join(' ') } : scopes;
}

/** client_secret_basic, client_secret_post, or mTLS (RFC 8705 §2.2: PKI certificate + `client_id`, no secret). */
function authenticateClient(req: IncomingMessage, form: URLSearchParams, pki: DemoPki): boolean {
  const authorization = req.headers.authorization;
  if (authorization !== undefined) {
    const basic = parseBasic(authorization);
    return basic !== undefined && secretMatches(basic.id, basic.secret);
  }
  const clientId = form.get('client_id');
  const clientSecret = form.get('client_secret');
  if (clientId === null) return false;
  if (clientSecret !== null) return secretMatches(clientId, clientSecret);
  return clientId === DEMO_CLIENT_ID && presentsDemoClientCertificate(req, pki);
}

/** RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined with `:` and base64 encoded. */
function parseBasic(header: string): { id: string; secret: string } | undefined {
  const match = /^basic\s+([A-Za-z0-9+/]+=*)\s*$/i.exec(header);
  if (!match?.[1]) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  const id = formDecode(decoded.slice(0, colon));
  const secret = formDecode(decoded.slice(colon + 1));
  return id === undefined || secret === undefined ? undefined : { id, secret };
}

function formDecode(value: string): string | undefined {
  try {
    return decodeURIComponent(value.replaceAll('+', ' '));
  } catch {
    return undefined;
  }
}

function secretMatches(clientId: string, secret: string): boolean {
  // Evaluate both comparisons so the timing does not tell which one failed.
  const idOk = constantTimeEqual(clientId, DEMO_CLIENT_ID);
  const secretOk = constantTimeEqual(secret, DEMO_CLIENT_SECRET);
  return idOk && secretOk;
}

function constantTimeEqual(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}

/** The TLS handshake requested a certificate; it must chain to the demo CA and be the one issued to the demo client. */
function presentsDemoClientCertificate(req: IncomingMessage, pki: DemoPki): boolean {
  const socket = req.socket as TLSSocket;
  if (!socket.authorized) return false;
  const peer = socket.getPeerCertificate();
  return typeof peer.fingerprint256 === 'string' && peer.fingerprint256 === pki.client.fingerprint256;
}

function signJwt(claims: object, privateKey: KeyObject): string {
  const header = base64urlJson({ alg: JWT_ALG, kid: JWT_KID, typ: 'JWT' });
  const payload = base64urlJson(claims);
  const signature = sign('sha256', Buffer.from(`${header}.${payload}`), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  return `${header}.${payload}.${signature.toString('base64url')}`;
}

function base64urlJson(value: object): string {
  return Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');
}

// ---------------------------------------------------------------------------
// Runtime (Cloud Integration HTTPS sender adapter + two flows)

interface RuntimeContext {
  publicKey: KeyObject;
  issuer: string;
  sessions: CsrfSessions;
}

type Flow = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

const FLOWS: ReadonlyMap<string, Flow> = new Map([
  [TIMESTAMP_PATH, getTimestamp],
  [ECHO_PATH, echo],
]);

async function handleRuntimeRequest(req: IncomingMessage, res: ServerResponse, ctx: RuntimeContext): Promise<void> {
  const method = req.method ?? 'GET';
  // The runtime authenticates before it looks for a flow.
  const access = checkBearer(req.headers.authorization, ctx);
  if (access === 'unauthenticated') {
    req.resume();
    return sendJson(res, 401, UNAUTHORISED, { 'www-authenticate': 'Bearer' });
  }
  if (access === 'forbidden') {
    req.resume();
    return send(res, 403, HTML_TYPE, FORBIDDEN_HTML);
  }
  const flow = FLOWS.get(pathOf(req));
  if (!flow) {
    req.resume();
    return send(res, 404, TEXT_TYPE, 'Not Found');
  }
  const csrfHeader = singleHeader(req.headers[CSRF_HEADER]);
  if ((method === 'GET' || method === 'HEAD') && csrfHeader?.toLowerCase() === CSRF_FETCH) {
    // The adapter answers the fetch itself and does not run the flow (docs/sap.md §4).
    req.resume();
    const session = ctx.sessions.fetch(sessionIds(req));
    return send(res, 200, TEXT_TYPE, '', { [CSRF_HEADER]: session.token, 'set-cookie': ctx.sessions.cookies(session.id) });
  }
  if (isModifying(method) && !ctx.sessions.valid(sessionIds(req), csrfHeader)) {
    req.resume();
    return send(res, 403, HTML_TYPE, FORBIDDEN_HTML, { [CSRF_HEADER]: CSRF_REQUIRED });
  }
  await flow(req, res);
}

type Access = 'granted' | 'forbidden' | 'unauthenticated';

/** Verifies an ES256 JWT from the demo token server: signature, issuer, expiry, then the role. */
function checkBearer(authorization: string | undefined, ctx: RuntimeContext): Access {
  const match = /^bearer\s+([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\s*$/i.exec(authorization ?? '');
  if (!match) return 'unauthenticated';
  const [, header = '', payload = '', signature = ''] = match;
  const jose = parseJsonObject(header);
  if (jose?.['alg'] !== JWT_ALG) return 'unauthenticated';
  const signatureOk = verify(
    'sha256',
    Buffer.from(`${header}.${payload}`),
    { key: ctx.publicKey, dsaEncoding: 'ieee-p1363' },
    Buffer.from(signature, 'base64url'),
  );
  if (!signatureOk) return 'unauthenticated';
  const claims = parseJsonObject(payload);
  const exp = claims?.['exp'];
  if (!claims || claims['iss'] !== ctx.issuer || typeof exp !== 'number' || exp <= Date.now() / 1000) return 'unauthenticated';
  const scope = claims['scope'];
  const hasRole = Array.isArray(scope) && scope.some((s) => typeof s === 'string' && s.endsWith(`.${DEMO_ROLE}`));
  return hasRole ? 'granted' : 'forbidden';
}

function parseJsonObject(base64url: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(base64url, 'base64url').toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** RFC 9110 §9.2.1: everything but the safe methods needs a CSRF token. */
function isModifying(method: string): boolean {
  return method !== 'GET' && method !== 'HEAD' && method !== 'OPTIONS';
}

/** The SAP tutorial's flow: `Current time (UTC): yyyy-MM-dd HH:mm:ss`. */
async function getTimestamp(req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD' && req.method !== 'POST') {
    req.resume();
    return send(res, 405, TEXT_TYPE, 'Method Not Allowed', { allow: 'GET, HEAD, POST' });
  }
  // The flow ignores the body, but reads it to the end like the adapter does.
  req.resume();
  await finished(req);
  const now = new Date().toISOString();
  send(res, 200, TEXT_TYPE, `Current time (UTC): ${now.slice(0, 10)} ${now.slice(11, 19)}`, { [MPL_HEADER]: messageProcessingLogId() });
}

export interface EchoResponse {
  method: string;
  /** Path and query as received. */
  path: string;
  /** Request headers (lower-case names); `authorization` is replaced by `Bearer <redacted>`, `x-csrf-token` and `cookie` by `<redacted>`. */
  headers: Record<string, string | string[]>;
  bodyLength: number;
  /** Hex SHA-256 of the body. */
  bodySha256: string;
  /** The body as text when shorter than 64 KiB and valid UTF-8, else null. */
  body: string | null;
  /** Why `body` is null, when there was a body. */
  bodyOmitted?: string;
}

/** Answers with what arrived; the body is hashed while streaming and at most 64 KiB of it is held. */
async function echo(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const hash = createHash('sha256');
  let length = 0;
  let kept: Buffer[] | undefined = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    hash.update(chunk);
    length += chunk.length;
    if (kept && length < MAX_BUFFERED_BODY_BYTES) kept.push(chunk);
    else kept = undefined;
  }
  let body: string | null = null;
  let bodyOmitted: string | undefined;
  if (!kept) bodyOmitted = `larger than ${MAX_BUFFERED_BODY_BYTES - 1} bytes`;
  else {
    try {
      body = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(Buffer.concat(kept));
    } catch {
      bodyOmitted = 'not valid UTF-8';
    }
  }
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined) continue;
    // The session's CSRF token and cookies are the sidecar's, shared by every sender: the demo shows that they
    // came, not what they are (the sidecar keeps them out of answer headers; a body it does not search).
    headers[name] = name === 'authorization' ? REDACTED_BEARER : name === 'x-csrf-token' || name === 'cookie' ? '<redacted>' : value;
  }
  const answer: EchoResponse = {
    method: req.method ?? '',
    path: req.url ?? '',
    headers,
    bodyLength: length,
    bodySha256: hash.digest('hex'),
    body,
    ...(bodyOmitted ? { bodyOmitted } : {}),
  };
  sendJson(res, 200, answer, { [MPL_HEADER]: messageProcessingLogId() });
}

/** MPL ids look like `AGd0Zm…`: 28 base64url characters. */
function messageProcessingLogId(): string {
  return randomBytes(21).toString('base64url');
}

/** CSRF tokens bound to `JSESSIONID` sessions, plus the load balancer's affinity cookie. */
class CsrfSessions {
  readonly #sessions = new Map<string, { token: string; expires: number }>();

  constructor(readonly instanceId: string) {}

  /** The session named by a cookie, or a new one. */
  fetch(ids: readonly string[]): { id: string; token: string } {
    for (const id of ids) {
      const session = this.#live(id);
      if (session) return { id, token: session.token };
    }
    const id = randomBytes(16).toString('hex').toUpperCase();
    const token = randomBytes(18).toString('base64url');
    this.#sweep();
    this.#sessions.set(id, { token, expires: Date.now() + SESSION_TTL_MS });
    return { id, token };
  }

  valid(ids: readonly string[], token: string | undefined): boolean {
    if (!token) return false;
    return ids.some((id) => {
      const session = this.#live(id);
      return session !== undefined && constantTimeEqual(session.token, token);
    });
  }

  cookies(id: string): string[] {
    return [`${SESSION_COOKIE}=${id}; Path=/; Secure; HttpOnly`, `${AFFINITY_COOKIE}=${this.instanceId}; Path=/; Secure; HttpOnly`];
  }

  #live(id: string): { token: string; expires: number } | undefined {
    const session = this.#sessions.get(id);
    if (session && session.expires <= Date.now()) this.#sessions.delete(id);
    return session && session.expires > Date.now() ? session : undefined;
  }

  /** Drop expired sessions, then the oldest ones beyond the cap (Map keeps insertion order). */
  #sweep(): void {
    const now = Date.now();
    for (const [id, session] of this.#sessions) if (session.expires <= now) this.#sessions.delete(id);
    for (const id of this.#sessions.keys()) {
      if (this.#sessions.size < MAX_SESSIONS) break;
      this.#sessions.delete(id);
    }
  }
}

/** Every `JSESSIONID` value in the `cookie` header (a client may send its own next to ours). */
function sessionIds(req: IncomingMessage): string[] {
  const ids: string[] = [];
  for (const pair of (req.headers.cookie ?? '').split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === SESSION_COOKIE) ids.push(pair.slice(eq + 1).trim());
  }
  return ids;
}

// ---------------------------------------------------------------------------
// Plumbing

/** An HTTPS server on 127.0.0.1 that remembers its sockets so that close() can end them. */
class TrackedServer {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #closed: Promise<void> | undefined;

  constructor(options: Parameters<typeof createServer>[0], handler: (req: IncomingMessage, res: ServerResponse) => void) {
    this.#server = createServer(options, handler);
    const track = (socket: Socket): void => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    };
    // The raw TCP sockets: destroying one also ends the TLS socket (and any HTTP exchange) on top of it.
    this.#server.on('connection', track);
    // Failed handshakes are the client's problem; the server only drops the socket.
    this.#server.on('tlsClientError', (_err, socket) => socket.destroy());
  }

  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(0, LOOPBACK, () => {
        this.#server.off('error', reject);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  close(): Promise<void> {
    this.#closed ??= new Promise<void>((resolve) => {
      if (!this.#server.listening) return resolve();
      this.#server.close(() => resolve());
      for (const socket of this.#sockets) socket.destroy();
    });
    return this.#closed;
  }
}

function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const query = url.indexOf('?');
  return query < 0 ? url : url.slice(0, query);
}

function singleHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function isForm(contentType: string | undefined): boolean {
  return contentType?.split(';', 1)[0]?.trim().toLowerCase() === FORM_TYPE;
}

/** The whole body, or undefined when it exceeds MAX_BUFFERED_BODY_BYTES (the rest is read and dropped). */
async function readLimited(req: IncomingMessage): Promise<Buffer | undefined> {
  let chunks: Buffer[] | undefined = [];
  let length = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (chunks && length <= MAX_BUFFERED_BODY_BYTES) chunks.push(chunk);
    else chunks = undefined;
  }
  return chunks && Buffer.concat(chunks);
}

function sendJson(res: ServerResponse, status: number, body: object, headers: OutgoingHttpHeaders = {}): void {
  send(res, status, JSON_TYPE, JSON.stringify(body), headers);
}

function send(res: ServerResponse, status: number, contentType: string, body: string, headers: OutgoingHttpHeaders = {}): void {
  const bytes = Buffer.from(body, 'utf8');
  res.writeHead(status, { ...headers, 'content-type': contentType, 'content-length': bytes.length });
  res.end(bytes);
}

/** A handler threw (typically the client went away mid-body): answer 500 if still possible, else drop the connection. */
function failRequest(res: ServerResponse, err: unknown): void {
  if (!res.headersSent && !res.destroyed) {
    send(res, 500, TEXT_TYPE, 'Internal Server Error', { connection: 'close' });
  } else {
    res.destroy(err instanceof Error ? err : undefined);
  }
}
