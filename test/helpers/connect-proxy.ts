/** A minimal HTTP CONNECT proxy (a corporate proxy stand-in) that counts tunnels and can demand Proxy-Authorization. */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { closeServer, listen, SocketTracker } from './net.js';

export interface ConnectProxy {
  readonly url: string;
  /** host:port of every tunnel opened, in order. */
  readonly tunnels: string[];
  close(): Promise<void>;
}

export async function startConnectProxy(options: { credentials?: string } = {}): Promise<ConnectProxy> {
  const tunnels: string[] = [];
  const server: Server = createServer((_req, res) => res.writeHead(405).end());
  const sockets = new SocketTracker(server);
  const upstreamSockets = new Set<Socket>();
  server.on('connect', (req: IncomingMessage, client: Socket, head: Buffer) => {
    const expected = options.credentials && `Basic ${Buffer.from(options.credentials).toString('base64')}`;
    if (expected && req.headers['proxy-authorization'] !== expected) {
      client.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\n\r\n');
      return;
    }
    const [host, port] = (req.url ?? '').split(':');
    tunnels.push(req.url ?? '');
    const target = connect(Number(port), host ?? '127.0.0.1', () => {
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
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}`,
    tunnels,
    async close() {
      for (const s of upstreamSockets) s.destroy();
      await closeServer(server, sockets);
    },
  };
}
