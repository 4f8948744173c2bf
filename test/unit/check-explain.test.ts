import { describe, expect, it } from 'vitest';
import { describeScopes, explainTokenError, explainUpstreamAnswer, explainUpstreamError, loginPageOf, networkHints, type UpstreamAnswer, type UpstreamContext } from '../../src/check.js';
import { SidecarError } from '../../src/errors.js';
import { markProxyConnectFailure } from '../../src/network-error.js';

/** An opaque (non-JWT) access token: nothing in its shape tells it apart from other text. */
const OPAQUE_TOKEN = 'tok-2-dc6ed26a91f04be7b3c58e22';

const CONTEXT: UpstreamContext = {
  url: 'https://acme.it-cpi000-rt.example/http/x',
  pathGiven: true,
  csrf: 'auto',
  role: 'Custom.Sender',
  roleGranted: false,
  network: { ca: [] },
  timeoutMs: 60_000,
  connectTimeoutMs: 5_000,
  secrets: new Set([OPAQUE_TOKEN]),
};

function text(answer: UpstreamAnswer, context: UpstreamContext = CONTEXT): string {
  return explainUpstreamAnswer(answer, context)
    .map((f) => [f.message, ...f.hints].join('\n'))
    .join('\n');
}

describe('check: explaining the upstream answer', () => {
  it('never shows a piece of the token a server quoted, also an opaque one cut off by the length bound', () => {
    const body = JSON.stringify({ error: 'invalid_token', error_description: `${'x'.repeat(140)} token ${OPAQUE_TOKEN} is not valid` });
    const shown = text({ status: 401, headers: { 'content-type': 'application/json' }, body });
    expect(shown).toContain('invalid_token');
    expect(shown).not.toContain(OPAQUE_TOKEN.slice(0, 8));
  });

  it('shows where a redirect goes without its query or fragment (a signed login URL, a token in a fragment)', () => {
    const location = 'https://idp.example/saml2/login?SAMLRequest=fZJdT8IwFIb_SnPvYR8SVLIuGUgQhbo&Signature=c2lnbmVk#access_token=tok-9f8e7d6c5b4a';
    const shown = text({ status: 302, headers: { location }, body: '' });
    expect(shown).toContain('(redirect to https://idp.example/saml2/login)');
    expect(shown).not.toContain('SAMLRequest');
    expect(shown).not.toContain('tok-9f8e7d6c5b4a');
    expect(text({ status: 303, headers: { location: '/login?ticket=ST-1-abcdef' }, body: '' })).toContain('(redirect to /login)');
  });

  it('names the role asked for in the hint of a role 403, not the default one', () => {
    const shown = text({ status: 403, headers: {}, body: '' });
    expect(shown).toContain("the sender adapter's User Role (Custom.Sender)");
  });

  it('on the API host (no role checked) a 403 points at the api plan\'s roles, not a sender adapter', () => {
    const shown = text({ status: 403, headers: {}, body: '' }, { ...CONTEXT, role: undefined, url: 'https://acme.it-cpi000.example/api/v1/' });
    expect(shown).toContain('lacks the role the API requires');
    expect(shown).toContain('plan api');
    expect(shown).not.toContain('sender adapter');
    // Also once the role asked about is named with --check-role: still no sender adapter there.
    const api = { ...CONTEXT, apiHost: true, url: 'https://acme.it-cpi000.example/api/v1/' };
    const missing = text({ status: 403, headers: {}, body: '' }, { ...api, role: 'WorkspacePackagesRead', roleGranted: false });
    expect(missing).toContain("add WorkspacePackagesRead to the api instance's roles");
    const granted = text({ status: 403, headers: {}, body: '' }, { ...api, role: 'WorkspacePackagesRead', roleGranted: true });
    expect(granted).toContain('the token carries WorkspacePackagesRead: this call needs another role');
    for (const shownText of [missing, granted]) expect(shownText).not.toContain('sender adapter');
  });

  it('a timeout after the request went out is a slow server, not a firewall; a connect timeout is the network', () => {
    const answered = networkHints('timeout', 'h.example', { ca: [] }, 'upstream', 'UND_ERR_HEADERS_TIMEOUT').join('\n');
    expect(answered).toContain('accepted the connection and the request');
    expect(answered).not.toContain('firewall');
    expect(networkHints('timeout', 'h.example', { ca: [] }, 'upstream', 'UND_ERR_CONNECT_TIMEOUT').join('\n')).toContain('no connection to h.example: a firewall');
  });

  it('a role missing because the token request asked for a narrower scope points at the scope, not the instance', () => {
    const scoped = describeScopes(['uaa.resource'], 'ESBMessaging.send', false, { apiHost: false, scopeAsked: 'uaa.resource' });
    expect(scoped.hints.join('\n')).toContain('asks for scope "uaa.resource"');
    expect(scoped.hints.join('\n')).not.toContain("service instance's roles");
    const forbidden = text({ status: 403, headers: {}, body: '' }, { ...CONTEXT, role: 'ESBMessaging.send', scopeAsked: 'uaa.resource' });
    expect(forbidden).toContain('leaves ESBMessaging.send out');
    expect(forbidden).not.toContain('add it (cockpit');
    // A scope asked for that names the role: not what leaves it out.
    const named = describeScopes(['uaa.resource'], 'ESBMessaging.send', false, { apiHost: false, scopeAsked: 'it-rt-acme!b196.ESBMessaging.send' }).hints.join('\n');
    expect(named).not.toContain('leaves ESBMessaging.send out');
    expect(named).toContain("add it to the service instance's roles");
    // Without a scope asked for, the instance's roles are the fix, worded for the host.
    expect(describeScopes([], 'ESBMessaging.send', false, { apiHost: false }).hints.join('\n')).toContain("sender adapter needs role ESBMessaging.send: add it to the service instance's roles");
    const api = describeScopes([], 'WorkspacePackagesRead', false, { apiHost: true }).hints.join('\n');
    expect(api).toContain("add it to the api instance's roles");
    expect(api).not.toContain('sender adapter');
  });

  it('an opaque token without scopes leaves the role unchecked, not missing', () => {
    const unknown = describeScopes([], 'ESBMessaging.send', undefined, { apiHost: false, known: false });
    expect(unknown.message).toBe('role ESBMessaging.send not checked: the token is opaque and its answer named no scopes');
    expect(unknown.hints.join('\n')).not.toContain('add it');
  });

  it("on the API host a CSRF 403 does not advise switching off a sender adapter's CSRF protection", () => {
    const csrf = { status: 403, headers: { 'x-csrf-token': 'Required' }, body: '' };
    const api = { ...CONTEXT, apiHost: true, url: 'https://acme.it-cpi000.example/api/v1/' };
    for (const context of [api, { ...api, csrf: 'off' as const }]) {
      const shown = text(csrf, context);
      expect(shown).toContain('OData API always wants the token');
      expect(shown).not.toContain('sender adapter');
    }
    expect(text(csrf)).toContain('switch off "CSRF Protected" in the sender adapter');
  });

  it('a TLS failure blames a client certificate only where one is sent (a certificate key, to the token server); a plain-HTTP port is named', () => {
    const tls = (peer: 'token' | 'upstream', certKey: boolean, code = 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE') => networkHints('tls', 'h.example:443', { ca: [] }, peer, code, certKey).join('\n');
    expect(tls('token', true)).toContain('refused the client certificate');
    for (const shown of [tls('token', false), tls('upstream', true), tls('upstream', false)]) expect(shown).not.toContain('client certificate');
    expect(tls('upstream', false, 'ERR_SSL_WRONG_VERSION_NUMBER')).toContain('does not speak TLS on that port');
  });

  it('a server that took the request and did not answer is not blamed on the proxy, nor on a firewall', () => {
    const network = { ca: [], httpsProxy: 'http://proxy.corp:3128' };
    const hints = networkHints('timeout', 'h.example:443', network, 'upstream', 'UND_ERR_HEADERS_TIMEOUT').join('\n');
    expect(hints).toContain('accepted the connection and the request');
    expect(hints).not.toContain('proxy');
    // The token server: an attempt that ran out after connecting (not the connect limit) is the same.
    const ctx = { credentials: { kind: 'client-secret' as const, tokenUrl: 'https://auth.example/oauth/token', source: '/k.json' }, network: { ca: [] }, timeoutMs: 3_000 };
    const hang = explainTokenError(new SidecarError('TOKEN_TIMEOUT', 'token server auth.example did not answer within 3000 ms', { cause: Object.assign(new Error('aborted'), { name: 'TimeoutError' }) }), ctx);
    expect(hang.hints.join('\n')).toContain('accepted the connection and the request');
    expect(hang.hints.join('\n')).not.toContain('firewall');
    const connect = explainTokenError(new SidecarError('TOKEN_TIMEOUT', 'token server auth.example: no connection', { cause: Object.assign(new Error('connect'), { code: 'UND_ERR_CONNECT_TIMEOUT' }) }), ctx);
    expect(connect.hints.join('\n')).toContain('a firewall may drop the packets');
  });

  it("an upstream call refused by the proxy with 407 says that it wants credentials, as serve's answer does", () => {
    const refused = explainUpstreamError(new Error('Proxy response (407) !== 200 when HTTP Tunneling'), { ...CONTEXT, network: { ca: [], httpsProxy: 'http://proxy.corp:3128' } });
    expect(refused.message).toContain('(proxy answered 407)');
    expect(refused.hints[0]).toContain('the proxy wants credentials');
  });

  it('claims the integration flow failed only with an MPL ID to show for it', () => {
    expect(text({ status: 500, headers: { 'sap_messageprocessinglogid': 'AGmplID0123456789' }, body: '' })).toContain('the integration flow failed (MPL ID AGmplID0123456789)');
    const bare = text({ status: 500, headers: { 'content-type': 'text/html' }, body: '<html>error</html>' });
    expect(bare).toContain('without an MPL ID');
    expect(bare).not.toContain('the token and role were accepted');
  });

  it('tells the connect limit from --upstream-timeout, and advises for the one that ran out', () => {
    const timeout = (code: string) => explainUpstreamError(Object.assign(new Error('timeout'), { code }), CONTEXT);
    const connecting = timeout('UND_ERR_CONNECT_TIMEOUT');
    expect(connecting.message).toContain('no connection (TCP and TLS) within 5000 ms (UND_ERR_CONNECT_TIMEOUT)');
    expect(connecting.hints.join('\n')).not.toContain('--upstream-timeout');
    const answering = timeout('UND_ERR_HEADERS_TIMEOUT');
    expect(answering.message).toContain('no answer within 60000 ms (UND_ERR_HEADERS_TIMEOUT)');
    expect(answering.hints.join('\n')).toContain('--upstream-timeout');
  });
});

/** Login pages as IdPs, proxies and SAP's application router answer them (trimmed to what gives them away). */
const LOGIN_PAGES: ReadonlyArray<readonly [string, string, string]> = [
  [
    'an IdP form with a password field',
    '<!DOCTYPE html><html><head><title>Sign In</title></head><body><form method="post" action="/saml2/idp/sso/acme">' +
      '<input type="text" name="j_username"><input name="j_password" type="password" autocomplete="off"></form></body></html>',
    'a password field',
  ],
  [
    'a SAML HTTP-POST binding form',
    '<html><body onload="document.forms[0].submit()"><form method="post" action="https://idp.example/sso">' +
      '<input type="hidden" name="SAMLRequest" value="PHNhbWxwOkF1dGhuUmVxdWVzdA=="/></form></body></html>',
    'a SAML form post',
  ],
  [
    "the application router's script redirect",
    '<html><head><script>document.cookie="fragmentAfterLogin="+encodeURIComponent(location.hash);' +
      'location="https://acme.authentication.eu10.hana.ondemand.com/oauth/authorize?response_type=code&client_id=sb-ui"</script></head></html>',
    'a redirect to an OAuth authorization endpoint',
  ],
  ['a form posted to a login address', '<html><body><form action="/login.do" method="post"><input name="username"></form></body></html>', 'a login form'],
  [
    'an Okta redirect',
    '<html><head><meta http-equiv="refresh" content="0;url=https://acme.okta.com/oauth2/default/v1/authorize?client_id=x"></head></html>',
    'a redirect to an OAuth authorization endpoint',
  ],
  [
    'a Keycloak (OpenID Connect) redirect',
    '<html><script>window.location.replace("https://kc.example/realms/acme/protocol/openid-connect/auth?client_id=x")</script></html>',
    'a redirect to an OAuth authorization endpoint',
  ],
];

describe('check: a 2xx login page', () => {
  it.each(LOGIN_PAGES)('%s fails: the token was not used, with the runtime-host and proxy fixes', (_name, body, sign) => {
    const [found] = explainUpstreamAnswer({ status: 200, headers: { 'content-type': 'text/html; charset=utf-8' }, body }, CONTEXT);
    expect(found?.level).toBe('FAIL');
    expect(found?.message).toBe(`GET ${CONTEXT.url} answered 200 with an HTML login page (${sign}): the token was not used, no integration flow answered`);
    expect(found?.hints.join('\n')).toContain('use the url of the service key: integration flows answer on the runtime host (<sub>.it-cpi<nnn>-rt.cfapps');
    expect(found?.hints.join('\n')).toContain('an identity provider or a proxy in front of acme.it-cpi000-rt.example wants an interactive login');
  });

  it('names the configured proxy as a possible source of the login page, without its credentials', () => {
    const viaProxy = { ...CONTEXT, network: { ca: [], httpsProxy: 'http://user:pw@proxy.corp:3128' } };
    const shown = text({ status: 200, headers: { 'content-type': 'text/html' }, body: LOGIN_PAGES[0]![1] }, viaProxy);
    expect(shown).toContain('or the proxy proxy.corp:3128 (a TLS-inspecting one) wants a login');
    expect(shown).not.toContain('user:pw');
  });

  it('names a proxy without a port by the port it is reached on, as the sidecar\'s own messages do', () => {
    const viaProxy = { ...CONTEXT, network: { ca: [], httpsProxy: 'http://proxy.corp' } };
    const shown = text({ status: 200, headers: { 'content-type': 'text/html' }, body: LOGIN_PAGES[0]![1] }, viaProxy);
    expect(shown).toContain('or the proxy proxy.corp:80 (a TLS-inspecting one) wants a login');
  });

  it('keeps JSON, XML, plain text and HTML without login signs a success, also when they mention passwords', () => {
    const ok = (contentType: string, body: string) =>
      explainUpstreamAnswer({ status: 200, headers: { 'content-type': contentType }, body }, CONTEXT).every((f) => f.level === 'ok');
    expect(ok('application/json', '{"field":"<input type=password>","SAMLRequest":"x"}')).toBe(true);
    expect(ok('application/xml', '<order><note>type=password SAMLRequest</note></order>')).toBe(true);
    expect(ok('text/plain', 'Current time (UTC): 2025-01-01 00:00:00; SAMLRequest')).toBe(true);
    expect(ok('text/html', '<html><body><h1>Order 4711 received</h1><form action="/processOrder"></form></body></html>')).toBe(true);
    // Pages that only mention the signs: a report naming a SAML field, a link to a sign-in page, a form whose
    // address has "saml" or "login" in a path segment of a flow or its query, JSON served as HTML.
    expect(ok('text/html', '<html><body><p>Mapping of SAMLResponse attributes: done</p></body></html>')).toBe(true);
    expect(ok('text/html', '<html><body><a href="https://idp.example/oauth2/authorize?x=1">sign in</a></body></html>')).toBe(true);
    expect(ok('text/html', '<html><body><form action="/http/samlmapping/upload"></form></body></html>')).toBe(true);
    expect(ok('text/html', '<html><body><form action="/http/orders?source=login-portal"></form></body></html>')).toBe(true);
    expect(ok('text/html', '{"SAMLRequest":"x","authorizationUrl":"https://idp.example/oauth/authorize"}')).toBe(true);
    expect(ok('text/html', '<html><body><input type="password-hint" name="hint"></body></html>')).toBe(true);
    expect(loginPageOf({ headers: {}, body: LOGIN_PAGES[0]![1] })).toBeUndefined();
  });
});

describe('check: a failed connection to the HTTPS proxy', () => {
  const viaProxy = { ...CONTEXT, network: { ca: [], httpsProxy: 'http://user:pw@10.9.8.7:3128' } };
  const atProxy = (code: string) => {
    const err = Object.assign(new Error('connect failed'), { code });
    markProxyConnectFailure(err, '10.9.8.7:3128');
    return explainUpstreamError(Object.assign(new Error('fetch failed'), { cause: err }), viaProxy);
  };

  it('names the proxy, not the target, for a refusal, a name that does not resolve and a connect timeout', () => {
    const refused = atProxy('ECONNREFUSED');
    expect(refused.message).toBe(`GET ${CONTEXT.url}: the HTTPS proxy 10.9.8.7:3128 refused the connection (ECONNREFUSED)`);
    expect(refused.hints[0]).toBe('nothing accepts connections at 10.9.8.7:3128: check the host and port in HTTPS_PROXY (acme.it-cpi000-rt.example was not contacted)');
    expect(atProxy('ENOTFOUND').message).toContain('the HTTPS proxy 10.9.8.7:3128 does not resolve (ENOTFOUND)');
    expect(atProxy('UND_ERR_CONNECT_TIMEOUT').message).toContain('no connection to the HTTPS proxy 10.9.8.7:3128 within 5000 ms (UND_ERR_CONNECT_TIMEOUT)');
    for (const code of ['ECONNREFUSED', 'ENOTFOUND', 'UND_ERR_CONNECT_TIMEOUT']) {
      const shown = [atProxy(code).message, ...atProxy(code).hints].join('\n');
      expect(shown).not.toContain('refused the connection: check host and port');
      expect(shown).not.toContain('user:pw');
    }
  });

  it('a CONNECT taken and not answered points at the proxy reaching the target; one closed before the answer at the port', () => {
    const held = atProxy('UND_ERR_HEADERS_TIMEOUT');
    expect(held.message).toBe(
      `GET ${CONTEXT.url}: the HTTPS proxy 10.9.8.7:3128 took the CONNECT to acme.it-cpi000-rt.example but did not answer it within 5000 ms (UND_ERR_HEADERS_TIMEOUT)`,
    );
    expect(held.hints[0]).toContain('may not reach acme.it-cpi000-rt.example');
    const closed = atProxy('ECONNRESET');
    expect(closed.message).toContain('the HTTPS proxy 10.9.8.7:3128 closed the connection without answering (ECONNRESET)');
    expect(closed.hints[0]).toContain('check the port in HTTPS_PROXY (is it the proxy?)');
  });

  it('blames the target when the failed connection was not the one to the proxy (NO_PROXY, or after the tunnel)', () => {
    const direct = explainUpstreamError(Object.assign(new Error('connect failed'), { code: 'ECONNREFUSED' }), viaProxy);
    expect(direct.message).toBe(`GET ${CONTEXT.url}: acme.it-cpi000-rt.example refused the connection (ECONNREFUSED)`);
  });
});

describe('check: explaining a token failure', () => {
  const ctx = { credentials: { kind: 'client-secret', tokenUrl: 'https://acme.authentication.example/oauth/token', source: '/k.json' }, network: { ca: [] }, timeoutMs: 10_000 } as const;

  it('a refused parameter (invalid_scope) is not blamed on the secret; rejected credentials are', () => {
    const scope = explainTokenError(new SidecarError('TOKEN_REJECTED', 'token server refused the token request (400 invalid_scope: x) — check the scope asked for'), ctx);
    expect(scope.level).toBe('FAIL');
    expect(scope.hints.join('\n')).not.toContain('wrong or was rotated');
    expect(scope.hints.join('\n')).toContain('fix the parameter the message names');
    const secret = explainTokenError(new SidecarError('TOKEN_REJECTED', 'token server rejected the client credentials (401) — check clientid/clientsecret'), ctx);
    expect(secret.hints.join('\n')).toContain('wrong or was rotated');
  });
});
