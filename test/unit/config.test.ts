import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parseConfig, type Config } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { unitCerts } from '../helpers/unit-certs.js';

const certs = await unitCerts();
const CA = certs.rootPem;
/** Planted in values that may be secret: no message may contain it. */
const SECRET = 'TOPSECRET';

function files(map: Record<string, string>) {
  return (path: string) => {
    const text = map[path];
    if (text === undefined) throw Object.assign(new Error('nope'), { code: 'ENOENT' });
    return text;
  };
}

function run(argv: string[], env: Record<string, string> = {}, fs: Record<string, string> = {}): Readonly<Config> {
  const result = parseConfig(argv, env, files(fs));
  if (result.kind !== 'run') throw new Error(`expected a config, got ${result.kind}`);
  return result.config;
}

function problems(argv: string[], env: Record<string, string> = {}, fs: Record<string, string> = {}) {
  try {
    parseConfig(argv, env, files(fs));
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

const EMPTY_FLAG = 'is empty (an unset shell variable?): give a value, or leave the flag out';

describe('parseConfig', () => {
  it('describes a single route from flags with safe defaults', () => {
    const config = run(['token', '--service-key', '/keys/k.json']);
    expect(config.command).toBe('token');
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.routes).toHaveLength(1);
    expect(config.routes[0]).toMatchObject({
      prefix: '/',
      credentials: { source: { kind: 'path', path: '/keys/k.json' } },
      token: { auth: 'basic', params: {} },
      csrf: 'auto',
      maxReplayBodyBytes: 1024 * 1024,
    });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.routes[0]?.token)).toBe(true);
  });

  it('defaults to serve and lets flags win over the environment', () => {
    const config = run(['--listen', '[::1]:9000'], { SIDECAR_LISTEN: '0.0.0.0:1', SIDECAR_SERVICE_KEY: '/k', SIDECAR_TOKEN_AUTH: 'post' });
    expect(config.command).toBe('serve');
    expect(config.listen).toEqual({ host: '::1', port: 9000 });
    expect(config.routes[0]?.token.auth).toBe('post');
  });

  it('picks the service key source in the documented order', () => {
    const vcap = '{"it-rt":[]}';
    expect(run([], { VCAP_SERVICES: vcap }).routes[0]?.credentials.source).toEqual({ kind: 'vcap', json: vcap });
    expect(run([], { VCAP_SERVICES_FILE_PATH: '/etc/cf-service-bindings/vcap_services', SIDECAR_BINDING: 'cpi' }).routes[0]?.credentials.source).toEqual({
      kind: 'vcap-file',
      path: '/etc/cf-service-bindings/vcap_services',
      binding: 'cpi',
    });
    expect(run([], { VCAP_SERVICES: vcap, VCAP_SERVICES_FILE_PATH: '/v' }).routes[0]?.credentials.source).toMatchObject({ kind: 'vcap' });
    const pasted = problems([], { VCAP_SERVICES_FILE_PATH: '{"it-rt":[{"credentials":{"clientsecret":"s3cret"}}]}' });
    expect(pasted).toEqual([
      { source: 'VCAP_SERVICES_FILE_PATH', field: 'VCAP_SERVICES_FILE_PATH', message: "holds JSON, not a path: the bindings' JSON itself belongs in VCAP_SERVICES; the value is not shown" },
    ]);
    expect(JSON.stringify(pasted)).not.toContain('s3cret');
    expect(run([], { VCAP_SERVICES: vcap, SERVICE_BINDING_ROOT: '/bindings', SIDECAR_BINDING: 'cpi' }).routes[0]?.credentials.source).toEqual({
      kind: 'binding-root',
      root: '/bindings',
      binding: 'cpi',
    });
    expect(run([], { SERVICE_BINDING_ROOT: '/b', SIDECAR_SERVICE_KEY_JSON: '{}' }).routes[0]?.credentials.source).toMatchObject({ kind: 'inline' });
    expect(run(['--service-key', '/x'], { SIDECAR_SERVICE_KEY_JSON: '{}' }).routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/x', from: '--service-key' });
  });

  it('reads token parameters from repeated flags or a form-encoded env value', () => {
    const fromFlags = run(['--service-key', '/k', '--token-param', 'token_format=jwt', '--token-param', 'x=a=b']);
    expect(fromFlags.routes[0]?.token.params).toEqual({ token_format: 'jwt', x: 'a=b' });
    const fromEnv = run(['--service-key', '/k'], { SIDECAR_TOKEN_PARAMS: 'token_format=jwt&y=1%202' });
    expect(fromEnv.routes[0]?.token.params).toEqual({ token_format: 'jwt', y: '1 2' });
  });

  it('loads extra CAs and the proxy settings, lower-case variables winning', () => {
    const config = run(['--service-key', '/k', '--ca', '/ca.pem'], { HTTPS_PROXY: 'http://upper:1', https_proxy: 'http://lower:2', NO_PROXY: 'a,b' }, { '/ca.pem': CA });
    expect(config.network).toEqual({ ca: [`${CA.trim()}\n`], httpsProxy: 'http://lower:2', noProxy: 'a,b' });
  });

  it('takes a proxy given as host:port for an http:// one (as curl does) and refuses one that is no http(s) URL, never quoting it', () => {
    expect(run(['--service-key', '/k'], { HTTPS_PROXY: 'proxy.corp:3128' }).network.httpsProxy).toBe('http://proxy.corp:3128');
    expect(run(['--service-key', '/k'], { https_proxy: ' 10.0.0.1:3128 ' }).network.httpsProxy).toBe('http://10.0.0.1:3128');
    expect(run(['--service-key', '/k'], { https_proxy: 'proxy:80/' }).network.httpsProxy).toBe('http://proxy:80/');
    expect(run(['--service-key', '/k'], { HTTPS_PROXY: 'https://u:p@proxy:8443' }).network.httpsProxy).toBe('https://u:p@proxy:8443');
    expect(problems(['--service-key', '/k'], { HTTPS_PROXY: 'socks5://user:s3cret@proxy:1080' })).toEqual([
      { source: 'environment', field: 'HTTPS_PROXY', message: 'a socks5:// proxy is not supported: give http://host:port or https://host:port' },
    ]);
    for (const bad of ['http://', 'user:s3cret@', 'proxy corp:3128', ':3128', 'proxy.corp']) {
      expect(problems(['--service-key', '/k'], { https_proxy: bad }), bad).toEqual([
        { source: 'environment', field: 'https_proxy', message: 'is not a proxy address: give http://host:port, https://host:port or host:port' },
      ]);
    }
  });

  it('refuses a proxy URL undici would fail on when the first pool is made: a path, query or fragment, a broken escape', () => {
    const cases: Array<[string, string]> = [
      ['http://u:s3cret@proxy:3128/path', 'has a path, query or fragment (a PAC file is no proxy): give http://host:port or https://host:port'],
      ['proxy:3128/proxy.pac', 'has a path, query or fragment (a PAC file is no proxy): give http://host:port or https://host:port'],
      ['http://proxy:3128/?x=1', 'has a path, query or fragment (a PAC file is no proxy): give http://host:port or https://host:port'],
      ['http://proxy:3128/#s3cret', 'has a path, query or fragment (a PAC file is no proxy): give http://host:port or https://host:port'],
      ['http://u:p%ss@proxy:3128', 'has a % in its user or password that starts no escape: write a literal % as %25'],
      ['http://u%zz:s3cret@proxy:3128', 'has a % in its user or password that starts no escape: write a literal % as %25'],
      ['http://proxy:0', 'has port 0, which is no port to connect to'],
      ['proxy:0', 'has port 0, which is no port to connect to'],
    ];
    for (const [bad, message] of cases) {
      const found = problems(['--service-key', '/k'], { HTTPS_PROXY: bad });
      expect(found, bad).toEqual([{ source: 'environment', field: 'HTTPS_PROXY', message }]);
      expect(JSON.stringify(found)).not.toMatch(/s3cret|p%ss/);
    }
    expect(run(['--service-key', '/k'], { HTTPS_PROXY: 'http://u:p%25s@proxy:3128/' }).network.httpsProxy).toBe('http://u:p%25s@proxy:3128/');
    // A user alone (a template's leftover) is no credentials to undici, which connects without: so does the sidecar.
    expect(run(['--service-key', '/k'], { HTTPS_PROXY: 'http://justuser@proxy:3128' }).network.httpsProxy).toBe('http://justuser@proxy:3128');
  });

  it('writes IPv6 addresses in NO_PROXY as a URL does (bracketed, shortest form), as undici compares them', () => {
    expect(run(['--service-key', '/k'], { NO_PROXY: 'localhost,127.0.0.1,::1 2001:db8::5, [fd00::1]:8443,.corp' }).network.noProxy).toBe(
      'localhost,127.0.0.1,[::1],[2001:db8::5],[fd00::1]:8443,.corp',
    );
    expect(run(['--service-key', '/k'], { NO_PROXY: '*' }).network.noProxy).toBe('*');
    // In the shortest form a URL's host has, which undici compares the entry with as text.
    expect(run(['--service-key', '/k'], { NO_PROXY: '0:0:0:0:0:0:0:1,[0:0::1]:8443,2001:DB8::0001,::ffff:10.0.0.1' }).network.noProxy).toBe(
      '[::1],[::1]:8443,[2001:db8::1],[::ffff:a00:1]',
    );
    // A zone id (some platforms write link-local addresses with one) is no URL host: kept as given, never a failure.
    expect(run(['--service-key', '/k'], { NO_PROXY: 'localhost,fe80::1%eth0,[fe80::1%25eth0]:8080,::1' }).network.noProxy).toBe(
      'localhost,fe80::1%eth0,[fe80::1%25eth0]:8080,[::1]',
    );
  });

  it('reports every problem at once, naming the field and the source', () => {
    const list = problems(['--token-auth', 'digest', '--csrf', 'maybe', '--listen', 'nope', '--ca', '/missing.pem', '--token-param', 'client_secret=x', '--log-level', 'loud']);
    const fields = list.map((p) => p.field);
    expect(fields).toEqual(expect.arrayContaining(['--service-key', 'token-auth', 'csrf', 'listen', '--ca', 'token-param', 'log-level']));
    expect(list.find((p) => p.field === 'token-auth')?.source).toBe('--token-auth');
    // A file's problem names the file as its source, and where it was named as its field (here the flag).
    expect(list.find((p) => p.field === '--ca')?.source).toBe('/missing.pem');
    expect(problems(['--service-key', '/k'], { SIDECAR_CA: '/missing.pem' })).toEqual([{ source: '/missing.pem', field: 'SIDECAR_CA', message: 'CA file does not exist' }]);
  });

  it('reads --allow-host from flags, the variable or the file, lower-cased, and refuses anything but a host name', () => {
    expect(run(['--service-key', '/k']).inbound.allowHosts).toEqual([]);
    expect(run(['--service-key', '/k', '--allow-host', 'ERP-Sidecar', '--allow-host', 'erp.local']).inbound.allowHosts).toEqual(['erp-sidecar', 'erp.local']);
    expect(run(['--service-key', '/k'], { SIDECAR_ALLOW_HOSTS: 'a, b' }).inbound.allowHosts).toEqual(['a', 'b']);
    const file = 'inbound:\n  allowHosts: [erp-sidecar]\nroutes:\n  - prefix: /\n    serviceKey: /k\n';
    expect(run(['--config', '/c.yaml'], {}, { '/c.yaml': file }).inbound.allowHosts).toEqual(['erp-sidecar']);
    // IPv6 addresses, bare or bracketed, in the shortest form a Host is compared in.
    expect(run(['--service-key', '/k', '--allow-host', 'FD00:0::2', '--allow-host', '[fd00::3]']).inbound.allowHosts).toEqual(['fd00::2', 'fd00::3']);
    for (const bad of ['http://erp', 'erp:8080', 'erp/x', 'erp!', '[fd00::2]:8080', 'fe80::1%eth0']) {
      expect(problems(['--service-key', '/k', '--allow-host', bad]).map((p) => p.field)).toEqual(['allow-host[0]']);
    }
  });

  it('checks inbound control where each value came from, so that check sees it too', () => {
    const file = (inbound: string, listen = '127.0.0.1:8080') => ({ '/c.yaml': `listen: ${listen}\ninbound:\n${inbound}routes:\n  - prefix: /\n    serviceKey: /k\n` });
    expect(problems(['check', '--config', '/c.yaml'], {}, file('  allowCidrs: [10.0.0.0/8, bogus]\n'))).toEqual([
      { source: '/c.yaml', field: 'inbound.allowCidrs[1]', message: '"bogus": not an IPv4 or IPv6 address or CIDR block' },
    ]);
    expect(problems(['--config', '/c.yaml'], {}, file('  allowAnySender: false\n', '0.0.0.0:8080'))).toEqual([
      { source: '/c.yaml', field: 'listen', message: expect.stringMatching(/"0\.0\.0\.0" is not a loopback address/) },
    ]);
    expect(problems(['--config', '/c.yaml'], {}, file('  allowCidrs: [10.0.0.0/8]\n  allowAnySender: true\n')).map((p) => [p.source, p.field])).toEqual([
      ['/c.yaml', 'inbound.allowCidrs'],
    ]);
    expect(problems(['--service-key', '/k', '--allow-cidr', '10.0.0.1/8'])).toEqual([
      { source: '--allow-cidr', field: 'allow-cidr[0]', message: expect.stringMatching(/^"10\.0\.0\.1\/8": /) },
    ]);
    expect(problems(['--service-key', '/k', '--listen', '0.0.0.0:8080']).map((p) => [p.source, p.field])).toEqual([['--listen', 'listen']]);
    // Protected by basic auth, an allowlist or the explicit opt-in: fine.
    expect(run(['--service-key', '/k', '--listen', '0.0.0.0:8080', '--basic-auth-file', '/u']).listen.host).toBe('0.0.0.0');
    expect(run(['--service-key', '/k', '--listen', '0.0.0.0:8080', '--allow-cidr', '10.0.0.0/8']).inbound.allowCidrs).toEqual(['10.0.0.0/8']);
  });

  it('refuses an unprotected non-loopback listener for serve only: token and check never listen for senders', () => {
    // The container image sets SIDECAR_LISTEN=0.0.0.0:8080; `docker run … token` / `check` with the key alone must run.
    const image = { SIDECAR_LISTEN: '0.0.0.0:8080', SIDECAR_SERVICE_KEY: '/etc/oauth-sidecar/key.json' };
    expect(run(['token'], image).listen).toEqual({ host: '0.0.0.0', port: 8080 });
    expect(run(['check'], image).listen).toEqual({ host: '0.0.0.0', port: 8080 });
    const refused = [{ source: 'SIDECAR_LISTEN', field: 'listen', message: expect.stringMatching(/^"0\.0\.0\.0" is not a loopback address/) }];
    expect(problems(['serve'], image)).toEqual(refused);
    expect(problems([], image)).toEqual(refused); // serve is the default command
  });

  it('names the flags, variables and (with a config file) the file keys that choose inbound control', () => {
    const options = '--basic-auth-file (SIDECAR_BASIC_AUTH_FILE), --allow-cidr (SIDECAR_ALLOW_CIDRS) or --allow-any-sender (SIDECAR_ALLOW_ANY_SENDER=true)';
    expect(problems(['--service-key', '/k', '--listen', '0.0.0.0:8080'])).toEqual([
      { source: '--listen', field: 'listen', message: `"0.0.0.0" is not a loopback address: choose inbound control with ${options}` },
    ]);
    const file = { '/c.yaml': 'listen: 0.0.0.0:8080\nroutes:\n  - prefix: /\n    serviceKey: /k\n' };
    expect(problems(['--config', '/c.yaml'], {}, file)).toEqual([
      {
        source: '/c.yaml',
        field: 'listen',
        message: `"0.0.0.0" is not a loopback address: choose inbound control with ${options}, or inbound.basicAuthFile, inbound.allowCidrs or inbound.allowAnySender in the config file`,
      },
    ]);
  });

  it('rejects unknown flags and commands in its own words, naming the flag and the one probably meant', () => {
    const flag = (field: string, message: string) => [{ source: 'command line', field, message }];
    const lists = 'oauth-sidecar --help lists them';
    expect(problems(['--service-kee', '/k'])).toEqual(flag('--service-kee', `unknown flag (did you mean --service-key?); ${lists}`));
    expect(problems(['--lisen=127.0.0.1:1'])).toEqual(flag('--lisen', `unknown flag (did you mean --listen?); ${lists}`));
    // A short word two edits away is no typo; two flags as near are no guess either.
    expect(problems(['--nope'])).toEqual(flag('--nope', `unknown flag; ${lists}`));
    expect(problems(['-x'])).toEqual(flag('-x', `unknown flag; ${lists}`));
    expect(problems(['--listen'])).toEqual(flag('--listen', 'needs a value: --listen VALUE'));
    expect(problems(['--listen', '--service-key', '/k'])).toEqual(
      flag('--listen', 'needs a value, and the next argument starts with "-": a value that does, goes as --listen=VALUE'),
    );
    expect(problems(['--version=3'])).toEqual(flag('--version', 'takes no value'));
    expect(problems(['--help=yes'])).toEqual(flag('--help', 'takes no value'));
    const commands = 'the commands are serve, token, check, demo';
    // Alone: which other problems there are depends on the command meant. The word itself is never echoed.
    expect(problems(['launch'])).toEqual(flag('', `unknown command; ${commands}`));
    expect(problems(['serv'])).toEqual(flag('', `unknown command (did you mean serve?); ${commands}`));
    expect(problems(['chek', '--service-key', '/k'])).toEqual(flag('', `unknown command (did you mean check?); ${commands}`));
    // The demo is recognised first only (cli.ts): after a flag it is told so, not "unknown (did you mean demo?)".
    expect(problems(['--listen', '127.0.0.1:0', 'demo'])).toEqual(flag('', 'demo must come first, its flags after it (oauth-sidecar demo --listen 127.0.0.1:18080)'));
  });

  it('refuses an admin listener on the listener\'s port, instead of an EADDRINUSE blamed on another process', () => {
    const taken = (listen: string, admin: string) => problems(['--service-key', '/k', '--listen', listen, '--admin-listen', admin, '--allow-cidr', '10.0.0.0/8']);
    const message = (listen: string) => `takes the port of listen (${listen}): the admin endpoints need a port of their own`;
    expect(taken('127.0.0.1:8080', '127.0.0.1:8080')).toEqual([{ source: '--admin-listen', field: 'admin-listen', message: message('127.0.0.1:8080') }]);
    expect(taken('0.0.0.0:8080', '127.0.0.1:8080')).toEqual([{ source: '--admin-listen', field: 'admin-listen', message: message('0.0.0.0:8080') }]);
    expect(taken('127.0.0.1:8080', '[::]:8080')).toHaveLength(1);
    // A listener that is no HOST:PORT is that one problem: no clash with a stand-in port.
    expect(taken('127.0.0.1:8080', '9090').map((p) => p.message)).toEqual(['"9090" is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080)']);
    expect(taken('8080', '127.0.0.1:8080').map((p) => p.message)).toEqual(['"8080" is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080)']);
    // Other ports, port 0 (each its own), and an IPv4 wildcard beside an IPv6 host do not collide.
    const admin = (listen: string, admin: string) => run(['--service-key', '/k', '--listen', listen, '--admin-listen', admin, '--allow-cidr', '10.0.0.0/8']).adminListen;
    expect(admin('127.0.0.1:8080', '127.0.0.1:9090')).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(admin('127.0.0.1:0', '127.0.0.1:0')).toEqual({ host: '127.0.0.1', port: 0 });
    expect(admin('0.0.0.0:8080', '[::1]:8080')).toEqual({ host: '::1', port: 8080 });
    // `localhost` binds 127.0.0.1, whatever the resolver puts first: beside that address, or 0.0.0.0, it collides.
    expect(taken('localhost:8080', '127.0.0.1:8080')).toEqual([{ source: '--admin-listen', field: 'admin-listen', message: message('localhost:8080') }]);
    expect(taken('0.0.0.0:8080', 'LOCALHOST:8080')).toHaveLength(1);
    expect(admin('[::1]:8080', 'localhost:8080')).toEqual({ host: 'localhost', port: 8080 });
  });

  it('refuses upstream URLs that are not https or carry credentials', () => {
    expect(problems(['--service-key', '/k', '--upstream', 'http://example.com'])[0]?.field).toBe('upstream');
    expect(problems(['--service-key', '/k', '--upstream', 'https://u:p@example.com'])[0]?.message).toMatch(/credentials/);
    expect(run(['--service-key', '/k', '--upstream', 'https://example.com/base/']).routes[0]?.upstream).toBe('https://example.com/base');
  });

  it("needs the key's url only without --upstream", () => {
    expect(run(['--service-key', '/k', '--upstream', 'https://example.com/']).routes[0]?.credentials.needsUrl).toBeUndefined();
    expect(run(['--service-key', '/k']).routes[0]?.credentials.needsUrl).toBe(true);
  });

  it('bounds millisecond options by the longest Node timer and byte sizes by 1 GiB', () => {
    const [timeout, ...rest] = problems(['--service-key', '/k', '--token-timeout', '3000000000']);
    expect(rest).toEqual([]);
    expect(timeout).toEqual({ source: '--token-timeout', field: 'token-timeout', message: 'must be an integer from 1 to 2147483647 ms' });
    const env = { SIDECAR_SHUTDOWN_GRACE: '2147483648', SIDECAR_UPSTREAM_TIMEOUT: '9999999999', SIDECAR_MAX_REPLAY_BODY: String(2 ** 30 + 1) };
    expect(problems(['--service-key', '/k', '--shutdown-delay', '2147483648'], env)).toEqual([
      { source: 'SIDECAR_UPSTREAM_TIMEOUT', field: 'upstream-timeout', message: 'must be an integer from 1 to 2147483647 ms' },
      { source: 'SIDECAR_MAX_REPLAY_BODY', field: 'max-replay-body', message: 'must be an integer from 0 to 1073741824 bytes' },
      { source: '--shutdown-delay', field: 'shutdown-delay', message: 'must be an integer from 0 to 2147483647 ms' },
      { source: 'SIDECAR_SHUTDOWN_GRACE', field: 'shutdown-grace', message: 'must be an integer from 0 to 2147483647 ms' },
    ]);
    const atLimit = run(['--service-key', '/k', '--token-timeout', '2147483647', '--max-replay-body', String(2 ** 30)]);
    expect(atLimit.tokenTimeoutMs).toBe(2_147_483_647);
    expect(atLimit.routes[0]?.maxReplayBodyBytes).toBe(2 ** 30);
  });

  it('limits sender connections to 1024 unless told otherwise (0: no limit), from flag or variable', () => {
    expect(run(['--service-key', '/k']).maxConnections).toBe(1024);
    expect(run(['--service-key', '/k', '--max-connections', '0']).maxConnections).toBe(0);
    expect(run(['--service-key', '/k'], { SIDECAR_MAX_CONNECTIONS: '50' }).maxConnections).toBe(50);
    expect(problems(['--service-key', '/k', '--max-connections', 'many'])).toEqual([
      { source: '--max-connections', field: 'max-connections', message: 'must be an integer from 0 to 1000000 connections' },
    ]);
    expect(problems(['--service-key', '/k'], { SIDECAR_MAX_CONNECTIONS: '-1' })).toEqual([
      { source: 'SIDECAR_MAX_CONNECTIONS', field: 'max-connections', message: 'must be an integer from 0 to 1000000 connections' },
    ]);
  });

  it('validates every certificate of a --ca file, naming the file', () => {
    const garbage = '-----BEGIN CERTIFICATE-----\nMIIBgarbage0000\n-----END CERTIFICATE-----\n';
    const truncated = '-----BEGIN CERTIFICATE-----\nMIIB\n';
    const fs = { '/bad.pem': `${CA}${garbage}`, '/cut.pem': truncated, '/key.pem': certs.leafKeyPkcs8 };
    expect(problems(['--service-key', '/k', '--ca', '/bad.pem', '--ca', '/cut.pem', '--ca', '/key.pem'], {}, fs)).toEqual([
      { source: '/bad.pem', field: '--ca', message: 'is not a PEM CA certificate file (certificate 2 is not valid X.509)' },
      { source: '/cut.pem', field: '--ca', message: 'is not a PEM CA certificate file (no PEM CERTIFICATE block found)' },
      { source: '/key.pem', field: '--ca', message: 'is not a PEM CA certificate file (no PEM CERTIFICATE block found)' },
    ]);
    const bundle = `${certs.rootPem}\n${certs.intermediatePem}\n`;
    expect(run(['--service-key', '/k', '--ca', '/ok.pem'], {}, { '/ok.pem': bundle }).network.ca).toEqual([bundle]);
  });

  it('reads the NODE_EXTRA_CA_CERTS file from its env input, beside --ca, validated the same way', () => {
    const bundle = `${certs.rootPem}\n${certs.intermediatePem}\n`;
    const config = run(['--service-key', '/k', '--ca', '/ca.pem'], { NODE_EXTRA_CA_CERTS: '/corp.pem' }, { '/ca.pem': CA, '/corp.pem': bundle });
    // The certificates as parsed, one PEM each.
    expect(config.network).toEqual({ ca: [`${CA.trim()}\n`], extraCaCerts: { file: '/corp.pem', pem: `${certs.rootPem.trim()}\n${certs.intermediatePem.trim()}\n` } });
    expect(config.caFiles).toEqual(['/ca.pem']);
    // Without --ca node's own store is used as it is: the file is node's to read (an empty variable is no file).
    const alone = run(['--service-key', '/k'], { NODE_EXTRA_CA_CERTS: '/corp.pem' }, {});
    expect(alone.network).toEqual({ ca: [] });
    expect(alone.nodeExtraCaFile).toBe('/corp.pem');
    expect(run(['--service-key', '/k'], { NODE_EXTRA_CA_CERTS: '' }).nodeExtraCaFile).toBeUndefined();
  });

  it('refuses a NODE_EXTRA_CA_CERTS pipe beside --ca at once: node emptied it at start, and a second read would wait for nothing', () => {
    const fifo = join(mkdtempSync(join(tmpdir(), 'config-')), 'corp.pem');
    execFileSync('mkfifo', [fifo]);
    expect(problems(['--service-key', '/k', '--ca', '/ca.pem'], { NODE_EXTRA_CA_CERTS: fifo }, { '/ca.pem': CA })).toEqual([
      {
        source: fifo,
        field: 'NODE_EXTRA_CA_CERTS',
        message: 'is a pipe (or device), which node read at start and cannot be read again: beside --ca, give it as a regular file, or its CAs as another --ca',
      },
    ]);
    // Without --ca node's own store (which has it) is used, and the pipe is not read again.
    expect(run(['--service-key', '/k'], { NODE_EXTRA_CA_CERTS: fifo }, {}).network.extraCaCerts).toBeUndefined();
  });

  it('refuses an unreadable or broken NODE_EXTRA_CA_CERTS file, which node itself only warns about', () => {
    const garbage = '-----BEGIN CERTIFICATE-----\nMIIBgarbage0000\n-----END CERTIFICATE-----\n';
    expect(problems(['--service-key', '/k', '--ca', '/ca.pem'], { NODE_EXTRA_CA_CERTS: '/missing.pem' }, { '/ca.pem': CA })).toEqual([
      { source: '/missing.pem', field: 'NODE_EXTRA_CA_CERTS', message: 'CA file does not exist: fix the file or unset the variable' },
    ]);
    expect(problems(['--service-key', '/k', '--ca', '/ca.pem'], { NODE_EXTRA_CA_CERTS: '/bad.pem' }, { '/ca.pem': CA, '/bad.pem': `${CA}${garbage}` })).toEqual([
      {
        source: '/bad.pem',
        field: 'NODE_EXTRA_CA_CERTS',
        message: 'is not a PEM CA certificate file (certificate 2 is not valid X.509): fix the file or unset the variable',
      },
    ]);
    expect(problems(['--service-key', '/k', '--ca', '/ca.pem'], { NODE_EXTRA_CA_CERTS: '/key.pem' }, { '/ca.pem': CA, '/key.pem': certs.leafKeyPkcs8 })[0]?.message).toBe(
      'is not a PEM CA certificate file (no PEM CERTIFICATE block found): fix the file or unset the variable',
    );
  });

  it('reads each --ca file once', () => {
    const reads: string[] = [];
    const result = parseConfig(['--service-key', '/k', '--ca', '/ca.pem'], {}, (path) => {
      reads.push(path);
      return CA;
    });
    expect(result.kind).toBe('run');
    expect(reads).toEqual(['/ca.pem']);
  });

  it('never echoes a value that may be secret', () => {
    const cases: Array<[string[], Record<string, string>, string]> = [
      [['--upstream', `https://user:${SECRET}@host.example:99999`], {}, 'upstream'],
      [['--upstream', `https://user:${SECRET}@host.example/`], {}, 'upstream'],
      [['--upstream', `https://host.example/?sig=${SECRET}`], {}, 'upstream'],
      [['--upstream', `not a url ${SECRET}`], {}, 'upstream'],
      [['--token-param', `client_assertion:eyJ${SECRET}`], {}, 'token-param'],
      [['--token-param', `eyJ${SECRET}`], {}, 'token-param'],
      [[], { SIDECAR_TOKEN_PARAMS: `token_format=jwt&client_assertion:eyJ${SECRET}` }, 'token-param'],
      [['--token-timeout', SECRET], {}, 'token-timeout'],
      [['--token-auth', `s3cr3t$${SECRET}=`], {}, 'token-auth'],
      [['--csrf', `eyJhbGciOiJIUzI1NiJ9.${SECRET}`], {}, 'csrf'],
    ];
    for (const [argv, env, field] of cases) {
      const list = problems(['--service-key', '/k', ...argv], env);
      expect(list.map((p) => p.field)).toEqual([field]);
      expect(JSON.stringify(list)).not.toContain(SECRET);
    }
    // A value split by a space instead of `=` leaves the secret as a positional argument.
    const split = problems(['--service-key', '/k', '--token-param', 'client_assertion', `eyJ${SECRET}`]);
    expect(split).toEqual([{ source: 'command line', field: '', message: 'unknown command; the commands are serve, token, check, demo' }]);
    expect(JSON.stringify(split)).not.toContain(SECRET);
    const extra = problems(['token', '--service-key', '/k', '--scope', 'a', SECRET]);
    expect(extra).toEqual([{ source: 'command line', field: '', message: 'unexpected argument after the command: a word not belonging to a flag (not shown; a value with spaces needs quotes)' }]);
    expect(JSON.stringify(extra)).not.toContain(SECRET);
    // A second command is named: it is no secret.
    expect(problems(['token', 'check', '--service-key', '/k'])).toEqual([{ source: 'command line', field: '', message: 'one command at a time: token is given, and check after it' }]);
    // `help` and `version` as commands, as other tools take them.
    expect(parseConfig(['help'], {}, () => '')).toEqual({ kind: 'help' });
    expect(parseConfig(['version'], {}, () => '')).toEqual({ kind: 'version' });
    // A misspelt choice is still shown: a short plain word, not something a secret looks like.
    expect(problems(['--service-key', '/k', '--token-auth', 'digest'])[0]?.message).toBe('must be basic or post, not "digest"');
  });

  it('names the parameter, never its value, when a token parameter lacks =', () => {
    const [flag] = problems(['--service-key', '/k', '--token-param', `client_assertion:eyJ${SECRET}`]);
    expect(flag).toEqual({ source: '--token-param', field: 'token-param', message: '"client_assertion…" is not NAME=VALUE' });
    const [env] = problems(['--service-key', '/k'], { SIDECAR_TOKEN_PARAMS: `client_assertion:eyJ${SECRET}` });
    expect(env).toEqual({ source: 'SIDECAR_TOKEN_PARAMS', field: 'token-param', message: '"client_assertion…" is not NAME=VALUE' });
    const [bare] = problems(['--service-key', '/k', '--token-param', SECRET]);
    expect(bare).toEqual({ source: '--token-param', field: 'token-param', message: 'is not NAME=VALUE' });
  });

  it('says an unparseable upstream is not a URL, and refuses credentials or a query in one, as a service key\'s url', () => {
    expect(problems(['--service-key', '/k', '--upstream', `https://user:${SECRET}@host.example:99999`])).toEqual([
      { source: '--upstream', field: 'upstream', message: 'is not a URL' },
    ]);
    expect(problems(['--service-key', '/k', '--upstream', `https://user:${SECRET}@host.example`])).toEqual([
      { source: '--upstream', field: 'upstream', message: 'must not carry a user name or password (credentials come from the service key)' },
    ]);
    expect(problems(['--service-key', '/k', '--upstream', 'https://host.example/?a=1'])).toEqual([
      { source: '--upstream', field: 'upstream', message: "must not carry a query or a fragment: each request's own query is what goes upstream" },
    ]);
  });

  it('refuses port 0 in an upstream: every request would get a 502 from a sidecar that says it is ready', () => {
    expect(problems(['--service-key', '/k', '--upstream', 'https://127.0.0.1:0'])).toEqual([
      { source: '--upstream', field: 'upstream', message: 'has port 0, which is no port to connect to' },
    ]);
    expect(problems(['--service-key', '/k', '--upstream', 'https://host.example:00/http'])).toEqual([
      { source: '--upstream', field: 'upstream', message: 'has port 0, which is no port to connect to' },
    ]);
  });

  it('returns help and version requests', () => {
    expect(parseConfig(['--help'], {}).kind).toBe('help');
    expect(parseConfig(['-h'], {}).kind).toBe('help');
    expect(parseConfig(['--version'], {}).kind).toBe('version');
  });
});

describe('parseConfig with a routes file', () => {
  const yaml = `
listen: 127.0.0.1:18080
routes:
  - name: orders
    prefix: /orders
    serviceKey: /keys/orders.json
    upstream: https://orders.example.com
    rewritePrefix: /http/orders
    tokenAuth: post
    tokenParams: { token_format: jwt }
    timeouts: { responseMs: 5000 }
  - name: api
    prefix: /api/v1
    serviceKey: /keys/api
    csrf: "off"
`;

  it('reads routes from YAML', () => {
    const config = run(['--config', '/c.yaml'], {}, { '/c.yaml': yaml });
    expect(config.listen.port).toBe(18080);
    expect(config.routes.map((r) => r.name)).toEqual(['orders', 'api']);
    expect(config.routes[0]).toMatchObject({
      prefix: '/orders',
      upstream: 'https://orders.example.com',
      rewritePrefix: '/http/orders',
      token: { auth: 'post', params: { token_format: 'jwt' } },
      timeouts: { responseMs: 5000, connectMs: 5000 },
    });
    expect(config.routes[1]?.csrf).toBe('off');
    expect(config.routesSource).toBe('/c.yaml');
    // The route without an upstream of its own needs the key's url (checked with the key, at every load).
    expect(config.routes.map((r) => r.credentials.needsUrl)).toEqual([undefined, true]);
  });

  it('reads the same from JSON', () => {
    const json = JSON.stringify({ routes: [{ prefix: '/', serviceKey: '/k.json' }] });
    expect(run(['--config', '/c.json'], {}, { '/c.json': json }).routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/k.json', from: 'routes[0].serviceKey' });
  });

  it('rejects unknown keys, missing fields, duplicate prefixes and route flags beside the file', () => {
    const bad = `
routes:
  - prefix: /a
    serviceKey: /k
    colour: blue
  - prefix: /a
    timeouts: { responseMs: -1 }
  - prefix: nope
    serviceKey: /k
`;
    const list = problems(['--config', '/c.yaml', '--scope', 'x'], {}, { '/c.yaml': bad });
    const fields = list.map((p) => p.field);
    expect(fields).toEqual(
      expect.arrayContaining(['routes[0].colour', 'routes[1].serviceKey', 'routes[1].timeouts.responseMs', 'routes[2].prefix', 'routes[1].prefix', '--scope']),
    );
    expect(list.every((p) => p.source === '/c.yaml' || p.source === 'command line')).toBe(true);
  });

  it('reads a config file that starts with a byte order mark, JSON or YAML', () => {
    const json = '\ufeff' + JSON.stringify({ routes: [{ prefix: '/', serviceKey: '/k.json' }] });
    expect(run(['--config', '/c.json'], {}, { '/c.json': json }).routes[0]?.prefix).toBe('/');
    expect(run(['--config', '/c.yaml'], {}, { '/c.yaml': '\ufeffroutes:\n  - prefix: /y\n    serviceKey: /k.json\n' }).routes[0]?.prefix).toBe('/y');
  });

  it('refuses a YAML tag it cannot resolve, naming the line, never echoing the value, and prints nothing itself', () => {
    const warnings: unknown[] = [];
    const onWarning = (w: unknown): number => warnings.push(w);
    process.on('warning', onWarning);
    try {
      const file = { '/c.yaml': 'routes:\n  - prefix: /\n    serviceKey: /k.json\n    scope: !secret Sup3rSecretValue\n' };
      const list = problems(['--config', '/c.yaml'], {}, file);
      expect(list).toEqual([{ source: '/c.yaml', field: '--config', message: expect.stringMatching(/^YAML TAG_RESOLVE_FAILED at line 4: /) }]);
      expect(JSON.stringify(list)).not.toContain('Sup3rSecretValue');
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).toEqual([]); // the parser's own warning quotes the line, secret included
  });

  it('refuses a prefix or rewritePrefix with a query or fragment, which no request could match', () => {
    const file = { '/c.yaml': 'routes:\n  - prefix: /a?x=1\n    serviceKey: /k.json\n    rewritePrefix: /b#frag\n' };
    expect(problems(['--config', '/c.yaml'], {}, file).map((p) => p.field)).toEqual(['routes[0].prefix', 'routes[0].rewritePrefix']);
  });

  it('refuses --allow-host beside a sender rule that turns the Host check off, instead of ignoring it', () => {
    const message = (opener: string) =>
      `has no effect with ${opener}: the Host check runs only when loopback senders alone are let in (no allowlist, basic auth or allow-any-sender); leave it out`;
    expect(problems(['--service-key', '/k', '--allow-host', 'erp', '--basic-auth-file', '/users'])).toEqual([
      { source: '--allow-host', field: 'allow-host', message: message('--basic-auth-file') },
    ]);
    expect(problems(['--service-key', '/k', '--allow-cidr', '10.0.0.0/8'], { SIDECAR_ALLOW_HOSTS: 'erp' })).toEqual([
      { source: 'SIDECAR_ALLOW_HOSTS', field: 'allow-host', message: message('--allow-cidr') },
    ]);
    const file = { '/c.yaml': 'inbound:\n  allowHosts: [erp]\n  allowAnySender: true\nroutes:\n  - prefix: /\n    serviceKey: /k.json\n' };
    expect(problems(['--config', '/c.yaml', '--listen', '0.0.0.0:8080'], {}, file)).toEqual([
      { source: '/c.yaml', field: 'inbound.allowHosts', message: message('inbound.allowAnySender') },
    ]);
    // Loopback senders only: it applies.
    expect(run(['--service-key', '/k', '--allow-host', 'erp']).inbound.allowHosts).toEqual(['erp']);
  });

  it('says an unquoted IPv6 listen address is a YAML list, with the fix', () => {
    for (const line of ['listen: [::1]:8080', 'adminListen:  [::1]:9090']) {
      const file = { '/c.yaml': `${line}\nroutes:\n  - prefix: /\n    serviceKey: /k.json\n` };
      expect(problems(['--config', '/c.yaml'], {}, file)).toEqual([
        { source: '/c.yaml', field: '--config', message: expect.stringMatching(/^is not valid YAML \(line 1: [A-Z_]+\): quote an IPv6 address \(listen: "\[::1\]:8080"\), as a bare \[ starts a YAML list$/) },
      ]);
    }
    const quoted = { '/c.yaml': 'listen: "[::1]:8080"\nroutes:\n  - prefix: /\n    serviceKey: /k.json\n' };
    expect(run(['--config', '/c.yaml'], {}, quoted).listen).toEqual({ host: '::1', port: 8080 });
  });

  it('names the config file field of an invalid inbound host name, and refuses an empty allowlist given in the file', () => {
    const file = { '/c.yaml': 'inbound:\n  allowHosts: [ok-host, "bad host:80"]\n  allowCidrs: []\nroutes:\n  - prefix: /\n    serviceKey: /k.json\n' };
    const list = problems(['--config', '/c.yaml'], {}, file);
    expect(list.map((p) => [p.field, p.source])).toEqual([
      ['inbound.allowHosts[1]', '/c.yaml'],
      ['inbound.allowCidrs', '/c.yaml'],
    ]);
    expect(list[1]!.message).toMatch(/^is empty/);
  });

  it('rejects route settings from the environment beside the file instead of ignoring them', () => {
    const file = { '/c.yaml': 'routes:\n  - prefix: /\n    serviceKey: /k.json\n' };
    const env = { SIDECAR_UPSTREAM_TIMEOUT: '5', SIDECAR_SERVICE_KEY: '/other.json', SIDECAR_SERVICE_KEY_JSON: '{"oauth":{}}', SIDECAR_BINDING: 'b' };
    const list = problems(['--config', '/c.yaml'], env, file);
    expect(list).toEqual([
      { source: 'environment', field: 'SIDECAR_SERVICE_KEY', message: "cannot be combined with --config; set the route's serviceKey in /c.yaml" },
      // A route has no binding key to set it on: its path picks the binding.
      { source: 'environment', field: 'SIDECAR_BINDING', message: "cannot be combined with --config; point the route's serviceKey in /c.yaml at the binding's own directory" },
      { source: 'environment', field: 'SIDECAR_UPSTREAM_TIMEOUT', message: "cannot be combined with --config; set the route's timeouts.responseMs in /c.yaml" },
      { source: 'environment', field: 'SIDECAR_SERVICE_KEY_JSON', message: 'cannot be combined with --config; give each route its serviceKey in /c.yaml' },
    ]);
    // What platforms set (Cloud Foundry, servicebinding.io) is not an error: routes name their own keys.
    const platform = run(['--config', '/c.yaml'], { VCAP_SERVICES: '{}', SERVICE_BINDING_ROOT: '/bindings' }, file);
    expect(platform.routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/k.json', from: 'routes[0].serviceKey' });
    // The config file itself may come from the environment too; empty variables count as unset.
    expect(run([], { SIDECAR_CONFIG: '/c.yaml', SIDECAR_SCOPE: '' }, file).routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/k.json', from: 'routes[0].serviceKey' });
    // Top-level settings still override the file from the environment.
    expect(run(['--config', '/c.yaml'], { SIDECAR_LISTEN: '127.0.0.1:9999' }, file).listen.port).toBe(9999);
  });

  it.each([
    ['a YAML syntax error', '/c.yaml', 'routes: [\n', /^is not valid YAML/],
    ['an empty file', '/c.yaml', '', /^is empty: it needs routes/],
    ['a file of comments only', '/c.yaml', '# routes: to come\n', /^is empty: it needs routes/],
    ['an empty JSON file', '/c.json', ' \n', /^is empty: it needs routes/],
    ['JSON null', '/c.json', 'null', /^is empty: it needs routes/],
    ['JSON behind a byte order mark (ignored): no routes', '/c.json', '\uFEFF{"routes":[]}', /^must be a non-empty list of routes$/],
    ['a list instead of a mapping', '/c.yaml', '- prefix: /\n', /^must be a mapping \(listen, inbound, routes, …\), not a list or a single value$/],
    ['a single value', '/c.yaml', 'routes\n', /^must be a mapping/],
  ])('reports only the real problem of %s, not a missing service key', (_name, path, text, message) => {
    const list = problems(['token', '--config', path, '--route', 'orders'], {}, { [path]: text });
    expect(list).toHaveLength(1);
    expect(list[0]?.source).toBe(path);
    expect(list[0]?.message).toMatch(message);
    // The file's own problem: named by where its path was given, as an unreadable one is.
    if (/^(is empty|must be a mapping)/.test(list[0]!.message)) expect(list[0]?.field).toBe('--config');
  });

  it('says a file that reuses an anchor beyond the parser\'s alias limit uses too many aliases, not that it is invalid YAML', () => {
    const route = (i: number) => `  - prefix: /r${i}\n    serviceKey: /k\n    timeouts: *t\n`;
    const text = `defaults: &t { connectMs: 1000 }\nroutes:\n${Array.from({ length: 101 }, (_, i) => route(i)).join('')}`;
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': text })).toEqual([
      {
        source: '/c.yaml',
        field: '--config',
        message: 'uses YAML aliases (*name) more often than the parser allows (100 expansions, a guard against alias bombs): write the values out',
      },
    ]);
  });

  it('says a YAML alias without its anchor is that, not too many aliases', () => {
    const text = 'shared: &timeouts { connectMs: 1000 }\nroutes:\n  - prefix: /\n    serviceKey: /k\n    timeouts: *timeout\n';
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': text })).toEqual([
      { source: '/c.yaml', field: '--config', message: 'uses a YAML alias (*name) with no anchor (&name) of that name before it' },
    ]);
  });

  it('one mistake, one message: a prefix or service key of the wrong type is not also "required"; serve --route is not looked up', () => {
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': 'routes:\n  - { prefix: 5, serviceKey: 7 }\n' })).toEqual([
      { source: '/c.yaml', field: 'routes[0].prefix', message: 'must be a string' },
      { source: '/c.yaml', field: 'routes[0].serviceKey', message: 'must be a string' },
    ]);
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': 'routes:\n  - { prefix: a, serviceKey: "" }\n' })).toEqual([
      { source: '/c.yaml', field: 'routes[0].prefix', message: 'must start with /' },
      { source: '/c.yaml', field: 'routes[0].serviceKey', message: 'is required (a service key file or secret directory)' },
    ]);
    expect(problems(['serve', '--service-key', '/k', '--route', 'x'])).toEqual([
      { source: '--route', field: 'route', message: 'is read by token and check only, not by serve' },
    ]);
  });

  it('quotes a bad listen address or allowlist entry only when it is made of address characters', () => {
    expect(problems(['--service-key', '/k'], { SIDECAR_LISTEN: 'localhost' })).toEqual([
      { source: 'SIDECAR_LISTEN', field: 'listen', message: '"localhost" is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080)' },
    ]);
    const pasted = problems(['--service-key', '/k', '--allow-cidr', 'svc:s3cret@10.0.0.1'], { SIDECAR_LISTEN: 'svc:s3cret+/=@host:80' });
    expect(pasted.map((p) => p.message)).toEqual([
      'the value (not shown: it could be a secret) is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080)',
      expect.stringMatching(/^the value \(not shown: it could be a secret\): /),
    ]);
    expect(JSON.stringify(pasted)).not.toContain('s3cret');
  });

  it('refuses an empty route name: it labels logs and metrics, and --route could not pick it', () => {
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': 'routes:\n  - { name: " ", prefix: /, serviceKey: /k }\n' })).toEqual([
      { source: '/c.yaml', field: 'routes[0].name', message: 'is empty: a name labels the route in logs and metrics, and --route picks it' },
    ]);
    // Two empty names: each said once, not also "used twice"; an empty prefix is not also an empty name.
    const twice = 'routes:\n  - { name: "", prefix: /a, serviceKey: /k }\n  - { name: "", prefix: /b, serviceKey: /k }\n  - { prefix: "", serviceKey: /k }\n';
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': twice })).toEqual([
      { source: '/c.yaml', field: 'routes[0].name', message: 'is empty: a name labels the route in logs and metrics, and --route picks it' },
      { source: '/c.yaml', field: 'routes[1].name', message: 'is empty: a name labels the route in logs and metrics, and --route picks it' },
      { source: '/c.yaml', field: 'routes[2].prefix', message: 'must start with /' },
    ]);
  });

  it('takes a relative path in the config file as relative to the file, not to the working directory', () => {
    const file = 'inbound:\n  basicAuthFile: users.txt\nroutes:\n  - prefix: /\n    serviceKey: keys/cpi.json\n    clientCert: ../tls/c.pem\n    clientKey: /abs/k.pem\n';
    const config = run(['--config', '/etc/sidecar/routes.yaml'], {}, { '/etc/sidecar/routes.yaml': file });
    expect(config.routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/etc/sidecar/keys/cpi.json', from: 'routes[0].serviceKey' });
    expect(config.routes[0]?.credentials.clientCert).toMatchObject({ certFile: '/etc/tls/c.pem', keyFile: '/abs/k.pem' });
    expect(config.inbound.basicAuthFile).toBe('/etc/sidecar/users.txt');
    // A config file that is a pipe (`--config <(envsubst < routes.yaml)`): relative to the working directory.
    for (const pipe of ['/dev/fd/63', '/proc/self/fd/11', '/dev/stdin']) {
      expect(run(['--config', pipe], {}, { [pipe]: file }).routes[0]?.credentials.source).toMatchObject({ path: resolve('keys/cpi.json') });
    }
  });

  it('refuses a --check-path that is no request target (a space, a fragment, non-ASCII) instead of failing the check at run time', () => {
    expect(run(['check', '--service-key', '/k', '--check-path', '/http/a%20b?x=1']).checkPath).toBe('/http/a%20b?x=1');
    for (const bad of ['/http/a b', '/http/#x', '/http/ä', '/http/\t']) {
      expect(problems(['check', '--service-key', '/k', '--check-path', bad]), bad).toEqual([
        { source: '--check-path', field: 'check-path', message: 'must be printable ASCII without spaces or # (percent-encode the rest, e.g. %20)' },
      ]);
    }
  });

  it('refuses an empty --basic-auth-file (or inbound.basicAuthFile) rather than let it pass for inbound control', () => {
    expect(problems(['--service-key', '/k', '--listen', '0.0.0.0:8080', '--basic-auth-file='])).toEqual(
      expect.arrayContaining([{ source: 'command line', field: '--basic-auth-file', message: EMPTY_FLAG }]),
    );
    const file = 'listen: 0.0.0.0:8080\ninbound:\n  basicAuthFile: ""\nroutes:\n  - prefix: /\n    serviceKey: /k\n';
    expect(problems(['--config', '/etc/sidecar/c.yaml'], {}, { '/etc/sidecar/c.yaml': file })).toEqual(
      expect.arrayContaining([{ source: '/etc/sidecar/c.yaml', field: 'inbound.basicAuthFile', message: 'is empty: give the path of the user list' }]),
    );
  });

  it('refuses an empty flag value instead of falling back to another source or a default (`--service-key "$KEY"`, KEY unset)', () => {
    const json = JSON.stringify({ clientid: 'c', clientsecret: 's', url: 'https://u.example', tokenurl: 'https://t.example/oauth/token' });
    const empty = (field: string) => ({ source: 'command line', field, message: EMPTY_FLAG });
    expect(problems(['--service-key', ''], { SIDECAR_SERVICE_KEY_JSON: json })).toEqual([empty('--service-key')]);
    expect(problems(['--config', ''], { SIDECAR_SERVICE_KEY: '/k' })).toEqual([empty('--config')]);
    expect(problems(['--service-key', '/k', '--ca', ''])).toEqual([empty('--ca')]);
    expect(problems(['--service-key', '/k', '--allow-cidr=', '--allow-any-sender'])).toEqual([empty('--allow-cidr')]);
    // Alone (no "no service key" after it), and blank counts as empty.
    expect(problems(['token', '--service-key='])).toEqual([empty('--service-key')]);
    expect(problems(['check', '--service-key', '/k', '--route', ' '])).toEqual([empty('--route')]);
    // A variable set empty is unset, as documented; one that lists nothing is an empty allowlist, which refuses all.
    expect(run(['--service-key', '/k'], { SIDECAR_CA: '', SIDECAR_ALLOW_CIDRS: '' }).inbound.allowCidrs).toEqual([]);
    const none = problems(['--service-key', '/k', '--listen', '0.0.0.0:8080', '--basic-auth-file', '/u'], { SIDECAR_ALLOW_CIDRS: ' , ' });
    expect(none.map((p) => [p.source, p.field])).toEqual([['SIDECAR_ALLOW_CIDRS', 'allow-cidr']]);
  });

  it('refuses a SIDECAR_ variable a typo away from one it reads, and leaves others (Kubernetes service links) alone', () => {
    const env = {
      SIDECAR_ALLOW_CIDR: '10.0.0.0/8',
      SIDECAR_TOKEN_PARAM: 'a=1',
      // Service links, of Services named sidecar and sidecar-client, and short names of other uses: left alone.
      SIDECAR_SERVICE_HOST: '10.0.0.1',
      SIDECAR_PORT: 'tcp://10.0.0.1:80',
      SIDECAR_PORT_80_TCP_ADDR: '10.0.0.1',
      SIDECAR_CLIENT_PORT: 'tcp://10.0.0.2:80',
      SIDECAR_CLIENT_SERVICE_PORT_HTTP: '80',
      SIDECAR_IP: '10.0.0.3',
      SIDECAR_CERT: 'x',
    };
    expect(problems(['--service-key', '/k'], env)).toEqual([
      { source: 'environment', field: 'SIDECAR_ALLOW_CIDR', message: 'is not a variable the sidecar reads: did you mean SIDECAR_ALLOW_CIDRS?' },
      { source: 'environment', field: 'SIDECAR_TOKEN_PARAM', message: 'is not a variable the sidecar reads: did you mean SIDECAR_TOKEN_PARAMS?' },
    ]);
    expect(run(['--service-key', '/k'], { SIDECAR_SERVICE_HOST: '10.0.0.1', SIDECAR_PORT: 'tcp://10.0.0.1:80' }).routes).toHaveLength(1);
  });

  it('refuses --binding beside SIDECAR_SERVICE_KEY_JSON, one key with nothing to pick', () => {
    const json = JSON.stringify({ clientid: 'c', clientsecret: 's', url: 'https://u.example', tokenurl: 'https://t.example/oauth/token' });
    expect(problems(['--binding', 'orders'], { SIDECAR_SERVICE_KEY_JSON: json })).toEqual([
      {
        source: '--binding',
        field: 'binding',
        message: 'picks one of several bindings (below --service-key DIR, SERVICE_BINDING_ROOT or in VCAP_SERVICES): SIDECAR_SERVICE_KEY_JSON is one key, so leave it out',
      },
    ]);
  });

  it("names a route's own keys, and the variables client certificate settings came from", () => {
    const file = [
      'routes:',
      '  - { prefix: /a, serviceKey: /k, tokenAuth: bearer, csrf: on }',
      '  - { prefix: /b, serviceKey: /k, clientCert: /c.pem, clientTlsDir: /tls }',
      '  - { prefix: /c, serviceKey: /k, clientKey: /k.pem }',
      '',
    ].join('\n');
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': file })).toEqual([
      { source: '/c.yaml', field: 'routes[0].tokenAuth', message: 'must be basic or post, not "bearer"' },
      { source: '/c.yaml', field: 'routes[0].csrf', message: 'must be auto or off, not "on"' },
      { source: '/c.yaml', field: 'routes[1].clientTlsDir', message: 'use either a TLS secret directory or routes[1].clientCert/routes[1].clientKey, not both' },
      { source: '/c.yaml', field: 'routes[2].clientCert', message: 'is missing: routes[2].clientKey needs it (a client certificate and its key go together)' },
    ]);
    expect(problems(['--service-key', '/k'], { SIDECAR_CLIENT_CERT: '/c.pem' })).toEqual([
      { source: 'SIDECAR_CLIENT_CERT', field: 'client-key', message: 'is missing: client-cert needs it (a client certificate and its key go together)' },
    ]);
    expect(problems(['--service-key', '/k', '--client-key', '/k.pem'], { SIDECAR_CLIENT_TLS_DIR: '/tls' })).toEqual([
      { source: 'SIDECAR_CLIENT_TLS_DIR', field: 'client-tls-dir', message: 'use either a TLS secret directory or client-cert/client-key, not both' },
    ]);
  });

  it('refuses a prefix or rewritePrefix that could never work: not as senders send a path, or with a dot segment', () => {
    const file = [
      'routes:',
      '  - { prefix: /ä, serviceKey: /k }',
      '  - { prefix: /a b, serviceKey: /k }',
      '  - { prefix: /x/../y, serviceKey: /k }',
      '  - { prefix: /ok, serviceKey: /k, rewritePrefix: /http/a b }',
      '  - { prefix: /ok2, serviceKey: /k, rewritePrefix: /http/%2e%2e/api }',
      '  - { prefix: /%C3%A4, serviceKey: /k, rewritePrefix: /http/%C3%A4 }',
      '',
    ].join('\n');
    const ascii = (how: string) => `must be printable ASCII without spaces: it ${how}, so percent-encode the rest (e.g. %20, %C3%A4)`;
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': file })).toEqual([
      { source: '/c.yaml', field: 'routes[0].prefix', message: ascii('matches the path as senders send it') },
      { source: '/c.yaml', field: 'routes[1].prefix', message: ascii('matches the path as senders send it') },
      { source: '/c.yaml', field: 'routes[2].prefix', message: 'must not hold a . or .. segment' },
      { source: '/c.yaml', field: 'routes[3].rewritePrefix', message: ascii('goes into the request target as it is') },
      { source: '/c.yaml', field: 'routes[4].rewritePrefix', message: 'must not hold a . or .. segment' },
    ]);
  });

  it("refuses flags another command reads, a token parameter beside its own setting, and commas in one --allow-cidr", () => {
    expect(problems(['serve', '--service-key', '/k', '--route', 'default', '--check-path', '/x'])).toEqual([
      { source: '--route', field: 'route', message: 'is read by token and check only, not by serve' },
      { source: '--check-path', field: 'check-path', message: 'is read by check only, not by serve' },
    ]);
    expect(problems(['token', '--service-key', '/k', '--check-role', 'X'])).toEqual([
      { source: '--check-role', field: 'check-role', message: 'is read by check only, not by token' },
    ]);
    expect(problems(['token', '--service-key', '/k', '--scope', 'b', '--token-param', 'scope=a'])).toEqual([
      { source: '--token-param', field: 'token-param', message: 'scope is set by --scope to another value: give it once' },
    ]);
    const file = 'routes:\n  - { prefix: /, serviceKey: /k, audience: x, tokenParams: { audience: y } }\n';
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': file })).toEqual([
      { source: '/c.yaml', field: 'routes[0].tokenParams.audience', message: 'is set by routes[0].audience to another value: give it once' },
    ]);
    // The same value twice, or an own setting left empty (envsubst of an unset variable), is no conflict.
    expect(run(['token', '--service-key', '/k', '--scope', 'a', '--token-param', 'scope=a']).routes[0]?.token.params).toEqual({ scope: 'a' });
    const unset = 'routes:\n  - { prefix: /, serviceKey: /k, scope: , resource: "", tokenParams: { scope: a b, resource: r } }\n';
    expect(run(['--config', '/c.yaml'], {}, { '/c.yaml': unset }).routes[0]?.token.params).toEqual({ scope: 'a b', resource: 'r' });
    const commas = problems(['--service-key', '/k', '--listen', '0.0.0.0:1', '--allow-cidr', '10.0.0.0/8,10.1.0.0/16']);
    expect(commas.map((p) => p.message)).toEqual([
      '"10.0.0.0/8,10.1.0.0/16": one address or CIDR block per --allow-cidr (or per list item); commas separate them only in SIDECAR_ALLOW_CIDRS',
    ]);
    // An empty no_proxy does not hide NO_PROXY (as an empty https_proxy does not hide HTTPS_PROXY).
    expect(run(['--service-key', '/k'], { no_proxy: '', NO_PROXY: 'h.internal' }).network.noProxy).toBe('h.internal');
  });

  it('refuses a YAML file of two documents (the second would be dropped); a leading or trailing --- alone is fine', () => {
    const route = 'routes:\n  - prefix: /a\n    serviceKey: /k\n';
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': `${route}---\ninbound:\n  allowAnySender: true\n` })).toEqual([
      { source: '/c.yaml', field: '--config', message: 'holds 2 YAML documents (the second from line 4); only one is supported: join them' },
    ]);
    expect(run(['--config', '/c.yaml'], {}, { '/c.yaml': `---\n${route}---\n` }).routes).toHaveLength(1);
  });

  it('reports only the unreadable file when --config names a wrong path', () => {
    expect(problems(['--config', '/nope.yaml'])).toEqual([{ source: '/nope.yaml', field: '--config', message: 'config file does not exist' }]);
    expect(problems([], { SIDECAR_CONFIG: '/nope.yaml' })).toEqual([{ source: '/nope.yaml', field: 'SIDECAR_CONFIG', message: 'config file does not exist' }]);
    // Where a syntax error is, and (YAML) its kind, never the text there.
    expect(problems(['--config', '/c.json'], {}, { '/c.json': '{"routes": [\n  {"prefix": "/a",, }] }' })).toEqual([
      { source: '/c.json', field: '--config', message: 'is not valid JSON (line 2, column 19)' },
    ]);
    // JSON.parse keeps the last of two equal keys without a word: refused, as YAML refuses them.
    expect(problems(['--config', '/c.json'], {}, { '/c.json': '{\n  "routes": [\n    {"prefix": "/a", "serviceKey": "/k", "prefix": "/b"}\n  ]\n}' })).toEqual([
      { source: '/c.json', field: '--config', message: 'holds a key twice (line 3): JSON keeps the last one without a word, so give it once' },
    ]);
    expect(run(['--config', '/c.json'], {}, { '/c.json': '{\n\t"routes": [{"prefix": "/", "serviceKey": "/k"}]\n}' }).routes).toHaveLength(1); // tabs: fine
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': 'routes:\n  - prefix: /a\n    prefix: /b\n' })).toEqual([
      { source: '/c.yaml', field: '--config', message: 'is not valid YAML (line 3: DUPLICATE_KEY)' },
    ]);
  });

  it('names the file and logLevel for a bad logLevel in the file', () => {
    const file = { '/c.yaml': 'logLevel: verbose\nroutes:\n  - prefix: /\n    serviceKey: /k.json\n' };
    expect(problems(['--config', '/c.yaml'], {}, file)).toEqual([
      { source: '/c.yaml', field: 'logLevel', message: 'must be one of fatal, error, warn, info, debug, trace, silent' },
    ]);
    expect(problems(['--config', '/c.yaml'], { SIDECAR_LOG_LEVEL: 'loud' }, file)).toEqual([
      { source: 'SIDECAR_LOG_LEVEL', field: 'log-level', message: 'must be one of fatal, error, warn, info, debug, trace, silent' },
    ]);
    expect(run(['--config', '/c.yaml', '--log-level', 'debug'], {}, file).logLevel).toBe('debug');
  });

  it('bounds file timeouts and body sizes', () => {
    const file = {
      '/c.yaml': 'routes:\n  - prefix: /\n    serviceKey: /k.json\n    maxReplayBodyBytes: 2000000000\n    timeouts: { responseMs: 3000000000, idleMs: 2147483647 }\n',
    };
    expect(problems(['--config', '/c.yaml'], {}, file)).toEqual([
      { source: '/c.yaml', field: 'routes[0].timeouts.responseMs', message: 'must be an integer from 1 to 2147483647 ms' },
      { source: '/c.yaml', field: 'routes[0].maxReplayBodyBytes', message: 'must be an integer from 0 to 1073741824 bytes' },
    ]);
  });

  it('keeps the route name "none" for the metrics of requests that match no route', () => {
    const file = { '/c.yaml': 'routes:\n  - name: none\n    prefix: /a\n    serviceKey: /k\n' };
    expect(problems(['--config', '/c.yaml'], {}, file)).toEqual([
      { source: '/c.yaml', field: 'routes[0].name', message: '"none" is kept for requests that match no route' },
    ]);
  });

  it('treats /a and /a/ as the same prefix', () => {
    const file = { '/c.yaml': 'routes:\n  - prefix: /a\n    serviceKey: /k\n  - prefix: /a/\n    serviceKey: /k\n  - prefix: /b/\n    serviceKey: /k\n' };
    expect(problems(['--config', '/c.yaml'], {}, file)).toEqual([
      { source: '/c.yaml', field: 'routes[1].prefix', message: 'prefix /a/ is used twice (routes[0] has /a; a trailing / makes no difference)' },
    ]);
  });

  it('normalises prefix and rewritePrefix: no trailing slash, the root / aside', () => {
    const file = [
      'routes:',
      '  - { name: a, prefix: /orders/, rewritePrefix: /http/orders/, serviceKey: /k }',
      '  - { name: b, prefix: /api//, rewritePrefix: /, serviceKey: /k }',
      '  - { name: c, prefix: /, serviceKey: /k }',
      '  - { name: d, prefix: /x, rewritePrefix: /y, serviceKey: /k }',
    ].join('\n');
    const routes = run(['--config', '/c.yaml'], {}, { '/c.yaml': file }).routes;
    expect(routes.map((r) => [r.prefix, r.rewritePrefix])).toEqual([
      ['/orders', '/http/orders'],
      ['/api', '/'],
      ['/', undefined],
      ['/x', '/y'],
    ]);
    expect(Object.isFrozen(routes[0])).toBe(true);
  });

  it('never echoes a file upstream that may carry a secret', () => {
    const file = { '/c.yaml': `routes:\n  - prefix: /\n    serviceKey: /k\n    upstream: "https://user:${SECRET}@host.example:99999"\n` };
    const list = problems(['--config', '/c.yaml'], {}, file);
    expect(list).toEqual([{ source: '/c.yaml', field: 'routes[0].upstream', message: 'is not a URL' }]);
  });

  it('reports a syntax error by position without echoing the file', () => {
    const list = problems(['--config', '/c.yaml'], {}, { '/c.yaml': 'routes: [\n  clientsecret: s3cr3t' });
    expect(list[0]?.message).toMatch(/not valid YAML/);
    expect(JSON.stringify(list)).not.toContain('s3cr3t');
  });
});

describe('the YAML parser', () => {
  it('is loaded only when a YAML config file is read', async () => {
    // A fresh process (vitest's workers may have loaded yaml already): the modules `cli` imports, a config
    // from flags alone, then one from a YAML file; yaml's files in node's module cache after each step.
    const script = [
      "for (const m of ['check', 'credentials', 'logger', 'sidecar', 'token-client', 'token-provider']) await import(`./src/${m}.ts`);",
      "const { parseConfig } = await import('./src/config.ts');",
      "const { createRequire } = await import('node:module');",
      'const yamlFiles = () => Object.keys(createRequire(import.meta.url).cache).filter((f) => f.includes("/node_modules/yaml/")).length;',
      "const flagsOnly = parseConfig(['--service-key', '/k.json'], {}, () => '');",
      'const before = yamlFiles();',
      "const files = { '/c.yaml': 'routes:\\n  - name: a\\n    prefix: /a\\n    serviceKey: /k.json\\n' };",
      "const fromYaml = parseConfig(['--config', '/c.yaml'], {}, (p) => files[p]);",
      'console.log(JSON.stringify({ before, after: yamlFiles(), kinds: [flagsOnly.kind, fromYaml.kind], routes: fromYaml.config.routes.map((r) => r.name) }));',
    ].join('\n');
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root });
    const result = JSON.parse(stdout) as { before: number; after: number; kinds: string[]; routes: string[] };
    expect(result.kinds).toEqual(['run', 'run']);
    expect(result.before).toBe(0);
    expect(result.after).toBeGreaterThan(0);
    expect(result.routes).toEqual(['a']);
  });
});

describe('content given where a path belongs', () => {
  const PEM = '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----\n';
  const KEY_JSON = '{"oauth":{"clientid":"c","clientsecret":"s3cr3t-value","tokenurl":"https://t.example/oauth/token","url":"https://u.example"}}';

  it('refuses a PEM or JSON in a path flag or variable with one problem each, never showing it', () => {
    const found = problems(['--client-cert', '/c.pem', '--ca', '/ca.pem', `--ca=${PEM}`], { SIDECAR_SERVICE_KEY: KEY_JSON, SIDECAR_CLIENT_KEY: PEM }, { '/ca.pem': CA });
    expect(found).toEqual([
      { source: 'SIDECAR_SERVICE_KEY', field: 'service-key', message: expect.stringMatching(/^holds file content \(PEM or JSON\), not a path: .*SIDECAR_SERVICE_KEY_JSON/) },
      { source: 'SIDECAR_CLIENT_KEY', field: 'client-key', message: expect.stringMatching(/^holds file content/) },
      { source: '--ca', field: 'ca', message: expect.stringMatching(/^holds file content/) },
    ]);
    const text = JSON.stringify(found);
    expect(text).not.toContain('s3cr3t-value');
    expect(text).not.toContain('BEGIN PRIVATE KEY');
  });

  it('a PEM in SIDECAR_CA (a comma-separated list) is that one problem, not also files that do not exist', () => {
    expect(problems(['--service-key', '/k'], { SIDECAR_CA: PEM })).toEqual([{ source: 'SIDECAR_CA', field: 'ca', message: expect.stringMatching(/^holds file content/) }]);
  });

  it("refuses it in a config file's path keys too", () => {
    const yaml = `routes:\n  - name: a\n    prefix: /\n    serviceKey: '${KEY_JSON}'\n    clientCert: /c.pem\n    clientKey: "${PEM.replace(/\n/g, '\\n')}"\n`;
    const found = problems(['--config', '/routes.yaml'], {}, { '/routes.yaml': yaml });
    expect(found.map((p) => p.field)).toEqual(['routes[0].serviceKey', 'routes[0].clientKey']);
    expect(JSON.stringify(found)).not.toMatch(/s3cr3t-value|BEGIN PRIVATE KEY/);
  });

  it('accepts ordinary paths, with spaces or brackets; refuses JSON also in the quotes an env file keeps', () => {
    for (const path of ['/keys/my key.json', '[prod]/key.json', '{tenant-a}/key.json']) {
      expect(run(['--service-key', path]).routes[0]!.credentials.source).toEqual({ kind: 'path', path, from: '--service-key' });
    }
    expect(problems([], { SIDECAR_SERVICE_KEY: `'${KEY_JSON}'` })).toEqual([
      { source: 'SIDECAR_SERVICE_KEY', field: 'service-key', message: expect.stringMatching(/^holds file content/) },
    ]);
  });

  it('never shows a --config value that does not look like a path, also where a route flag beside it is refused', () => {
    const pasted = `admin:${SECRET}`;
    for (const [argv, env] of [
      [['--config', pasted, '--scope', 's'], {}],
      [['--scope', 's'], { SIDECAR_CONFIG: pasted, SIDECAR_SERVICE_KEY_JSON: '{}' }],
    ] as const) {
      const list = problems([...argv], env);
      expect(list.map((p) => p.message)).toContainEqual(expect.stringMatching(/cannot be combined with --config; .* in the config file$/));
      expect(new ConfigError(list).message).not.toContain(SECRET);
    }
  });

  it('never shows a source that does not look like a path in a configuration error', () => {
    const shown = (source: string) => new ConfigError([{ source, field: 'service-key', message: 'does not exist' }]).message;
    // Passwords from `openssl rand -base64 24` hold a `/` four times in ten; one may end like a file name.
    const pairs = ['sender:q3J/8kTz0pVb+XcA1mWnE7rYhL2sDf9G', 'admin:s3cret.pw', 'CORP\\svc-erp:Winter2024!', 'team/erp:S3cret', 'C:\\svc:pw.txt'];
    for (const secret of ['admin:S3cretPassw0rd', ...pairs, 'eyJjbGllbnRpZCI6InNiLXgiLCJjbGllbnRzZWNyZXQiOiJUT1BTRUNSRVQifQ==', `'${KEY_JSON}'`, PEM]) {
      expect(shown(secret)).toContain('(the value given, not shown: it could be a secret (a path written with a directory, such as ./users, is shown))');
      expect(shown(secret)).not.toContain(secret);
    }
    for (const source of ['/etc/secrets/cpi/key.json', 'key.json', '[prod]/key.json', 'C:\\keys\\key.json', 'C:/keys/key.json', 'SIDECAR_SERVICE_KEY', '--service-key', 'command line']) {
      expect(shown(source)).toContain(`(${source})`);
    }
  });
});

describe('parseConfig: route-file token params, booleans, secrets in errors, no_proxy, one-line PEM', () => {
  it('refuses what the sidecar sets itself in a route file\'s tokenParams, as it does on --token-param', () => {
    const yaml = 'routes:\n  - prefix: /\n    serviceKey: /k.json\n    tokenParams: { grant_type: password, client_secret: x }\n';
    expect(problems(['--config', '/c.yaml'], {}, { '/c.yaml': yaml }).map((p) => [p.field, p.message])).toEqual([
      ['routes[0].tokenParams.grant_type', 'is set by the sidecar'],
      ['routes[0].tokenParams.client_secret', 'is set by the sidecar'],
    ]);
  });

  it('refuses a boolean variable that is neither true nor false, rather than guessing (SIDECAR_ALLOW_ANY_SENDER=off)', () => {
    for (const value of ['off', 'on', 'maybe']) {
      expect(problems(['--service-key', '/k.json'], { SIDECAR_ALLOW_ANY_SENDER: value }).map((p) => [p.source, p.message])).toContainEqual([
        'SIDECAR_ALLOW_ANY_SENDER',
        'must be true or false',
      ]);
    }
  });

  it('never shows a long base64 secret that happens to hold a / (openssl rand -base64 45) in a configuration error', () => {
    const secret = 'k3Jd9x/Qm2LrT8vZp4NwYb6HcEa1GuVfS0oXiR7yWnKqBt5MjCdPh3ZeAlGt';
    const message = new ConfigError([{ source: secret, field: 'service-key', message: 'does not exist' }]).message;
    expect(message).not.toContain(secret);
  });

  it('reads the proxy exceptions from no_proxy as well as NO_PROXY (Kubernetes and most tools write it lower case)', () => {
    const proxy = { HTTPS_PROXY: 'http://proxy.corp:3128' };
    expect(run(['--service-key', '/k.json'], { ...proxy, no_proxy: '.internal,10.0.0.1' }).network.noProxy).toBe('.internal,10.0.0.1');
    expect(run(['--service-key', '/k.json'], { ...proxy, NO_PROXY: '.internal' }).network.noProxy).toBe('.internal');
  });

  it('takes a one-line PEM given where a path belongs for content, and never shows it', () => {
    const pem = `-----BEGIN PRIVATE KEY----- MIIEv${SECRET}QIBADANBgkqhkiG9w0BAQEFAASC -----END PRIVATE KEY-----`;
    const list = problems(['--service-key', '/k.json', '--client-cert', '/c.pem', `--client-key=${pem}`]);
    expect(list).toContainEqual(expect.objectContaining({ field: 'client-key', message: expect.stringMatching(/^holds file content \(PEM or JSON\), not a path/) }));
    expect(new ConfigError(list).message).not.toContain(SECRET);
  });
});
