/**
 * A minimal HTTP CONNECT proxy (a corporate proxy stand-in) that counts tunnels and can demand Proxy-Authorization;
 * with `tls`, an https:// proxy, and on `host` (e.g. `::1`) instead of 127.0.0.1.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { closeServer, listen, SocketTracker } from './net.js';

export interface ConnectProxy {
  readonly url: string;
  /** host:port of every tunnel opened, in order. */
  readonly tunnels: string[];
  /** With `tls`: the SNI name of each connection to the proxy, undefined where none was sent. */
  readonly serverNames: (string | undefined)[];
  close(): Promise<void>;
}

export async function startConnectProxy(options: { credentials?: string; tls?: { cert: string; key: string }; host?: string } = {}): Promise<ConnectProxy> {
  const tunnels: string[] = [];
  const refuse = (_req: IncomingMessage, res: { writeHead(status: number): { end(): void } }) => res.writeHead(405).end();
  const server: Server = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, refuse) : createServer(refuse);
  const sockets = new SocketTracker(server);
  // The SNI each TLS connection to an https:// proxy asked for (none: undefined).
  const serverNames: (string | undefined)[] = [];
  server.on('secureConnection', (socket: TLSSocket) => serverNames.push(typeof socket.servername === 'string' ? socket.servername : undefined));
  const upstreamSockets = new Set<Socket>();
  server.on('connect', (req: IncomingMessage, client: Socket, head: Buffer) => {
    const expected = options.credentials && `Basic ${Buffer.from(options.credentials).toString('base64')}`;
    if (expected && req.headers['proxy-authorization'] !== expected) {
      client.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\n\r\n');
      return;
    }
    const where = /^\[?(.*?)\]?:(\d+)$/.exec(req.url ?? '');
    tunnels.push(req.url ?? '');
    const target = connect(Number(where?.[2]), where?.[1] ?? '127.0.0.1', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) target.write(head);
      target.pipe(client);
      client.pipe(target);
    });
    upstreamSockets.add(target);
    target.on('close', () => upstreamSockets.delete(target));
    const destroyBoth = () => {
      target.destroy();
      client.destroy();
    };
    target.on('error', destroyBoth);
    client.on('error', destroyBoth);
  });
  const host = options.host ?? '127.0.0.1';
  const port = await listen(server, 0, host);
  return {
    url: `${options.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`,
    tunnels,
    serverNames,
    async close() {
      for (const s of upstreamSockets) s.destroy();
      await closeServer(server, sockets);
    },
  };
}
