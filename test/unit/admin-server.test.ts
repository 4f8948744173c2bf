import { getEventListeners } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { readiness, type AdminOptions } from '../../src/admin-server.js';
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
