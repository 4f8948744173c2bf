/** An HTTPS upstream modelling an SAP Cloud Integration runtime: Bearer-only, records what it received, streams without buffering. */
import { createServer, type Server } from 'node:https';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { LOOPBACK, DigestStream, SocketTracker, closeServer, listen, sha256Hex } from './net.js';
import type { Pki } from './pki.js';

/** One request as the upstream received it. */
export interface UpstreamRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  /** Body bytes received so far (final once `bodySha256` is set); live, computed while streaming. */
  readonly bodyLength: number;
  /** Hex SHA-256 of the body; `undefined` until the body has ended (or if it never does). */
  readonly bodySha256: string | undefined;
  /** Whatever `verify` returned for the Bearer token (e.g. JWT claims); `undefined` if rejected. */
  claims: unknown;
  /** Whether the request passed the Bearer check. */
  authorized: boolean;
  /** The client went away before the request body ended or the response finished. */
  aborted: boolean;
}

/**
 * Route override. Read the request body from `body` (a tap on `req` that
 * feeds the record), not from `req`. Return `false` (explicitly) to fall
 * through to the default routes.
 */
export type UpstreamHandler = (
  req: IncomingMessage,
  res: ServerResponse,
  body: Readable,
) => void | boolean | Promise<void | boolean>;

export interface UpstreamOptions {
  /** Validate a Bearer token, resolving to its claims and rejecting if invalid; `null` accepts any token. */
  verify: ((token: string) => Promise<unknown>) | null;
  handler?: UpstreamHandler;
}

export interface Upstream {
  /** `https://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  readonly requests: readonly UpstreamRequest[];
  setHandler(handler: UpstreamHandler | undefined): void;
  /**
   * Resolves when every request body received so far has ended or was cut off
   * (useful after handlers that answer before reading). A request whose handler
   * neither reads the body nor answers never settles: its socket stays paused
   * and cannot notice the client leaving.
   */
  settled(): Promise<void>;
  close(): Promise<void>;
}

/** SAP's 401 for a missing or unusable token (sap-tutorials/Tutorials#7150). */
export const UNAUTHORISED_BODY = {
  error: 'unauthorised',
  error_description: 'An Authentication object was not found in the SecurityContext',
} as const;

/** 401 Bearer challenge; RFC 6750 §3. */
const WWW_AUTHENTICATE = 'Bearer realm="test-upstream"';
const DOWNLOAD_CHUNK = 64 * 1024;

export async function startUpstream(pki: Pki, options: UpstreamOptions): Promise<Upstream> {
  const requests: UpstreamRequest[] = [];
  const pendingBodies = new Set<Promise<void>>();
  let handler = options.handler;

  const server: Server = createServer({ cert: pki.server.chain, key: pki.server.key }, (req, res) => {
    void serve(req, res).catch((err: unknown) => {
      if (!res.headersSent) {
        res.statusCode = 500;
        res.end(`test upstream failed: ${String(err)}`);
      } else {
        res.destroy(err instanceof Error ? err : undefined);
      }
    });
  });
  const sockets = new SocketTracker(server);

  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = new DigestStream();
    const record: UpstreamRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      get bodyLength() {
        return body.length;
      },
      get bodySha256() {
        return body.sha256;
      },
      claims: undefined,
      authorized: false,
      aborted: false,
    };
    requests.push(record);
    // A client abort surfaces as an `error` (ECONNRESET) on `req`; `aborted` records it.
    req.on('error', () => undefined);
    req.pipe(body);

    const ended = new Promise<void>((resolve) => {
      body.once('end', resolve);
      req.once('close', () => {
        if (!req.complete) {
          record.aborted = true;
          resolve();
        }
      });
      res.once('close', () => {
        if (!res.writableFinished) record.aborted = true;
      });
    });
    pendingBodies.add(ended);
    void ended.finally(() => pendingBodies.delete(ended));
    // Whatever a handler leaves unread is drained, so the record still completes.
    res.once('finish', () => body.resume());

    const token = bearerOf(req.headers.authorization);
    if (token !== undefined) {
      try {
        record.claims = options.verify ? await options.verify(token) : undefined;
        record.authorized = true;
      } catch {
        record.authorized = false;
      }
    }
    if (!record.authorized) {
      await drain(body, ended);
      sendJson(res, 401, UNAUTHORISED_BODY, { 'www-authenticate': WWW_AUTHENTICATE });
      return;
    }

    if (handler && (await handler(req, res, body)) !== false) return;
    await defaultRoute(req, res, body, ended);
  }

  const port = await listen(server);
  return {
    url: `https://${LOOPBACK}:${port}`,
    port,
    requests,
    setHandler(next) {
      handler = next;
    },
    async settled() {
      await Promise.all(pendingBodies);
    },
    close: () => closeServer(server, sockets),
  };
}

async function defaultRoute(req: IncomingMessage, res: ServerResponse, body: DigestStream, ended: Promise<void>): Promise<void> {
  const url = new URL(req.url ?? '/', 'https://upstream.invalid');
  await drain(body, ended);
  switch (url.pathname) {
    case '/http/GetTimestamp':
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`Current time (UTC): ${formatUtc(new Date())}`);
      return;
    case '/http/echo':
      sendJson(res, 200, {
        method: req.method,
        url: req.url,
        headers: req.headers,
        bodyLength: body.length,
        bodySha256: body.sha256,
      });
      return;
    case '/http/download':
      await download(res, Number(url.searchParams.get('bytes') ?? '0'), url.searchParams.has('chunked'));
      return;
    default:
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`Not Found: ${url.pathname}`);
  }
}

/** Stream `length` deterministic bytes with backpressure; `Content-Length` unless `chunked`. */
async function download(res: ServerResponse, length: number, chunked: boolean): Promise<void> {
  if (!Number.isSafeInteger(length) || length < 0) {
    sendJson(res, 400, { error: 'bytes must be a non-negative integer' });
    return;
  }
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    ...(chunked ? {} : { 'content-length': String(length) }),
  });
  for (let offset = 0; offset < length && !res.destroyed; offset += DOWNLOAD_CHUNK) {
    const chunk = downloadBytes(offset, Math.min(DOWNLOAD_CHUNK, length - offset));
    if (!res.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    }
  }
  if (!res.destroyed) res.end();
}

/** Bytes `[offset, offset + length)` of the `/http/download` content: byte i is `(i * 31 + 7) mod 251`. */
export function downloadBytes(offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) out[i] = ((offset + i) * 31 + 7) % 251;
  return out;
}

/** Hex SHA-256 of `/http/download?bytes=<length>`. */
export function downloadSha256(length: number): string {
  return sha256Hex(downloadBytes(0, length));
}

/** `yyyy-MM-dd HH:mm:ss` in UTC, as the SAP GetTimestamp sample iFlow prints it. */
export function formatUtc(date: Date): string {
  return date.toISOString().slice(0, 19).replace('T', ' ');
}

function bearerOf(authorization: string | undefined): string | undefined {
  const match = /^Bearer +([A-Za-z0-9\-._~+/]+=*)$/i.exec(authorization ?? '');
  return match?.[1];
}

async function drain(body: Readable, ended: Promise<void>): Promise<void> {
  body.resume();
  await ended;
}

function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}
