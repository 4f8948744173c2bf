import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { CertificateCredentials, ClientKeyPair, LoadedCredentials } from '../../src/credentials.js';
import { ConfigError, type ConfigProblem } from '../../src/errors.js';
import { EXPIRY_WARNING_DAYS, parseServiceKey, shownUrl } from '../../src/service-key.js';
import { unitCerts } from '../helpers/unit-certs.js';

const certs = await unitCerts();
const DAY_MS = 86_400_000;
const SOURCE = '/etc/secrets/key.json';
const fixture = (name: string): Record<string, unknown> => {
  const text = readFileSync(new URL(`../fixtures/service-keys/${name}`, import.meta.url), 'utf8');
  return JSON.parse(text) as Record<string, unknown>;
};

const CLIENT_ID = 'sb-11111111-2222-3333-4444-555555555555!b123456|it-rt-acme-dev!b196';
const SECRET = '66666666-7777-8888-9999-000000000000$FAKE_fake-SECRET_value_0000000000000=';
const RUNTIME_URL = 'https://acme-dev.it-cpi000-rt.cfapps.eu10-000.hana.ondemand.com';
const TOKEN_URL = 'https://acme-dev.authentication.eu10.hana.ondemand.com/oauth/token';
const CERT_TOKEN_URL = 'https://acme-dev.authentication.cert.eu10.hana.ondemand.com/oauth/token';

/** An SAP-generated Certificate key around the unit test chain and PKCS#1 key. */
function certificateKey(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    oauth: {
      clientid: CLIENT_ID,
      certificate: certs.chainPem,
      key: certs.leafKeyPkcs1,
      certificatedetails: { issuerdn: 'CN=Fake', subjectdn: 'CN=fake', serialnumber: '00', validuntil: '2030-01-01' },
      url: RUNTIME_URL,
      tokenurl: CERT_TOKEN_URL,
      ...overrides,
    },
  };
}

function externalKey(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const oauth = { clientid: CLIENT_ID, certificate: certs.leafPem, 'certificate-pinning': true, url: RUNTIME_URL };
  return { oauth: { ...oauth, tokenurl: CERT_TOKEN_URL, ...overrides } };
}

const PAIR_SOURCE = '/certs/tls.crt, /certs/tls.key';
const pair = (certificate: string, key: string): ClientKeyPair => ({ certificate, key, source: PAIR_SOURCE });

/** What `fn` throws; fails the test when it returns instead (outside any `try` of the caller). */
function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return expect.unreachable('expected it to throw, but it returned');
}

/** The problems of the ConfigError thrown by `fn`. */
function problemsOf(fn: () => unknown): ConfigProblem[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).problems];
  }
  throw new Error('expected a ConfigError');
}

const parse = (raw: unknown, opts = {}): LoadedCredentials => parseServiceKey(raw, SOURCE, opts);
const asCertificate = (loaded: LoadedCredentials) => loaded.credentials as CertificateCredentials;

describe('parseServiceKey: ClientId/Secret keys', () => {
  it('reads an integration-flow key nested under oauth', () => {
    expect(parse(fixture('client-secret.json'))).toEqual({
      credentials: {
        kind: 'client-secret',
        clientId: CLIENT_ID,
        clientSecret: SECRET,
        tokenUrl: TOKEN_URL,
        url: RUNTIME_URL,
        source: SOURCE,
      },
      notices: [],
    });
  });

  it('reads an api key and keeps the management url', () => {
    const { credentials } = parse(fixture('client-secret-api.json'));
    expect(credentials.clientId).toMatch(/\|it!b196$/);
    expect(credentials.url).toBe('https://acme-dev.it-cpi000.cfapps.eu10-000.hana.ondemand.com');
  });

  it('reads a flat key and ignores unknown fields', () => {
    const { credentials } = parse(fixture('flat.json'));
    expect(credentials).toMatchObject({ kind: 'client-secret', clientId: 'sb-flat-fake!b1|it-rt-acme-dev!b196' });
    expect(credentials).not.toHaveProperty('identityzone');
  });

  it('decodes oauth given as a JSON string (btp-operator secret)', () => {
    const raw = { oauth: JSON.stringify(fixture('client-secret.json').oauth), plan: 'integration-flow', type: 'it-rt' };
    expect(parse(raw).credentials.clientId).toBe(CLIENT_ID);
  });

  it('decodes a secretRootKey map whose oauth is JSON inside JSON', () => {
    const map = { oauth: JSON.stringify(fixture('client-secret.json').oauth), instance_name: 'my-instance' };
    expect(parse(JSON.stringify(map)).credentials.clientId).toBe(CLIENT_ID);
    expect(parse({ key: JSON.stringify(map) }).credentials.clientId).toBe(CLIENT_ID);
  });

  it('unwraps a single wrapper such as credentials, beside plain metadata', () => {
    const raw = { credentials: fixture('client-secret.json'), instance_name: 'my-instance', tags: ['it-rt'] };
    expect(parse(raw).credentials.clientId).toBe(CLIENT_ID);
  });

  it('trims whitespace around values', () => {
    const raw = {
      clientid: ` ${CLIENT_ID}\n`,
      clientsecret: `${SECRET}\n`,
      tokenurl: `${TOKEN_URL}\n`,
      url: `\t${RUNTIME_URL} `,
    };
    expect(parse(raw).credentials).toMatchObject({
      clientId: CLIENT_ID,
      clientSecret: SECRET,
      tokenUrl: TOKEN_URL,
      url: RUNTIME_URL,
    });
  });

  it('accepts a key without url', () => {
    expect(parse({ clientid: 'c', clientsecret: 's', tokenurl: TOKEN_URL }).credentials.url).toBeUndefined();
  });

  it('requires url, named with its prefix, where the route has no upstream of its own (needsUrl)', () => {
    const key = (url?: unknown) => ({ oauth: { clientid: 'c', clientsecret: 's', tokenurl: TOKEN_URL, ...(url === undefined ? {} : { url }) } });
    const needing = (raw: unknown) => () => parseServiceKey(raw, SOURCE, { needsUrl: true });
    const hint = 'and the route has no upstream of its own: set --upstream (or upstream: on the route)';
    expect(problemsOf(needing(key()))).toEqual([{ source: SOURCE, field: 'oauth.url', message: `is missing, ${hint}` }]);
    expect(problemsOf(needing(key(null)))).toEqual([{ source: SOURCE, field: 'oauth.url', message: `is missing, ${hint}` }]);
    expect(problemsOf(needing(key('  ')))).toEqual([{ source: SOURCE, field: 'oauth.url', message: `is empty, ${hint}` }]);
    // A value that is no URL (or no string) is reported as such, once.
    expect(problemsOf(needing(key('not a url')))).toEqual([{ source: SOURCE, field: 'oauth.url', message: 'is not a URL' }]);
    expect(problemsOf(needing(key(42)))).toEqual([{ source: SOURCE, field: 'oauth.url', message: 'must be a string' }]);
    expect(parseServiceKey(key(RUNTIME_URL), SOURCE, { needsUrl: true }).credentials.url).toBe(RUNTIME_URL);
  });

  it('does not switch the token host for a secret key', () => {
    expect(parse(fixture('client-secret.json'))).toMatchObject({ credentials: { tokenUrl: TOKEN_URL }, notices: [] });
  });
});

describe('parseServiceKey: problems', () => {
  it('names every missing field with its path and source', () => {
    expect(problemsOf(() => parse({ oauth: { url: RUNTIME_URL } }))).toEqual([
      { source: SOURCE, field: 'oauth.clientid', message: 'is missing' },
      { source: SOURCE, field: 'oauth.tokenurl', message: 'is missing' },
      {
        source: SOURCE,
        field: 'oauth.clientsecret',
        message: 'is missing: a service key needs clientsecret, or certificate and key',
      },
    ]);
  });

  it('uses the flat field names for a flat key', () => {
    const fields = problemsOf(() => parse({ clientid: 'c', tokenurl: TOKEN_URL })).map((p) => p.field);
    expect(fields).toEqual(['clientsecret']);
  });

  it('prefixes the wrapper path', () => {
    const fields = problemsOf(() => parse({ credentials: { oauth: { clientsecret: 's' } } })).map((p) => p.field);
    expect(fields).toEqual(['credentials.oauth.clientid', 'credentials.oauth.tokenurl']);
  });

  it('reports blank and non-string values', () => {
    const problems = problemsOf(() => parse({ oauth: { clientid: '  \n', clientsecret: 42, tokenurl: TOKEN_URL } }));
    expect(problems).toContainEqual({ source: SOURCE, field: 'oauth.clientid', message: 'is empty' });
    expect(problems).toContainEqual({ source: SOURCE, field: 'oauth.clientsecret', message: 'must be a string' });
  });

  it('gives exactly one problem per field: a number is not a string, a blank value is empty', () => {
    expect(problemsOf(() => parse({ oauth: { clientid: 'c', clientsecret: 12345, tokenurl: TOKEN_URL } }))).toEqual([
      { source: SOURCE, field: 'oauth.clientsecret', message: 'must be a string' },
    ]);
    expect(problemsOf(() => parse({ oauth: { clientid: 12345, clientsecret: 's', tokenurl: TOKEN_URL } }))).toEqual([
      { source: SOURCE, field: 'oauth.clientid', message: 'must be a string' },
    ]);
    expect(problemsOf(() => parse({ oauth: { clientid: ' ', clientsecret: ' \n', tokenurl: TOKEN_URL } }))).toEqual([
      { source: SOURCE, field: 'oauth.clientid', message: 'is empty' },
      { source: SOURCE, field: 'oauth.clientsecret', message: 'is empty' },
    ]);
  });

  it.each(['tokenurl', 'url'])('refuses port 0 in %s', (name) => {
    const raw = { clientid: 'c', clientsecret: 's', tokenurl: TOKEN_URL, url: 'https://acme-rt.example', [name]: 'https://acme.example:0/oauth/token' };
    expect(problemsOf(() => parse(raw))).toEqual([{ source: SOURCE, field: name, message: 'has port 0, which is no port to connect to' }]);
  });

  it.each(['tokenurl', 'url'])('refuses a user name or password in %s without echoing it', (name) => {
    const raw = { clientid: 'c', clientsecret: 's', tokenurl: TOKEN_URL, [name]: 'https://user:TOPSECRET@acme.example/oauth/token' };
    const problems = problemsOf(() => parse(raw));
    expect(problems).toEqual([
      { source: SOURCE, field: name, message: 'must not carry a user name or password (credentials come from the service key)' },
    ]);
    expect(JSON.stringify(problems)).not.toContain('TOPSECRET');
  });

  it('refuses a query or a fragment in url (it would be dropped), not in tokenurl (it is sent); shownUrl hides either', () => {
    for (const url of ['https://acme.example/base?sig=FAKE-signed', 'https://acme.example/base#part']) {
      expect(problemsOf(() => parse({ clientid: 'c', clientsecret: 's', tokenurl: TOKEN_URL, url }))).toEqual([
        { source: SOURCE, field: 'url', message: "must not carry a query or a fragment: each request's own query is what goes upstream" },
      ]);
    }
    const signed = `${TOKEN_URL}?sig=FAKE-signed`;
    expect(parse({ clientid: 'c', clientsecret: 's', tokenurl: signed }).credentials.tokenUrl).toBe(signed);
    expect(shownUrl(signed)).toBe(`${TOKEN_URL}?…`);
    expect(shownUrl(TOKEN_URL)).toBe(TOKEN_URL);
  });

  it.each([
    ['plain http on a real host', TOKEN_URL.replace('https:', 'http:'), 'must be an https URL'],
    ['no URL at all', 'acme-dev.authentication.eu10.hana.ondemand.com', 'is not a URL'],
    ['another scheme', 'ftp://acme-dev/oauth/token', 'must be an https URL'],
  ])('refuses a tokenurl with %s', (_name, tokenurl, message) => {
    const [problem] = problemsOf(() => parse({ clientid: 'c', clientsecret: 's', tokenurl }));
    expect(problem).toMatchObject({ field: 'tokenurl', source: SOURCE });
    expect(problem?.message).toContain(message);
  });

  it('validates url like tokenurl', () => {
    const raw = { clientid: 'c', clientsecret: 's', tokenurl: TOKEN_URL, url: 'http://acme.example' };
    const problems = problemsOf(() => parse(raw));
    expect(problems.map((p) => p.field)).toEqual(['url']);
  });

  it.each(['http://127.0.0.1:8080/oauth/token', 'http://localhost/oauth/token', 'http://[::1]:9/oauth/token'])(
    'allows plain http on loopback: %s',
    (tokenurl) => {
      expect(parse({ clientid: 'c', clientsecret: 's', tokenurl }).credentials.tokenUrl).toBe(tokenurl);
    },
  );

  it.each([
    ['an array', [], ''],
    ['a number', 7, ''],
    ['oauth that is not JSON', { oauth: 'not json' }, 'oauth'],
  ])('refuses %s', (_name, raw, field) => {
    const [problem] = problemsOf(() => parse(raw));
    expect(problem).toEqual({ source: SOURCE, field, message: 'is not a JSON object' });
  });

  it('says when no service key is recognisable', () => {
    const [problem] = problemsOf(() => parse({ foo: 'bar', instance_name: 'x' }));
    expect(problem?.message).toMatch(/^contains no service key/);
  });

  it('reports all problems of one key at once', () => {
    const problems = problemsOf(() =>
      parse(certificateKey({ clientid: '', tokenurl: 'http://acme.example/t', certificate: 'garbage' })),
    );
    expect(problems.map((p) => p.field)).toEqual(['oauth.clientid', 'oauth.tokenurl', 'oauth.certificate']);
  });

  it('formats the error with field and source on one line each', () => {
    const err = thrownBy(() => parse({ oauth: { clientid: 'c', tokenurl: TOKEN_URL } }));
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe('CONFIG_INVALID');
    expect((err as Error).message).toContain(`  - oauth.clientsecret: is missing`);
    expect((err as Error).message).toContain(`(${SOURCE})`);
  });

  it('never puts the secret into an error', () => {
    const raw = { oauth: { clientsecret: SECRET, tokenurl: 'http://acme.example/t' } };
    const err = thrownBy(() => parse(raw));
    expect(err).toBeInstanceOf(ConfigError);
    // The key is refused for its own problems (no clientid, an http token URL), and says so without the secret.
    expect((err as ConfigError).problems.map((p) => p.field)).toEqual(expect.arrayContaining(['oauth.clientid', 'oauth.tokenurl']));
    expect((err as Error).message).not.toContain('FAKE_fake-SECRET');
    expect(JSON.stringify((err as ConfigError).problems)).not.toContain('FAKE_fake-SECRET');
  });
});

describe('parseServiceKey: Certificate keys', () => {
  const leaf = new X509Certificate(certs.leafPem);

  it('reads a chain with a PKCS#1 key into normalised PEM, fingerprint and notAfter', () => {
    const loaded = parse(certificateKey());
    expect(loaded.credentials).toEqual({
      kind: 'certificate',
      clientId: CLIENT_ID,
      tokenUrl: CERT_TOKEN_URL,
      url: RUNTIME_URL,
      source: SOURCE,
      certificate: certs.chainPem,
      key: certs.leafKeyPkcs1,
      fingerprint: leaf.fingerprint256,
      notAfter: new Date(leaf.validTo),
    });
    expect(asCertificate(loaded).key).toMatch(/^-----BEGIN RSA PRIVATE KEY-----\n/);
    expect(loaded.notices).toEqual([]);
  });

  it('reads a PKCS#8 key', () => {
    const loaded = parse(certificateKey({ key: certs.leafKeyPkcs8 }));
    expect(asCertificate(loaded).key).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
  });

  it('reads an EC key', () => {
    const loaded = parse(certificateKey({ certificate: certs.ecLeafPem, key: certs.ecKeySec1 }));
    expect(asCertificate(loaded).fingerprint).toBe(new X509Certificate(certs.ecLeafPem).fingerprint256);
  });

  it.each([
    ['literal \\n', (s: string) => s.replaceAll('\n', '\\n')],
    ['double-escaped \\\\n', (s: string) => s.replaceAll('\n', '\\\\n')],
    ['one line with spaces', (s: string) => s.replaceAll('\n', ' ')],
    ['CRLF', (s: string) => s.replaceAll('\n', '\r\n')],
  ])('repairs PEM values with %s', (_name, mangle) => {
    const loaded = parse(certificateKey({ certificate: mangle(certs.chainPem), key: mangle(certs.leafKeyPkcs1) }));
    expect(asCertificate(loaded).certificate).toBe(certs.chainPem);
    expect(asCertificate(loaded).key).toBe(certs.leafKeyPkcs1);
  });

  it('switches the token host to authentication.cert and says so, naming hosts only', () => {
    const loaded = parse(certificateKey({ tokenurl: TOKEN_URL }));
    expect(loaded.credentials.tokenUrl).toBe(CERT_TOKEN_URL);
    expect(loaded.notices).toEqual([
      {
        level: 'info',
        message:
          'token URL host switched from acme-dev.authentication.eu10.hana.ondemand.com to ' +
          'acme-dev.authentication.cert.eu10.hana.ondemand.com: XSUAA accepts client certificates only there',
      },
    ]);
  });

  it('leaves a token host that is not XSUAA alone', () => {
    const loaded = parse(certificateKey({ tokenurl: 'https://127.0.0.1:8443/oauth/token' }));
    expect(loaded.credentials.tokenUrl).toBe('https://127.0.0.1:8443/oauth/token');
    expect(loaded.notices).toEqual([]);
  });

  it('refuses a key that does not match the leaf', () => {
    expect(problemsOf(() => parse(certificateKey({ key: certs.otherKeyPkcs8 })))).toEqual([
      { source: SOURCE, field: 'oauth.key', message: 'does not match the certificate in oauth.certificate' },
    ]);
    // The key of a CA in the chain (the wrong file) is no match either: the CA is never presented as the client.
    expect(problemsOf(() => parse(certificateKey({ key: certs.intermediateKeyPkcs8 })))).toEqual([
      { source: SOURCE, field: 'oauth.key', message: 'does not match the certificate in oauth.certificate' },
    ]);
  });

  it('refuses a pair OpenSSL will not put into a TLS context (RSA 768) as a problem of the certificate, not a crash later', () => {
    expect(problemsOf(() => parse(certificateKey({ certificate: certs.weakLeafPem, key: certs.weakKeyPkcs8 })))).toEqual([
      {
        source: SOURCE,
        field: 'oauth.certificate',
        message: 'cannot be used for TLS: OpenSSL refuses it (ee key too small); a new certificate with a stronger key or signature is needed',
      },
    ]);
  });

  it('refuses an expired certificate, giving the date', () => {
    const expiredOn = new Date(new X509Certificate(certs.expiredPem).validTo).toISOString();
    expect(problemsOf(() => parse(certificateKey({ certificate: certs.expiredPem })))).toEqual([
      { source: SOURCE, field: 'oauth.certificate', message: `expired on ${expiredOn}` },
    ]);
  });

  it('judges expiry by the injected clock', () => {
    const notAfter = new Date(leaf.validTo);
    const later = new Date(notAfter.getTime() + DAY_MS);
    expect(problemsOf(() => parse(certificateKey(), { now: later })).map((p) => p.message)).toEqual([
      `expired on ${notAfter.toISOString()}`,
    ]);
  });

  it(`warns when the certificate expires within ${EXPIRY_WARNING_DAYS} days`, () => {
    const loaded = parse(certificateKey({ certificate: certs.expiringPem }));
    const notAfter = new Date(new X509Certificate(certs.expiringPem).validTo).toISOString();
    expect(loaded.notices).toEqual([
      {
        level: 'warn',
        message: `the client certificate in oauth.certificate (${SOURCE}) expires on ${notAfter}, in 10 days`,
      },
    ]);
  });

  describe('an intermediate that runs out before the leaf', () => {
    const intermediateNotice = (pem: string) => new Date(new X509Certificate(pem).validTo).toISOString();

    it('is warned about within the window, named; the key loads, and its expiry stays the leaf\'s', () => {
      const loaded = parse(certificateKey({ certificate: `${certs.leafPem}${certs.expiringIntermediatePem}${certs.rootPem}` }));
      expect(loaded.notices).toEqual([
        {
          level: 'warn',
          message:
            `the intermediate certificate CN=Fake Unit Test Client CA in oauth.certificate (${SOURCE}) expires on ${intermediateNotice(certs.expiringIntermediatePem)}, in 10 days, ` +
            'before the client certificate: a token server that builds the chain through it refuses the client certificate from then on',
        },
      ]);
      expect(loaded.credentials.kind !== 'client-secret' && loaded.credentials.notAfter).toEqual(new Date(leaf.validTo));
    });

    it('once expired, is warned about, not refused: the token server may build its path another way', () => {
      const loaded = parse(certificateKey({ certificate: `${certs.leafPem}${certs.expiredIntermediatePem}` }));
      expect(loaded.notices).toEqual([
        {
          level: 'warn',
          message:
            `the intermediate certificate CN=Fake Unit Test Client CA in oauth.certificate (${SOURCE}) expired on ${intermediateNotice(certs.expiredIntermediatePem)}: ` +
            'a token server that builds the chain through it refuses the client certificate; put its renewed intermediate after the leaf',
        },
      ]);
    });

    it('is judged on the path a server builds: the renewed of two intermediates sent, and never a root sent along', () => {
      // The old intermediate first, its renewal after it: a server takes the time-valid one.
      expect(parse(certificateKey({ certificate: `${certs.leafPem}${certs.expiredIntermediatePem}${certs.intermediatePem}` })).notices).toEqual([]);
      // A self-signed root that ran out: the server checks its own trust anchor.
      expect(parse(certificateKey({ certificate: `${certs.chainPem}${certs.expiredRootPem}` })).notices).toEqual([]);
      // A cross-signed root that ran out, beside the root itself: the server may trust the root as itself.
      expect(parse(certificateKey({ certificate: `${certs.chainPem}${certs.crossSignedRootPem}${certs.rootPem}` })).notices).toEqual([]);
    });

    it('is not hidden by a longer-running certificate that only looks like its issuer', () => {
      const warned = (chain: string) => parse(certificateKey({ certificate: chain })).notices.map((n) => n.message);
      const expiring = expect.stringMatching(/^the intermediate certificate CN=Fake Unit Test Client CA .* expires on .*, in 10 days, before the client certificate/);
      // Same name under a new key (no Authority Key Identifier tells them apart): it did not sign the leaf.
      expect(warned(`${certs.leafPem}${certs.expiringIntermediatePem}${certs.rekeyedIntermediatePem}${certs.rootPem}`)).toEqual([expiring]);
      // Same name and key, cross-signed by a root not sent: the one that leads to the root sent along counts.
      expect(warned(`${certs.leafPem}${certs.expiringIntermediatePem}${certs.otherRootIntermediatePem}${certs.rootPem}`)).toEqual([expiring]);
      // Without the root, nothing tells which way the server goes: the longer-running one is taken.
      expect(warned(`${certs.leafPem}${certs.expiringIntermediatePem}${certs.otherRootIntermediatePem}`)).toEqual([]);
    });
  });

  it('warns when the certificate is not valid yet by the injected clock (the token server would refuse it until then)', () => {
    const notBefore = new Date(leaf.validFrom);
    const earlier = new Date(notBefore.getTime() - DAY_MS);
    expect(parse(certificateKey(), { now: earlier }).notices).toContainEqual({
      level: 'warn',
      message: `the client certificate in oauth.certificate (${SOURCE}) is not valid before ${notBefore.toISOString()}`,
    });
    expect(parse(certificateKey()).notices).toEqual([]);
  });

  it('does not warn when the injected clock is far from expiry', () => {
    const monthEarlier = new Date(Date.now() - 30 * DAY_MS);
    expect(parse(certificateKey({ certificate: certs.expiringPem }), { now: monthEarlier }).notices).toEqual([]);
  });

  it('reports PEM that is not PEM, per field, without echoing it', () => {
    const problems = problemsOf(() => parse(certificateKey({ certificate: 'MIIFAKE', key: 'secret-key-material' })));
    expect(problems).toEqual([
      {
        source: SOURCE,
        field: 'oauth.certificate',
        message: 'is not a PEM certificate (no PEM CERTIFICATE block found)',
      },
      { source: SOURCE, field: 'oauth.key', message: 'is not a PEM private key (no PEM PRIVATE KEY block found)' },
    ]);
  });

  it('reads a chain pasted root first without its intermediate, leaf first', () => {
    const loaded = parse(certificateKey({ certificate: `${certs.rootPem}\n${certs.leafPem}` }));
    expect(asCertificate(loaded).fingerprint).toBe(leaf.fingerprint256);
    expect(asCertificate(loaded).certificate).toBe(`${certs.leafPem}\n${certs.rootPem}\n`);
  });

  it('reports a corrupt key without its content', () => {
    const corrupt = certs.leafKeyPkcs1.slice(0, 300) + '\n-----END RSA PRIVATE KEY-----\n';
    const [problem] = problemsOf(() => parse(certificateKey({ key: corrupt })));
    expect(problem).toEqual({
      source: SOURCE,
      field: 'oauth.key',
      message: 'is not a PEM private key (the RSA PRIVATE KEY block is not valid)',
    });
  });
});

describe('parseServiceKey: Certificate keys with half a pair', () => {
  const { clientsecret: _secret, ...noSecret } = fixture('client-secret.json').oauth as Record<string, unknown>;
  const keyBody = certs.leafKeyPkcs1.split('\n')[3] ?? '';
  const problemsOfOauth = (oauth: Record<string, unknown>) =>
    problemsOf(() => parse({ oauth: { ...noSecret, ...oauth } }));
  const keyOnly = { key: certs.leafKeyPkcs1 };
  const certOnly = { certificate: certs.chainPem };
  const noCertificate = 'is missing (the key has a "key")';

  it.each([
    ['a blank certificate', { ...keyOnly, certificate: '  \n' }, 'oauth.certificate', 'is empty'],
    ['a key without certificate', keyOnly, 'oauth.certificate', noCertificate],
    ['a key with a null certificate', { ...keyOnly, certificate: null }, 'oauth.certificate', noCertificate],
    ['an empty key', { ...certOnly, key: '' }, 'oauth.key', 'is empty'],
    ['a blank key', { ...certOnly, key: ' \n ' }, 'oauth.key', 'is empty'],
    ['a key that is not a string', { ...certOnly, key: { pem: certs.leafKeyPkcs1 } }, 'oauth.key', 'must be a string'],
  ])('names the broken half for %s, once, without values', (_name, oauth, field, message) => {
    const problems = problemsOfOauth(oauth);
    expect(problems).toEqual([{ source: SOURCE, field, message }]);
    expect(JSON.stringify(problems)).not.toContain(keyBody);
  });

  it('reports both halves when each is broken', () => {
    expect(problemsOfOauth({ certificate: '', key: 'not-a-key' })).toEqual([
      { source: SOURCE, field: 'oauth.certificate', message: 'is empty' },
      { source: SOURCE, field: 'oauth.key', message: 'is not a PEM private key (no PEM PRIVATE KEY block found)' },
    ]);
  });

  it('gives the External Certificate hint only for a readable certificate', () => {
    expect(problemsOfOauth({ certificate: 'MIIFAKE' })).toEqual([
      {
        source: SOURCE,
        field: 'oauth.certificate',
        message: 'is not a PEM certificate (no PEM CERTIFICATE block found)',
      },
    ]);
  });
});

describe('parseServiceKey: External Certificate keys and supplied key pairs', () => {
  it('asks for the key pair when the key has a certificate but no key', () => {
    const [problem] = problemsOf(() => parse(externalKey()));
    expect(problem?.field).toBe('oauth.key');
    expect(problem?.message).toContain('External Certificate');
    for (const name of ['--client-cert', '--client-key', 'SIDECAR_CLIENT_CERT', 'SIDECAR_CLIENT_KEY']) {
      expect(problem?.message).toContain(name);
    }
  });

  it('uses the supplied pair as an external-certificate credential', () => {
    const loaded = parse(externalKey(), { clientCert: pair(certs.chainPem, certs.leafKeyPkcs8) });
    expect(loaded.credentials).toMatchObject({
      kind: 'external-certificate',
      certificate: certs.chainPem,
      key: certs.leafKeyPkcs8,
      fingerprint: new X509Certificate(certs.leafPem).fingerprint256,
    });
    expect(loaded.notices).toEqual([]);
  });

  it('warns when the supplied certificate differs from the one in the key (pinning)', () => {
    const clientCert = pair(certs.chainPem, certs.leafKeyPkcs1);
    const loaded = parse(externalKey({ certificate: certs.ecLeafPem }), { clientCert });
    expect(loaded.notices).toHaveLength(1);
    expect(loaded.notices[0]).toMatchObject({ level: 'warn' });
    expect(loaded.notices[0]?.message).toContain('differs from oauth.certificate');
    expect(loaded.notices[0]?.message).toContain('pinning');
  });

  it('takes the leaf of a supplied chain pasted root first without its intermediate', () => {
    const loaded = parse(externalKey(), { clientCert: pair(`${certs.rootPem}\n${certs.leafPem}`, certs.leafKeyPkcs8) });
    expect(loaded.credentials).toMatchObject({
      kind: 'external-certificate',
      certificate: `${certs.leafPem}\n${certs.rootPem}\n`,
      fingerprint: new X509Certificate(certs.leafPem).fingerprint256,
    });
    expect(loaded.notices).toEqual([]);
  });

  it("finds the pinned leaf in the key's own certificate whatever the order", () => {
    const own = `${certs.rootPem}\n${certs.leafPem}`;
    const loaded = parse(externalKey({ certificate: own }), { clientCert: pair(certs.chainPem, certs.leafKeyPkcs1) });
    expect(loaded.notices).toEqual([]);
  });

  it('uses a supplied pair for mTLS even with a ClientId/Secret key', () => {
    const loaded = parse(fixture('client-secret.json'), { clientCert: pair(certs.leafPem, certs.leafKeyPkcs1) });
    expect(loaded.credentials.kind).toBe('external-certificate');
    expect(loaded.credentials).not.toHaveProperty('clientSecret');
    expect(loaded.credentials.tokenUrl).toBe(CERT_TOKEN_URL);
    // Not without a word: the secret the key holds goes unused.
    expect(loaded.notices).toContainEqual({ level: 'info', message: `using the client key pair from ${PAIR_SOURCE} for mTLS: the service key's clientsecret is not used` });
  });

  it("prefers a supplied pair over a Certificate key's own and says so", () => {
    const loaded = parse(certificateKey(), { clientCert: pair(certs.ecLeafPem, certs.ecKeySec1) });
    expect(loaded.credentials.kind).toBe('certificate');
    expect(asCertificate(loaded).fingerprint).toBe(new X509Certificate(certs.ecLeafPem).fingerprint256);
    expect(loaded.notices).toEqual([
      { level: 'info', message: `using the client key pair from ${PAIR_SOURCE} instead of the service key's own` },
    ]);
  });

  it('names the pair as source of its problems', () => {
    const problems = problemsOf(() => parse(externalKey(), { clientCert: pair(certs.leafPem, certs.otherKeyPkcs8) }));
    expect(problems).toEqual([
      { source: PAIR_SOURCE, field: 'key', message: 'does not match the certificate in certificate' },
    ]);
  });

  it('names each half of a pair by the setting that gave it and its own file, not as the key\'s own fields', () => {
    const named: ClientKeyPair = {
      ...pair(certs.leafPem, certs.otherKeyPkcs8),
      certificateFrom: { source: '/certs/client.crt', field: '--client-cert' },
      keyFrom: { source: '/certs/client.key', field: '--client-key' },
    };
    expect(problemsOf(() => parse(externalKey(), { clientCert: named }))).toEqual([
      { source: '/certs/client.key', field: '--client-key', message: 'does not match the certificate in --client-cert' },
    ]);
    const broken = { ...named, certificate: 'not a certificate' };
    expect(problemsOf(() => parse(externalKey(), { clientCert: broken })).map((p) => [p.field, p.source])).toEqual([['--client-cert', '/certs/client.crt']]);
  });

  it('refuses an expired supplied certificate', () => {
    const problems = problemsOf(() => parse(externalKey(), { clientCert: pair(certs.expiredPem, certs.leafKeyPkcs1) }));
    expect(problems.map((p) => [p.field, p.source])).toEqual([['certificate', PAIR_SOURCE]]);
    expect(problems[0]?.message).toMatch(/^expired on \d{4}-/);
  });
});

describe('parseServiceKey: expiry boundaries, precedence and wrappers', () => {
  const leafNotAfter = new Date(new X509Certificate(certs.leafPem).validTo);

  it('refuses a certificate from the second after it expired, not only a day later', () => {
    const justAfter = new Date(leafNotAfter.getTime() + 1_000);
    expect(problemsOf(() => parse(certificateKey(), { now: justAfter })).map((p) => p.message)).toEqual([
      `expired on ${leafNotAfter.toISOString()}`,
    ]);
  });

  it(`warns from ${EXPIRY_WARNING_DAYS} days before the expiry on, and not before`, () => {
    const warned = (daysBefore: number) =>
      parse(certificateKey(), { now: new Date(leafNotAfter.getTime() - daysBefore * DAY_MS) }).notices.map((n) => n.message);
    expect(warned(EXPIRY_WARNING_DAYS)).toEqual([expect.stringMatching(new RegExp(`expires on .*, in ${EXPIRY_WARNING_DAYS} days$`))]);
    expect(warned(EXPIRY_WARNING_DAYS + 0.01)).toEqual([]);
  });

  it('a key with certificate and key beside a clientsecret is a Certificate key: mTLS, not the secret', () => {
    expect(parse(certificateKey({ clientsecret: SECRET })).credentials.kind).toBe('certificate');
  });

  it('decodes oauth encoded twice (a JSON string of a JSON string)', () => {
    const raw = { oauth: JSON.stringify(JSON.stringify(fixture('client-secret.json').oauth)) };
    expect(parse(raw).credentials.clientId).toBe(CLIENT_ID);
  });

  it('unwraps a credentials wrapper around a secretRootKey map (oauth within oauth, three levels)', () => {
    const map = { oauth: JSON.stringify(fixture('client-secret.json').oauth), instance_name: 'my-instance' };
    expect(parse({ credentials: { oauth: map } }).credentials.clientId).toBe(CLIENT_ID);
  });

  it('warns about an intermediate only when it runs out before the leaf, not with it', () => {
    const loaded = parse(certificateKey({ certificate: `${certs.expiringPem}${certs.expiringIntermediatePem}${certs.rootPem}` }));
    expect(loaded.notices.map((n) => n.message)).toEqual([expect.stringMatching(/^the client certificate in oauth\.certificate .* expires on .*, in 10 days$/)]);
  });
});
