import { createRequire } from 'node:module';
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { request } from 'undici';
import { parseConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { createLoggers } from '../../src/logger.js';
import { startSidecar } from '../../src/sidecar.js';
import { startOAuthServer, type OAuthServer } from '../helpers/oauth-server.js';
import { closedPort, gate } from '../helpers/net.js';
import { createPki, type Pki } from '../helpers/pki.js';
import { runSidecar, scratch, type RunningSidecar } from '../helpers/sidecar.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

/** Every `closeRoute` of the sidecars here, with the client id of the route and when its close is over. */
const closedRoutes = vi.hoisted(() => [] as Array<{ clientId: string; done: Promise<void> }>);
vi.mock('../../src/routes.js', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../../src/routes.js')>();
  return {
    ...actual,
    closeRoute: (route: Parameters<typeof actual.closeRoute>[0]) => {
      const done = actual.closeRoute(route);
      closedRoutes.push({ clientId: route.credentials.clientId, done });
      return done;
    },
  };
});

const OLD = { id: 'sb-old!b1|it-rt-acme!b196', secret: 'old$Secret=1!|%+:' };
const NEW = { id: 'sb-new!b2|it-rt-acme!b196', secret: 'new$Secret=2!|%+:' };
const CERT_ID = 'sb-cert!b3|it-rt-acme!b196';
const WATCH = { pollIntervalMs: 500, debounceMs: 20 };

let pki: Pki;
let oauth: OAuthServer;
let upstream: Upstream;
let files: Awaited<ReturnType<typeof scratch>>;
let caPath: string;
const sidecars: RunningSidecar[] = [];

beforeAll(async () => {
  pki = await createPki();
  oauth = await startOAuthServer(pki, {
    clients: [
      { clientId: OLD.id, secret: OLD.secret, authMethod: 'client_secret_basic' },
      { clientId: NEW.id, secret: NEW.secret, authMethod: 'client_secret_basic' },
      { clientId: CERT_ID, authMethod: 'tls_client_auth', subjectDn: 'CN=sidecar-client, O=Test, C=DE' },
    ],
  });
  upstream = await startUpstream(pki, { verify: (token) => oauth.verify(token) });
  files = await scratch();
  caPath = await files.write('ca.pem', pki.ca);
});

afterAll(async () => {
  await Promise.all(sidecars.map((s) => s.close()));
  await Promise.all([upstream?.close(), oauth?.close()]);
  await files?.cleanup();
});

function keyJson(id: string, secret: string): string {
  return JSON.stringify({ oauth: { clientid: id, clientsecret: secret, tokenurl: oauth.tokenUrl, url: upstream.url } });
}

async function start(serviceKey: string, extra: string[] = []): Promise<RunningSidecar> {
  const s = await runSidecar(['--service-key', serviceKey, '--ca', caPath, ...extra], {}, { watch: WATCH });
  sidecars.push(s);
  return s;
}

/** Keep `concurrency` senders busy until `stop()`; count every answer that is not a 200. */
function load(s: RunningSidecar, concurrency = 8) {
  let running = true;
  let ok = 0;
  const failures: string[] = [];
  const workers = Array.from({ length: concurrency }, async () => {
    while (running) {
      try {
        const res = await request(`${s.url}/http/echo`, { method: 'POST', body: 'ping' });
        const text = await res.body.text();
        if (res.statusCode === 200) ok++;
        else failures.push(`${res.statusCode} ${text.slice(0, 200)}`);
      } catch (err) {
        failures.push(String(err));
      }
    }
  });
  return {
    get ok() {
      return ok;
    },
    async stop() {
      running = false;
      await Promise.all(workers);
      return { ok, failures };
    },
  };
}

/** The `credential_reloads_total` series of a sidecar, as `outcome → count`. */
async function reloadCounts(s: RunningSidecar): Promise<Record<string, number>> {
  const text = (await s.metrics.render()).body;
  const counts: Record<string, number> = {};
  for (const [, outcome, n] of text.matchAll(/^oauth_sidecar_credential_reloads_total\{[^}]*outcome="([^"]+)"[^}]*\} (\d+)$/gm)) counts[outcome!] = Number(n);
  return counts;
}

const fromNewClient = (auth: string | undefined) => Buffer.from((auth ?? '').replace(/^Basic /, ''), 'base64').toString().startsWith('sb-new');

/**
 * Waits until the route a rotation to `clientId` made has been closed, and then for everything that follows it
 * at once (the rotation's end: its metric and log line are counted and written in the same turn).
 */
async function rotationClosed(clientId: string): Promise<void> {
  const closed = () => closedRoutes.find((c) => c.clientId === clientId);
  await expect.poll(closed, { interval: 10, timeout: 10_000 }).toBeDefined();
  await closed()!.done;
  await new Promise((resolve) => setImmediate(resolve));
}

const clientOfLastUpstreamRequest = () => (upstream.requests.at(-1)?.claims as { client_id?: string } | undefined)?.client_id;

async function rotated(s: RunningSidecar, count = 1): Promise<void> {
  await expect.poll(() => s.logs.filter((l) => l['msg'] === 'credentials rotated').length, { interval: 20, timeout: 10_000 }).toBeGreaterThanOrEqual(count);
}

/**
 * A POST to `url` that the upstream holds until the key at `path` has been rotated to the NEW client, and then
 * answers 401: the sidecar must send it again, through the new route, and the sender get that answer.
 */
async function expectResentAcrossRotation(s: RunningSidecar, path: string, url: string): Promise<void> {
  const { arrival, arrived, released, release } = gate();
  let held = 0;
  upstream.setHandler(async (req, res, body) => {
    if (req.url !== url || held > 0) return false;
    held++;
    body.resume();
    arrived();
    await released;
    res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"unauthorised"}');
    return true;
  });
  try {
    const pending = request(`${s.url}${url}`, { method: 'POST', body: '<order/>' });
    await arrival;
    await writeFile(path, keyJson(NEW.id, NEW.secret));
    await rotated(s);
    release(); // the old route's answer: 401, so the request is sent again — now with the new client
    const res = await pending;
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(clientOfLastUpstreamRequest()).toBe(NEW.id);
  } finally {
    release();
    upstream.setHandler(undefined);
  }
}

describe('credential rotation under load', () => {
  it('a flat service key file replaced in place: zero failed requests, new client afterwards', async () => {
    const path = await files.write('flat.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    const traffic = load(s);
    await expect.poll(() => traffic.ok, { interval: 10, timeout: 20_000 }).toBeGreaterThan(20);
    const oldClient = s.routes.routes[0]!.tokenClient;
    expect(s.tokens.peek(oldClient)).toBeDefined();
    // Write-then-rename, as editors and config tools do.
    await writeFile(`${path}.tmp`, keyJson(NEW.id, NEW.secret));
    await rename(`${path}.tmp`, path);
    await rotated(s);
    const before = traffic.ok;
    await expect.poll(() => traffic.ok, { interval: 10, timeout: 20_000 }).toBeGreaterThan(before + 20);
    const { failures } = await traffic.stop();
    expect(failures).toEqual([]);
    expect(clientOfLastUpstreamRequest()).toBe(NEW.id);
    // The replaced key is out of the token cache: only keys in use compete for its places.
    expect(s.tokens.peek(oldClient)).toBeUndefined();
    expect(s.tokens.peek(s.routes.routes[0]!.tokenClient)).toBeDefined();
  });

  it('a Kubernetes secret volume rotated as the kubelet does (..data swap): zero failed requests', async () => {
    const dir = join(files.dir, 'k8s');
    await mkdir(dir);
    const writeVersion = async (name: string, id: string, secret: string) => {
      const version = join(dir, name);
      await mkdir(version);
      await writeFile(join(version, 'oauth'), JSON.stringify({ clientid: id, clientsecret: secret, tokenurl: oauth.tokenUrl, url: upstream.url }));
      await writeFile(join(version, 'plan'), 'integration-flow');
      await writeFile(join(version, 'type'), 'it-rt');
    };
    await writeVersion('..2026_01_01_00_00_00.000000001', OLD.id, OLD.secret);
    await symlink('..2026_01_01_00_00_00.000000001', join(dir, '..data'));
    for (const f of ['oauth', 'plan', 'type']) await symlink(join('..data', f), join(dir, f));

    const s = await start(dir);
    const traffic = load(s);
    await expect.poll(() => traffic.ok, { interval: 10, timeout: 20_000 }).toBeGreaterThan(20);
    // AtomicWriter: new timestamped dir, ..data_tmp symlink renamed over ..data, old dir removed.
    await writeVersion('..2026_01_01_00_01_00.000000002', NEW.id, NEW.secret);
    await symlink('..2026_01_01_00_01_00.000000002', join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    await rm(join(dir, '..2026_01_01_00_00_00.000000001'), { recursive: true });
    await rotated(s);
    const before = traffic.ok;
    await expect.poll(() => traffic.ok, { interval: 10, timeout: 20_000 }).toBeGreaterThan(before + 20);
    const { failures } = await traffic.stop();
    expect(failures).toEqual([]);
    expect(clientOfLastUpstreamRequest()).toBe(NEW.id);
    expect(s.logs.filter((l) => l['msg'] === 'credentials rotated')).toHaveLength(1);
  });

  it('a client certificate rotated under load: the new certificate gets its own token', async () => {
    const certKey = (chain: string, key: string) =>
      JSON.stringify({ oauth: { clientid: CERT_ID, certificate: chain, key, tokenurl: oauth.tokenUrl, url: upstream.url } });
    const path = await files.write('cert.json', certKey(pki.client.chain, pki.client.keyPkcs1));
    const s = await start(path);
    const oldFingerprint = s.routes.routes[0]!.credentials;
    const traffic = load(s);
    await expect.poll(() => traffic.ok, { interval: 10, timeout: 20_000 }).toBeGreaterThan(20);
    const renewed = await pki.issueClientCert({ cn: 'sidecar-client' });
    const tokensBefore = oauth.tokenRequests;
    await writeFile(`${path}.tmp`, certKey(renewed.chain, renewed.keyPkcs8));
    await rename(`${path}.tmp`, path);
    await rotated(s);
    const before = traffic.ok;
    await expect.poll(() => traffic.ok, { interval: 10, timeout: 20_000 }).toBeGreaterThan(before + 20);
    const { failures } = await traffic.stop();
    expect(failures).toEqual([]);
    const current = s.routes.routes[0]!.credentials;
    expect(current.kind).toBe('certificate');
    expect(current.kind === 'certificate' && oldFingerprint.kind === 'certificate' && current.fingerprint !== oldFingerprint.fingerprint).toBe(true);
    expect(oauth.tokenRequests).toBeGreaterThan(tokensBefore);
    expect(oauth.lastRequest).toMatchObject({ authMethod: 'tls_client_auth', certAuthorized: true });
  });

  it('a client certificate left in place: its expiry warning is logged while it runs, then its expiry as such', async () => {
    const path = await files.write(
      'aging-cert.json',
      JSON.stringify({ oauth: { clientid: CERT_ID, certificate: pki.client.chain, key: pki.client.keyPkcs1, tokenurl: oauth.tokenUrl, url: upstream.url } }),
    );
    let clock = new Date();
    const s = await runSidecar(['--service-key', path, '--ca', caPath], {}, { watch: { ...WATCH, now: () => clock } });
    sidecars.push(s);
    const inUse = s.routes.routes[0]!.credentials;
    if (inUse.kind === 'client-secret') throw new Error('expected a certificate key');
    const expiryLines = () => s.logs.filter((l) => /^the client certificate in oauth\.certificate .* expires on /.test(String(l['msg'])));
    const before = expiryLines().length;

    clock = new Date(inUse.notAfter.getTime() - 10 * 86_400_000);
    await expect.poll(() => expiryLines().length, { interval: 20, timeout: 10_000 }).toBe(before + 1);
    expect(expiryLines().at(-1)).toMatchObject({ level: 'warn', route: 'default', source: path, msg: expect.stringMatching(/, in 10 days$/) });
    const res = await request(`${s.url}/http/echo`);
    await res.body.dump();
    expect(res.statusCode).toBe(200);

    clock = new Date(inUse.notAfter.getTime() + 86_400_000);
    await expect.poll(() => s.logs.filter((l) => l['level'] === 'error').length, { interval: 20, timeout: 10_000 }).toBe(1);
    expect(s.logs.find((l) => l['level'] === 'error')).toMatchObject({
      route: 'default',
      msg: 'the client certificate in use has expired: token requests fail until the service key is replaced',
      error: expect.stringMatching(/oauth\.certificate.*expired on/),
    });
    expect(s.logs.some((l) => String(l['msg']).startsWith('new credentials rejected'))).toBe(false);
    expect(expiryLines()).toHaveLength(before + 1);
  });

  it('new credentials no token could be obtained with (token URL unreachable) are not applied until one can', async () => {
    const path = await files.write('unreachable.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    await request(`${s.url}/http/GetTimestamp`).then((r) => r.body.dump());
    // A valid-looking key for the new client, but its token URL refuses connections.
    await writeFile(path, JSON.stringify({ oauth: { clientid: NEW.id, clientsecret: NEW.secret, tokenurl: `https://127.0.0.1:${await closedPort()}/oauth/token`, url: upstream.url } }));
    await expect
      .poll(() => s.logs.some((l) => String(l['msg']).startsWith('new credentials not applied: no token could be obtained with them yet') && l['code'] === 'TOKEN_UNREACHABLE'), { interval: 20, timeout: 10_000 })
      .toBe(true);
    expect(s.logs.some((l) => l['msg'] === 'credentials rotated')).toBe(false);
    const res = await request(`${s.url}/http/echo`);
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(clientOfLastUpstreamRequest()).toBe(OLD.id); // the old credentials and their token keep serving
    // Fixed: applied at the next check.
    await writeFile(path, keyJson(NEW.id, NEW.secret));
    await rotated(s);
    const after = await request(`${s.url}/http/echo`);
    expect(after.statusCode).toBe(200);
    await after.body.dump();
    expect(clientOfLastUpstreamRequest()).toBe(NEW.id);
  });

  it('a request in flight across a rotation that needs a resend (401) goes out through the new route', async () => {
    const path = await files.write('inflight.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    await request(`${s.url}/http/GetTimestamp`).then((r) => r.body.dump());
    await expectResentAcrossRotation(s, path, '/http/echo?inflight');
  });

  it('a 401 across a rotation is resent through the new route even when the old key used its one refresh just before', async () => {
    const path = await files.write('inflight-burnt.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    // The old key's allowance (one refresh per 30 s after a 401) is used up: a 401, a refresh, a resend.
    let rejectedOnce = false;
    upstream.setHandler((req, res) => {
      if (req.url !== '/http/echo?burn' || rejectedOnce) return false;
      rejectedOnce = true;
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"unauthorised"}');
      return true;
    });
    const burn = await request(`${s.url}/http/echo?burn`);
    await burn.body.dump();
    expect([burn.statusCode, rejectedOnce]).toEqual([200, true]);
    // The old key may not refresh again so soon, but the new route has its own token.
    await expectResentAcrossRotation(s, path, '/http/echo?inflight-burnt');
  });

  /**
   * An upstream whose CSRF sessions end with the client that opened them: a fetch opens session n (token and
   * cookie), a POST carrying another client's session or none is answered 403 Required. `hold` keeps the first
   * POST to that URL until released, then answers it 403 Required whatever it carries.
   */
  function csrfPerClient(hold: string, options: { holdStatus?: 401 | 403; holdFetch?: boolean | 401 } = {}) {
    const fetches: Array<{ client: string | undefined; cookie: string | undefined }> = [];
    const posts: Array<{ client: string | undefined; csrf: string | undefined; cookie: string | undefined }> = [];
    const sessions = new Map<string, string>(); // csrf token → client
    const { arrival, arrived, released, release } = gate();
    let held = false;
    upstream.setHandler(async (req, res, body) => {
      const client = (upstream.requests.at(-1)?.claims as { client_id?: string } | undefined)?.client_id;
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        fetches.push({ client, cookie: req.headers.cookie });
        const n = fetches.length;
        if (options.holdFetch && n === 1) {
          arrived();
          await released;
          if (options.holdFetch === 401) {
            res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' }).end(); // the old key deleted
            return true;
          }
        }
        sessions.set(`csrf-${n}`, client ?? '');
        res.writeHead(200, { 'x-csrf-token': `csrf-${n}`, 'set-cookie': `JSESSIONID=s${n}; Path=/` }).end();
        return true;
      }
      if (!req.url?.startsWith('/http/echo?csrf-')) return false;
      const csrf = req.headers['x-csrf-token'] as string | undefined;
      posts.push({ client, csrf, cookie: req.headers.cookie });
      let status = 403;
      if (req.url === hold && !held && !options.holdFetch) {
        held = true;
        arrived();
        await released;
        status = options.holdStatus ?? 403;
      } else if (csrf !== undefined && sessions.get(csrf) === client && req.headers.cookie === `JSESSIONID=s${csrf.slice(5)}`) {
        return false; // the echo
      }
      body.resume();
      if (status === 401) res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"unauthorised"}');
      else res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' }).end('<html>CSRF</html>');
      return true;
    });
    return { fetches, posts, arrival, release };
  }

  it("a CSRF 403 across a rotation: the new route's session is fetched with the new token, none of the old one carried over", async () => {
    const path = await files.write('csrf-inflight.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    const csrf = csrfPerClient('/http/echo?csrf-inflight');
    try {
      const first = await request(`${s.url}/http/echo?csrf-first`, { method: 'POST', body: '<order/>' });
      await first.body.dump();
      expect(first.statusCode).toBe(200); // 403, fetch (session 1 for the old client), resend
      const pending = request(`${s.url}/http/echo?csrf-inflight`, { method: 'POST', body: '<order/>' });
      await csrf.arrival;
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      csrf.release(); // 403 Required: the request is cured through the new route
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(csrf.fetches).toEqual([
        { client: OLD.id, cookie: undefined },
        { client: NEW.id, cookie: undefined },
      ]);
      expect(csrf.posts.at(-1)).toEqual({ client: NEW.id, csrf: 'csrf-2', cookie: 'JSESSIONID=s2' });
    } finally {
      csrf.release();
      upstream.setHandler(undefined);
    }
  });

  it('a 401 across a rotation on a CSRF route: resent without the old session, whose cookies never reach the new route', async () => {
    const path = await files.write('csrf-401.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    const csrf = csrfPerClient('/http/echo?csrf-401', { holdStatus: 401 });
    try {
      const first = await request(`${s.url}/http/echo?csrf-first`, { method: 'POST', body: '<order/>' });
      await first.body.dump();
      expect(first.statusCode).toBe(200);
      const pending = request(`${s.url}/http/echo?csrf-401`, { method: 'POST', body: '<order/>' });
      await csrf.arrival;
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      csrf.release(); // 401: resent through the new route, which has no session yet (403), then cured
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      const fromNew = csrf.posts.filter((p) => p.client === NEW.id);
      expect(fromNew.at(-1)).toEqual({ client: NEW.id, csrf: 'csrf-2', cookie: 'JSESSIONID=s2' });
      expect(fromNew.every((p) => p.cookie !== 'JSESSIONID=s1' && p.csrf !== 'csrf-1')).toBe(true);
      expect(csrf.fetches).toEqual([
        { client: OLD.id, cookie: undefined },
        { client: NEW.id, cookie: undefined },
      ]);
    } finally {
      csrf.release();
      upstream.setHandler(undefined);
    }
  });

  it.each([
    ["a rotation while a CSRF cure fetches its session: that old session is dropped, the new route's fetched and used", 'csrf-fetching', true],
    ["a CSRF fetch answered 401 across a rotation: not fetched again through the old route's closed pool, but through the new one", 'csrf-fetch-401', 401],
  ] as const)('%s', async (_name, name, holdFetch) => {
    const path = await files.write(`${name}.json`, keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    const csrf = csrfPerClient(`/http/echo?${name}`, { holdFetch });
    try {
      const pending = request(`${s.url}/http/echo?${name}`, { method: 'POST', body: '<order/>' });
      await csrf.arrival; // the first fetch (the old client's session) is held, then answered (200, or 401: the old key deleted)
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      csrf.release();
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(csrf.fetches.map((f) => f.client)).toEqual([OLD.id, NEW.id]);
      expect(csrf.posts.at(-1)).toEqual({ client: NEW.id, csrf: 'csrf-2', cookie: 'JSESSIONID=s2' });
      expect(csrf.posts.filter((p) => p.client === NEW.id).every((p) => p.csrf !== 'csrf-1')).toBe(true);
      // No refresh for the replaced credentials, so no warning of one abandoned: the 401 was the old key's.
      expect(s.logs.filter((l) => l['level'] === 'warn' && l['msg'] !== 'request').map((l) => l['msg'])).toEqual([]);
    } finally {
      csrf.release();
      upstream.setHandler(undefined);
    }
  });

  it('a GET whose pooled connection is reset across a rotation is sent again through the new route, with its token', async () => {
    const path = await files.write('reconnect.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    await request(`${s.url}/http/echo?warm`).then((r) => r.body.dump()); // the pooled connection
    const { arrival, arrived, released, release } = gate();
    let held = false;
    upstream.setHandler(async (req) => {
      if (req.url !== '/http/echo?reset-across' || held) return false;
      held = true;
      arrived();
      await released;
      req.socket.destroy(); // the pooled connection dies as the request went out on it
      return true;
    });
    try {
      const pending = request(`${s.url}/http/echo?reset-across`);
      await arrival;
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      release();
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(upstream.requests.filter((r) => r.url === '/http/echo?reset-across').map((r) => (r.claims as { client_id?: string }).client_id)).toEqual([OLD.id, NEW.id]);
    } finally {
      release();
      upstream.setHandler(undefined);
    }
  });

  it('a CSRF 403 across a rotation to a body too long to resend: the next session is fetched for the new route alone', async () => {
    const path = await files.write('csrf-long.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path, ['--max-replay-body', '1024']);
    const csrf = csrfPerClient('/http/echo?csrf-long');
    try {
      const first = await request(`${s.url}/http/echo?csrf-first`, { method: 'POST', body: '<order/>' });
      await first.body.dump();
      expect(first.statusCode).toBe(200);
      const pending = request(`${s.url}/http/echo?csrf-long`, { method: 'POST', body: Buffer.alloc(4096, 'x') });
      await csrf.arrival;
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      csrf.release();
      const res = await pending;
      expect(res.statusCode).toBe(403); // not resent: its body is beyond the copy
      await res.body.dump();
      await expect.poll(() => csrf.fetches.length, { interval: 10, timeout: 10_000 }).toBe(2);
      expect(csrf.fetches[1]).toEqual({ client: NEW.id, cookie: undefined });
      const next = await request(`${s.url}/http/echo?csrf-next`, { method: 'POST', body: '<order/>' });
      await next.body.dump();
      expect(next.statusCode).toBe(200);
      expect(csrf.posts.at(-1)).toEqual({ client: NEW.id, csrf: 'csrf-2', cookie: 'JSESSIONID=s2' });
    } finally {
      csrf.release();
      upstream.setHandler(undefined);
    }
  });

  it("a rotation while a CSRF fetch's 401 waits for the old key's refresh (given up at the swap): the request goes on to the new route's session", async () => {
    const path = await files.write('csrf-refresh.json', keyJson(OLD.id, OLD.secret));
    const fromOldClient = (auth: string | undefined) => Buffer.from((auth ?? '').replace(/^Basic /, ''), 'base64').toString().startsWith('sb-old');
    let oldTokenRequests = 0;
    let held: ServerResponse | undefined;
    oauth.setInterceptor((req, res) => {
      if (!fromOldClient(req.headers.authorization) || ++oldTokenRequests === 1) return false; // the start-up token: served
      req.resume();
      held = res; // the refresh after the fetch's 401
      return true;
    });
    const fetches: Array<string | undefined> = [];
    const sessions = new Map<string, string | undefined>();
    upstream.setHandler(async (req, res, body) => {
      const client = (upstream.requests.at(-1)?.claims as { client_id?: string } | undefined)?.client_id;
      if (req.method === 'GET' && req.headers['x-csrf-token'] === 'Fetch') {
        fetches.push(client);
        if (client === OLD.id) {
          res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' }).end(); // the old key deleted
          return true;
        }
        sessions.set(`csrf-${fetches.length}`, client);
        res.writeHead(200, { 'x-csrf-token': `csrf-${fetches.length}`, 'set-cookie': `JSESSIONID=s${fetches.length}; Path=/` }).end();
        return true;
      }
      const csrf = req.headers['x-csrf-token'] as string | undefined;
      if (csrf !== undefined && sessions.get(csrf) === client) return false; // the echo
      body.resume();
      res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' }).end('<html>CSRF</html>');
      return true;
    });
    try {
      const s = await start(path);
      const pending = request(`${s.url}/http/echo?csrf-refresh`, { method: 'POST', body: '<order/>' });
      await expect.poll(() => held, { interval: 10, timeout: 10_000 }).toBeDefined();
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      held!.writeHead(200, { 'content-type': 'application/json' });
      held!.end(JSON.stringify({ access_token: 'old-client-refreshed', token_type: 'bearer', expires_in: 3600 }));
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(fetches).toEqual([OLD.id, NEW.id]);
      expect(clientOfLastUpstreamRequest()).toBe(NEW.id);
      // The old route's fetch was given up, not failed: no warning that requests fail.
      expect(s.logs.filter((l) => String(l['msg']).startsWith('CSRF token fetch failed'))).toEqual([]);
    } finally {
      oauth.setInterceptor(undefined);
      upstream.setHandler(undefined);
    }
  });

  it('a request waiting for its token across a rotation goes out through the new route, not the closed old one', async () => {
    const path = await files.write('waiting.json', keyJson(OLD.id, OLD.secret));
    const fromOldClient = (auth: string | undefined) => Buffer.from((auth ?? '').replace(/^Basic /, ''), 'base64').toString().startsWith('sb-old');
    let held: ServerResponse | undefined;
    oauth.setInterceptor((req, res) => {
      if (!fromOldClient(req.headers.authorization)) return false;
      req.resume();
      held = res;
      return true;
    });
    try {
      const s = await start(path);
      await expect.poll(() => held, { interval: 10, timeout: 10_000 }).toBeDefined(); // the start-up token request
      const pending = request(`${s.url}/http/echo?waiting`, { method: 'POST', body: '<order/>' });
      const inFlight = async () => (await s.metrics.render()).body.match(/^oauth_sidecar_requests_in_flight (\d+)$/m)?.[1];
      await expect.poll(inFlight, { interval: 10, timeout: 10_000 }).toBe('1'); // it waits for that token
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      // The old client's token comes only now: the request that waited for it must not use the old route's closed pools.
      held!.writeHead(200, { 'content-type': 'application/json' });
      held!.end(JSON.stringify({ access_token: 'old-client-token', token_type: 'bearer', expires_in: 3600 }));
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(clientOfLastUpstreamRequest()).toBe(NEW.id);
    } finally {
      oauth.setInterceptor(undefined);
    }
  });

  it('a request waiting for a token the old credentials never get goes out through the new route as soon as the swap is made', async () => {
    const path = await files.write('waiting-hung.json', keyJson(OLD.id, OLD.secret));
    const fromOldClient = (auth: string | undefined) => Buffer.from((auth ?? '').replace(/^Basic /, ''), 'base64').toString().startsWith('sb-old');
    const hung: ServerResponse[] = [];
    oauth.setInterceptor((req, res) => {
      if (!fromOldClient(req.headers.authorization)) return false;
      req.resume();
      hung.push(res); // the token server never answers the old client
      return true;
    });
    try {
      // The old client's token request would end only at its timeout, far beyond this test's own.
      const s = await start(path, ['--token-timeout', '600000']);
      await expect.poll(() => hung.length, { interval: 10, timeout: 10_000 }).toBeGreaterThan(0);
      const pending = request(`${s.url}/http/echo?waiting-hung`, { method: 'POST', body: '<order/>' });
      const inFlight = async () => (await s.metrics.render()).body.match(/^oauth_sidecar_requests_in_flight (\d+)$/m)?.[1];
      await expect.poll(inFlight, { interval: 10, timeout: 10_000 }).toBe('1');
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(clientOfLastUpstreamRequest()).toBe(NEW.id);
      expect(hung.every((r) => !r.writableEnded)).toBe(true);
    } finally {
      oauth.setInterceptor(undefined);
      for (const res of hung) res.destroy();
    }
  });

  it("rotating one route does not give up a token request another route with the same client is waiting for", async () => {
    // Two routes, two files, one client: one cache key, so the request on /b joins the fetch route a's client began.
    const a = await files.write('shared-a.json', keyJson(OLD.id, OLD.secret));
    const b = await files.write('shared-b.json', keyJson(OLD.id, OLD.secret));
    const routes = JSON.stringify({ routes: [{ name: 'a', prefix: '/a', rewritePrefix: '/', serviceKey: a }, { name: 'b', prefix: '/b', rewritePrefix: '/', serviceKey: b }] });
    const config = await files.write('shared.json', routes);
    const fromOldClient = (auth: string | undefined) => Buffer.from((auth ?? '').replace(/^Basic /, ''), 'base64').toString().startsWith('sb-old');
    const hung: ServerResponse[] = [];
    oauth.setInterceptor((req, res) => {
      if (!fromOldClient(req.headers.authorization)) return false;
      req.resume();
      hung.push(res); // the old client's first token request hangs
      return true;
    });
    try {
      const s = await runSidecar(['--config', config, '--ca', caPath, '--token-timeout', '600000'], {}, { watch: WATCH });
      sidecars.push(s);
      await expect.poll(() => hung.length, { interval: 10, timeout: 10_000 }).toBe(1);
      const pending = request(`${s.url}/b/http/echo?shared`, { method: 'POST', body: '<order/>' });
      const inFlight = async () => (await s.metrics.render()).body.match(/^oauth_sidecar_requests_in_flight (\d+)$/m)?.[1];
      await expect.poll(inFlight, { interval: 10, timeout: 10_000 }).toBe('1');
      await writeFile(a, keyJson(NEW.id, NEW.secret));
      await rotated(s);
      // The hung attempt fails now; its retry, which the token server answers, brings route b its token.
      oauth.setInterceptor(undefined);
      for (const res of hung) res.destroy();
      const res = await pending;
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      expect(clientOfLastUpstreamRequest()).toBe(OLD.id);
      expect(s.logs.filter((l) => /abandoned/.test(String(l['error'] ?? l['msg'])))).toEqual([]);
      // Route b still uses the key route a left: its token stays cached.
      expect(s.tokens.peek(s.routes.match('/b/x')!.tokenClient)).toBeDefined();
      // Counted under the routes each fetch was for when it ended: the new client's (validating a's rotation) under
      // a; the old client's, begun for a and b, under b alone, as a had left that key by then.
      const fetches = (await s.metrics.render()).body.match(/^oauth_sidecar_token_fetches_total\{.*$/gm);
      expect(fetches?.sort()).toEqual(['oauth_sidecar_token_fetches_total{route="a",outcome="success"} 1', 'oauth_sidecar_token_fetches_total{route="b",outcome="success"} 1']);
    } finally {
      oauth.setInterceptor(undefined);
      for (const res of hung) res.destroy();
    }
  });

  it('a rotation whose token request is still under way at shutdown is not applied, and its new route is closed', async () => {
    const path = await files.write('late.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    closedRoutes.length = 0;
    let held: ServerResponse | undefined;
    oauth.setInterceptor((req, res) => {
      if (!fromNewClient(req.headers.authorization)) return false;
      held = res;
      return true;
    });
    try {
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await expect.poll(() => held, { interval: 10, timeout: 10_000 }).toBeDefined();
      const closing = s.close();
      held!.writeHead(200, { 'content-type': 'application/json' });
      held!.end(JSON.stringify({ access_token: 'late-token', token_type: 'bearer', expires_in: 3600 }));
      await closing;
      await rotationClosed(NEW.id);
      expect(s.logs.filter((l) => l['msg'] === 'credentials rotated')).toHaveLength(0);
      expect(await reloadCounts(s)).toEqual({});
      const route = s.routes.routes[0]!;
      expect(route.credentials.clientId).toBe(OLD.id);
      // undici's dispatchers say whether they were destroyed (`DispatcherBase#destroyed`), though its types do not.
      expect((route.dispatcher as unknown as { destroyed: boolean }).destroyed).toBe(true);
    } finally {
      oauth.setInterceptor(undefined);
    }
  });

  it('a rotation whose token request hangs is abandoned by close(): not applied, not counted, not logged as rotated', async () => {
    const path = await files.write('hanging.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    closedRoutes.length = 0;
    let held = false;
    oauth.setInterceptor((req) => {
      if (!fromNewClient(req.headers.authorization)) return false;
      req.resume();
      held = true; // never answered: only close() ends the wait
      return true;
    });
    try {
      await writeFile(path, keyJson(NEW.id, NEW.secret));
      await expect.poll(() => held, { interval: 10, timeout: 10_000 }).toBe(true);
      // close() abandons the token request and waits for the rotation to wind down: nothing is left to count.
      await s.close();
      await rotationClosed(NEW.id);
      expect(await reloadCounts(s)).toEqual({});
      expect(s.logs.filter((l) => l['msg'] === 'credentials rotated')).toHaveLength(0);
      expect(s.logs.some((l) => String(l['msg']).startsWith('new credentials rejected'))).toBe(false);
      expect(s.routes.routes[0]!.credentials.clientId).toBe(OLD.id);
    } finally {
      oauth.setInterceptor(undefined);
    }
  });

  it("a rotated secret the token server rejects: its token request's log lines name the route it was for", async () => {
    const path = await files.write('wrong-secret.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    await request(`${s.url}/http/GetTimestamp`).then((r) => r.body.dump());
    await writeFile(path, keyJson(OLD.id, 'not-the-Secret=1'));
    const rejected = () => s.logs.find((l) => l['code'] === 'TOKEN_REJECTED' && Array.isArray(l['routes']));
    await expect.poll(rejected, { interval: 20, timeout: 10_000 }).toBeDefined();
    expect(rejected()!['routes']).toEqual(['default']);
    // …and so does the metric: the first token's success and the rotation's rejection, both under its route.
    const fetches = (await s.metrics.render()).body;
    expect(fetches).toMatch(/^oauth_sidecar_token_fetches_total\{route="default",outcome="success"\} 1$/m);
    expect(fetches).toMatch(/^oauth_sidecar_token_fetches_total\{route="default",outcome="TOKEN_REJECTED"\} [1-9]\d*$/m);
    expect(s.logText()).not.toContain('not-the-Secret=1');
  });

  it('the key in use restored after a broken one: the failure is cleared, and the log says so', async () => {
    const path = await files.write('restored.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    await writeFile(path, '{"oauth": ');
    await expect.poll(() => s.logs.some((l) => String(l['msg']).startsWith('new credentials rejected')), { interval: 20, timeout: 10_000 }).toBe(true);
    await writeFile(path, keyJson(OLD.id, OLD.secret));
    const over = () => s.logs.find((l) => String(l['msg']).startsWith('the service key matches the credentials in use again'));
    await expect.poll(over, { interval: 20, timeout: 10_000 }).toMatchObject({ level: 'info', route: 'default' });
    const metrics = await (await request(`http://127.0.0.1:${s.adminAddress!.port}/metrics`)).body.text();
    expect(metrics).toMatch(/oauth_sidecar_credentials_reload_failing\{route="default"\} 0/);
  });

  it('invalid new credentials are not applied: old ones keep serving, the error shows in logs, readiness and metrics', async () => {
    const path = await files.write('broken.json', keyJson(OLD.id, OLD.secret));
    const s = await start(path);
    await request(`${s.url}/http/GetTimestamp`).then((r) => r.body.dump());
    await writeFile(path, JSON.stringify({ oauth: { clientid: NEW.id, tokenurl: oauth.tokenUrl, url: upstream.url } }));
    // writeFile truncates first: a reload may catch the file empty (refused as such) before the whole key is read.
    const warning = async () => ((await (await request(`http://127.0.0.1:${s.adminAddress!.port}/readyz`)).body.json()) as { routes: Array<{ credentialWarning?: string }> }).routes[0]?.credentialWarning;
    await expect.poll(warning, { interval: 20, timeout: 10_000 }).toMatch(/CONFIG_INVALID.*clientsecret/s);
    expect(s.logs.some((l) => l['msg']?.toString().startsWith('new credentials rejected'))).toBe(true);
    const res = await request(`${s.url}/http/echo`);
    expect(res.statusCode).toBe(200);
    expect(((await res.body.json()) as { headers: Record<string, string> }).headers['authorization']).toMatch(/^Bearer /);
    expect(clientOfLastUpstreamRequest()).toBe(OLD.id);

    const ready = await request(`http://127.0.0.1:${s.adminAddress!.port}/readyz`);
    expect(ready.statusCode).toBe(200);
    const body = (await ready.body.json()) as { routes: Array<{ credentialWarning?: string }> };
    expect(body.routes[0]?.credentialWarning).toMatch(/CONFIG_INVALID.*clientsecret/s);
    const metrics = await (await request(`http://127.0.0.1:${s.adminAddress!.port}/metrics`)).body.text();
    expect(metrics).toMatch(/oauth_sidecar_credentials_reload_failing\{route="default"\} 1/);

    // A later valid key is applied and clears the warning.
    await writeFile(path, keyJson(NEW.id, NEW.secret));
    await rotated(s);
    const after = await request(`http://127.0.0.1:${s.adminAddress!.port}/readyz`);
    expect(((await after.body.json()) as { routes: Array<{ credentialWarning?: string }> }).routes[0]?.credentialWarning).toBeUndefined();
    expect(await reloadCounts(s)).toEqual({ CONFIG_INVALID: expect.any(Number), applied: 1 });
    expect(s.logText()).not.toContain(NEW.secret);
    expect(s.logText()).not.toContain(OLD.secret);
  });
});

describe('a listener that cannot start', () => {
  /** Starts a sidecar from argv and env as `serve` would; the failure it ends with. */
  async function startFailure(argv: string[], env: Record<string, string>): Promise<ConfigError> {
    const result = parseConfig(['serve', '--ca', caPath, ...argv], env);
    if (result.kind !== 'run') throw new Error('expected a runnable config');
    const loggers = createLoggers({ level: 'silent' });
    const err = await startSidecar(result.config, loggers, { defaultMetrics: false }).then(
      async (s) => {
        await s.close();
        return new Error('started');
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }

  async function takenPort<T>(use: (port: number) => Promise<T>): Promise<T> {
    const taken = createNetServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    try {
      return await use((taken.address() as AddressInfo).port);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  }

  it('names every place the address may come from, here SIDECAR_LISTEN', async () => {
    const path = await files.write('listen-env.json', keyJson(OLD.id, OLD.secret));
    await takenPort(async (port) => {
      const err = await startFailure(['--service-key', path, '--admin-listen', 'off'], { SIDECAR_LISTEN: `127.0.0.1:${port}` });
      expect(err.problems).toEqual([
        { source: '--listen / SIDECAR_LISTEN', field: 'listen', message: `cannot listen on 127.0.0.1:${port}: the address is in use (EADDRINUSE)` },
      ]);
      expect(err.message).toContain('(--listen / SIDECAR_LISTEN)');
    });
  });

  it('says the admin address may be the listen address under another name (its IPv4-mapped form beside it)', async () => {
    const path = await files.write('listen-alias.json', keyJson(OLD.id, OLD.secret));
    // `[::ffff:127.0.0.1]` takes 127.0.0.1's port, which the config cannot tell from the text (nor an /etc/hosts name).
    const listenText = '[::ffff:127.0.0.1]';
    // A port free a moment ago: the sidecar's own listener is the one that must hold it.
    const port = await closedPort();
    const err = await startFailure(['--service-key', path, '--listen', `${listenText}:${port}`, '--admin-listen', `127.0.0.1:${port}`], {});
    expect(err.problems).toEqual([
      {
        source: '--admin-listen / SIDECAR_ADMIN_LISTEN',
        field: 'admin-listen',
        message: `cannot listen on 127.0.0.1:${port}: the address is in use (EADDRINUSE) (perhaps by this sidecar's own listen address, ${listenText}:${port}, if both name the same address)`,
      },
    ]);
  });

  it('`localhost` listens on 127.0.0.1 also where the resolver puts ::1 first, so senders calling 127.0.0.1 reach it', async () => {
    const path = await files.write('listen-localhost.json', keyJson(OLD.id, OLD.secret));
    // As glibc answers with both `127.0.0.1 localhost` and `::1 localhost` in /etc/hosts (Debian, Docker, the kubelet's);
    // node's `listen` looks a name up through this module object.
    const dns = createRequire(import.meta.url)('node:dns') as { lookup: (...args: unknown[]) => void };
    const original = dns.lookup;
    const sixFirst = (host: unknown, ...rest: unknown[]): void => {
      const callback = rest.at(-1) as (err: Error | null, address: unknown, family?: number) => void;
      const options = (typeof rest[0] === 'object' && rest[0] !== null ? rest[0] : {}) as { all?: boolean };
      if (String(host).toLowerCase() !== 'localhost') return original(host, ...rest);
      if (options.all) callback(null, [{ address: '::1', family: 6 }, { address: '127.0.0.1', family: 4 }]);
      else callback(null, '::1', 6);
    };
    dns.lookup = sixFirst;
    let s: RunningSidecar;
    try {
      s = await runSidecar(['--service-key', path, '--ca', caPath, '--listen', 'localhost:0', '--admin-listen', 'localhost:0'], {}, { watch: WATCH });
    } finally {
      dns.lookup = original;
    }
    sidecars.push(s);
    expect([s.address.host, s.adminAddress?.host]).toEqual(['127.0.0.1', '127.0.0.1']);
    const res = await request(`http://127.0.0.1:${s.address.port}/http/echo?localhost`);
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  });

  it('names the config file key too when a config file is in use, here adminListen', async () => {
    const key = await files.write('listen-file.json', keyJson(OLD.id, OLD.secret));
    await takenPort(async (port) => {
      const config = await files.write('listen-file.yaml', `listen: 127.0.0.1:0\nadminListen: 127.0.0.1:${port}\nroutes:\n  - prefix: /\n    serviceKey: ${key}\n`);
      const err = await startFailure(['--config', config], {});
      expect(err.problems).toEqual([
        {
          source: `--admin-listen / SIDECAR_ADMIN_LISTEN / adminListen in ${config}`,
          field: 'admin-listen',
          message: `cannot listen on 127.0.0.1:${port}: the address is in use (EADDRINUSE)`,
        },
      ]);
    });
  });
});
