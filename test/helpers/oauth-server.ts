/** A real OAuth 2.0 authorization server (oidc-provider 9) over HTTPS with mTLS, issuing client-credentials JWT access tokens, XSUAA-style. */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import {
  createLocalJWKSet,
  exportJWK,
  generateKeyPair,
  jwtVerify,
  type JSONWebKeySet,
  type JWK,
  type JWTPayload,
} from 'jose';
import { LOOPBACK, SocketTracker, closeServer, listen } from './net.js';
import { normalizeDn, type Pki } from './pki.js';

/** XSUAA's token path (service keys carry `tokenurl: https://<sub>.authentication.<region>.hana.ondemand.com/oauth/token`). */
export const TOKEN_PATH = '/oauth/token';
export const JWKS_PATH = '/token_keys';
/** Resource indicator (RFC 8707) assumed when the client sends none; also the default `aud`. */
export const DEFAULT_RESOURCE = 'https://upstream.test';
/** What the resource server offers; granted only when requested with `scope=`. */
export const DEFAULT_SCOPE = 'it-rt-acme!b196.ESBMessaging.send';
export const DEFAULT_ACCESS_TOKEN_TTL_S = 300;

export type OAuthClient =
  | { clientId: string; secret: string; authMethod: 'client_secret_basic' | 'client_secret_post' }
  /** RFC 8705 §2.1.2: PKI mutual TLS, the certificate subject DN must match. */
  | { clientId: string; authMethod: 'tls_client_auth'; subjectDn: string };

export interface OAuthServerOptions {
  clients: readonly OAuthClient[];
  /** Lifetime of access tokens in seconds (default 300); see also `setAccessTokenTTL`. */
  accessTokenTTL?: number;
  /** Resource indicator used when the request has no `resource` (default `DEFAULT_RESOURCE`). */
  resource?: string;
  /** `aud` of access tokens (default: the resource indicator of the request). */
  audience?: string;
  /** Space-separated scopes of the resource server (default `DEFAULT_SCOPE`). */
  scope?: string;
}

export type SeenAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'tls_client_auth' | 'none';

/** What the token endpoint saw in one request; secrets are never recorded. */
export interface TokenRequestInfo {
  /** Inferred from the request: Basic header, `client_secret` in the body, else a client certificate. */
  authMethod: SeenAuthMethod;
  /** The user part of the Basic header after base64 decoding, still form-encoded (RFC 6749 §2.3.1). */
  basicUser: string | undefined;
  /** Form parameters of the body, `client_secret` removed. */
  params: Record<string, string | string[]>;
  /** Query string parameters (SAP docs show `?grant_type=client_credentials`). */
  query: Record<string, string>;
  contentType: string | undefined;
  /** Subject of the client certificate on the connection, newline-separated as Node reports it. */
  certSubject: string | undefined;
  /** Whether the client certificate chains to `pki.ca`. */
  certAuthorized: boolean;
  /** Whether the TLS session was resumed (the certificate then comes from the session). */
  tlsSessionReused: boolean;
  /** Response status, set when the response is complete. */
  status: number | undefined;
  /** OAuth `error` code of a failed response. */
  error: string | undefined;
}

/** Return `true` after answering `res` yourself to keep the request away from oidc-provider. */
export type TokenInterceptor = (req: IncomingMessage, res: ServerResponse) => boolean;

export interface OAuthServer {
  /** `https://127.0.0.1:<port>` */
  readonly issuer: string;
  /** `${issuer}/oauth/token` */
  readonly tokenUrl: string;
  readonly jwksUrl: string;
  readonly port: number;
  /** POSTs that reached the token endpoint (intercepted ones included). */
  readonly tokenRequests: number;
  readonly lastRequest: TokenRequestInfo | undefined;
  /** Every token request, oldest first. */
  readonly requests: readonly TokenRequestInfo[];
  /** Errors oidc-provider reported as `server_error`; should stay empty. */
  readonly serverErrors: readonly unknown[];
  /** Verify an access token: signature, issuer, `typ: at+jwt`, and `audience` when given. */
  verify(token: string, options?: { audience?: string }): Promise<JWTPayload>;
  /** Lifetime of tokens issued from now on. */
  setAccessTokenTTL(seconds: number): void;
  /** Answer token requests yourself (fault injection: 500, 429, slow); `undefined` restores normal service. */
  setInterceptor(interceptor: TokenInterceptor | undefined): void;
  /** Simulate an outage: stop listening and drop every connection. */
  stop(): Promise<void>;
  /** Come back on the same port after `stop()`. */
  start(): Promise<void>;
  close(): Promise<void>;
}

/** The slice of oidc-provider's (untyped) API used here. */
interface ProviderInstance {
  callback(): (req: IncomingMessage, res: ServerResponse) => void;
  use(middleware: (ctx: KoaContext, next: () => Promise<void>) => Promise<void>): unknown;
  on(event: 'server_error', listener: (ctx: unknown, err: unknown) => void): unknown;
}
type ProviderConstructor = new (issuer: string, configuration: Record<string, unknown>) => ProviderInstance;
interface KoaContext {
  req: IncomingMessage;
  socket: TLSSocket;
  status: number;
  body: unknown;
  oidc?: { body?: Record<string, string | string[]> };
}
interface ResourceToken {
  resourceServer?: { accessTokenTTL?: number };
}

/**
 * Start the authorization server on 127.0.0.1, a free port. It asks for client
 * certificates but lets the handshake succeed without one (`socket.authorized`
 * tells oidc-provider whether the certificate chains to `pki.ca`).
 */
export async function startOAuthServer(pki: Pki, options: OAuthServerOptions): Promise<OAuthServer> {
  const Provider = await loadProvider();
  const signingKey = await createSigningKey();
  const publicJwks: JSONWebKeySet = { keys: [publicPart(signingKey)] };
  const jwks = createLocalJWKSet(publicJwks);

  const defaultResource = options.resource ?? DEFAULT_RESOURCE;
  const scope = options.scope ?? DEFAULT_SCOPE;
  let accessTokenTTL = options.accessTokenTTL ?? DEFAULT_ACCESS_TOKEN_TTL_S;
  let interceptor: TokenInterceptor | undefined;
  let tokenRequests = 0;
  const requests: TokenRequestInfo[] = [];
  const inFlight = new WeakMap<IncomingMessage, TokenRequestInfo>();
  const serverErrors: unknown[] = [];

  let handler: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => {
    res.statusCode = 503;
    res.end();
  };
  const server: Server = createServer(
    {
      cert: pki.server.chain,
      key: pki.server.key,
      ca: pki.ca,
      requestCert: true,
      rejectUnauthorized: false,
    },
    (req, res) => handler(req, res),
  );
  const sockets = new SocketTracker(server);
  const port = await listen(server);
  const issuer = `https://${LOOPBACK}:${port}`;

  const store = new Map<string, StoredPayload>();
  const provider = await quietly(
    () =>
      new Provider(issuer, {
        adapter: (model: string) => new MemoryAdapter(store, model),
        jwks: { keys: [signingKey] },
        clients: options.clients.map(toClientMetadata),
        clientDefaults: {
          grant_types: ['client_credentials'],
          response_types: [],
          redirect_uris: [],
          id_token_signed_response_alg: 'ES256',
        },
        clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'tls_client_auth'],
        enabledJWA: { idTokenSigningAlgValues: ['ES256'] },
        routes: { token: TOKEN_PATH, jwks: JWKS_PATH },
        features: {
          devInteractions: { enabled: false },
          clientCredentials: { enabled: true },
          mTLS: {
            enabled: true,
            tlsClientAuth: true,
            getCertificate: (ctx: KoaContext) => ctx.socket.getPeerX509Certificate(),
            // `authorized` is also true when no certificate was sent at all.
            certificateAuthorized: (ctx: KoaContext) =>
              ctx.socket.getPeerX509Certificate() !== undefined && ctx.socket.authorized,
            certificateSubjectMatches: (ctx: KoaContext, property: string, expected: string) => {
              const cert = ctx.socket.getPeerX509Certificate();
              return (
                property === 'tls_client_auth_subject_dn' &&
                cert !== undefined &&
                normalizeDn(cert.subject) === normalizeDn(expected)
              );
            },
          },
          resourceIndicators: {
            enabled: true,
            // Without this, a request without `resource` gets an opaque token.
            defaultResource: () => defaultResource,
            getResourceServerInfo: (_ctx: unknown, resourceIndicator: string) => ({
              scope,
              audience: options.audience ?? resourceIndicator,
              accessTokenFormat: 'jwt',
              accessTokenTTL,
              jwt: { sign: { alg: 'ES256' } },
            }),
          },
        },
        ttl: {
          ClientCredentials: (_ctx: unknown, token: ResourceToken) => token.resourceServer?.accessTokenTTL ?? accessTokenTTL,
        },
      }),
  );

  provider.on('server_error', (_ctx, err) => serverErrors.push(err));
  provider.use(async (ctx, next) => {
    try {
      await next();
    } finally {
      const info = inFlight.get(ctx.req);
      if (info) {
        const { client_secret: secret, ...params } = ctx.oidc?.body ?? {};
        info.params = params;
        if (secret !== undefined && info.authMethod !== 'client_secret_basic') info.authMethod = 'client_secret_post';
        const body = ctx.body as { error?: unknown } | undefined;
        if (typeof body?.error === 'string') info.error = body.error;
      }
    }
  });

  const callback = provider.callback();
  handler = (req, res) => {
    const url = new URL(req.url ?? '/', issuer);
    if (req.method === 'POST' && url.pathname === TOKEN_PATH) {
      tokenRequests++;
      const info = describeRequest(req, url);
      requests.push(info);
      inFlight.set(req, info);
      res.once('finish', () => (info.status = res.statusCode));
      if (interceptor?.(req, res)) return;
    }
    callback(req, res);
  };

  return {
    issuer,
    tokenUrl: `${issuer}${TOKEN_PATH}`,
    jwksUrl: `${issuer}${JWKS_PATH}`,
    port,
    get tokenRequests() {
      return tokenRequests;
    },
    get lastRequest() {
      return requests.at(-1);
    },
    requests,
    serverErrors,
    async verify(token, verifyOptions = {}) {
      const { payload } = await jwtVerify(token, jwks, {
        issuer,
        typ: 'at+jwt',
        ...(verifyOptions.audience === undefined ? {} : { audience: verifyOptions.audience }),
      });
      return payload;
    },
    setAccessTokenTTL(seconds) {
      accessTokenTTL = seconds;
    },
    setInterceptor(next) {
      interceptor = next;
    },
    stop: () => closeServer(server, sockets),
    async start() {
      if (!server.listening) await listen(server, port);
    },
    close: () => closeServer(server, sockets),
  };
}

function toClientMetadata(client: OAuthClient): Record<string, unknown> {
  const common = { client_id: client.clientId, token_endpoint_auth_method: client.authMethod };
  return client.authMethod === 'tls_client_auth'
    ? { ...common, tls_client_auth_subject_dn: client.subjectDn }
    : { ...common, client_secret: client.secret };
}

function describeRequest(req: IncomingMessage, url: URL): TokenRequestInfo {
  const socket = req.socket as TLSSocket;
  const cert = socket.getPeerX509Certificate();
  const authorization = req.headers.authorization;
  const basicUser = basicUserOf(authorization);
  return {
    authMethod: basicUser !== undefined ? 'client_secret_basic' : cert ? 'tls_client_auth' : 'none',
    basicUser,
    params: {},
    query: Object.fromEntries(url.searchParams),
    contentType: req.headers['content-type'],
    certSubject: cert?.subject,
    certAuthorized: cert !== undefined && socket.authorized,
    tlsSessionReused: socket.isSessionReused(),
    status: undefined,
    error: undefined,
  };
}

function basicUserOf(authorization: string | undefined): string | undefined {
  const match = /^basic\s+(\S+)$/i.exec(authorization ?? '');
  if (!match?.[1]) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon < 0 ? decoded : decoded.slice(0, colon);
}

async function createSigningKey(): Promise<JWK> {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: 'test-signing-key', alg: 'ES256', use: 'sig' };
}

function publicPart(jwk: JWK): JWK {
  const { d: _d, ...pub } = jwk;
  return pub;
}

/**
 * oidc-provider prints development NOTICE/WARNING lines on import (on Node 20:
 * "Unsupported runtime. Use Node.js v22.x LTS"; v9 targets Node 22+) and on
 * construction. Our configuration avoids most of them; drop the rest so test
 * output stays readable. Only lines starting with `oidc-provider ` are dropped.
 */
async function quietly<T>(fn: () => T | Promise<T>): Promise<T> {
  const { warn, info } = console;
  const isNoise = (args: unknown[]): boolean => typeof args[0] === 'string' && args[0].startsWith('oidc-provider ');
  console.warn = (...args: unknown[]) => void (isNoise(args) || warn(...args));
  console.info = (...args: unknown[]) => void (isNoise(args) || info(...args));
  try {
    return await fn();
  } finally {
    console.warn = warn;
    console.info = info;
  }
}

let providerModule: Promise<ProviderConstructor> | undefined;

/** oidc-provider ships no type declarations: import it untyped (non-literal specifier), quietly, once. */
function loadProvider(): Promise<ProviderConstructor> {
  const specifier: string = 'oidc-provider';
  providerModule ??= quietly(async () => ((await import(specifier)) as { default: ProviderConstructor }).default);
  return providerModule;
}

interface StoredPayload {
  payload: Record<string, unknown>;
  expiresAt: number | undefined;
}

/** A minimal in-memory adapter, one store per server (oidc-provider's own warns on use). */
class MemoryAdapter {
  readonly #store: Map<string, StoredPayload>;
  readonly #model: string;

  constructor(store: Map<string, StoredPayload>, model: string) {
    this.#store = store;
    this.#model = model;
  }

  #key(id: string): string {
    return `${this.#model}:${id}`;
  }

  #entries(): Array<[string, StoredPayload]> {
    return [...this.#store].filter(([key]) => key.startsWith(`${this.#model}:`));
  }

  async upsert(id: string, payload: Record<string, unknown>, expiresIn?: number): Promise<void> {
    this.#store.set(this.#key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
  }

  async find(id: string): Promise<Record<string, unknown> | undefined> {
    const entry = this.#store.get(this.#key(id));
    if (entry?.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      this.#store.delete(this.#key(id));
      return undefined;
    }
    return entry?.payload;
  }

  async findByUid(uid: string): Promise<Record<string, unknown> | undefined> {
    return this.#entries().find(([, entry]) => entry.payload.uid === uid)?.[1].payload;
  }

  async findByUserCode(userCode: string): Promise<Record<string, unknown> | undefined> {
    return this.#entries().find(([, entry]) => entry.payload.userCode === userCode)?.[1].payload;
  }

  async consume(id: string): Promise<void> {
    const entry = this.#store.get(this.#key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id: string): Promise<void> {
    this.#store.delete(this.#key(id));
  }

  async revokeByGrantId(grantId: string): Promise<void> {
    for (const [key, entry] of this.#store) {
      if (entry.payload.grantId === grantId) this.#store.delete(key);
    }
  }
}
