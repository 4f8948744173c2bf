/**
 * Shutdown with a token request under way: a token server that does not answer, or a retry waiting out
 * its Retry-After, must not hold the stop up (README "Graceful shutdown"). Real servers on port 0; the
 * token attempt timeout is a minute, so that waiting for it would outlast the test.
 */
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { SidecarError } from '../../src/errors.js';
import { createPki, type Pki } from '../helpers/pki.js';
import { runSidecar, scratch, type RunningSidecar } from '../helpers/sidecar.js';
import { TokenEndpoint } from '../helpers/token-endpoint.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const CLIENT_ID = 'sb-stop!b9|it-rt-acme!b196';
const SECRET = 'st0p$secret=value!|%+:';
/** Far beyond the test timeout (20 s): a stop that waited for the attempt would time the test out. */
const TOKEN_TIMEOUT_MS = 60_000;

let pki: Pki;
let upstream: Upstream;
let files: Awaited<ReturnType<typeof scratch>>;
let caPath: string;
let endpoint: TokenEndpoint | undefined;
let sidecar: RunningSidecar | undefined;

beforeAll(async () => {
  pki = await createPki();
  upstream = await startUpstream(pki, { verify: null });
  files = await scratch();
  caPath = await files.write('ca.pem', pki.ca);
});

afterEach(async () => {
  await sidecar?.close();
  await endpoint?.close();
  sidecar = endpoint = undefined;
});

afterAll(async () => {
  await upstream?.close();
  await files?.cleanup();
});

/** A sidecar whose start-up token request meets the token server in the state `prepare` leaves it. */
async function start(argv: string[], prepare: (endpoint: TokenEndpoint) => void): Promise<{ s: RunningSidecar; endpoint: TokenEndpoint }> {
  const e = (endpoint = await TokenEndpoint.start({ tls: { cert: pki.server.chain, key: pki.server.key, ca: pki.ca }, clients: [{ clientId: CLIENT_ID, secret: SECRET }] }));
  prepare(e);
  const key = await files.write(`key-${Math.random().toString(36).slice(2)}.json`, JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: e.tokenUrl, url: upstream.url } }));
  const s = (sidecar = await runSidecar(['--service-key', key, '--ca', caPath, '--token-timeout', String(TOKEN_TIMEOUT_MS), ...argv]));
  // The start-up (warm-up) token request has reached the token server.
  await expect.poll(() => e.requests.length, { interval: 5 }).toBe(1);
  return { s, endpoint: e };
}

describe('shutdown with a token request under way', () => {
  it('a sender waiting for a token request still connecting (TLS never completes) gets its 503 at the end of the grace period', async () => {
    // Takes the connection and never answers the TLS handshake: undici would act on the abort only at its connect limit.
    const stuck = new Set<Socket>();
    const tcp = createNetServer((socket) => {
      stuck.add(socket);
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
    try {
      const tokenurl = `https://127.0.0.1:${(tcp.address() as AddressInfo).port}/oauth/token`;
      const key = await files.write('key-stuck.json', JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl, url: upstream.url } }));
      const s = (sidecar = await runSidecar(['--service-key', key, '--ca', caPath, '--token-timeout', String(TOKEN_TIMEOUT_MS), '--shutdown-delay', '0', '--shutdown-grace', '200']));
      const waiting = request(`${s.url}/http/echo`).then(
        async (res) => ({ status: res.statusCode, body: (await res.body.json()) as { error: string } }),
        (err: unknown) => err,
      );
      await expect.poll(() => s.metrics.render().then((m) => /oauth_sidecar_requests_in_flight\S* 1\b/.test(m.body)), { interval: 10 }).toBe(true);
      await s.shutdown();
      expect(await waiting).toMatchObject({ status: 503, body: { error: 'TOKEN_UNREACHABLE' } });
    } finally {
      for (const socket of stuck) socket.destroy();
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
    }
  });

  it('close() does not wait for a token server that does not answer', async () => {
    const { s } = await start(['--shutdown-delay', '0', '--shutdown-grace', '0'], (e) => e.fail({ kind: 'hang' }));
    await s.close();
    expect(s.server.listening).toBe(false);
  });

  it('a graceful shutdown() with no request in flight does not wait for it either', async () => {
    const { s } = await start(['--shutdown-delay', '0', '--shutdown-grace', '30000'], (e) => e.fail({ kind: 'hang' }));
    await s.shutdown();
    expect(s.server.listening).toBe(false);
  });

  it('the second signal ends a graceful stop whose in-flight request waits for the token', async () => {
    const { s } = await start(['--shutdown-delay', '0', '--shutdown-grace', '30000'], (e) => e.fail({ kind: 'hang' }));
    // A sender waiting for the (hanging) token: the grace period would give it 30 s.
    const waiting = request(`${s.url}/http/echo`).then(
      (res) => res.body.dump().then(() => res.statusCode),
      (err: unknown) => err,
    );
    await expect.poll(() => s.metrics.render().then((m) => /oauth_sidecar_requests_in_flight\S* 1\b/.test(m.body)), { interval: 10 }).toBe(true);
    const stopping = s.shutdown();
    await s.close(); // the second signal
    await stopping;
    // Its token request is given up before the connections are closed: the sender gets its 503, not a cut.
    expect(await waiting).toBe(503);
  });

  it('at the end of the grace period a sender still waiting for its token gets its 503 before the connections close', async () => {
    const { s } = await start(['--shutdown-delay', '0', '--shutdown-grace', '200'], (e) => e.fail({ kind: 'hang' }));
    const waiting = request(`${s.url}/http/echo`, { method: 'POST', body: '<order/>' }).then(
      async (res) => ({ status: res.statusCode, body: (await res.body.json()) as { error: string; message: string } }),
      (err: unknown) => err,
    );
    await expect.poll(() => s.metrics.render().then((m) => /oauth_sidecar_requests_in_flight\S* 1\b/.test(m.body)), { interval: 10 }).toBe(true);
    await s.shutdown();
    expect(await waiting).toMatchObject({ status: 503, body: { error: 'TOKEN_UNREACHABLE', message: expect.stringMatching(/abandoned: the sidecar is stopping/) } });
    expect(s.logText()).toMatch(/grace period over/);
  });

  it('a readiness probe waiting for the token answers 503 "shutting down" as the stop begins; the admin listener closes without a warning', async () => {
    const { s, endpoint: e } = await start(['--shutdown-delay', '0', '--shutdown-grace', '30000'], (ep) => ep.fail({ kind: 'hang' }, { kind: 'hang' }));
    // Without the start-up request to join, the probe makes a token request of its own: a sign that it waits.
    s.tokens.forget(s.routes.routes[0]!.tokenClient);
    const probe = request(`http://127.0.0.1:${s.adminAddress!.port}/readyz`).then(
      async (res) => ({ status: res.statusCode, body: (await res.body.json()) as unknown }),
      (err: unknown) => err,
    );
    await expect.poll(() => e.requests.length, { interval: 5 }).toBe(2);
    await s.shutdown();
    expect(await probe).toEqual({ status: 503, body: { status: 'shutting down', routes: [] } });
    expect(s.logText()).not.toMatch(/grace period over/);
  });

  it("a retry waiting out the token server's Retry-After ends at close(), without another token request", async () => {
    // 9 s: within the 10 s a retry waits for at most, so the start-up fetch sleeps before its second attempt.
    const { s, endpoint: e } = await start(['--shutdown-delay', '0', '--shutdown-grace', '0'], (ep) =>
      ep.fail({ kind: 'status', status: 429, headers: { 'retry-after': '9' } }),
    );
    // Joins the start-up fetch (single-flight): it settles when that fetch does.
    const joined = s.tokens.getToken(s.routes.routes[0]!.tokenClient).then(
      () => undefined,
      (err: unknown) => err,
    );
    await s.close();
    // Abandoned at once; waiting out the 9 s and trying again would end in TOKEN_RATE_LIMITED instead.
    const settled = await joined;
    expect(settled).toBeInstanceOf(SidecarError);
    expect((settled as SidecarError).message).toMatch(/abandoned: the sidecar is stopping/);
    expect(e.requests).toHaveLength(1);
  });
});
