/**
 * Bench contender: the floor of the sidecar's architecture. A node:http server
 * that forwards every request with undici and adds a static `Authorization`
 * header — no token cache, routing, logging or metrics. It uses the leanest
 * undici API for a proxy, `Agent.stream()` (the request streamed as the body,
 * the response written straight into the ServerResponse): `request()` plus
 * `stream/promises.pipeline()` costs ~25 % more CPU per small request
 * (pipeline creates an AbortController and aborts it — a DOMException with a
 * stack trace — on every completion).
 *
 * Usage: node undici-forwarder.js <upstream origin> <ca file> <bearer token>
 * Prints `{"listening":<port>}` on stdout once it listens on 127.0.0.1.
 */
import { readFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Agent, type Dispatcher } from 'undici';

const [origin = '', caFile = '', token = ''] = process.argv.slice(2);
const authorization = `Bearer ${token}`;
// Only the bench CA: the cheapest correct TLS set-up (a per-connection SecureContext of one certificate).
const agent = new Agent({ connect: { ca: readFileSync(caFile, 'utf8') }, keepAliveTimeout: 30_000 });
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host', 'expect']);

function outgoing(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name of Object.keys(headers)) {
    const value = headers[name];
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  out['authorization'] = authorization;
  return out;
}

function incoming(headers: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name of Object.keys(headers)) {
    const value = headers[name];
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  return out;
}

const server = createServer({ keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  agent
    .stream(
      {
        origin,
        path: req.url ?? '/',
        method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
        headers: outgoing(req.headers),
        body: hasBody ? req : null,
      },
      ({ statusCode, headers }) => {
        res.writeHead(statusCode, incoming(headers));
        return res;
      },
    )
    .catch(() => {
      if (res.headersSent) res.destroy();
      else {
        res.writeHead(502, { 'content-length': '0' });
        res.end();
      }
    });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ listening: (server.address() as AddressInfo).port })}\n`);
});
process.once('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  void agent.close();
});
