import { getEventListeners } from 'node:events';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createAdminServer, MAX_WAITING_READINESS, MAX_WAITING_SCRAPES, readiness, type AdminOptions } from '../../src/admin-server.js';
import { SidecarError } from '../../src/errors.js';
import type { Metrics } from '../../src/metrics.js';
import type { RouteTable } from '../../src/routes.js';
import type { TokenProvider } from '../../src/token-provider.js';

/** Token requests left hanging by `options`, failed at the end of each test (so that no probe's timer is left). */
const hanging: Array<(err: Error) => void> = [];
afterEach(() => {
  for (const fail of hanging.splice(0)) fail(new Error('test over'));
});

/** Readiness options for one route whose token is cached (`cached`) or does not come (a hanging token server). */
function options(stopping: AbortSignal, cached: boolean): AdminOptions {
  const tokens = {
    peek: () => (cached ? { value: 'token' } : undefined),
    getToken: () => new Promise<never>((_, reject) => hanging.push(reject)),
  } as unknown as TokenProvider;
  return {
    routes: () => ({ routes: [{ name: 'default', tokenClient: {} }] }) as unknown as RouteTable,
    tokens,
    metrics: undefined as never,
    draining: () => stopping.aborted,
    stopping,
    credentialErrors: () => new Map(),
    readinessTimeoutMs: 60_000,
  };
}

describe('readiness while a stop may begin', () => {
  it('answers each probe without leaving anything on the stop signal', async () => {
    const stop = new AbortController();
    for (let i = 0; i < 50; i++) expect((await readiness(options(stop.signal, true))).status).toBe(200);
    expect(getEventListeners(stop.signal, 'abort')).toHaveLength(0);
  });

  it('answers every probe still waiting for a token 503 "shutting down" as the stop begins, and lets go of the signal', async () => {
    const stop = new AbortController();
    const probes = Array.from({ length: 12 }, () => readiness(options(stop.signal, false)));
    expect(getEventListeners(stop.signal, 'abort')).toHaveLength(12);
    stop.abort();
    for (const answer of await Promise.all(probes)) expect(answer).toEqual({ status: 503, body: { status: 'shutting down', routes: [] } });
    expect(getEventListeners(stop.signal, 'abort')).toHaveLength(0);
  });
});

describe('readiness probes waiting for a token', () => {
  it(`at most ${MAX_WAITING_READINESS} wait at once; others are answered at once, and liveness still gets in`, async () => {
    const server = createAdminServer(options(new AbortController().signal, false));
    const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
    const get = (path: string) =>
      new Promise<{ status: number | undefined; body: string }>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port, path, agent: false }, (res) => {
          let body = '';
          res.on('data', (chunk: Buffer) => (body += chunk.toString()));
          res.once('end', () => resolve({ status: res.statusCode, body }));
        });
        req.once('error', reject);
        req.end();
      });
    try {
      const waiting = Array.from({ length: MAX_WAITING_READINESS }, () => get('/readyz').catch(() => undefined));
      await expect.poll(() => hanging.length).toBe(MAX_WAITING_READINESS);
      // The token server hangs: one more probe does not wait, nor hold its connection.
      const beyond = await get('/readyz');
      expect(beyond.status).toBe(503);
      expect(JSON.parse(beyond.body)).toMatchObject({ status: 'not ready', routes: [{ route: 'default', ready: false, error: 'TOKEN_TIMEOUT' }] });
      expect(hanging).toHaveLength(MAX_WAITING_READINESS);
      expect((await get('/healthz')).status).toBe(200);
      server.closeAllConnections();
      await Promise.all(waiting);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('scrapes waiting for a metrics render', () => {
  it(`at most ${MAX_WAITING_SCRAPES} wait at once; others are answered 503 at once, with a few bytes`, async () => {
    const renders: Array<() => void> = [];
    const metrics = {
      render: () => new Promise((resolve) => renders.push(() => resolve({ contentType: 'text/plain; version=0.0.4', body: 'm 1\n'.repeat(1000) }))),
    } as unknown as Metrics;
    const server = createAdminServer({ ...options(new AbortController().signal, true), metrics });
    const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
    const get = (path: string) =>
      new Promise<{ status: number | undefined; retryAfter: unknown; bytes: number }>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port, path, agent: false }, (res) => {
          let bytes = 0;
          res.on('data', (chunk: Buffer) => (bytes += chunk.length));
          res.once('end', () => resolve({ status: res.statusCode, retryAfter: res.headers['retry-after'], bytes }));
        });
        req.once('error', reject);
        req.end();
      });
    try {
      const waiting = Array.from({ length: MAX_WAITING_SCRAPES }, () => get('/metrics'));
      await expect.poll(() => renders.length).toBe(MAX_WAITING_SCRAPES);
      const beyond = await get('/metrics');
      expect(beyond).toMatchObject({ status: 503, retryAfter: '1' });
      expect(beyond.bytes).toBeLessThan(100);
      expect((await get('/healthz')).status).toBe(200);
      for (const render of renders) render();
      for (const answer of await Promise.all(waiting)) expect(answer).toMatchObject({ status: 200, bytes: 4000 });
      // Once they are answered, a scrape waits again.
      const next = get('/metrics');
      await expect.poll(() => renders.length).toBe(MAX_WAITING_SCRAPES + 1);
      renders.at(-1)!();
      expect((await next).status).toBe(200);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('readiness with several routes, and probes in a row', () => {
  /** Routes named by `cached`: whether each has a token cached; an uncached one's fetch fails as `fetch` says. */
  function routes(cached: Record<string, boolean>, fetch: () => Promise<unknown>, extra: Partial<AdminOptions> = {}): AdminOptions {
    const tokens = {
      peek: (client: { name: string }) => (cached[client.name] ? { value: 'token' } : undefined),
      getToken: fetch,
    } as unknown as TokenProvider;
    return {
      routes: () => ({ routes: Object.keys(cached).map((name) => ({ name, tokenClient: { name } })) }) as unknown as RouteTable,
      tokens,
      metrics: undefined as never,
      draining: () => false,
      credentialErrors: () => new Map([['b', 'CONFIG_INVALID']]),
      readinessTimeoutMs: 1_000,
      ...extra,
    };
  }
  const rejected = () => Promise.reject(new SidecarError('TOKEN_REJECTED', 'token server rejected the client credentials (401)'));

  it('is not ready while any route has no token: one ready route does not make the pod ready', async () => {
    const answer = await readiness(routes({ a: true, b: false }, rejected));
    expect(answer).toEqual({
      status: 503,
      body: {
        status: 'not ready',
        routes: [
          { route: 'a', ready: true },
          { route: 'b', ready: false, error: 'TOKEN_REJECTED', message: 'token server rejected the client credentials (401)', credentialWarning: 'CONFIG_INVALID' },
        ],
      },
    });
  });

  it(`gives a probe's place back when it is answered: more than ${MAX_WAITING_READINESS} probes in a row each wait for the token`, async () => {
    const server = createAdminServer(routes({ a: false }, async () => ({ value: 'token' })));
    const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
    const status = () =>
      new Promise<number | undefined>((resolve, reject) => {
        const req = httpRequest({ host: '127.0.0.1', port, path: '/readyz', agent: false }, (res) => {
          res.resume();
          res.once('end', () => resolve(res.statusCode));
        });
        req.once('error', reject);
        req.end();
      });
    try {
      for (let i = 0; i <= MAX_WAITING_READINESS; i++) expect(await status()).toBe(200);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
