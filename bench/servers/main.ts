/**
 * The benchmark's environment, one child process: an HTTPS upstream and an
 * HTTPS OAuth 2.0 token server, both on 127.0.0.1 with the bench CA.
 *
 * The upstream answers only requests carrying an accepted Bearer token — the
 * static token given to the bare forwarders, or a token this token server
 * issued and that has not expired (checked by equality in a map, so the check
 * costs the same for every contender and nobody can skip the token). Token
 * requests are recorded with their time and client, for the one-request-per-
 * lifetime check.
 *
 * Started by the harness with an IPC channel; the configuration comes as JSON
 * in argv[2]. Exits when the harness disconnects.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import {
  DOWNLOAD_PATH,
  GET_BODY,
  GET_PATH,
  TOKEN_PATH,
  UPLOAD_PATH,
  type ClientSecret,
  type FromServers,
  type ServersConfig,
  type ServersStats,
  type ToServers,
} from './protocol.js';

const config = JSON.parse(process.argv[2] ?? '{}') as ServersConfig;
const tls = { cert: readFileSync(config.certFile, 'utf8'), key: readFileSync(config.keyFile, 'utf8'), ca: readFileSync(config.caFile, 'utf8') };

/** Accepted Bearer values → expiry (epoch ms; Infinity for the static token). */
const tokens = new Map<string, number>([[config.staticToken, Number.POSITIVE_INFINITY]]);
/** Issued Bearer values → the client id they were issued to (an expired one's rejection is that client's). */
const issuedTo = new Map<string, string>();
let clients: ClientSecret[] = config.clients;
const MAX_TOKEN_REQUEST_RECORDS = 100_000;

const stats: ServersStats = {
  upstream: { connections: 0, staticToken: 0, issuedToken: 0, rejectedUnknown: 0, rejectedExpired: 0, rejectedExpiredByClient: {}, uploadBytes: 0, downloadBytes: 0 },
  token: { requests: [] },
};

const GET_RESPONSE = Buffer.from(GET_BODY);
const GET_HEADERS = { 'content-type': 'text/plain; charset=utf-8', 'content-length': String(GET_RESPONSE.length) };
const UNAUTHORISED = JSON.stringify({ error: 'unauthorised', error_description: 'An Authentication object was not found in the SecurityContext' });
const DOWNLOAD_CHUNK = Buffer.alloc(64 * 1024, 0x61);
const MAX_DOWNLOAD = 1024 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Upstream

function upstream(req: IncomingMessage, res: ServerResponse): void {
  const auth = req.headers.authorization;
  const expiry = auth !== undefined && auth.startsWith('Bearer ') ? tokens.get(auth.slice(7)) : undefined;
  if (expiry === undefined || expiry <= Date.now()) {
    if (expiry === undefined) stats.upstream.rejectedUnknown++;
    else {
      stats.upstream.rejectedExpired++;
      const client = issuedTo.get(auth!.slice(7)) ?? '';
      stats.upstream.rejectedExpiredByClient[client] = (stats.upstream.rejectedExpiredByClient[client] ?? 0) + 1;
    }
    req.resume();
    res.writeHead(401, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(UNAUTHORISED)), 'www-authenticate': 'Bearer' });
    res.end(UNAUTHORISED);
    return;
  }
  if (expiry === Number.POSITIVE_INFINITY) stats.upstream.staticToken++;
  else stats.upstream.issuedToken++;

  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  if (path === GET_PATH && (req.method === 'GET' || req.method === 'HEAD')) {
    req.resume();
    res.writeHead(200, GET_HEADERS);
    res.end(req.method === 'HEAD' ? undefined : GET_RESPONSE);
    return;
  }
  if (path === UPLOAD_PATH && req.method === 'POST') {
    let bytes = 0;
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    req.once('end', () => {
      stats.upstream.uploadBytes += bytes;
      const body = `{"bytes":${bytes}}`;
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(body.length) });
      res.end(body);
    });
    req.once('error', () => res.destroy());
    return;
  }
  if (path === DOWNLOAD_PATH && req.method === 'GET') {
    req.resume();
    const bytes = Number(new URLSearchParams(q === -1 ? '' : url.slice(q + 1)).get('bytes') ?? '0');
    if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > MAX_DOWNLOAD) {
      res.writeHead(400, { 'content-type': 'text/plain', 'content-length': '11' });
      res.end('bad length\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes) });
    download(res, bytes);
    return;
  }
  req.resume();
  res.writeHead(404, { 'content-type': 'text/plain', 'content-length': '10' });
  res.end('not found\n');
}

/** Write `remaining` bytes with backpressure. */
function download(res: ServerResponse, remaining: number): void {
  while (remaining > 0) {
    const n = Math.min(remaining, DOWNLOAD_CHUNK.length);
    remaining -= n;
    stats.upstream.downloadBytes += n;
    const more = res.write(n === DOWNLOAD_CHUNK.length ? DOWNLOAD_CHUNK : DOWNLOAD_CHUNK.subarray(0, n));
    if (!more && remaining > 0) {
      res.once('drain', () => download(res, remaining));
      return;
    }
  }
  res.end();
}

// ---------------------------------------------------------------------------
// Token server

function tokenServer(req: IncomingMessage, res: ServerResponse): void {
  const chunks: Buffer[] = [];
  let length = 0;
  req.on('data', (chunk: Buffer) => {
    length += chunk.length;
    if (length <= 16 * 1024) chunks.push(chunk);
  });
  req.once('end', () => {
    const clientId = basicClientId(req.headers.authorization);
    const status = answerToken(req, res, Buffer.concat(chunks).toString('utf8'), length);
    if (req.url?.startsWith(TOKEN_PATH)) {
      stats.token.requests.push({ at: Date.now(), clientId, status });
      if (stats.token.requests.length > MAX_TOKEN_REQUEST_RECORDS) stats.token.requests.shift();
    }
  });
}

function answerToken(req: IncomingMessage, res: ServerResponse, body: string, length: number): number {
  if (req.url !== TOKEN_PATH || req.method !== 'POST') return sendJson(res, 404, { error: 'not_found' });
  if (length > 16 * 1024) return sendJson(res, 413, { error: 'invalid_request', error_description: 'body too large' });
  const client = authenticate(req.headers.authorization);
  if (!client) return sendJson(res, 401, { error: 'unauthorized', error_description: 'Bad credentials' });
  const form = new URLSearchParams(body);
  if (form.get('grant_type') !== 'client_credentials') return sendJson(res, 400, { error: 'unsupported_grant_type' });
  const value = `bt_${randomBytes(32).toString('base64url')}`;
  const now = Date.now();
  tokens.set(value, now + config.tokenLifetimeS * 1000);
  issuedTo.set(value, client.id);
  pruneExpired(now);
  return sendJson(res, 200, { access_token: value, token_type: 'bearer', expires_in: config.tokenLifetimeS, scope: 'bench.send' });
}

function pruneExpired(now: number): void {
  if (tokens.size < 1000) return;
  for (const [value, expiry] of tokens) {
    if (expiry > now) continue;
    tokens.delete(value);
    issuedTo.delete(value);
  }
}

/** client_secret_basic (RFC 6749 §2.3.1: form-encoded id and secret, then base64). */
function authenticate(header: string | undefined): ClientSecret | undefined {
  const decoded = decodeBasic(header);
  if (!decoded) return undefined;
  return clients.find((c) => equal(c.id, decoded.id) && equal(c.secret, decoded.secret));
}

function basicClientId(header: string | undefined): string | undefined {
  return decodeBasic(header)?.id;
}

function decodeBasic(header: string | undefined): { id: string; secret: string } | undefined {
  const match = /^basic\s+([A-Za-z0-9+/]+=*)\s*$/i.exec(header ?? '');
  if (!match?.[1]) return undefined;
  const text = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) return undefined;
  try {
    return { id: decodeURIComponent(text.slice(0, colon).replaceAll('+', ' ')), secret: decodeURIComponent(text.slice(colon + 1).replaceAll('+', ' ')) };
  } catch {
    return undefined;
  }
}

function equal(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function sendJson(res: ServerResponse, status: number, value: unknown): number {
  const text = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)), 'cache-control': 'no-store' });
  res.end(text);
  return status;
}

// ---------------------------------------------------------------------------
// Plumbing

function start(handler: (req: IncomingMessage, res: ServerResponse) => void, onSecureConnection?: () => void): Promise<{ server: Server; port: number; sockets: Set<Socket> }> {
  const server = createServer({ ...tls, keepAliveTimeout: 120_000 }, handler);
  // Long uploads: no request timeout; idle sockets are cut after 2 minutes.
  server.requestTimeout = 0;
  server.timeout = 120_000;
  server.keepAliveTimeout = 120_000;
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('tlsClientError', (_err, socket) => socket.destroy());
  if (onSecureConnection) server.on('secureConnection', onSecureConnection);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as AddressInfo).port, sockets }));
  });
}

function send(message: FromServers): void {
  process.send?.(message);
}

async function main(): Promise<void> {
  const [up, tok] = await Promise.all([start(upstream, () => stats.upstream.connections++), start(tokenServer)]);
  process.on('message', (message: ToServers) => {
    switch (message.type) {
      case 'stats':
        send({ type: 'reply', id: message.id, stats: structuredClone(stats) });
        return;
      case 'set-clients':
        clients = message.clients;
        send({ type: 'reply', id: message.id });
        return;
    }
  });
  const shutdown = (): void => {
    for (const { server, sockets } of [up, tok]) {
      server.close();
      for (const socket of sockets) socket.destroy();
    }
    if (process.connected) process.disconnect();
  };
  process.once('disconnect', shutdown);
  process.once('SIGTERM', shutdown);
  send({ type: 'ready', upstreamPort: up.port, tokenPort: tok.port });
}

main().catch((err: unknown) => {
  send({ type: 'error', message: String(err) });
  process.exitCode = 1;
});
