import { createServer as createHttpsServer } from 'node:https';
import { createServer as createTcpServer, type Server as TcpServer } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { checkRoutes, describeCredentials, type CheckOptions } from '../../src/check.js';
import { parseConfig, type Env } from '../../src/config.js';
import { loadCredentials } from '../../src/credentials.js';
import { createDemoPki } from '../../src/demo-pki.js';
import { decodeJwtClaims } from '../../src/jwt.js';
import { startConnectProxy } from '../helpers/connect-proxy.js';
import { SocketTracker, closeServer, closedPort, listen } from '../helpers/net.js';
import { DEFAULT_SCOPE, startOAuthServer, type OAuthServer } from '../helpers/oauth-server.js';
import { CLIENT_SUBJECT, createPki, type Pki } from '../helpers/pki.js';
import { scratch } from '../helpers/sidecar.js';
import { unitCerts } from '../helpers/unit-certs.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const CLIENT_ID = 'sb-check!b1|it-rt-acme!b196';
const SECRET = 'check$Secret=value!|%+:';
const CERT_CLIENT_ID = 'sb-check-cert!b1|it-rt-acme!b196';
const JWT_SHAPE = /eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/;

let pki: Pki;
let oauth: OAuthServer;
let upstream: Upstream;
let files: Awaited<ReturnType<typeof scratch>>;
let keyPath: string;
let caPath: string;

beforeAll(async () => {
  pki = await createPki();
  oauth = await startOAuthServer(pki, {
    clients: [
      { clientId: CLIENT_ID, secret: SECRET, authMethod: 'client_secret_basic' },
      { clientId: CERT_CLIENT_ID, authMethod: 'tls_client_auth', subjectDn: CLIENT_SUBJECT },
    ],
  });
  upstream = await startUpstream(pki, { verify: (token) => oauth.verify(token) });
  files = await scratch();
  keyPath = await writeKey('key.json', { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: oauth.tokenUrl, url: upstream.url });
  caPath = await files.write('ca.pem', pki.ca);
});

afterEach(() => {
  upstream.setHandler(undefined);
  oauth.setInterceptor(undefined);
});

afterAll(async () => {
  await Promise.all([upstream?.close(), oauth?.close()]);
  await files?.cleanup();
});

function writeKey(name: string, oauthFields: Record<string, string>): Promise<string> {
  return files.write(name, JSON.stringify({ oauth: oauthFields }));
}

interface CheckRun {
  ok: boolean;
  lines: string[];
  text: string;
}

/** Build a config as the CLI would (the `token` command stands in for `check`) and run the check in-process. */
async function check(argv: string[], options: Omit<CheckOptions, 'out'> = {}, env: Env = {}): Promise<CheckRun> {
  const result = parseConfig(['token', ...argv], env);
  if (result.kind !== 'run') throw new Error('expected a runnable config');
  const lines: string[] = [];
  const { ok } = await checkRoutes(result.config, { ...options, out: (line) => lines.push(line) });
  return { ok, lines, text: lines.join('\n') };
}

/** The healthy flags: the key, the test CA, and the scope the test token server grants only on request. */
function healthy(...extra: string[]): string[] {
  return ['--service-key', keyPath, '--ca', caPath, '--scope', DEFAULT_SCOPE, ...extra];
}

function lastToken(): string {
  const authorization = upstream.requests.at(-1)?.headers.authorization ?? '';
  return authorization.replace(/^Bearer /, '');
}

function statusLines(run: CheckRun, level: 'ok' | 'warn' | 'FAIL'): string[] {
  return run.lines.filter((line) => line.startsWith(`${level.padEnd(4)} `));
}

function expectNoSecrets(run: CheckRun, ...secrets: string[]): void {
  for (const secret of [SECRET, ...secrets]) expect(run.text).not.toContain(secret);
  expect(run.text).not.toMatch(JWT_SHAPE);
  expect(run.text).not.toMatch(/PRIVATE KEY|BEGIN CERTIFICATE/);
}

describe('oauth-sidecar check: a working setup', () => {
  it('reports key, token (client id, scope, expiry) and a 200 from the iFlow, with no secret or token', async () => {
    const run = await check(healthy(), { path: '/http/GetTimestamp' });
    expect(run.ok).toBe(true);
    const token = lastToken();
    expect(token).not.toBe('');
    expectNoSecrets(run, token);
    expect(upstream.requests.at(-1)?.url).toBe('/http/GetTimestamp');
    expect(upstream.requests.at(-1)?.headers['x-csrf-token']).toBe('Fetch');
    expect(run.text).toContain(`service key: ${keyPath}`);
    expect(run.text).toContain(`key type: ClientId/Secret, clientid ${CLIENT_ID}`);
    expect(run.text).toContain(`token URL: ${oauth.tokenUrl}`);
    expect(run.text).toMatch(/token obtained with client_secret_basic: lifetime 300 s \(expires_in\), expires \d{4}-\d\d-\d\dT/);
    expect(run.text).toContain(`token client id: ${CLIENT_ID}`);
    expect(run.text).toContain(`role ESBMessaging.send granted; scopes: ${DEFAULT_SCOPE}`);
    expect(run.text).toContain(`GET ${upstream.url}/http/GetTimestamp answered 200: the token is accepted`);
    expect(statusLines(run, 'warn')).toEqual([]);
    expect(statusLines(run, 'FAIL')).toEqual([]);
    expect(run.lines.at(-1)).toBe('ok   summary: 1 route checked, all pass');
  });

  it('shows the token URL without its query (it may be signed)', async () => {
    const signed = await writeKey('signed.json', { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: `${oauth.tokenUrl}?sig=FAKE-signed-value`, url: upstream.url });
    const run = await check(['--service-key', signed, '--ca', caPath, '--scope', DEFAULT_SCOPE], { path: '/http/GetTimestamp' });
    expect(run.text).toContain(`token URL: ${oauth.tokenUrl}?…`);
    expect(run.text).not.toContain('FAKE-signed-value');
  });

  it('reports a CSRF-protected endpoint that answered the token fetch (and warns when csrf is off)', async () => {
    upstream.setHandler((req, res) => {
      const fetch = req.headers['x-csrf-token'] === 'Fetch';
      res.writeHead(200, fetch ? { 'x-csrf-token': 'csrf-value-1234567890' } : {});
      res.end();
    });
    const auto = await check(healthy(), { path: '/http/orders' });
    expect(auto.ok).toBe(true);
    expect(auto.text).toMatch(/^ok {3}the endpoint is CSRF protected .*csrf auto/m);
    expect(auto.text).not.toContain('csrf-value-1234567890');
    const off = await check(healthy('--csrf', 'off'), { path: '/http/orders' });
    expect(off.ok).toBe(true);
    expect(off.text).toMatch(/^warn the endpoint is CSRF protected but csrf is off/m);
  });

  it('a certificate key: mTLS, subject, expiry warning within 30 days, and never the private key', async () => {
    const certKey = await writeKey('cert-key.json', {
      clientid: CERT_CLIENT_ID,
      certificate: pki.client.chain,
      key: pki.client.keyPkcs1,
      tokenurl: oauth.tokenUrl,
      url: upstream.url,
    });
    const run = await check(['--service-key', certKey, '--ca', caPath, '--scope', DEFAULT_SCOPE], { path: '/http/GetTimestamp' });
    expect(run.ok).toBe(true);
    expectNoSecrets(run, lastToken());
    expect(run.text).toContain('key type: Certificate (SAP-generated)');
    expect(run.text).toContain('client certificate: CN=sidecar-client, O=Test, C=DE, issued by CN=oauth-sidecar Test Intermediate CA');
    // The test PKI issues client certificates for 30 days.
    expect(run.text).toMatch(/^warn client certificate expires \d{4}-.*\(in 29 days\)/m);
    expect(run.text).toContain('token obtained with tls_client_auth');
    expect(run.text).toContain(`token client id: ${CERT_CLIENT_ID}`);
    expect(run.lines.at(-1)).toBe('ok   summary: 1 route checked, all pass (1 with warnings)');
  });

  it('tells about the .cert. token host switch of certificate keys', async () => {
    const certKey = await writeKey('cert-sap.json', {
      clientid: CERT_CLIENT_ID,
      certificate: pki.client.chain,
      key: pki.client.keyPkcs1,
      tokenurl: 'https://acme.authentication.eu10.hana.ondemand.com/oauth/token',
      url: 'https://acme.it-cpi018-rt.cfapps.eu10-003.hana.ondemand.com',
    });
    const loaded = await loadCredentials({ source: { kind: 'path', path: certKey } });
    const messages = describeCredentials(loaded, Date.now()).map((f) => `${f.level} ${f.message}`);
    expect(messages).toContain('ok token URL: https://acme.authentication.cert.eu10.hana.ondemand.com/oauth/token');
    expect(messages.some((m) => m.startsWith('ok token URL host switched from acme.authentication.eu10'))).toBe(true);
  });
});

describe('oauth-sidecar check: the certificate expiry window', () => {
  it('warns from the same moment serve does: exactly 30 days before notAfter, not a day later', async () => {
    const certKey = await writeKey('cert-window.json', { clientid: CERT_CLIENT_ID, certificate: pki.client.chain, key: pki.client.keyPkcs1, tokenurl: 'https://127.0.0.1:1/oauth/token', url: 'https://127.0.0.1:1' });
    const loaded = await loadCredentials({ source: { kind: 'path', path: certKey } });
    if (loaded.credentials.kind === 'client-secret') throw new Error('expected a certificate key');
    const notAfter = loaded.credentials.notAfter.getTime();
    const expiry = (now: number) => describeCredentials(loaded, now).find((f) => f.message.startsWith('client certificate expires'))!;
    expect(expiry(notAfter - 30 * 86_400_000).level).toBe('warn');
    expect(expiry(notAfter - 30 * 86_400_000 - 1).level).toBe('ok');
    // serve's own notice for the same moment, which check's finding replaces
    const atServe = await loadCredentials({ source: { kind: 'path', path: certKey } }, { now: new Date(notAfter - 30 * 86_400_000) });
    expect(atServe.notices.some((n) => n.level === 'warn' && /expires on/.test(n.message))).toBe(true);
  });
});

describe('oauth-sidecar check: an intermediate that expires first', () => {
  it('names it beside the leaf\'s expiry, with advice for the intermediate, and replaces serve\'s notice', async () => {
    const certs = await unitCerts();
    const chain = `${certs.leafPem}${certs.expiringIntermediatePem}`;
    const certKey = await writeKey('cert-intermediate.json', { clientid: CERT_CLIENT_ID, certificate: chain, key: certs.leafKeyPkcs1, tokenurl: 'https://127.0.0.1:1/oauth/token', url: 'https://127.0.0.1:1' });
    const loaded = await loadCredentials({ source: { kind: 'path', path: certKey } });
    expect(loaded.notices.map((n) => n.level)).toEqual(['warn']);
    const findings = describeCredentials(loaded, Date.now());
    const expiring = findings.filter((f) => / expire[sd] /.test(f.message));
    expect(expiring.map((f) => [f.level, f.message])).toEqual([
      ['ok', expect.stringMatching(/^client certificate expires \d{4}-\S+ \(in 36[34] days\)$/)],
      ['warn', expect.stringMatching(/^intermediate certificate CN=Fake Unit Test Client CA expires \S+ \(in [89] days\), before the client certificate$/)],
    ]);
    expect(expiring[1]!.hints[0]).toMatch(/renewed intermediate/);
  });
});

describe('oauth-sidecar check: the inbound basic-auth file', () => {
  it('reads it as serve would: the user count when usable; line numbers, never content, and a failed check when not', async () => {
    const good = await files.write('users.txt', '# senders\nerp:first-Pa55word\nsoap:sha256:' + 'a'.repeat(64) + '\n');
    const usable = await check(healthy('--basic-auth-file', good), { path: '/http/GetTimestamp' });
    expect(usable.ok).toBe(true);
    expect(usable.text).toContain(`ok   inbound basic auth: 2 users in ${good}`);

    const broken = await files.write('users-broken.txt', 'erp:first-Pa55word\nnocolon-Secr3t-line\n');
    const refused = await check(healthy('--basic-auth-file', broken), { path: '/http/GetTimestamp' });
    expect(refused.ok).toBe(false);
    expect(refused.text).toContain(`FAIL inbound basic auth file: --basic-auth-file line 2: expected user:password or user:sha256:<hex> (${broken})`);
    expect(refused.lines.at(-1)).toBe('FAIL the inbound basic-auth file is unusable: serve would refuse to start');
    expect(refused.text).not.toMatch(/Secr3t|Pa55word/);

    const missing = await check(healthy('--basic-auth-file', `${broken}.missing`), { path: '/http/GetTimestamp' });
    expect(missing.ok).toBe(false);
    expect(missing.text).toContain('FAIL inbound basic auth file: --basic-auth-file: user list does not exist');
  });
});

describe('oauth-sidecar check: the proxy listener', () => {
  /** As the CLI builds it for `check` itself, which never listens. */
  async function checkCommand(argv: string[], env: Env = {}): Promise<CheckRun> {
    const result = parseConfig(['check', ...argv], env);
    if (result.kind !== 'run') throw new Error('expected a runnable config');
    const lines: string[] = [];
    const { ok } = await checkRoutes(result.config, { path: '/http/GetTimestamp', out: (line) => lines.push(line) });
    return { ok, lines, text: lines.join('\n') };
  }

  it("runs with the image's 0.0.0.0 listener and no inbound control, warning that serve would refuse it", async () => {
    const exposed = await checkCommand(healthy(), { SIDECAR_LISTEN: '0.0.0.0:8080' });
    expect(exposed.ok).toBe(true);
    expect(exposed.text).toContain(
      'warn proxy listener: "0.0.0.0" is not a loopback address: choose inbound control with --basic-auth-file (SIDECAR_BASIC_AUTH_FILE), ' +
        '--allow-cidr (SIDECAR_ALLOW_CIDRS) or --allow-any-sender (SIDECAR_ALLOW_ANY_SENDER=true)',
    );
    expect(exposed.text).toContain('answered 200: the token is accepted');
    expect(exposed.lines.at(-1)).toBe('warn the proxy listener is not loopback and has no inbound control: serve would refuse to start');

    for (const control of [{ SIDECAR_ALLOW_ANY_SENDER: 'true' }, { SIDECAR_ALLOW_CIDRS: '10.0.0.0/8' }]) {
      const chosen = await checkCommand(healthy(), { SIDECAR_LISTEN: '0.0.0.0:8080', ...control });
      expect(chosen.ok).toBe(true);
      expect(chosen.text).not.toContain('proxy listener');
    }
    expect((await checkCommand(healthy())).text).not.toContain('proxy listener');
  });
});

describe('oauth-sidecar check: values given where a path belongs', () => {
  const PASTED = 'admin:S3cretPassw0rd';
  const NOT_SHOWN = 'the value given, not shown: it could be a secret (a path written with a directory, such as ./users, is shown)';

  it('a basic-auth file, a NODE_EXTRA_CA_CERTS file or a service key that is no path is never shown', async () => {
    const users = await check(healthy('--basic-auth-file', PASTED), { path: '/http/GetTimestamp' });
    expect(users.text).toContain(`FAIL inbound basic auth file: --basic-auth-file: user list does not exist (${NOT_SHOWN})`);
    expect(users.text).not.toContain('S3cretPassw0rd');

    // Without --ca node reads NODE_EXTRA_CA_CERTS itself: check only names it.
    const extraCa = await check(['--service-key', keyPath], { path: '/http/GetTimestamp' }, { NODE_EXTRA_CA_CERTS: PASTED });
    expect(extraCa.text).toContain(`plus NODE_EXTRA_CA_CERTS ${NOT_SHOWN}`);
    expect(extraCa.text).not.toContain('S3cretPassw0rd');

    const key = await check(['--service-key', PASTED, '--ca', caPath]);
    expect(key.text).toContain(NOT_SHOWN);
    expect(key.text).not.toContain('S3cretPassw0rd');
  });

  it('a service key found under such a name is not shown either, also where the token error quotes its source', async () => {
    const cwd = process.cwd();
    process.chdir(files.dir);
    try {
      await writeKey(PASTED, { clientid: CLIENT_ID, clientsecret: 'not-the-secret', tokenurl: oauth.tokenUrl, url: upstream.url });
      const run = await check(['--service-key', PASTED, '--ca', caPath]);
      expect(run.text).toContain(`ok   service key: ${NOT_SHOWN}`);
      expect(run.text).toMatch(/^FAIL TOKEN_REJECTED: /m);
      expect(run.text).not.toContain('S3cretPassw0rd');
    } finally {
      process.chdir(cwd);
    }
  });
});

describe('oauth-sidecar check: the upstream answer', () => {
  it('a 404 on the default path is only a warning: the host accepted the token', async () => {
    const run = await check(healthy());
    expect(run.ok).toBe(true);
    expect(upstream.requests.at(-1)?.url).toBe('/http/');
    expect(run.text).toMatch(/^warn GET .*\/http\/ answered 404: the host accepted the token/m);
    expect(run.text).toContain('--check-path /http/<address of your iFlow>');
  });

  it('an upstream with a path of its own: the default check is that path, and the advice is relative to it', async () => {
    const run = await check(healthy('--upstream', `${upstream.url}/http`));
    expect(run.ok).toBe(true);
    expect(upstream.requests.at(-1)?.url).toBe('/http/'); // not /http/http/
    expect(run.text).toMatch(/^warn GET .*:\d+\/http\/ answered 404: the host accepted the token/m);
    expect(run.text).toContain("--check-path /<address of your iFlow> (it is appended to the upstream's /http)");
    // Following the advice reaches the flow.
    const named = await check(healthy('--upstream', `${upstream.url}/http`), { path: '/GetTimestamp' });
    expect(named.ok).toBe(true);
    expect(upstream.requests.at(-1)?.url).toBe('/http/GetTimestamp');
    expect(named.text).toMatch(/^ok   GET .*\/http\/GetTimestamp answered 200/m);
  });

  it('a 404 from the application on a named path fails and explains address, servlet and deploy delay', async () => {
    const run = await check(healthy(), { path: '/http/no-such-flow' });
    expect(run.ok).toBe(false);
    expect(run.text).toMatch(/^FAIL GET .*\/http\/no-such-flow answered 404: no integration flow at this path/m);
    expect(run.text).toContain('/cxf/<address> for SOAP');
    expect(run.text).toContain('30 s to 3 min after deployment');
    expect(run.lines.at(-1)).toBe('FAIL summary: 1 of 1 route failed: default');
  });

  it('a 404 from the Cloud Foundry router fails even on the default path: wrong host', async () => {
    const host = 'acme.it-cpi018-rt.cfapps.eu10-003.hana.ondemand.com';
    upstream.setHandler((_req, res) => {
      res.writeHead(404, { 'content-type': 'text/plain', 'x-cf-routererror': 'unknown_route' });
      res.end(`404 Not Found: Requested route ('${host}') does not exist.\n`);
    });
    const run = await check(healthy());
    expect(run.ok).toBe(false);
    expect(run.text).toContain(`from the Cloud Foundry router: no application serves ${host}`);
    expect(run.text).toMatch(/host is wrong/);
  });

  it('a 401 from the runtime fails: token not accepted (api vs -rt, subaccount, expiry)', async () => {
    const strict = await startUpstream(pki, {
      verify: async () => {
        throw new Error('not for this tenant');
      },
    });
    try {
      const run = await check(healthy('--upstream', strict.url), { path: '/http/GetTimestamp' });
      expect(run.ok).toBe(false);
      expect(run.text).toMatch(/^FAIL GET .* answered 401: the token was not accepted \(unauthorised: An Authentication object/m);
      expect(run.text).toContain('api-plan key does not work on the -rt');
      expect(run.text).toContain('subaccount');
      expectNoSecrets(run);
    } finally {
      await strict.close();
    }
  });

  it('a 401 whose body quotes the Authorization header: no piece of the token is shown', async () => {
    upstream.setHandler((req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'invalid_token', error_description: `token ${req.headers.authorization} not accepted` }));
      return true;
    });
    const run = await check(healthy(), { path: '/http/echo-401' });
    expect(run.ok).toBe(false);
    expect(run.text).toMatch(/^FAIL GET .* answered 401: the token was not accepted \(invalid_token: token Bearer \[redacted\] not accepted\)/m);
    expect(run.text).not.toMatch(/eyJ[A-Za-z0-9_-]{6,}/);
    expectNoSecrets(run);
  });

  it('an opaque token a 401 quotes without its Bearer prefix, past where the description is cut: no piece of it is shown', async () => {
    const opaque = 'opaque-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d';
    oauth.setInterceptor((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: opaque, token_type: 'bearer', expires_in: 300 }));
      return true;
    });
    // A runtime that refuses the opaque token, quoting it; it starts within the 160 characters shown of the
    // description and ends beyond them.
    const runtime = createHttpsServer({ cert: pki.server.chain, key: pki.server.key }, (_req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'invalid_token', error_description: `${'a'.repeat(140)} ${opaque} is unknown` }));
    });
    const sockets = new SocketTracker(runtime);
    const port = await listen(runtime);
    try {
      const run = await check(healthy('--upstream', `https://127.0.0.1:${port}`), { path: '/http/opaque-401' });
      expect(run.ok).toBe(false);
      expect(run.text).toMatch(/^FAIL GET .* answered 401: the token was not accepted \(invalid_token: a+ \[redacted\]/m);
      expect(run.text).not.toContain(opaque.slice(0, 12));
      expectNoSecrets(run, opaque);
    } finally {
      await closeServer(runtime, sockets);
    }
  });

  it('a 200 whose body stalls is diagnosed from its head, not as no answer', async () => {
    const stalled: Array<() => void> = [];
    upstream.setHandler((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('a');
      stalled.push(() => res.end());
      return true;
    });
    try {
      // The idle timeout (60 s) would outlast the test: the head and what came of the body are the answer.
      const run = await check(healthy(), { path: '/http/streaming' });
      expect(run.ok).toBe(true);
      expect(run.text).toMatch(/^ok {3}GET .*answered 200/m);
      expect(run.text).not.toMatch(/no answer/);
    } finally {
      for (const end of stalled) end();
    }
  });

  it('a 403 with X-CSRF-Token: Required to the check\'s own CSRF fetch fails: the sidecar\'s fetch would be refused too', async () => {
    upstream.setHandler((_req, res) => {
      res.writeHead(403, { 'x-csrf-token': 'Required', 'content-type': 'text/html' });
      res.end('<html><body>HTTP Status 403 – Forbidden</body></html>');
    });
    const auto = await check(healthy(), { path: '/http/orders' });
    expect(auto.ok).toBe(false);
    expect(auto.text).toMatch(/^FAIL GET .* answered 403 with X-CSRF-Token: Required to a CSRF token fetch: .*refuses the fetch the sidecar would make/m);
    expect(auto.text).toContain('strips the X-CSRF-Token header');
    const off = await check(healthy('--csrf', 'off'), { path: '/http/orders' });
    expect(off.ok).toBe(false);
    expect(off.text).toMatch(/^FAIL .*CSRF protected but csrf is off/m);
  });

  it('missing role: a warning at the token, and the runtime\'s 403 fails with the instance-roles fix', async () => {
    // Like the CPI runtime: the sender adapter's User Role must be a scope of the token.
    upstream.setHandler((req, res) => {
      const claims = decodeJwtClaims((req.headers.authorization ?? '').replace(/^Bearer /, ''));
      if (claims?.scope?.some((s) => s.endsWith('.ESBMessaging.send'))) return false;
      res.writeHead(403, { 'content-type': 'text/html' });
      res.end('<html><body>HTTP Status 403 – Forbidden</body></html>');
      return true;
    });
    // Without --scope the test token server grants no scope.
    const run = await check(['--service-key', keyPath, '--ca', caPath], { path: '/http/GetTimestamp' });
    expect(run.ok).toBe(false);
    expect(run.text).toMatch(/^warn role ESBMessaging.send not among the granted scopes: none/m);
    expect(run.text).toContain(
      "the integration flow's sender adapter needs role ESBMessaging.send: add it to the service instance's roles (changes take up to 1 h)",
    );
    expect(run.text).toMatch(/^FAIL GET .* answered 403: the token was accepted but lacks the role/m);
    expect(run.text).toContain("must be among the service instance's roles");
    // The same role missing, but the iFlow answers anyway: the warning alone does not fail the check.
    upstream.setHandler(undefined);
    const warned = await check(['--service-key', keyPath, '--ca', caPath], { path: '/http/GetTimestamp' });
    expect(warned.ok).toBe(true);
    expect(statusLines(warned, 'warn')).toHaveLength(1);
  });

  it('a custom role is checked by suffix with the role option', async () => {
    const run = await check(healthy(), { path: '/http/GetTimestamp', role: 'Custom.Sender' });
    expect(run.text).toMatch(/^warn role Custom.Sender not among the granted scopes: it-rt-acme!b196.ESBMessaging.send/m);
  });

  it('a 500 from the iFlow fails and names the MPL ID', async () => {
    upstream.setHandler((_req, res) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('Internal Server Error. The MPL ID for the failed message is : AGZrdXyZ_abc123-def456');
    });
    const run = await check(healthy(), { path: '/http/orders' });
    expect(run.ok).toBe(false);
    expect(run.text).toMatch(/^FAIL GET .* answered 500: the integration flow failed \(MPL ID AGZrdXyZ_abc123-def456\)/m);
    expect(run.text).toContain('Monitor > Message Processing');
  });

  it('leaves no connection to the upstream open behind it: a CLI run ends when the check does, not at a keep-alive timeout', async () => {
    const runtime = createHttpsServer({ cert: pki.server.chain, key: pki.server.key, keepAliveTimeout: 60_000 }, (_req, res) => res.end('ok'));
    const sockets = new SocketTracker(runtime);
    const port = await listen(runtime);
    try {
      const run = await check(healthy('--upstream', `https://127.0.0.1:${port}`), { path: '/http/GetTimestamp' });
      expect(run.text).toContain('answered 200: the token is accepted');
      await expect.poll(() => sockets.size, { timeout: 5_000 }).toBe(0);
    } finally {
      await closeServer(runtime, sockets);
    }
  });

  it('an untrusted upstream certificate fails with the --ca fix (the token server is trusted)', async () => {
    // A server certificate from another CA (the demo PKI), as when the load balancer's root is missing.
    const other = await createDemoPki();
    const rogue = createHttpsServer({ cert: other.server.cert, key: other.server.key }, (_req, res) => res.end('never'));
    const sockets = new SocketTracker(rogue);
    const port = await listen(rogue);
    try {
      const run = await check(healthy('--upstream', `https://127.0.0.1:${port}`), { path: '/http/GetTimestamp' });
      expect(run.ok).toBe(false);
      expect(run.text).toContain('ok   token obtained');
      expect(run.text).toMatch(/^FAIL GET https:\/\/127\.0\.0\.1:\d+\/http\/GetTimestamp: the certificate of 127\.0\.0\.1:\d+ is not trusted \([A-Z_]+\)/m);
      expect(run.text).toContain('add --ca FILE with the root CA');
      expect(run.text).toContain('connectivity test');
    } finally {
      await closeServer(rogue, sockets);
    }
  });

  it('a 200 HTML login page fails: the token was not used (a UI host, an IdP or a proxy answered)', async () => {
    upstream.setHandler((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html;charset=UTF-8' });
      res.end('<!DOCTYPE html><html><head><title>Sign In</title></head><body><form method="post" action="/saml2/idp/sso">' +
        '<input name="j_username"><input name="j_password" type="password"></form></body></html>');
      return true;
    });
    const run = await check(healthy(), { path: '/http/orders' });
    expect(run.ok).toBe(false);
    expect(run.text).toMatch(/^FAIL GET .*\/http\/orders answered 200 with an HTML login page \(a password field\): the token was not used, no integration flow answered$/m);
    expect(run.text).toContain('integration flows answer on the runtime host (<sub>.it-cpi<nnn>-rt.cfapps.<region>.hana.ondemand.com)');
    expect(run.text).toContain('an identity provider or a proxy in front of');
    expect(run.text).not.toContain('the token is accepted');
    expect(run.lines.at(-1)).toBe('FAIL summary: 1 of 1 route failed: default');
    // Reached directly (NO_PROXY names the host): no advice about a proxy it never went through.
    const direct = await check(healthy(), { path: '/http/orders' }, { HTTPS_PROXY: 'http://proxy.corp.invalid:3128', NO_PROXY: '127.0.0.1' });
    expect(direct.text).toContain('an identity provider or a proxy in front of');
    expect(direct.text.split('\n').filter((line) => line.includes('proxy.corp.invalid'))).toEqual([
      'ok   outbound HTTPS through the proxy proxy.corp.invalid:3128 (HTTPS_PROXY), NO_PROXY 127.0.0.1',
    ]);
  });

  it('a 200 HTML page is judged by the start that check reads: a password field after 16 KiB is not looked for', async () => {
    upstream.setHandler((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(`<html><body><!-- ${'x'.repeat(20 * 1024)} --><input type="password"></body></html>`);
      return true;
    });
    const run = await check(healthy(), { path: '/http/page' });
    expect(run.ok).toBe(true);
    expect(run.text).toMatch(/^ok {3}GET .*\/http\/page answered 200: the token is accepted/m);
  });

  it('an upstream that refuses connections fails with the connection fix', async () => {
    const port = await freePort();
    const run = await check(healthy('--upstream', `https://127.0.0.1:${port}`), { path: '/http/x' });
    expect(run.ok).toBe(false);
    expect(run.text).toMatch(/^FAIL GET .*: 127\.0\.0\.1:\d+ refused the connection \(ECONNREFUSED\)/m);
  });
});

describe('oauth-sidecar check: the token', () => {
  it('a wrong secret: TOKEN_REJECTED with the secret fixes, no secret shown, upstream not called', async () => {
    const wrongSecret = 'wrong-Secret$value=';
    const wrong = await writeKey('wrong.json', { clientid: CLIENT_ID, clientsecret: wrongSecret, tokenurl: oauth.tokenUrl, url: upstream.url });
    const before = upstream.requests.length;
    const run = await check(['--service-key', wrong, '--ca', caPath]);
    expect(run.ok).toBe(false);
    expect(upstream.requests.length).toBe(before);
    expect(run.text).toMatch(/^FAIL TOKEN_REJECTED: token server rejected the client credentials \(401/m);
    expect(run.text).toContain('wrong or was rotated');
    expect(run.text).toContain('another subaccount');
    expect(run.text).toContain('FAIL upstream not called: no token');
    expectNoSecrets(run, wrongSecret);
  });

  it('an untrusted token server: TOKEN_UNREACHABLE with the --ca fix', async () => {
    const run = await check(['--service-key', keyPath]);
    expect(run.ok).toBe(false);
    expect(run.text).toContain("ok   trusting Node's default CA store (its bundled Mozilla list; OpenSSL's under --use-openssl-ca, the OS store's with --use-system-ca) (no NODE_EXTRA_CA_CERTS, no --ca)");
    expect(run.text).toMatch(/^FAIL TOKEN_UNREACHABLE: token server 127\.0\.0\.1:\d+: TLS certificate not trusted/m);
    expect(run.text).toMatch(/add --ca FILE with the root CA of 127\.0\.0\.1:\d+'s certificate/);
  });

  it('a failing proxy: the HTTPS_PROXY/NO_PROXY fix', async () => {
    const port = await freePort();
    const run = await check(['--service-key', keyPath, '--ca', caPath], {}, { HTTPS_PROXY: `http://user:pw@127.0.0.1:${port}` });
    expect(run.ok).toBe(false);
    expect(run.text).toContain(`ok   outbound HTTPS through the proxy 127.0.0.1:${port} (HTTPS_PROXY)`);
    expect(run.text).toMatch(/^FAIL TOKEN_UNREACHABLE/m);
    expect(run.text).toContain('check HTTPS_PROXY/NO_PROXY');
    expect(run.text).not.toContain('user:pw');
  });

  it('a proxy that refuses connections is named for the token request, not the token server', async () => {
    const port = await closedPort();
    const tokenHost = new URL(oauth.tokenUrl).host;
    const run = await check(['--service-key', keyPath, '--ca', caPath], {}, { HTTPS_PROXY: `http://user:pw@127.0.0.1:${port}` });
    expect(run.ok).toBe(false);
    expect(run.text).toContain(
      `FAIL TOKEN_UNREACHABLE: token server ${tokenHost}: the HTTPS proxy 127.0.0.1:${port} refused the connection (ECONNREFUSED) — check HTTPS_PROXY`,
    );
    expect(run.text).toContain(`nothing accepts connections at 127.0.0.1:${port}: check the host and port in HTTPS_PROXY (${tokenHost} was not contacted)`);
    expect(run.text).not.toContain(`the connection to ${tokenHost} was refused`);
    expect(run.text).not.toContain('user:pw');
  });

  it('a rate-limited token server: TOKEN_RATE_LIMITED, one attempt, the 60/s explanation', async () => {
    const before = oauth.tokenRequests;
    oauth.setInterceptor((_req, res) => {
      res.writeHead(429, { 'retry-after': '30', 'content-type': 'application/json' });
      res.end('{"error":"too_many_requests"}');
      return true;
    });
    const run = await check(healthy());
    expect(run.ok).toBe(false);
    expect(oauth.tokenRequests - before).toBe(1);
    expect(run.text).toMatch(/^FAIL TOKEN_RATE_LIMITED/m);
    expect(run.text).toContain('60 token requests/s per subaccount');
    expect(run.text).toContain('retry in 30 s');
  });

  it('a token server that does not answer: TOKEN_TIMEOUT', async () => {
    oauth.setInterceptor(() => true); // never answers
    const run = await check(healthy('--token-timeout', '300'));
    expect(run.ok).toBe(false);
    expect(run.text).toMatch(/^FAIL TOKEN_TIMEOUT: token server 127\.0\.0\.1:\d+ did not answer within 300 ms/m);
    expect(run.text).toContain('raise --token-timeout');
  });
});

describe('oauth-sidecar check: the HTTPS proxy on the way to the upstream', () => {
  /** The token server is reached directly (NO_PROXY names it with its port), the upstream through HTTPS_PROXY. */
  function viaProxy(proxyUrl: string): Env {
    return { HTTPS_PROXY: proxyUrl, NO_PROXY: new URL(oauth.tokenUrl).host };
  }

  it('a proxy that refuses connections: the proxy is named, not the upstream it never reached', async () => {
    const port = await closedPort();
    const run = await check(healthy(), { path: '/http/GetTimestamp' }, viaProxy(`http://user:pw@127.0.0.1:${port}`));
    expect(run.ok).toBe(false);
    expect(run.text).toContain('ok   token obtained');
    const upstreamHost = new URL(upstream.url).host;
    expect(run.text).toContain(`FAIL GET ${upstream.url}/http/GetTimestamp: the HTTPS proxy 127.0.0.1:${port} refused the connection (ECONNREFUSED)`);
    expect(run.text).toContain(`nothing accepts connections at 127.0.0.1:${port}: check the host and port in HTTPS_PROXY (${upstreamHost} was not contacted)`);
    expect(run.text).not.toContain(`${upstreamHost} refused the connection`);
    expect(run.text).not.toContain('user:pw');
  });

  it('a proxy host that does not resolve is named as such', async () => {
    const run = await check(healthy(), { path: '/http/GetTimestamp' }, viaProxy('http://proxy.invalid:3128'));
    expect(run.ok).toBe(false);
    expect(run.text).toMatch(/^FAIL GET .*: the HTTPS proxy proxy\.invalid:3128 does not resolve \((ENOTFOUND|EAI_AGAIN)\)$/m);
  });

  it('a proxy that takes the connection but never answers: no connection within the route\'s connect limit', async () => {
    // An https:// proxy that never starts its TLS handshake.
    const silent: TcpServer = createTcpServer(() => {});
    const sockets = new SocketTracker(silent);
    const port = await listen(silent);
    const key = await writeKey('proxy-timeout.json', { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: oauth.tokenUrl, url: upstream.url });
    const routes = await files.write(
      'proxy-timeout.json.routes.json',
      JSON.stringify({ routes: [{ prefix: '/', serviceKey: key, scope: DEFAULT_SCOPE, timeouts: { connectMs: 300 } }] }),
    );
    try {
      // By name: undici gives an https:// proxy's host name as its TLS server name (an address there is deprecated).
      const run = await check(['--config', routes, '--ca', caPath], { path: '/http/GetTimestamp' }, viaProxy(`https://localhost:${port}`));
      expect(run.ok).toBe(false);
      expect(run.text).toContain(`FAIL GET ${upstream.url}/http/GetTimestamp: no connection to the HTTPS proxy localhost:${port} within 300 ms (UND_ERR_CONNECT_TIMEOUT)`);
    } finally {
      await closeServer(silent, sockets);
    }
  });

  it('an upstream in NO_PROXY that refuses connections is blamed itself, not the (also dead) proxy', async () => {
    const proxyPort = await closedPort();
    const upstreamPort = await closedPort();
    const run = await check(healthy('--upstream', `https://127.0.0.1:${upstreamPort}`), { path: '/http/x' }, { HTTPS_PROXY: `http://127.0.0.1:${proxyPort}`, NO_PROXY: '127.0.0.1' });
    expect(run.ok).toBe(false);
    expect(run.text).toContain(`FAIL GET https://127.0.0.1:${upstreamPort}/http/x: 127.0.0.1:${upstreamPort} refused the connection (ECONNREFUSED)`);
    expect(run.text).toContain(`127.0.0.1:${upstreamPort} is reached directly, not through HTTPS_PROXY (NO_PROXY names it)`);
    // Only the summary line names the proxy: no advice blames it for a connection it never saw.
    expect(run.text.split('\n').filter((line) => line.includes(`127.0.0.1:${proxyPort}`))).toEqual([
      `ok   outbound HTTPS through the proxy 127.0.0.1:${proxyPort} (HTTPS_PROXY), NO_PROXY 127.0.0.1`,
    ]);
  });

  it('a proxy that wants credentials (407): the advice is to give them in HTTPS_PROXY, never quoting any', async () => {
    const proxy = await startConnectProxy({ credentials: 'corp:pr0xy-s3cret' });
    try {
      for (const given of ['', 'corp:wrong-s3cret@']) {
        const run = await check(['--service-key', keyPath, '--ca', caPath], {}, { HTTPS_PROXY: proxy.url.replace('http://', `http://${given}`) });
        expect(run.ok).toBe(false);
        expect(run.text).toMatch(/^FAIL TOKEN_UNREACHABLE: token server 127\.0\.0\.1:\d+: the HTTPS proxy failed \(proxy answered 407\) — the proxy wants credentials, or refused those in HTTPS_PROXY: give http:\/\/user:password@host:port/m);
        expect(run.text).not.toMatch(/s3cret|corp:/);
      }
    } finally {
      await proxy.close();
    }
  });
});

describe('oauth-sidecar check: several routes', () => {
  it('a broken service key lists every problem, and the other routes are still checked', async () => {
    const broken = await writeKey('broken.json', { clientid: '', url: 'ftp://x' });
    const config = await files.write(
      'routes.json',
      JSON.stringify({
        routes: [
          { name: 'broken', prefix: '/broken', serviceKey: broken },
          { name: 'orders', prefix: '/orders', serviceKey: keyPath, scope: DEFAULT_SCOPE },
        ],
      }),
    );
    const result = parseConfig(['token', '--config', config, '--ca', caPath], {});
    if (result.kind !== 'run') throw new Error('expected a runnable config');
    const lines: string[] = [];
    const report = await checkRoutes(result.config, { path: '/http/GetTimestamp', out: (l) => lines.push(l) });
    const text = lines.join('\n');
    expect(report.ok).toBe(false);
    expect(report.routes).toEqual([
      { name: 'broken', level: 'FAIL', configInvalid: true },
      { name: 'orders', level: 'ok', configInvalid: false },
    ]);
    expect(text).toContain('oauth-sidecar check: 2 routes from');
    expect(text).toMatch(/^FAIL the service key is unusable \(\d+ problems\):/m);
    expect(text).toMatch(/^FAIL oauth\.clientid: .*broken\.json\)$/m);
    expect(text).toMatch(/^FAIL oauth\.tokenurl: /m);
    expect(text).toContain('route orders (prefix /orders)');
    expect(text).toContain('answered 200: the token is accepted');
    expect(lines.at(-1)).toBe('FAIL summary: 1 of 2 routes failed: broken');
    expect(text).not.toContain(SECRET);
  });
});

/** A port nothing listens on. */
async function freePort(): Promise<number> {
  const server = createTcpServer();
  const port = await listen(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
