/**
 * Trust anchors: `--ca` adds to Node's default store instead of replacing it, so
 * the CAs of NODE_EXTRA_CA_CERTS (a corporate image's TLS-inspecting proxy) stay
 * trusted beside an internal CA given with `--ca`, for the token and the upstream
 * pools alike; a CA named nowhere is still refused. Three real CAs, servers on
 * port 0; NODE_EXTRA_CA_CERTS reaches the sidecar through the config's env input.
 */
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { checkRoutes, networkHints } from '../../src/check.js';
import { parseConfig, type Config } from '../../src/config.js';
import { createDemoPki } from '../../src/demo-pki.js';
import { createDispatcher } from '../../src/dispatcher.js';
import { runCli } from '../helpers/cli.js';
import { startConnectProxy } from '../helpers/connect-proxy.js';
import { closeServer, listen, SocketTracker } from '../helpers/net.js';
import { createPki } from '../helpers/pki.js';
import { runSidecar, scratch, type RunningSidecar } from '../helpers/sidecar.js';
import { TokenEndpoint } from '../helpers/token-endpoint.js';

const CLIENT = { clientId: 'sb-ca!b1|it-rt-acme!b196', secret: 'ca$Secret=value' };

interface Tls {
  cert: string;
  key: string;
  ca: string;
}

/** An HTTPS upstream under `tls` that echoes the path and whether a Bearer token came with it. */
async function startEcho(tls: Tls): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer({ cert: tls.cert, key: tls.key }, (req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ url: req.url, bearer: /^Bearer tok-/.test(req.headers.authorization ?? '') }));
  });
  const sockets = new SocketTracker(server);
  const port = await listen(server);
  return { url: `https://127.0.0.1:${port}`, close: () => closeServer(server, sockets) };
}

let files: Awaited<ReturnType<typeof scratch>>;
/** CA A: the corporate CA, named by NODE_EXTRA_CA_CERTS. */
let caAPath: string;
/** CA B: the internal CA, given with --ca. */
let caBPath: string;
type CaName = 'A' | 'B' | 'C';
/** Per CA, an echoing upstream and a token endpoint with server certificates it issued. */
let servers: Record<CaName, { echo: { url: string; close(): Promise<void> }; token: TokenEndpoint }>;
const sidecars: RunningSidecar[] = [];
/** An https:// proxy's certificate, under CA A. */
let proxyTls: Tls;

beforeAll(async () => {
  const [pki, demoB, demoC] = await Promise.all([createPki(), createDemoPki(), createDemoPki()]);
  const tls: Record<CaName, Tls> = {
    A: { cert: pki.server.chain, key: pki.server.key, ca: pki.ca },
    B: { cert: demoB.server.cert, key: demoB.server.key, ca: demoB.ca },
    // C: a CA named nowhere.
    C: { cert: demoC.server.cert, key: demoC.server.key, ca: demoC.ca },
  };
  const start = async (name: CaName) => ({ echo: await startEcho(tls[name]), token: await TokenEndpoint.start({ tls: tls[name], clients: [CLIENT] }) });
  servers = { A: await start('A'), B: await start('B'), C: await start('C') };
  proxyTls = tls.A;
  files = await scratch();
  caAPath = await files.write('corporate-ca.pem', pki.ca);
  caBPath = await files.write('internal-ca.pem', demoB.ca);
});

afterAll(async () => {
  await Promise.all(sidecars.map((s) => s.close()));
  await Promise.all(Object.values(servers ?? {}).flatMap((s) => [s.echo.close(), s.token.close()]));
  await files?.cleanup();
});

/** Config as `serve` parses it: --ca B on the command line, NODE_EXTRA_CA_CERTS A in the environment. */
function config(argv: string[]): Readonly<Config> {
  const result = parseConfig([...argv, '--ca', caBPath], { NODE_EXTRA_CA_CERTS: caAPath });
  if (result.kind !== 'run') throw new Error('expected a config');
  return result.config;
}

function serviceKey(name: string, token: CaName, upstream: CaName): Promise<string> {
  const oauth = { clientid: CLIENT.clientId, clientsecret: CLIENT.secret, tokenurl: servers[token].token.tokenUrl, url: servers[upstream].echo.url };
  return files.write(name, JSON.stringify({ oauth }));
}

describe("node on OpenSSL's store (--use-openssl-ca, as distribution builds of node do by default)", () => {
  it('--ca adds to that store instead of replacing it: a token server under a CA only OpenSSL knows stays trusted', async () => {
    // CA A only in OpenSSL's store (SSL_CERT_FILE), CA B given with --ca, CA C named nowhere.
    const run = async (token: CaName) => {
      const key = await serviceKey(`openssl-store-${token}.json`, token, 'A');
      return runCli(['token', '--service-key', key, '--ca', caBPath], { NODE_OPTIONS: '--use-openssl-ca', SSL_CERT_FILE: caAPath });
    };
    const [a, b, c] = await Promise.all([run('A'), run('B'), run('C')]);
    expect({ code: a.code, stderr: a.stderr }).toEqual({ code: 0, stderr: '' });
    expect({ code: b.code, stderr: b.stderr }).toEqual({ code: 0, stderr: '' });
    expect(c.code).toBe(1);
    expect(c.stderr).toContain('TLS certificate not trusted');
  });
});

describe('an https:// proxy', () => {
  it.each(['::1', '127.0.0.1'])('at an address (%s) is verified against the address its certificate names (undici gives IPv6 in brackets), and sent no SNI', async (host) => {
    // The proxy's certificate (CA A, trusted through NODE_EXTRA_CA_CERTS, as an https:// proxy's must be) names ::1 and 127.0.0.1.
    const proxy = await startConnectProxy({ tls: { cert: proxyTls.cert, key: proxyTls.key }, host });
    try {
      const key = await serviceKey('via-ipv6-proxy.json', 'B', 'A');
      const result = await runCli(['token', '--service-key', key, '--ca', caBPath], { HTTPS_PROXY: proxy.url, NODE_EXTRA_CA_CERTS: caAPath });
      // No DEP0123 warning on stderr either: node warns of an address given as a TLS server name.
      expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
      expect(proxy.tunnels).toEqual([new URL(servers.B.token.tokenUrl).host]);
      // No SNI for an address (RFC 6066 §3), least of all undici's bracketed `[::1]`.
      expect(proxy.serverNames).toEqual([undefined]);
    } finally {
      await proxy.close();
    }
  });
});

describe('--ca files as people paste them', () => {
  it('a JSON-escaped or indented PEM, which OpenSSL alone cannot read, is trusted as the plain one is', async () => {
    const pem = readFileSync(caBPath, 'utf8').trim();
    const escaped = await files.write('escaped-ca.pem', `${JSON.stringify(pem).slice(1, -1)}\n`);
    const indented = await files.write('indented-ca.pem', `${pem.split('\n').map((line) => `    ${line}`).join('\n')}\n`);
    for (const file of [escaped, indented]) {
      const result = parseConfig(['serve', '--service-key', '/unused', '--ca', file], {});
      if (result.kind !== 'run') throw new Error('expected a config');
      const dispatcher = createDispatcher({ network: result.config.network, connectTimeoutMs: 5_000, headersTimeoutMs: 5_000, bodyTimeoutMs: 5_000 });
      try {
        const res = await dispatcher.request({ origin: servers.B.echo.url, path: '/pasted', method: 'GET' });
        expect({ file, status: res.statusCode, body: await res.body.json() }).toEqual({ file, status: 200, body: { url: '/pasted', bearer: false } });
      } finally {
        await dispatcher.close();
      }
    }
  });
});

describe('NODE_EXTRA_CA_CERTS and --ca together', () => {
  it('a dispatcher trusts servers under either CA and still refuses one under a CA named nowhere', async () => {
    const { network } = config(['serve', '--service-key', '/unused']);
    const dispatcher = createDispatcher({ network, connectTimeoutMs: 5_000, headersTimeoutMs: 5_000, bodyTimeoutMs: 5_000 });
    const get = async (name: CaName) => {
      const res = await dispatcher.request({ origin: servers[name].echo.url, path: `/${name}`, method: 'GET' });
      return { status: res.statusCode, body: await res.body.json() };
    };
    try {
      expect(await get('A')).toEqual({ status: 200, body: { url: '/A', bearer: false } });
      expect(await get('B')).toEqual({ status: 200, body: { url: '/B', bearer: false } });
      await expect(get('C')).rejects.toMatchObject({ code: expect.stringMatching(/^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)$/) });
    } finally {
      await dispatcher.close();
    }
  });

  it('a sidecar reaches token servers and upstreams under either CA; under an unnamed CA it answers 503 and 502', async () => {
    const routes = [
      ['tokenB-upstreamA', await serviceKey('k1.json', 'B', 'A')],
      ['tokenA-upstreamB', await serviceKey('k2.json', 'A', 'B')],
      ['tokenC', await serviceKey('k3.json', 'C', 'A')],
      ['upstreamC', await serviceKey('k4.json', 'A', 'C')],
    ];
    const file = await files.write(
      'routes.yaml',
      ['routes:', ...routes.map(([name, key]) => `  - { name: ${name}, prefix: /${name}, serviceKey: ${key} }`)].join('\n'),
    );
    const sidecar = await runSidecar(['--config', file, '--ca', caBPath], { NODE_EXTRA_CA_CERTS: caAPath }, { tokens: { backoff: { minMs: 1, maxMs: 1 } } });
    sidecars.push(sidecar);
    const call = async (path: string) => {
      const res = await request(`${sidecar.url}${path}`);
      return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
    };
    expect(await call('/tokenB-upstreamA/x')).toEqual({ status: 200, body: { url: '/tokenB-upstreamA/x', bearer: true } });
    expect(await call('/tokenA-upstreamB/y')).toEqual({ status: 200, body: { url: '/tokenA-upstreamB/y', bearer: true } });
    expect(await call('/tokenC/z')).toMatchObject({ status: 503, body: { error: 'TOKEN_UNREACHABLE' } });
    expect(await call('/upstreamC/z')).toMatchObject({ status: 502, body: { error: 'UPSTREAM_TLS' } });
  });

  it('NODE_TLS_REJECT_UNAUTHORIZED=0 in the environment does not turn verification off, for token servers or upstreams', async () => {
    const key = await serviceKey('k6.json', 'C', 'A');
    const upstreamC = await serviceKey('k7.json', 'A', 'C');
    const file = await files.write('routes-insecure.yaml', ['routes:', `  - { name: tokenC, prefix: /tokenC, serviceKey: ${key} }`, `  - { name: upstreamC, prefix: /upstreamC, serviceKey: ${upstreamC} }`].join('\n'));
    const saved = process.env['NODE_TLS_REJECT_UNAUTHORIZED'];
    // node's TLS reads the process environment itself when a connection leaves rejectUnauthorized unset.
    process.env['NODE_TLS_REJECT_UNAUTHORIZED'] = '0';
    try {
      const sidecar = await runSidecar(['--config', file, '--ca', caBPath], { NODE_EXTRA_CA_CERTS: caAPath }, { tokens: { backoff: { minMs: 1, maxMs: 1 } } });
      sidecars.push(sidecar);
      const token = await request(`${sidecar.url}/tokenC/x`);
      expect(await token.body.json()).toMatchObject({ error: 'TOKEN_UNREACHABLE' });
      expect(servers.C.token.requests).toHaveLength(0); // the secret never went to a server nobody vouched for
      const upstream = await request(`${sidecar.url}/upstreamC/y`);
      expect(upstream.statusCode).toBe(502);
      expect(await upstream.body.json()).toMatchObject({ error: 'UPSTREAM_TLS' });
    } finally {
      if (saved === undefined) delete process.env['NODE_TLS_REJECT_UNAUTHORIZED'];
      else process.env['NODE_TLS_REJECT_UNAUTHORIZED'] = saved;
    }
  });

  it('a certificate that does not name the host: 502 UPSTREAM_TLS saying so, not advice to add a CA', async () => {
    const pki = await createPki(); // the same (memoised) PKI as CA A's servers: trusted, named for 127.0.0.1
    const server: Server = createServer({ cert: pki.server.chain, key: pki.server.key }, (_req, res) => res.end('never'));
    const sockets = new SocketTracker(server);
    // The certificate names localhost, 127.0.0.1 and ::1; 127.0.0.2 is loopback all the same.
    const port = await listen(server, 0, '127.0.0.2');
    try {
      const oauth = { clientid: CLIENT.clientId, clientsecret: CLIENT.secret, tokenurl: servers.B.token.tokenUrl, url: `https://127.0.0.2:${port}` };
      const key = await files.write('k8.json', JSON.stringify({ oauth }));
      const sidecar = await runSidecar(['--service-key', key, '--ca', caBPath], { NODE_EXTRA_CA_CERTS: caAPath });
      sidecars.push(sidecar);
      const res = await request(`${sidecar.url}/x`);
      expect(res.statusCode).toBe(502);
      const body = (await res.body.json()) as { error: string; message: string };
      expect(body.error).toBe('UPSTREAM_TLS');
      expect(body.message).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
      expect(body.message).toContain('does not name this host');
      expect(body.message).not.toContain('--ca');
      // check gives the same advice.
      const hints = networkHints('tls-trust', '127.0.0.2', { ca: [] }, 'upstream', 'ERR_TLS_CERT_ALTNAME_INVALID');
      expect(hints.join('\n')).toContain('does not name this host');
      expect(hints.join('\n')).not.toContain('--ca');
    } finally {
      await closeServer(server, sockets);
    }
  });

  it('a certificate not issued for TLS servers (INVALID_PURPOSE): UPSTREAM_TLS, TOKEN_UNREACHABLE and check say so, not advice to add a CA', async () => {
    // A client certificate (extended key usage clientAuth only) from CA A, which is trusted: as a server's, it is
    // refused for its purpose, and no CA would change that.
    const pki = await createPki();
    const wrongPurpose = { cert: pki.client.chain, key: pki.client.keyPkcs8, ca: pki.ca };
    const server: Server = createServer({ cert: wrongPurpose.cert, key: wrongPurpose.key }, (_req, res) => res.end('never'));
    const sockets = new SocketTracker(server);
    const port = await listen(server);
    const token = await TokenEndpoint.start({ tls: wrongPurpose, clients: [CLIENT] });
    try {
      const upstreamKey = await files.write('k9.json', JSON.stringify({ oauth: { clientid: CLIENT.clientId, clientsecret: CLIENT.secret, tokenurl: servers.B.token.tokenUrl, url: `https://127.0.0.1:${port}` } }));
      const tokenKey = await files.write('k10.json', JSON.stringify({ oauth: { clientid: CLIENT.clientId, clientsecret: CLIENT.secret, tokenurl: token.tokenUrl, url: servers.A.echo.url } }));
      const routes = await files.write('routes-purpose.yaml', ['routes:', `  - { name: upstream, prefix: /upstream, serviceKey: ${upstreamKey} }`, `  - { name: token, prefix: /token, serviceKey: ${tokenKey} }`].join('\n'));
      const sidecar = await runSidecar(['--config', routes, '--ca', caBPath], { NODE_EXTRA_CA_CERTS: caAPath }, { tokens: { backoff: { minMs: 1, maxMs: 1 } } });
      sidecars.push(sidecar);
      for (const [path, status, code] of [['/upstream/x', 502, 'UPSTREAM_TLS'], ['/token/x', 503, 'TOKEN_UNREACHABLE']] as const) {
        const res = await request(`${sidecar.url}${path}`);
        expect(res.statusCode).toBe(status);
        const body = (await res.body.json()) as { error: string; message: string };
        expect(body.error).toBe(code);
        expect(body.message).toContain('(INVALID_PURPOSE) — the certificate is not issued for TLS servers');
        expect(body.message).toContain('a TLS-inspecting proxy');
        expect(body.message).not.toContain('--ca');
      }
      // check gives the same advice.
      const lines: string[] = [];
      await checkRoutes(config(['check', '--service-key', upstreamKey]), { path: '/http/x', out: (line) => lines.push(line) });
      const text = lines.join('\n');
      expect(text).toMatch(/^FAIL GET https:\/\/127\.0\.0\.1:\d+\/http\/x: the certificate of 127\.0\.0\.1:\d+ is not trusted \(INVALID_PURPOSE\)$/m);
      expect(text).toContain(`the certificate is not issued for TLS servers (its extended key usage, or its chain's, excludes server authentication)`);
      expect(text).not.toContain('add --ca');
    } finally {
      await Promise.all([closeServer(server, sockets), token.close()]);
    }
  });

  it('check says what is trusted and passes for a route whose token server and upstream are under the two CAs', async () => {
    const key = await serviceKey('k5.json', 'B', 'A');
    const lines: string[] = [];
    await checkRoutes(config(['check', '--service-key', key]), { path: '/http/x', out: (line) => lines.push(line) });
    const text = lines.join('\n');
    expect(text).toContain(`ok   trusting Node's default CA store (its bundled Mozilla list; OpenSSL's under --use-openssl-ca, the OS store's with --use-system-ca) plus NODE_EXTRA_CA_CERTS ${caAPath} plus --ca ${caBPath}`);
    expect(text).toMatch(/^ok {3}token obtained with /m);
    expect(text).toMatch(/^ok {3}GET https:\/\/127\.0\.0\.1:\d+\/http\/x .*the token is accepted/m);
    expect(text).not.toMatch(/not trusted/);
    expect(text).toMatch(/^ok {3}summary: 1 route checked, all pass/m);
  });
});

describe('an https:// proxy is verified like any TLS peer', () => {
  it('whose certificate is not trusted is refused before any tunnel: the token request never goes through it', async () => {
    const proxy = await startConnectProxy({ tls: { cert: proxyTls.cert, key: proxyTls.key }, host: '127.0.0.1' });
    try {
      const key = await serviceKey('via-untrusted-proxy.json', 'B', 'A');
      // CA A, which issued the proxy's certificate, is named nowhere this time (no NODE_EXTRA_CA_CERTS).
      const result = await runCli(['token', '--service-key', key, '--ca', caBPath], { HTTPS_PROXY: proxy.url });
      expect(result.code).toBe(1);
      expect(proxy.tunnels).toEqual([]);
    } finally {
      await proxy.close();
    }
  });

  it('whose trusted certificate does not name the address it is reached at is refused before any tunnel', async () => {
    // The certificate names localhost, 127.0.0.1 and ::1; 127.0.0.2 is loopback too, but not named.
    const proxy = await startConnectProxy({ tls: { cert: proxyTls.cert, key: proxyTls.key }, host: '127.0.0.2' });
    try {
      const key = await serviceKey('via-misnamed-proxy.json', 'B', 'A');
      const result = await runCli(['token', '--service-key', key, '--ca', caBPath], { HTTPS_PROXY: proxy.url, NODE_EXTRA_CA_CERTS: caAPath });
      expect(result.code).toBe(1);
      expect(proxy.tunnels).toEqual([]);
    } finally {
      await proxy.close();
    }
  });
});
