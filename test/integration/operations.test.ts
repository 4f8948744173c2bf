import { request as httpRequest } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { ADMIN_MAX_CONNECTIONS } from '../../src/admin-server.js';
import type { OAuthServer } from '../helpers/oauth-server.js';
import { runSidecar, scratch, type RunningSidecar } from '../helpers/sidecar.js';
import type { Upstream } from '../helpers/upstream.js';
import { holdRequests, startWorld, type World } from '../helpers/world.js';

const CLIENT_ID = 'sb-ops!b1|it-rt-acme!b196';
const SECRET = 'ops$Secret=value!|%+:';

let world: World;
let oauth: OAuthServer;
let upstream: Upstream;
let keyPath: string;
const sidecars: RunningSidecar[] = [];

beforeAll(async () => {
  world = await startWorld([{ clientId: CLIENT_ID, secret: SECRET, authMethod: 'client_secret_basic' }]);
  ({ oauth, upstream } = world);
  keyPath = await world.secretKey('key.json', CLIENT_ID, SECRET);
});

afterAll(async () => {
  await Promise.all(sidecars.map((s) => s.close()));
  await world?.close();
});

async function start(argv: string[] = [], options: Parameters<typeof runSidecar>[2] = {}): Promise<RunningSidecar> {
  const s = await runSidecar(['--service-key', keyPath, '--ca', world.caPath, ...argv], {}, options);
  sidecars.push(s);
  return s;
}

function admin(s: RunningSidecar, path: string) {
  return request(`http://127.0.0.1:${s.adminAddress!.port}${path}`);
}

describe('admin server', () => {
  it(`keeps at most ${ADMIN_MAX_CONNECTIONS} connections: a new one (a probe) closes the oldest without a request under way`, async () => {
    const s = await start();
    const port = s.adminAddress!.port;
    const open = (): Promise<Socket> =>
      new Promise((resolve, reject) => {
        const socket = connect(port, '127.0.0.1', () => resolve(socket));
        socket.once('error', reject);
      });
    const held: Socket[] = [];
    const closed: Socket[] = [];
    try {
      // A client holding every place: keep-alive connections it keeps using, and silent ones.
      for (let i = 0; i < ADMIN_MAX_CONNECTIONS; i++) {
        const socket = await open();
        socket.on('error', () => undefined);
        socket.once('close', () => closed.push(socket));
        if (i % 2 === 0) socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
        held.push(socket);
      }
      // Probes on new connections, as the kubelet makes them (`Connection: close`), are answered.
      for (let i = 0; i < 3; i++) {
        const status = await new Promise<number | undefined>((resolve, reject) => {
          const req = httpRequest({ host: '127.0.0.1', port, path: '/healthz', agent: false }, (res) => {
            res.resume();
            res.once('end', () => resolve(res.statusCode));
          });
          req.once('error', reject);
          req.end();
        });
        expect(status).toBe(200);
      }
      // The first took the oldest place, a silent connection (the first one made a request since, which makes it
      // newer); the others found the probe's own place, given back after its answer.
      await expect.poll(() => closed.length).toBeGreaterThanOrEqual(1);
      expect(closed.map((socket) => held.indexOf(socket))).toEqual([1]);
    } finally {
      for (const socket of held) socket.destroy();
    }
  });

  it('a connection whose pipelined /readyz still waits for a token is not closed to make room', async () => {
    // A token server that accepts and never answers: the probe waits (up to 5 s) for the start-up fetch.
    const silent = createNetServer((socket) => socket.on('error', () => undefined));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const files = await scratch();
    const connections: Socket[] = [];
    try {
      const tokenUrl = `https://127.0.0.1:${(silent.address() as AddressInfo).port}/oauth/token`;
      const key = await files.write('key.json', JSON.stringify({ clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: tokenUrl, url: upstream.url }));
      const s = await runSidecar(['--service-key', key, '--ca', world.caPath]);
      sidecars.push(s);
      const closed: Socket[] = [];
      const open = async (): Promise<Socket> => {
        const socket = connect(s.adminAddress!.port, '127.0.0.1');
        socket.on('error', () => undefined);
        socket.once('close', () => closed.push(socket));
        connections.push(socket);
        await new Promise((resolve) => socket.once('connect', resolve));
        return socket;
      };
      const prober = await open();
      let received = '';
      prober.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
      prober.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n');
      await expect.poll(() => received).toContain('ok\n'); // the first answer is out; /readyz waits behind it
      const others: Socket[] = [];
      for (let i = 0; i < ADMIN_MAX_CONNECTIONS; i++) others.push(await open());
      // The last newcomer needed a place: the oldest connection without a request under way gave it.
      await expect.poll(() => closed.length).toBeGreaterThanOrEqual(1);
      expect(closed).toEqual([others[0]]);
    } finally {
      for (const socket of connections) socket.destroy();
      silent.close();
      await files.cleanup();
    }
  });

  it('answers liveness, and is not reachable through the proxy port', async () => {
    const s = await start();
    const live = await admin(s, '/healthz');
    expect(live.statusCode).toBe(200);
    expect(await live.body.text()).toBe('ok\n');
    const viaProxy = await request(`${s.url}/healthz`);
    await viaProxy.body.dump();
    expect(viaProxy.statusCode).not.toBe(200); // forwarded upstream, which knows no /healthz
    expect(upstream.requests.at(-1)?.url).toBe('/healthz');
  });

  it('readiness follows the token server: 503 naming the route while it is down with no token, 200 once back', async () => {
    await oauth.stop();
    let s!: RunningSidecar;
    try {
      s = await start([], { tokens: { backoff: { minMs: 50, maxMs: 100 } } });
      const down = await admin(s, '/readyz');
      expect(down.statusCode).toBe(503);
      const body = (await down.body.json()) as { routes: Array<{ route: string; ready: boolean; error: string }> };
      expect(body.routes[0]).toMatchObject({ route: 'default', ready: false, error: 'TOKEN_UNREACHABLE' });
    } finally {
      await oauth.start();
    }
    await expect
      .poll(async () => (await admin(s, '/readyz').then(async (r) => (await r.body.dump(), r.statusCode))), { interval: 50, timeout: 5_000 })
      .toBe(200);
  });

  it('exposes metrics after traffic, with bounded labels', async () => {
    const s = await start();
    for (const path of ['/http/GetTimestamp', '/http/GetTimestamp?id=q7zx9k', '/http/missing']) {
      await request(`${s.url}${path}`).then((r) => r.body.dump());
    }
    await request(`${s.url}/http/echo`, { method: 'PROPFIND' as 'GET' }).then((r) => r.body.dump());
    const res = await admin(s, '/metrics');
    expect(res.statusCode).toBe(200);
    const text = await res.body.text();
    expect(text).toMatch(/oauth_sidecar_requests_total\{route="default",method="GET",status_class="2xx"\} 2/);
    expect(text).toMatch(/oauth_sidecar_requests_total\{route="default",method="GET",status_class="4xx"\} 1/);
    expect(text).toMatch(/oauth_sidecar_requests_total\{route="default",method="OTHER",status_class="2xx"\} 1/);
    expect(text).toMatch(/oauth_sidecar_upstream_duration_seconds_count\{route="default",method="GET",status_class="2xx"\} 2/);
    expect(text).toMatch(/oauth_sidecar_token_fetches_total\{route="default",outcome="success"\} 1/);
    expect(text).toMatch(/oauth_sidecar_token_expiry_seconds\{route="default"\} \d+/);
    expect(text).toMatch(/oauth_sidecar_requests_in_flight 0/);
    expect(text).not.toContain('/http/');
    expect(text).not.toContain('q7zx9k'); // no query values in labels
  });
});

describe('request ids', () => {
  it('propagates x-request-id to the upstream and back, generating one when absent', async () => {
    const s = await start();
    const given = await request(`${s.url}/http/echo`, { headers: { 'x-request-id': 'erp-job-42' } });
    expect(given.headers['x-request-id']).toBe('erp-job-42');
    expect(((await given.body.json()) as { headers: Record<string, string> }).headers['x-request-id']).toBe('erp-job-42');
    const generated = await request(`${s.url}/http/echo`);
    const id = generated.headers['x-request-id'] as string;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(((await generated.body.json()) as { headers: Record<string, string> }).headers['x-request-id']).toBe(id);
    await expect.poll(() => s.logs.some((l) => l['requestId'] === id && l['msg'] === 'request'), { interval: 10 }).toBe(true);
  });
});

describe('graceful shutdown', () => {
  it('fails readiness, finishes a slow in-flight request with 200, then refuses new connections', async () => {
    const s = await start(['--shutdown-delay', '200', '--shutdown-grace', '5000']);
    const { arrival, release } = holdRequests(upstream, '/http/slow', 'slow but fine');
    try {
      const slow = request(`${s.url}/http/slow`);
      await arrival;
      const stopping = s.shutdown();
      const ready = await admin(s, '/readyz');
      expect(ready.statusCode).toBe(503);
      await ready.body.dump();
      release();
      const res = await slow;
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toBe('slow but fine');
      await stopping;
      await expect(
        new Promise((resolve, reject) => httpRequest(`${s.url}/http/GetTimestamp`, resolve).on('error', reject).end()),
      ).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    } finally {
      upstream.setHandler(undefined);
    }
  });
});
