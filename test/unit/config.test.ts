import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parseConfig, type Config } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';

const CA = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';

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
    expect(run([], { VCAP_SERVICES: vcap, SERVICE_BINDING_ROOT: '/bindings', SIDECAR_BINDING: 'cpi' }).routes[0]?.credentials.source).toEqual({
      kind: 'binding-root',
      root: '/bindings',
      binding: 'cpi',
    });
    expect(run([], { SERVICE_BINDING_ROOT: '/b', SIDECAR_SERVICE_KEY_JSON: '{}' }).routes[0]?.credentials.source).toMatchObject({ kind: 'inline' });
    expect(run(['--service-key', '/x'], { SIDECAR_SERVICE_KEY_JSON: '{}' }).routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/x' });
  });

  it('reads token parameters from repeated flags or a form-encoded env value', () => {
    const fromFlags = run(['--service-key', '/k', '--token-param', 'token_format=jwt', '--token-param', 'x=a=b']);
    expect(fromFlags.routes[0]?.token.params).toEqual({ token_format: 'jwt', x: 'a=b' });
    const fromEnv = run(['--service-key', '/k'], { SIDECAR_TOKEN_PARAMS: 'token_format=jwt&y=1%202' });
    expect(fromEnv.routes[0]?.token.params).toEqual({ token_format: 'jwt', y: '1 2' });
  });

  it('loads extra CAs and the proxy settings, lower-case variables winning', () => {
    const config = run(['--service-key', '/k', '--ca', '/ca.pem'], { HTTPS_PROXY: 'http://upper:1', https_proxy: 'http://lower:2', NO_PROXY: 'a,b' }, { '/ca.pem': CA });
    expect(config.network).toEqual({ ca: [CA], httpsProxy: 'http://lower:2', noProxy: 'a,b' });
  });

  it('reports every problem at once, naming the field and the source', () => {
    const list = problems(['--token-auth', 'digest', '--csrf', 'maybe', '--listen', 'nope', '--ca', '/missing.pem', '--token-param', 'client_secret=x', '--log-level', 'loud']);
    const fields = list.map((p) => p.field);
    expect(fields).toEqual(expect.arrayContaining(['--service-key', 'token-auth', 'csrf', 'listen', 'ca', 'token-param', 'log-level']));
    expect(list.find((p) => p.field === 'token-auth')?.source).toBe('--token-auth');
    expect(list.find((p) => p.field === 'ca')?.source).toBe('/missing.pem');
  });

  it('rejects unknown flags and commands', () => {
    expect(problems(['--service-kee', '/k'])[0]?.message).toMatch(/service-kee/);
    expect(problems(['launch', '--service-key', '/k'])[0]?.message).toMatch(/unknown command "launch"/);
  });

  it('refuses upstream URLs that are not https or carry credentials', () => {
    expect(problems(['--service-key', '/k', '--upstream', 'http://example.com'])[0]?.field).toBe('upstream');
    expect(problems(['--service-key', '/k', '--upstream', 'https://u:p@example.com'])[0]?.message).toMatch(/credentials/);
    expect(run(['--service-key', '/k', '--upstream', 'https://example.com/base/']).routes[0]?.upstream).toBe('https://example.com/base');
  });

  it('returns help and version requests', () => {
    expect(parseConfig(['--help'], {}).kind).toBe('help');
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
  });

  it('reads the same from JSON', () => {
    const json = JSON.stringify({ routes: [{ prefix: '/', serviceKey: '/k.json' }] });
    expect(run(['--config', '/c.json'], {}, { '/c.json': json }).routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/k.json' });
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

  it('rejects route settings from the environment beside the file instead of ignoring them', () => {
    const file = { '/c.yaml': 'routes:\n  - prefix: /\n    serviceKey: /k.json\n' };
    const env = { SIDECAR_UPSTREAM_TIMEOUT: '5', SIDECAR_SERVICE_KEY: '/other.json', SIDECAR_SERVICE_KEY_JSON: '{"oauth":{}}' };
    const list = problems(['--config', '/c.yaml'], env, file);
    expect(list).toEqual([
      { source: 'environment', field: 'SIDECAR_SERVICE_KEY', message: 'cannot be combined with --config; set it on the route in /c.yaml' },
      { source: 'environment', field: 'SIDECAR_UPSTREAM_TIMEOUT', message: 'cannot be combined with --config; set it on the route in /c.yaml' },
      { source: 'environment', field: 'SIDECAR_SERVICE_KEY_JSON', message: 'cannot be combined with --config; give each route its serviceKey in /c.yaml' },
    ]);
    // What platforms set (Cloud Foundry, servicebinding.io) is not an error: routes name their own keys.
    const platform = run(['--config', '/c.yaml'], { VCAP_SERVICES: '{}', SERVICE_BINDING_ROOT: '/bindings' }, file);
    expect(platform.routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/k.json' });
    // The config file itself may come from the environment too; empty variables count as unset.
    expect(run([], { SIDECAR_CONFIG: '/c.yaml', SIDECAR_SCOPE: '' }, file).routes[0]?.credentials.source).toEqual({ kind: 'path', path: '/k.json' });
    // Top-level settings still override the file from the environment.
    expect(run(['--config', '/c.yaml'], { SIDECAR_LISTEN: '127.0.0.1:9999' }, file).listen.port).toBe(9999);
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
