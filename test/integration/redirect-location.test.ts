/**
 * An upstream's `Location` on the route's upstream points the sender back at the sidecar (its Host, the
 * route's prefix): an OData create's 201, a redirect. Anything else passes as it came. A real sidecar, OAuth
 * server and HTTPS upstream.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { request } from 'undici';
import { rawRequest } from '../helpers/raw-http.js';
import { runSidecar, type RunningSidecar } from '../helpers/sidecar.js';
import { startWorld, type World } from '../helpers/world.js';

const ORDERS = { clientId: 'sb-orders!b1|it-rt-acme!b196', secret: 'orders$Secret=1' };

let world: World;
let sidecar: RunningSidecar;

beforeAll(async () => {
  world = await startWorld([{ ...ORDERS, authMethod: 'client_secret_basic' }]);
  const ordersKey = await world.secretKey('orders.json', ORDERS.clientId, ORDERS.secret);
  const config = await world.files.write(
    'routes.yaml',
    [
      'routes:',
      '  - name: orders',
      '    prefix: /orders',
      `    serviceKey: ${ordersKey}`,
      '    rewritePrefix: /http/orders',
      // A longer prefix of another route: what it takes is not the orders route's to map.
      '  - name: special',
      '    prefix: /orders/special',
      `    serviceKey: ${ordersKey}`,
      '    rewritePrefix: /http/special',
    ].join('\n'),
  );
  sidecar = await runSidecar(['--config', config, '--ca', world.caPath, '--allow-host', 'orders-sidecar']);
  world.upstream.setHandler((req, res, body) => {
    body.resume();
    const locations = new URL(req.url ?? '/', 'http://x').searchParams.getAll('location');
    // Written as UTF-8 bytes (node writes a header string as latin1).
    const bytes = locations.map((l) => Buffer.from(l.replace('UP', world.upstream.url), 'utf8').toString('latin1'));
    res.statusCode = req.method === 'POST' ? 201 : 302;
    res.setHeader('location', bytes.length === 1 ? bytes[0]! : bytes);
    res.setHeader('content-length', '0');
    res.end();
    return true;
  });
});

afterAll(async () => {
  await sidecar?.close();
  await world?.close();
});

async function locationFor(location: string, method: 'GET' | 'POST' = 'GET', host?: string): Promise<[number, unknown]> {
  const res = await request(`${sidecar.url}/orders/new?location=${encodeURIComponent(location)}`, {
    method,
    ...(method === 'POST' && { body: '{"id":43}' }),
    ...(host !== undefined && { headers: { host } }),
  });
  await res.body.dump();
  return [res.statusCode, res.headers['location']];
}

it('a 201 with the upstream URL of the created resource points at the sidecar', async () => {
  const host = new URL(sidecar.url).host;
  expect(await locationFor("UP/http/orders/Orders('43')?$format=json", 'POST')).toEqual([201, `http://${host}/orders/Orders('43')?$format=json`]);
  // Not under the route's prefix at a segment boundary (the route would not take the sender's request for it): as it came.
  expect(await locationFor("UP/http/orders('43')", 'POST')).toEqual([201, `${world.upstream.url}/http/orders('43')`]);
  // The Host the sender used, whatever it is (a name the sidecar is reached by in a pod or a container).
  expect(await locationFor('UP/http/orders/43', 'POST', 'orders-sidecar:8080')).toEqual([201, 'http://orders-sidecar:8080/orders/43']);
});

it('a relative redirect stays relative and lands on the route', async () => {
  expect(await locationFor('/http/orders/list?page=2')).toEqual([302, '/orders/list?page=2']);
  expect(await locationFor('list')).toEqual([302, '/orders/list']);
});

it('a redirect elsewhere passes as it came: a login page, another path of the upstream', async () => {
  expect(await locationFor('https://accounts.example.com/login?SAMLRequest=x')).toEqual([302, 'https://accounts.example.com/login?SAMLRequest=x']);
  const outside = `${world.upstream.url}/http/invoices/1`;
  expect(await locationFor(outside)).toEqual([302, outside]);
});

it('a sender without Host (HTTP/1.0) gets the address it reached; UTF-8 in a Location comes back byte for byte', async () => {
  const port = Number(new URL(sidecar.url).port);
  const query = `location=${encodeURIComponent('UP/http/orders/43')}`;
  const answer = await rawRequest(port, `GET /orders/new?${query} HTTP/1.0\r\n\r\n`);
  expect([answer.status, answer.headers['location']]).toEqual([302, `http://127.0.0.1:${port}/orders/43`]);
  // The upstream's bytes of "Müller" (UTF-8): rewriting them would re-encode each byte as a character.
  const [status, location] = await locationFor('UP/http/orders/M\u00fcller');
  expect(status).toBe(302);
  expect(Buffer.from(location as string, 'latin1').toString('utf8')).toBe(`${world.upstream.url}/http/orders/M\u00fcller`);
});

it('a path another route takes is not mapped onto this one; a repeated Location has each value mapped', async () => {
  const host = new URL(sidecar.url).host;
  // /http/orders/special/1 maps to /orders/special/1, which the special route would take (to /http/special/1).
  const taken = `${world.upstream.url}/http/orders/special/1`;
  expect(await locationFor('UP/http/orders/special/1')).toEqual([302, taken]);
  const res = await request(`${sidecar.url}/orders/new?location=${encodeURIComponent('UP/http/orders/1')}&location=${encodeURIComponent('UP/http/orders/2')}`);
  await res.body.dump();
  expect(res.headers['location']).toEqual([`http://${host}/orders/1`, `http://${host}/orders/2`]);
});
