/**
 * `routes`: dot segments that would let a request leave its route's prefix
 * (RFC 3986 §5.2.4 removes them at the upstream) are recognised in every
 * spelling an upstream may decode; ordinary paths with dots are not. A prefix
 * serves its own path with or without a trailing `/`, however it was written,
 * and the forwarded path keeps the sender's trailing `/`.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import type { SecretCredentials } from '../../src/credentials.js';
import { closeRoute, createRoute, hasDotSegment, RouteTable, upstreamTarget, type Route } from '../../src/routes.js';

describe('hasDotSegment', () => {
  it.each([
    '/orders/../api/v1/IntegrationPackages',
    '/orders/..',
    '/orders/./x',
    '/..',
    '/orders/%2e%2e/%2E%2E/api/v1/x',
    '/orders/.%2e/x',
    '/orders/%2E./x',
    '/orders/..;/x',
    '/orders/..;jsessionid=1/x',
    '/orders/..%2f..%2fapi',
    '/orders/..%2F..%2Fapi',
    '/orders/..%5c..%5capi',
    '/orders/..\\..\\api',
    '/orders/x/..',
  ])('%s: yes', (path) => {
    expect(hasDotSegment(path)).toBe(true);
  });

  it.each([
    '/',
    '/http/order',
    '/http/file.xml',
    '/http/...',
    '/http/..x',
    '/http/x..',
    '/http/.hidden',
    '/api/v1/IntegrationDesigntimeArtifacts(Id=\'a.b\',Version=\'1.0.0\')',
    '/http/100%25',
    '/http/a%2fb',
    '/http/caf%C3%A9',
  ])('%s: no', (path) => {
    expect(hasDotSegment(path)).toBe(false);
  });
});

const CREDENTIALS: SecretCredentials = {
  kind: 'client-secret',
  clientId: 'client',
  clientSecret: 'secret',
  tokenUrl: 'https://token.invalid/oauth/token',
  url: 'https://upstream.invalid',
  source: 'test',
};
const created: Route[] = [];

afterAll(async () => {
  await Promise.all(created.map((route) => closeRoute(route)));
});

/** Routes as `serve` builds them: from a config file through `parseConfig` (which normalises), then `createRoute`. */
function table(...routes: Array<{ prefix: string; rewritePrefix?: string; upstream?: string }>): RouteTable {
  const yaml = [
    'routes:',
    ...routes.flatMap((r, i) => [
      `  - name: r${i}`,
      `    prefix: "${r.prefix}"`,
      '    serviceKey: /k',
      ...(r.rewritePrefix === undefined ? [] : [`    rewritePrefix: "${r.rewritePrefix}"`]),
      ...(r.upstream === undefined ? [] : [`    upstream: "${r.upstream}"`]),
    ]),
  ].join('\n');
  const result = parseConfig(['--config', '/c.yaml'], {}, () => yaml);
  if (result.kind !== 'run') throw new Error('expected a config');
  const built = result.config.routes.map((config) => createRoute(config, CREDENTIALS, { network: { ca: [] }, tokenTimeoutMs: 1_000 }));
  created.push(...built);
  return new RouteTable(built);
}

/** Which route `path` matches, and the upstream target it is forwarded to. */
function forward(routes: RouteTable, target: string): { route: string | undefined; to: string | undefined } {
  const route = routes.match(target.split('?', 1)[0] ?? '');
  return { route: route?.name, to: route && upstreamTarget(route, target) };
}

describe('a prefix written with a trailing slash', () => {
  it('serves its own path without the slash, rather than leaving it to another route (a catch-all here)', () => {
    const routes = table({ prefix: '/orders/', rewritePrefix: '/http/orders' }, { prefix: '/' });
    expect(routes.routes.map((r) => r.prefix)).toEqual(['/orders', '/']);
    expect(forward(routes, '/orders')).toEqual({ route: 'r0', to: '/http/orders' });
    expect(forward(routes, '/orders?x=1')).toEqual({ route: 'r0', to: '/http/orders?x=1' });
    expect(forward(routes, '/ordersx')).toEqual({ route: 'r1', to: '/ordersx' });
  });

  it('forwards exactly what the same prefix without the slash forwards, the trailing slash kept', () => {
    for (const prefix of ['/orders', '/orders/', '/orders//']) {
      const routes = table({ prefix, rewritePrefix: '/http/orders' });
      expect(forward(routes, '/orders')).toEqual({ route: 'r0', to: '/http/orders' });
      expect(forward(routes, '/orders/')).toEqual({ route: 'r0', to: '/http/orders/' });
      expect(forward(routes, '/orders/42?x=1')).toEqual({ route: 'r0', to: '/http/orders/42?x=1' });
      expect(forward(routes, '/orders/a/')).toEqual({ route: 'r0', to: '/http/orders/a/' });
    }
  });
});

describe('upstreamTarget', () => {
  it('never doubles a slash, nor adds or drops the trailing one, whatever slash the rewrite or the upstream path ends in', () => {
    for (const rewritePrefix of ['/http/orders', '/http/orders/']) {
      const routes = table({ prefix: '/orders', rewritePrefix });
      expect(forward(routes, '/orders').to).toBe('/http/orders');
      expect(forward(routes, '/orders/').to).toBe('/http/orders/');
      expect(forward(routes, '/orders/42').to).toBe('/http/orders/42');
    }
    for (const upstream of ['https://cpi.example/http/orders', 'https://cpi.example/http/orders/']) {
      const viaUpstream = table({ prefix: '/orders', rewritePrefix: '/', upstream });
      expect(forward(viaUpstream, '/orders').to).toBe('/http/orders');
      expect(forward(viaUpstream, '/orders/').to).toBe('/http/orders/');
      expect(forward(viaUpstream, '/orders/42?x=1').to).toBe('/http/orders/42?x=1');
      // Without a rewrite the whole sender path follows the upstream's.
      const appended = table({ prefix: '/orders', upstream });
      expect(forward(appended, '/orders').to).toBe('/http/orders/orders');
      expect(forward(appended, '/orders/').to).toBe('/http/orders/orders/');
    }
  });

  it('maps the root prefix and a rewrite to the root as segment paths', () => {
    const root = table({ prefix: '/', rewritePrefix: '/http/' });
    expect(forward(root, '/').to).toBe('/http/');
    expect(forward(root, '/x?y=1').to).toBe('/http/x?y=1');
    const toRoot = table({ prefix: '/orders/', rewritePrefix: '/' });
    expect(forward(toRoot, '/orders').to).toBe('/');
    expect(forward(toRoot, '/orders?x=1').to).toBe('/?x=1');
    expect(forward(toRoot, '/orders/').to).toBe('/');
    expect(forward(toRoot, '/orders/42').to).toBe('/42');
  });
});
