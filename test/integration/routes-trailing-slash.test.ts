/**
 * A route prefix written with a trailing slash (`prefix: /orders/`) serves
 * `/orders` itself, rather than leaving it to a catch-all route with another
 * upstream path and another client's token, and the sender's trailing slash
 * reaches the upstream as sent. A real sidecar, OAuth server and upstream.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { request } from 'undici';
import { runSidecar, type RunningSidecar } from '../helpers/sidecar.js';
import { startWorld, type World } from '../helpers/world.js';

const ORDERS = { clientId: 'sb-orders!b1|it-rt-acme!b196', secret: 'orders$Secret=1' };
const OTHER = { clientId: 'sb-other!b2|it-rt-other!b196', secret: 'other$Secret=2' };

let world: World;
let sidecar: RunningSidecar;

beforeAll(async () => {
  world = await startWorld([
    { ...ORDERS, authMethod: 'client_secret_basic' },
    { ...OTHER, authMethod: 'client_secret_basic' },
  ]);
  const ordersKey = await world.secretKey('orders.json', ORDERS.clientId, ORDERS.secret);
  const otherKey = await world.secretKey('other.json', OTHER.clientId, OTHER.secret);
  const config = await world.files.write(
    'routes.yaml',
    [
      'routes:',
      '  - name: orders',
      '    prefix: /orders/',
      `    serviceKey: ${ordersKey}`,
      '    rewritePrefix: /http/orders',
      '  - name: everything-else',
      '    prefix: /',
      `    serviceKey: ${otherKey}`,
      `    upstream: ${world.upstream.url}/other`,
    ].join('\n'),
  );
  sidecar = await runSidecar(['--config', config, '--ca', world.caPath]);
  world.upstream.setHandler((_req, res, body) => {
    body.resume();
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
    return true;
  });
});

afterAll(async () => {
  await sidecar?.close();
  await world?.close();
});

/** The path and the token's client the upstream saw for `path` sent to the sidecar. */
async function forwarded(path: string): Promise<{ status: number; url: string | undefined; client: unknown }> {
  const res = await request(`${sidecar.url}${path}`);
  await res.body.dump();
  const seen = world.upstream.requests.at(-1);
  return { status: res.statusCode, url: seen?.url, client: (seen?.claims as { client_id?: unknown } | undefined)?.client_id };
}

it('/orders reaches the orders route: its upstream path, its token', async () => {
  expect(await forwarded('/orders')).toEqual({ status: 200, url: '/http/orders', client: ORDERS.clientId });
  expect(await forwarded('/orders?id=42')).toEqual({ status: 200, url: '/http/orders?id=42', client: ORDERS.clientId });
});

it('/orders/ keeps its trailing slash, and the catch-all still serves its own paths', async () => {
  expect(await forwarded('/orders/')).toEqual({ status: 200, url: '/http/orders/', client: ORDERS.clientId });
  expect(await forwarded('/orders/42')).toEqual({ status: 200, url: '/http/orders/42', client: ORDERS.clientId });
  expect(await forwarded('/ordersx')).toEqual({ status: 200, url: '/other/ordersx', client: OTHER.clientId });
});
