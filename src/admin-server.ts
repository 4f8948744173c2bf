/**
 * The admin listener: liveness, readiness and Prometheus metrics on their own
 * port, so they are never reachable through the proxy port and never
 * forwarded.
 *
 * Readiness means "a request sent now would get a token": every route has a
 * usable cached token, or can get one now (the token provider's backoff makes
 * this cheap during an outage). It fails as soon as shutdown begins, so that
 * Kubernetes stops sending traffic before the listener closes.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Metrics } from './metrics.js';
import { SidecarError } from './errors.js';
import type { RouteTable } from './routes.js';
import type { TokenProvider } from './token-provider.js';

export interface AdminOptions {
  routes: () => RouteTable;
  tokens: TokenProvider;
  metrics: Metrics;
  draining: () => boolean;
  /** Aborted when shutdown begins: a readiness probe still waiting for a token answers 503 at once. */
  stopping?: AbortSignal;
  /** Routes whose last credential reload failed (old credentials still serve). */
  credentialErrors: () => ReadonlyMap<string, string>;
  /** Bound on the token fetch a readiness probe may start (0: none is waited for). */
  readinessTimeoutMs?: number;
}

interface RouteReadiness {
  route: string;
  ready: boolean;
  /** Error code and message when not ready. */
  error?: string;
  message?: string;
  /** A failed credential reload: the old credentials still serve. */
  credentialWarning?: string;
}

/**
 * Connections the admin listener keeps at once: probes and scrapers need a handful. It shares the process (its
 * file descriptors, its memory) with the proxy port, and in a cluster any pod may reach it. A new connection
 * beyond this makes room by closing the oldest one without a request under way (silent, between keep-alive
 * requests, or half a head): the kubelet opens one per probe, and a client holding connections must not lock
 * the probes out. Only when every one is answering a request is the newcomer closed.
 */
export const ADMIN_MAX_CONNECTIONS = 64;
/** A connection silent this long (no request, or not reading its answer) is closed. */
const ADMIN_IDLE_TIMEOUT_MS = 15_000;
/**
 * Readiness probes that may wait for a token at once; beyond them a probe is answered from what is cached, at
 * once. A probe that waits holds its connection, and connections busy with a request are never closed to make
 * room: without this, clients looping `/readyz` during a token outage could hold every place and lock out the
 * liveness probe, turning an outage into restarts.
 */
export const MAX_WAITING_READINESS = 16;

/**
 * Scrapes that may wait for the next metrics render at once (renders are paced, see `Metrics.render`); beyond
 * them a scrape is answered 503 at once, a few bytes instead of a whole render's text: a scraper or two need
 * one each, and a flood of them must not spend the event loop writing the same text again and again.
 */
export const MAX_WAITING_SCRAPES = 16;

export function createAdminServer(options: AdminOptions): Server {
  const waits = { readiness: 0, scrapes: 0 };
  const server = createServer(
    // Head and request timeouts checked every second (node's default: every 30 s), so a slow head is cut in time.
    { requireHostHeader: false, headersTimeout: 10_000, requestTimeout: 30_000, connectionsCheckingInterval: 1_000 },
    (req, res) => {
      route(req, res, options, waits).catch(() => {
        if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
        else res.destroy();
      });
    },
  );
  server.timeout = ADMIN_IDLE_TIMEOUT_MS;
  // Each connection, oldest first, and how many requests are under way on it (pipelined ones are parsed, and
  // answered in turn, while an earlier one is still being answered).
  const open = new Map<Socket, number>();
  server.on('connection', (socket: Socket) => {
    if (open.size >= ADMIN_MAX_CONNECTIONS) {
      const oldestUnused = [...open].find(([, underWay]) => underWay === 0)?.[0];
      if (oldestUnused === undefined) return void socket.destroy();
      open.delete(oldestUnused);
      oldestUnused.destroy();
    }
    open.set(socket, 0);
    socket.once('close', () => open.delete(socket));
  });
  server.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    const underWay = open.get(socket);
    if (underWay === undefined) return;
    // Re-inserted: a connection in use counts as the newest.
    open.delete(socket);
    open.set(socket, underWay + 1);
    res.once('close', () => {
      const left = open.get(socket);
      if (left !== undefined) open.set(socket, left - 1);
    });
  });
  return server;
}

async function route(req: IncomingMessage, res: ServerResponse, options: AdminOptions, waits: { readiness: number; scrapes: number }): Promise<void> {
  const path = (req.url ?? '/').split('?', 1)[0];
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
  }
  switch (path) {
    case '/healthz':
      return send(res, 200, 'text/plain; charset=utf-8', 'ok\n');
    case '/readyz': {
      const answerAtOnce = waits.readiness >= MAX_WAITING_READINESS;
      waits.readiness++;
      try {
        const { status, body } = await readiness(answerAtOnce ? { ...options, readinessTimeoutMs: 0 } : options);
        return send(res, status, 'application/json', `${JSON.stringify(body)}\n`);
      } finally {
        waits.readiness--;
      }
    }
    case '/metrics': {
      if (waits.scrapes >= MAX_WAITING_SCRAPES) {
        res.setHeader('retry-after', '1');
        return send(res, 503, 'text/plain; charset=utf-8', `too many scrapes at once (${MAX_WAITING_SCRAPES} wait for the next render)\n`);
      }
      waits.scrapes++;
      try {
        const { contentType, body } = await options.metrics.render();
        return send(res, 200, contentType, body);
      } finally {
        waits.scrapes--;
      }
    }
    default:
      return send(res, 404, 'text/plain; charset=utf-8', 'not found: /healthz, /readyz, /metrics\n');
  }
}

const shuttingDown = (): { status: number; body: { status: string; routes: RouteReadiness[] } } => ({ status: 503, body: { status: 'shutting down', routes: [] } });

export async function readiness(options: AdminOptions): Promise<{ status: number; body: { status: string; routes: RouteReadiness[] } }> {
  if (options.draining()) return shuttingDown();
  const warnings = options.credentialErrors();
  const timeoutMs = options.readinessTimeoutMs ?? 5_000;
  const checks = Promise.all(
    options.routes().routes.map(async (r): Promise<RouteReadiness> => {
      const base: RouteReadiness = { route: r.name, ready: true, ...(warnings.has(r.name) && { credentialWarning: warnings.get(r.name) }) };
      if (options.tokens.peek(r.tokenClient)) return base;
      if (timeoutMs <= 0) {
        const message = `no token cached, and ${MAX_WAITING_READINESS} readiness probes already wait for one`;
        return { ...base, ready: false, error: 'TOKEN_TIMEOUT', message };
      }
      try {
        await withTimeout(options.tokens.getToken(r.tokenClient), timeoutMs);
        return base;
      } catch (err) {
        const e = err instanceof SidecarError ? err : undefined;
        return { ...base, ready: false, error: e?.code ?? 'INTERNAL', message: e?.message ?? 'token check failed' };
      }
    }),
  );
  const routes = await untilStopping(checks, options.stopping);
  if (routes === undefined) return shuttingDown();
  const ready = routes.every((r) => r.ready);
  return { status: ready ? 200 : 503, body: { status: ready ? 'ready' : 'not ready', routes } };
}

/**
 * `promise`'s value, or undefined as soon as `stopping` aborts. The listener goes when the probe is answered: a
 * reaction to a promise that settles only at shutdown would keep every probe's state until then.
 */
async function untilStopping<T>(promise: Promise<T>, stopping: AbortSignal | undefined): Promise<T | undefined> {
  if (stopping === undefined) return promise;
  if (stopping.aborted) return undefined;
  let onAbort!: () => void;
  const stopped = new Promise<undefined>((resolve) => {
    onAbort = () => resolve(undefined);
    stopping.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([promise, stopped]);
  } finally {
    stopping.removeEventListener('abort', onAbort);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new SidecarError('TOKEN_TIMEOUT', `no token within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
