/**
 * A request body sent more than twice: a POST whose token the upstream rejects (401, a new token, sent again)
 * and whose resend then meets SAP's CSRF filter (403 X-CSRF-Token: Required, a token fetched, sent again) goes
 * upstream three times from the one kept copy, each time whole.
 */
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { request } from 'undici';
import { sha256Hex } from '../helpers/net.js';
import { runSidecar, type RunningSidecar } from '../helpers/sidecar.js';
import { startWorld, type World } from '../helpers/world.js';

const CLIENT_ID = 'sb-replay!b1|it-rt-acme!b196';
const SECRET = 'r3play$Secret=value!|%+:';

let world: World;
let sidecar: RunningSidecar;

beforeAll(async () => {
  world = await startWorld([{ clientId: CLIENT_ID, secret: SECRET, authMethod: 'client_secret_basic' }]);
  // A sidecar of its own: one refresh after a 401 per interval, and no CSRF session yet.
  sidecar = await runSidecar(['--service-key', await world.secretKey('key.json', CLIENT_ID, SECRET), '--ca', world.caPath]);
});

afterAll(async () => {
  await sidecar?.close();
  await world?.close();
});

it('a POST answered 401 and then CSRF 403 is sent three times, each time with its whole body, and the sender gets 200', async () => {
  const { upstream } = world;
  const session = { token: 'csrf-' + randomBytes(4).toString('hex'), cookie: 'JSESSIONID=replayed' };
  let rejected: string | undefined;
  upstream.setHandler(async (req, res, body) => {
    if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
      body.resume();
      res.writeHead(200, { 'x-csrf-token': session.token, 'set-cookie': `${session.cookie}; Path=/` }).end();
      return true;
    }
    // Each answer only once the whole body is in, so that every attempt can be weighed in full.
    body.resume();
    await once(body, 'end');
    rejected ??= req.headers.authorization; // the token in use was revoked: the first one seen is refused
    if (req.headers.authorization === rejected) {
      res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' }).end();
    } else if (req.headers['x-csrf-token'] !== session.token || req.headers.cookie !== session.cookie) {
      res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' }).end('<html>CSRF</html>');
    } else {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('booked');
    }
    return true;
  });

  // Several blocks of the kept copy (64 KiB each), well within --max-replay-body.
  const payload = randomBytes(300 * 1024 + 7);
  const res = await request(`${sidecar.url}/http/order`, { method: 'POST', body: payload, headers: { 'content-type': 'application/octet-stream' } });
  const text = await res.body.text();
  expect(res.statusCode, text).toBe(200);
  expect(text).toBe('booked');

  await upstream.settled();
  const posts = upstream.requests.filter((r) => r.method === 'POST' && r.url === '/http/order');
  expect(posts.map((r) => ({ length: r.bodyLength, sha256: r.bodySha256 }))).toEqual(Array(3).fill({ length: payload.length, sha256: sha256Hex(payload) }));
  // The path the test means: a new token from the second attempt on, the CSRF session on the third only.
  const [first, second, third] = posts;
  expect(second!.headers.authorization).not.toBe(first!.headers.authorization);
  expect(third!.headers.authorization).toBe(second!.headers.authorization);
  expect([first, second, third].map((r) => r!.headers['x-csrf-token'])).toEqual([undefined, undefined, session.token]);
  await expect.poll(() => sidecar.logs.find((l) => l['msg'] === 'request' && l['path'] === '/http/order')).toMatchObject({ status: 200, retried: '401-refresh+csrf' });
});
