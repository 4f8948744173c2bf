/**
 * Bench contender: the design card's original choice. A node:http server with
 * `http-proxy` 1.18 in front of the HTTPS upstream, a keep-alive
 * `https.Agent`, certificate verification on, and a static `Authorization`
 * header (http-proxy's `headers` option).
 *
 * Usage: node http-proxy-forwarder.js <upstream origin> <ca file> <bearer token>
 * Prints `{"listening":<port>}` on stdout once it listens on 127.0.0.1.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { Agent } from 'node:https';
import type { AddressInfo } from 'node:net';
import httpProxy from 'http-proxy';

const [origin = '', caFile = '', token = ''] = process.argv.slice(2);
const ca = readFileSync(caFile, 'utf8');
const agent = new Agent({ keepAlive: true, ca });
const proxy = httpProxy.createProxyServer({
  target: origin,
  // The agent carries the CA: https.Agent merges its options into every TLS connection.
  agent,
  secure: true,
  changeOrigin: true,
  headers: { authorization: `Bearer ${token}` },
});

const server = createServer({ keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
  proxy.web(req, res, {}, () => {
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
  agent.destroy();
});
