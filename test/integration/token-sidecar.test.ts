/**
 * Token responses that are well-formed but odd, end to end: what a sender gets through a running sidecar
 * (real token endpoint and upstream on port 0).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { MAX_TOKEN_LIFETIME_S } from '../../src/token-client.js';
import { createPki, type Pki } from '../helpers/pki.js';
import { runSidecar, scratch, type RunningSidecar } from '../helpers/sidecar.js';
import { TokenEndpoint } from '../helpers/token-endpoint.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const CLIENT_ID = 'sb-lifetime!b7|it-rt-acme!b196';
const SECRET = 'l1fe$time=secret!|%+:';

let pki: Pki;
/** The token endpoint's clients: a test may add its own. */
const clients = [{ clientId: CLIENT_ID, secret: SECRET }];
let endpoint: TokenEndpoint;
let upstream: Upstream;
let files: Awaited<ReturnType<typeof scratch>>;
let sidecar: RunningSidecar | undefined;

beforeAll(async () => {
  pki = await createPki();
  endpoint = await TokenEndpoint.start({ tls: { cert: pki.server.chain, key: pki.server.key, ca: pki.ca }, clients });
  upstream = await startUpstream(pki, { verify: null });
  files = await scratch();
});

afterAll(async () => {
  await sidecar?.close();
  await Promise.all([endpoint?.close(), upstream?.close()]);
  await files?.cleanup();
});

describe('a token server announcing an absurd lifetime', () => {
  it('expires_in of 1e13 s: the token is used (lifetime capped at 24 h), not failed and fetched again', async () => {
    endpoint.expiresIn = 1e13; // past what a Date can hold, in milliseconds
    const key = await files.write('key.json', JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: endpoint.tokenUrl, url: upstream.url } }));
    const caPath = await files.write('ca.pem', pki.ca);
    const s = (sidecar = await runSidecar(['--service-key', key, '--ca', caPath]));
    for (let i = 0; i < 3; i++) {
      const res = await request(`${s.url}/http/echo`);
      expect(res.statusCode).toBe(200);
      const echoed = (await res.body.json()) as { headers: Record<string, string> };
      expect(echoed.headers['authorization']).toMatch(/^Bearer tok-1-/);
    }
    expect(endpoint.issued).toBe(1);
    const obtained = s.logs.filter((l) => l['msg'] === 'token obtained');
    expect(obtained).toHaveLength(1);
    const expiresAt = Date.parse(String(obtained[0]!['expiresAt']));
    const lifetime = expiresAt - Date.parse(String(obtained[0]!['time']));
    expect(lifetime).toBeGreaterThan(MAX_TOKEN_LIFETIME_S * 1000 - 10_000);
    expect(lifetime).toBeLessThanOrEqual(MAX_TOKEN_LIFETIME_S * 1000);
    expect(s.logs.filter((l) => l['level'] === 'error' || l['msg'] === 'token event not recorded')).toEqual([]);
  });
});

describe('many routes, each with a key of its own', () => {
  it('at start the keys are warmed one after another, a key shared by routes once; a route asked first fetches its own', async () => {
    await sidecar?.close();
    endpoint.expiresIn = 3600;
    const caPath = await files.write('ca-warm.pem', pki.ca);
    const keys: string[] = [];
    for (const name of ['warm-a', 'warm-b']) {
      const client = { clientId: `sb-${name}!b7|it-rt-acme!b196`, secret: `${name}$secret` };
      clients.push(client);
      keys.push(await files.write(`${name}.json`, JSON.stringify({ oauth: { clientid: client.clientId, clientsecret: client.secret, tokenurl: endpoint.tokenUrl, url: upstream.url } })));
    }
    // Route c shares route a's key: one token for both.
    const config = await files.write(
      'warm.yaml',
      ['routes:', ...['a', 'b', 'c'].map((name, i) => `  - { name: ${name}, prefix: /${name}, rewritePrefix: /, serviceKey: ${keys[i % 2]} }`)].join('\n'),
    );
    const client = (s: RunningSidecar, prefix: string) => s.routes.match(`${prefix}/x`)!.tokenClient;
    const before = endpoint.requests.length;
    // One key every 1000 s: only the first is warmed within this test.
    const slow = (sidecar = await runSidecar(['--config', config, '--ca', caPath], {}, { warmUpPerSecond: 0.001 }));
    await expect.poll(() => slow.tokens.peek(client(slow, '/a'))).toBeDefined();
    expect(slow.tokens.peek(client(slow, '/c'))).toBeDefined();
    expect(slow.tokens.peek(client(slow, '/b'))).toBeUndefined();
    const res = await request(`${slow.url}/b/http/echo`);
    expect(res.statusCode, await res.body.text()).toBe(200);
    expect(endpoint.requests.length - before).toBe(2);
    await slow.close();
    // At the default pace both keys are warm soon after start.
    const quick = (sidecar = await runSidecar(['--config', config, '--ca', caPath]));
    await expect.poll(() => quick.tokens.peek(client(quick, '/b'))).toBeDefined();
    expect(quick.tokens.peek(client(quick, '/a'))).toBeDefined();
    expect(endpoint.requests.length - before).toBe(4);
  });

  it('more routes than the token cache once held (64): one token request per key, not one per request', async () => {
    await sidecar?.close();
    endpoint.expiresIn = 3600;
    const routes = 80;
    const caPath = await files.write('ca-many.pem', pki.ca);
    const lines = ['routes:'];
    for (let i = 0; i < routes; i++) {
      const client = { clientId: `sb-many-${i}!b7|it-rt-acme!b196`, secret: `many-${i}$secret` };
      clients.push(client);
      const key = await files.write(`many-${i}.json`, JSON.stringify({ oauth: { clientid: client.clientId, clientsecret: client.secret, tokenurl: endpoint.tokenUrl, url: upstream.url } }));
      lines.push(`  - { name: r${i}, prefix: /r${i}, serviceKey: ${key} }`);
    }
    const config = await files.write('many-routes.yaml', lines.join('\n'));
    const before = endpoint.requests.length;
    const s = (sidecar = await runSidecar(['--config', config, '--ca', caPath]));
    upstream.setHandler((_req, res, body) => {
      body.resume();
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
    });
    // Round-robin over every route, three times: a cache smaller than the routes evicts each token before its next use.
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < routes; i++) {
        const res = await request(`${s.url}/r${i}/http/echo`);
        expect(res.statusCode).toBe(200);
        await res.body.dump();
      }
    }
    // One token request per key (at the start or at its first request), however often each is used.
    expect(endpoint.requests.length - before).toBe(routes);
    expect(s.logs.filter((l) => l['msg'] === 'token obtained')).toHaveLength(routes);
  });
});
