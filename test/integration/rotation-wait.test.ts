/**
 * A rotation that lands while a request is waiting on the old route: a token
 * fetch of the old client that fails after the swap (its pool closed) must not
 * fail the request, and a CSRF session fetched in the background for a request
 * that began before the swap goes to the new route. Real token server
 * (checking client secrets), real HTTPS upstream, real sidecar with a watched
 * service key rewritten in place.
 */
import { randomBytes } from 'node:crypto';
import { rename, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { request } from 'undici';
import { SocketTracker, closeServer, listen } from '../helpers/net.js';
import { createPki } from '../helpers/pki.js';
import { expectNoSecretOrStack, secretForms } from '../helpers/secrets.js';
import { runSidecar, scratch, type RunningSidecar } from '../helpers/sidecar.js';
import { TokenEndpoint } from '../helpers/token-endpoint.js';

const OLD = { clientId: 'sb-old!b1|it-rt-acme!b196', secret: 'old$Secret=1rot' };
const NEW = { clientId: 'sb-new!b2|it-rt-acme!b196', secret: 'new$Secret=2rot' };

interface Seen {
  method: string;
  url: string;
  csrf: string | undefined;
  cookie: string | undefined;
}

let endpoint: TokenEndpoint;
let upstream: { url: string; seen: Seen[]; answer: (req: Seen, reply: (status: number, headers?: Record<string, string>) => void) => void; close(): Promise<void> };
let files: Awaited<ReturnType<typeof scratch>>;
let keyPath: string;
let caPath: string;
let sidecar: RunningSidecar | undefined;

async function writeKey(client: { clientId: string; secret: string }): Promise<void> {
  const oauth = { clientid: client.clientId, clientsecret: client.secret, tokenurl: endpoint.tokenUrl, url: upstream.url };
  await writeFile(`${keyPath}.tmp`, JSON.stringify({ oauth }));
  await rename(`${keyPath}.tmp`, keyPath);
}

beforeEach(async () => {
  const pki = await createPki();
  files = await scratch();
  caPath = await files.write('ca.pem', pki.ca);
  endpoint = await TokenEndpoint.start({ tls: { cert: pki.server.chain, key: pki.server.key, ca: pki.ca }, clients: [OLD, NEW] });
  const seen: Seen[] = [];
  const server: Server = createServer({ cert: pki.server.chain, key: pki.server.key }, (req, res) => {
    req.resume();
    req.on('end', () => {
      const record: Seen = { method: req.method ?? '', url: req.url ?? '', csrf: req.headers['x-csrf-token'] as string | undefined, cookie: req.headers.cookie };
      seen.push(record);
      upstream.answer(record, (status, headers = {}) => {
        res.writeHead(status, { 'content-type': 'text/plain', ...headers });
        res.end(status === 200 ? 'ok' : 'no');
      });
    });
  });
  const sockets = new SocketTracker(server);
  const port = await listen(server);
  upstream = { url: `https://127.0.0.1:${port}`, seen, answer: (_req, reply) => reply(200), close: () => closeServer(server, sockets) };
  keyPath = `${files.dir}/key.json`;
  await writeKey(OLD);
});

afterEach(async () => {
  await sidecar?.close();
  if (sidecar) expectNoSecretOrStack(sidecar.logText(), [...secretForms(OLD.clientId, OLD.secret), ...secretForms(NEW.clientId, NEW.secret)]);
  sidecar = undefined;
  await endpoint.close();
  await upstream.close();
  await files.cleanup();
});

async function start(extra: string[] = []): Promise<RunningSidecar> {
  sidecar = await runSidecar(['--service-key', keyPath, '--ca', caPath, ...extra], {}, { watch: { pollIntervalMs: 200, debounceMs: 10 } });
  return sidecar;
}

async function rotateTo(s: RunningSidecar, client: typeof NEW): Promise<void> {
  await writeKey(client);
  await expect.poll(() => s.logs.some((l) => l['msg'] === 'credentials rotated'), { timeout: 10_000, interval: 10 }).toBe(true);
}

async function inFlight(s: RunningSidecar): Promise<number> {
  const res = await request(`http://127.0.0.1:${s.adminAddress!.port}/metrics`);
  const text = await res.body.text();
  return Number(/^oauth_sidecar_requests_in_flight (\d+)/m.exec(text)?.[1] ?? Number.NaN);
}

it('a request waiting for the old client\'s token when a new client id is swapped in goes out with the new one', async () => {
  // The start-up fetch of the old client hangs (a long token timeout keeps it hanging until the test ends it).
  endpoint.fail({ kind: 'hang' });
  const s = await start(['--token-timeout', '60000']);
  const answer = request(`${s.url}/http/waiting`).then(async (res) => ({ status: res.statusCode, text: await res.body.text() }));
  await expect.poll(() => inFlight(s), { timeout: 10_000, interval: 10 }).toBe(1); // it waits for the token
  await rotateTo(s, NEW);
  // The old client's hanging request is cut; its retry meets a pool the swap has closed.
  await endpoint.stop();
  await endpoint.start();
  const got = await answer;
  expect(got.status, got.text).toBe(200);
  expect(upstream.seen.map((r) => r.url)).toEqual(['/http/waiting']);
});

it('a CSRF 403 to a long body that went out before a rotation: the session is fetched through the new route, and the next attempt passes', async () => {
  const sessions = new Map<string, string>();
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  upstream.answer = (req, reply) => {
    if (req.method === 'GET' && req.csrf === 'Fetch') {
      const id = randomBytes(6).toString('hex');
      const token = randomBytes(6).toString('hex');
      sessions.set(id, token);
      reply(200, { 'x-csrf-token': token, 'set-cookie': `JSESSIONID=${id}; Path=/` });
      return;
    }
    const id = /JSESSIONID=([0-9a-f]+)/.exec(req.cookie ?? '')?.[1];
    const valid = id !== undefined && sessions.get(id) === req.csrf;
    const answer = (): void => (valid ? reply(200) : reply(403, { 'x-csrf-token': 'Required' }));
    if (req.url === '/http/big?first') void held.then(answer);
    else answer();
  };
  const s = await start(['--max-replay-body', '10']);
  const first = request(`${s.url}/http/big?first`, { method: 'POST', body: 'x'.repeat(100) }).then(async (res) => ({ status: res.statusCode, text: await res.body.text() }));
  await expect.poll(() => upstream.seen.length, { timeout: 10_000, interval: 10 }).toBe(1); // the upstream holds it
  await rotateTo(s, NEW);
  release();
  expect((await first).status).toBe(403); // too long to send again: the 403 goes to the sender
  await expect.poll(() => upstream.seen.filter((r) => r.csrf === 'Fetch').length, { timeout: 10_000, interval: 10 }).toBe(1);
  await expect.poll(() => s.routes.routes[0]?.csrf?.current !== undefined, { timeout: 10_000, interval: 10 }).toBe(true);
  const next = await request(`${s.url}/http/big?next`, { method: 'POST', body: 'x'.repeat(100) });
  await next.body.dump();
  expect(next.statusCode).toBe(200);
});
