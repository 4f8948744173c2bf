import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { startConnectProxy, type ConnectProxy } from '../helpers/connect-proxy.js';
import { startOAuthServer, type OAuthServer } from '../helpers/oauth-server.js';
import { createPki, type Pki } from '../helpers/pki.js';
import { runSidecar, scratch, type RunningSidecar } from '../helpers/sidecar.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const SECRET = 'Sup3r$ecret=ValueThatMustNeverBeLogged!|%+:';
const PROXY_PASSWORD = 'Pr0xyPassw0rdNeverLogged';
const SENDER_PASSWORD = 'SenderPasswordNeverLogged';
const CSRF_TOKEN = 'CsrfTokenValueNeverLogged';
const SESSION_COOKIE = 'JSESSIONID=SessionCookieNeverLogged';
const SECRET_ID = 'sb-redact!b1|it-rt-acme!b196';
const CERT_ID = 'sb-redact-cert!b1|it-rt-acme!b196';

let pki: Pki;
let oauth: OAuthServer;
let upstream: Upstream;
let proxy: ConnectProxy;
let files: Awaited<ReturnType<typeof scratch>>;
const sidecars: RunningSidecar[] = [];

beforeAll(async () => {
  pki = await createPki();
  oauth = await startOAuthServer(pki, {
    clients: [
      { clientId: SECRET_ID, secret: SECRET, authMethod: 'client_secret_basic' },
      { clientId: CERT_ID, authMethod: 'tls_client_auth', subjectDn: 'CN=sidecar-client, O=Test, C=DE' },
    ],
  });
  upstream = await startUpstream(pki, { verify: (token) => oauth.verify(token) });
  proxy = await startConnectProxy({ credentials: `corp:${PROXY_PASSWORD}` });
  files = await scratch();
});

afterAll(async () => {
  await Promise.all(sidecars.map((s) => s.close()));
  await Promise.all([upstream?.close(), oauth?.close(), proxy?.close()]);
  await files?.cleanup();
});

/** Every secret value that went through the sidecar during the test. */
function secretsSeen(): string[] {
  const tokens = upstream.requests.map((r) => r.headers.authorization?.replace(/^Bearer /, '')).filter((t): t is string => Boolean(t));
  // Each line of the key's base64 body on its own: in a JSON log line a leaked key has `\n` between them.
  const keyLines = pki.client.keyPkcs1.split('\n').filter((line) => line.length > 0 && !line.startsWith('-----'));
  return [SECRET, PROXY_PASSWORD, SENDER_PASSWORD, CSRF_TOKEN, SESSION_COOKIE.split('=')[1]!, ...keyLines, ...tokens, ...encodedForms()];
}

/** The same secrets as they travel: in Basic headers (token request, proxy, sender), form- and URL-encoded. */
function encodedForms(): string[] {
  const basic = (user: string, password: string) => Buffer.from(`${user}:${password}`).toString('base64');
  return [
    basic(SECRET_ID, SECRET),
    basic(encodeURIComponent(SECRET_ID), encodeURIComponent(SECRET)), // RFC 6749 §2.3.1 form-encodes both first
    basic('corp', PROXY_PASSWORD),
    basic('erp', SENDER_PASSWORD),
    encodeURIComponent(SECRET),
    new URLSearchParams({ s: SECRET }).toString().slice(2),
    encodeURIComponent(PROXY_PASSWORD),
  ];
}

describe('no secret, key or token reaches the log at any level', () => {
  it('through token fetches, mTLS, a proxy, CSRF, 401 replays, sender credentials, failures and rotation', async () => {
    const caPath = await files.write('ca.pem', pki.ca);
    const secretKey = await files.write('secret.json', JSON.stringify({ oauth: { clientid: SECRET_ID, clientsecret: SECRET, tokenurl: oauth.tokenUrl, url: upstream.url } }));
    const certKey = await files.write(
      'cert.json',
      JSON.stringify({ oauth: { clientid: CERT_ID, certificate: pki.client.chain, key: pki.client.keyPkcs1, tokenurl: oauth.tokenUrl, url: upstream.url } }),
    );
    const users = await files.write('users', `erp:${SENDER_PASSWORD}\n`);
    const proxyUrl = `http://corp:${PROXY_PASSWORD}@${proxy.url.slice('http://'.length)}`;

    const viaProxy = await runSidecar(['--service-key', secretKey, '--ca', caPath, '--basic-auth-file', users], { HTTPS_PROXY: proxyUrl, NO_PROXY: '' });
    const mtls = await runSidecar(['--service-key', certKey, '--ca', caPath]);
    sidecars.push(viaProxy, mtls);

    // CSRF-protected flow with a session cookie, and one 401 for a token that must be refreshed.
    let rejectOnce = true;
    upstream.setHandler((req, res, body) => {
      body.resume();
      if (rejectOnce && req.method === 'POST') {
        rejectOnce = false;
        res.writeHead(401).end();
        return true;
      }
      if (req.headers['x-csrf-token'] === 'Fetch') {
        res.writeHead(200, { 'x-csrf-token': CSRF_TOKEN, 'set-cookie': [`${SESSION_COOKIE}; Path=/`] }).end();
        return true;
      }
      if (req.method === 'POST' && req.headers['x-csrf-token'] !== CSRF_TOKEN) {
        res.writeHead(403, { 'x-csrf-token': 'Required' }).end();
        return true;
      }
      res.writeHead(200, { 'set-cookie': [`${SESSION_COOKIE}; Path=/`] }).end('ok');
      return true;
    });
    const senderAuth = { authorization: 'Basic ' + Buffer.from(`erp:${SENDER_PASSWORD}`).toString('base64'), cookie: SESSION_COOKIE };
    for (const s of [viaProxy, mtls]) {
      for (const method of ['GET', 'POST', 'POST'] as const) {
        const res = await request(`${s.url}/http/flow?token=${SECRET}`, { method, body: method === 'POST' ? 'x' : undefined, headers: s === viaProxy ? senderAuth : { cookie: SESSION_COOKIE } });
        expect(res.statusCode).toBe(200);
        await res.body.dump();
      }
    }
    upstream.setHandler(undefined);
    expect(proxy.tunnels.length).toBeGreaterThan(0);

    // Failures: wrong secret at the token server, then a rotation to a broken key that still holds a secret.
    const wrong = await files.write('wrong.json', JSON.stringify({ oauth: { clientid: SECRET_ID, clientsecret: `${SECRET}x`, tokenurl: oauth.tokenUrl, url: upstream.url } }));
    const failing = await runSidecar(['--service-key', wrong, '--ca', caPath], {}, { watch: { pollIntervalMs: 100, debounceMs: 10 } });
    sidecars.push(failing);
    expect((await request(`${failing.url}/http/x`)).statusCode).toBe(502);
    await writeFile(wrong, JSON.stringify({ oauth: { clientid: SECRET_ID, clientsecret: SECRET, tokenurl: 'http://not-loopback.example/oauth/token' } }));
    await expect.poll(() => failing.logs.some((l) => String(l['msg']).startsWith('new credentials rejected')), { interval: 20 }).toBe(true);

    const everything = sidecars.map((s) => s.logText()).join('\n');
    expect(everything.length).toBeGreaterThan(1000);
    expect(everything).toContain('"level":"debug"'); // the most verbose levels were on
    for (const secret of secretsSeen()) expect(everything).not.toContain(secret);
    expect(everything).not.toContain('PRIVATE KEY');
    expect(everything).not.toContain(createHash('sha256').update(SECRET).digest('hex'));
  });
});
