/**
 * Broken configuration, through the real CLI (a child process each): exit code 2 and one clear message
 * naming the field and where its value came from, never a secret or a stack trace. Apart from the fault
 * suite (faults.test.ts) so that these processes neither overlap its cases nor enter its resource counts.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collect, startCli, type CliResult } from '../helpers/cli.js';
import { createPki, type Pki } from '../helpers/pki.js';
import { expectNoSecretOrStack, privateKeyForms, secretForms } from '../helpers/secrets.js';
import { closedPort } from '../helpers/net.js';
import { scratch } from '../helpers/sidecar.js';

const CLIENT_ID = 'sb-faults!b42|it-rt-acme!b196';
const SECRET = 'f4ult$Secret=value!|%+:7b1c';

const SECRET_FORMS = secretForms(CLIENT_ID, SECRET);

let pki: Pki;
let files: Awaited<ReturnType<typeof scratch>>;
let ctx: ConfigContext;

beforeAll(async () => {
  pki = await createPki();
  files = await scratch();
  const dir = join(files.dir, 'config-cases');
  await mkdir(dir);
  ctx = { dir, goodKey: '', write: (name, content) => files.write(join('config-cases', name), content) };
  const port = await closedPort();
  GOOD_KEY.tokenurl = `https://127.0.0.1:${port}/oauth/token`;
  GOOD_KEY.url = `https://127.0.0.1:${port}`;
  ctx.goodKey = await ctx.write('good.json', JSON.stringify({ oauth: GOOD_KEY }));
});

afterAll(async () => {
  await files?.cleanup();
});

/** Private keys the cases wrote (besides pki's own), for the check that no piece of one is quoted. */
const issuedKeys: string[] = [];
async function issue(options: Parameters<Pki['issueClientCert']>[0]): ReturnType<Pki['issueClientCert']> {
  const issued = await pki.issueClientCert(options);
  issuedKeys.push(issued.keyPkcs8);
  return issued;
}

/** The client secret in every form, and every private key a case could have read. */
function secrets(): string[] {
  return [...SECRET_FORMS, ...privateKeyForms([pki.client.keyPkcs8, pki.client.keyPkcs1, pki.server.key, pki.rogue.key, ...issuedKeys])];
}

interface ConfigCase {
  name: string;
  /**
   * Builds the files; returns the CLI arguments (after the command: `token` unless `serve` is asked for), the
   * environment, the source the message must name, and the problem line.
   */
  setup(ctx: ConfigContext): Promise<{ args: string[]; source: string; problem: RegExp; command?: 'serve'; env?: Record<string, string> }>;
}

interface ConfigContext {
  dir: string;
  goodKey: string;
  write(name: string, content: string): Promise<string>;
}

/** Fails fast if validation ever lets it through: the token URL refuses connections (a port just closed: `beforeAll`). */
const GOOD_KEY = { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: '', url: '' };

function keyWithout(field: keyof typeof GOOD_KEY): string {
  const { [field]: _dropped, ...rest } = GOOD_KEY;
  return JSON.stringify({ oauth: rest });
}

function certificateKey(certificate: string, key: string): string {
  const { clientsecret: _secret, ...rest } = GOOD_KEY;
  return JSON.stringify({ oauth: { ...rest, certificate, key } });
}

const keyArgs = (file: string) => ({ args: ['--service-key', file], source: file });

const CONFIG_CASES: ConfigCase[] = [
  { name: 'missing service key file', setup: async ({ dir }) => ({ ...keyArgs(join(dir, 'nope.json')), problem: /does not exist/ }) },
  {
    name: 'directory without a key',
    setup: async ({ dir }) => {
      const empty = join(dir, 'empty-dir');
      await mkdir(empty, { recursive: true });
      return { ...keyArgs(empty), problem: /contains no service key/ };
    },
  },
  {
    name: 'invalid JSON (cut off after the secret)',
    setup: async ({ write }) => ({ ...keyArgs(await write('invalid.json', `{"oauth": {"clientsecret": "${SECRET}", "clientid": `)), problem: /is not valid JSON/ }),
  },
  { name: 'a JSON array', setup: async ({ write }) => ({ ...keyArgs(await write('array.json', '[{"clientid": "x"}]')), problem: /is not a JSON object/ }) },
  { name: 'missing clientid', setup: async ({ write }) => ({ ...keyArgs(await write('no-id.json', keyWithout('clientid'))), problem: /oauth\.clientid: is missing/ }) },
  { name: 'missing clientsecret', setup: async ({ write }) => ({ ...keyArgs(await write('no-secret.json', keyWithout('clientsecret'))), problem: /oauth\.clientsecret: is missing/ }) },
  { name: 'missing tokenurl', setup: async ({ write }) => ({ ...keyArgs(await write('no-url.json', keyWithout('tokenurl'))), problem: /oauth\.tokenurl: is missing/ }) },
  {
    name: 'missing url without --upstream',
    setup: async ({ write }) => ({ ...keyArgs(await write('no-upstream.json', keyWithout('url'))), problem: /oauth\.url: is missing, and the route has no upstream of its own: set --upstream/ }),
  },
  {
    name: 'http tokenurl',
    setup: async ({ write }) => ({
      ...keyArgs(await write('http-url.json', JSON.stringify({ oauth: { ...GOOD_KEY, tokenurl: 'http://acme.authentication.eu10.hana.ondemand.com/oauth/token' } }))),
      problem: /oauth\.tokenurl: must be an https URL/,
    }),
  },
  {
    name: 'bad PEM',
    setup: async ({ write }) => ({
      ...keyArgs(await write('bad-pem.json', certificateKey('-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n', 'not a key'))),
      problem: /oauth\.certificate: is not a PEM certificate/,
    }),
  },
  {
    name: 'key and certificate do not match',
    setup: async ({ write }) => {
      const other = await issue({ cn: 'someone-else' });
      return { ...keyArgs(await write('mismatch.json', certificateKey(pki.client.chain, other.keyPkcs8))), problem: /oauth\.key: does not match the certificate/ };
    },
  },
  {
    name: 'expired certificate',
    setup: async ({ write }) => {
      const day = 86_400_000;
      const expired = await issue({ cn: 'expired', notBefore: new Date(Date.now() - 10 * day), notAfter: new Date(Date.now() - day) });
      return { ...keyArgs(await write('expired.json', certificateKey(expired.chain, expired.keyPkcs8))), problem: /oauth\.certificate: expired on/ };
    },
  },
  {
    name: 'config file with an unknown key',
    setup: async ({ write, goodKey }) => {
      const file = await write('unknown.yaml', `routes:\n  - name: a\n    prefix: /a\n    serviceKey: ${goodKey}\n    tokenUrl: https://elsewhere\n`);
      return { args: ['--config', file], source: file, problem: /routes\[0\]\.tokenUrl: unknown key/ };
    },
  },
  {
    name: 'invalid YAML',
    setup: async ({ write, goodKey }) => {
      const file = await write('invalid.yaml', `routes:\n  - name: a\n    prefix: [/a\n    serviceKey: ${goodKey}\n`);
      return { args: ['--config', file], source: file, problem: /is not valid YAML/ };
    },
  },
  {
    name: 'empty routes',
    setup: async ({ write }) => {
      const file = await write('empty.yaml', 'routes: []\n');
      return { args: ['--config', file], source: file, problem: /routes: must be a non-empty list/ };
    },
  },
  {
    name: 'duplicate prefix',
    setup: async ({ write, goodKey }) => {
      const route = (name: string) => `  - name: ${name}\n    prefix: /orders\n    serviceKey: ${goodKey}\n`;
      const file = await write('dup.yaml', `routes:\n${route('a')}${route('b')}`);
      return { args: ['--config', file], source: file, problem: /routes\[1\]\.prefix: prefix \/orders is used twice/ };
    },
  },
  {
    name: 'bad listen address (flag)',
    setup: async ({ goodKey }) => ({ args: ['--service-key', goodKey, '--listen', 'localhost:99999'], source: '--listen', problem: /listen: "localhost:99999" is not HOST:PORT/ }),
  },
  {
    name: 'bad listen address (config file)',
    setup: async ({ write, goodKey }) => {
      const file = await write('listen.yaml', `listen: nowhere\nroutes:\n  - name: a\n    prefix: /\n    serviceKey: ${goodKey}\n`);
      return { args: ['--config', file], source: file, problem: /listen: "nowhere" is not HOST:PORT/ };
    },
  },
  {
    name: 'serve: missing clientsecret',
    setup: async ({ write }) => ({
      command: 'serve',
      ...keyArgs(await write('serve-no-secret.json', keyWithout('clientsecret'))),
      problem: /oauth\.clientsecret: is missing/,
    }),
  },
  {
    name: "serve: config file whose second route's key lacks tokenurl",
    setup: async ({ write, goodKey }) => {
      const broken = await write('second-no-url.json', keyWithout('tokenurl'));
      const file = await write('second.yaml', `routes:\n  - name: a\n    prefix: /a\n    serviceKey: ${goodKey}\n  - name: b\n    prefix: /b\n    serviceKey: ${broken}\n`);
      return { command: 'serve', args: ['--config', file], source: broken, problem: /oauth\.tokenurl: is missing/ };
    },
  },
  {
    name: 'serve: a route variable beside the config file',
    setup: async ({ write, goodKey }) => {
      const file = await write('env-beside.yaml', `routes:\n  - name: a\n    prefix: /\n    serviceKey: ${goodKey}\n`);
      return { command: 'serve', args: ['--config', file], env: { SIDECAR_UPSTREAM_TIMEOUT: '5' }, source: 'environment', problem: /SIDECAR_UPSTREAM_TIMEOUT: cannot be combined with --config; set the route's timeouts\.responseMs in / };
    },
  },
  {
    name: 'serve: config file whose route has an External Certificate key and no key pair',
    setup: async ({ write }) => {
      const { clientsecret: _secret, ...rest } = GOOD_KEY;
      const external = await write('external-routed.json', JSON.stringify({ oauth: { ...rest, certificate: pki.client.chain } }));
      const file = await write('external.yaml', `routes:\n  - name: a\n    prefix: /\n    serviceKey: ${external}\n`);
      // The route's own keys, not flags that --config refuses.
      return { command: 'serve', args: ['--config', file], source: external, problem: /oauth\.key: .* supplied with routes\[0\]\.clientCert\/routes\[0\]\.clientKey \(or routes\[0\]\.clientTlsDir, .*\) in the config file/ };
    },
  },
  {
    name: 'the service key JSON itself in SIDECAR_SERVICE_KEY (a path belongs there)',
    setup: async () => ({ args: [], env: { SIDECAR_SERVICE_KEY: JSON.stringify({ oauth: GOOD_KEY }) }, source: 'SIDECAR_SERVICE_KEY', problem: /service-key: holds file content \(PEM or JSON\), not a path/ }),
  },
  {
    name: 'a private key PEM itself in SIDECAR_CLIENT_KEY, and a certificate PEM in --client-cert',
    setup: async ({ goodKey }) => ({
      command: 'serve',
      args: ['--service-key', goodKey, `--client-cert=${pki.client.chain}`],
      env: { SIDECAR_CLIENT_KEY: pki.client.keyPkcs8 },
      source: 'SIDECAR_CLIENT_KEY',
      problem: /client-key: holds file content \(PEM or JSON\), not a path/,
    }),
  },
  { name: 'an empty key file', setup: async ({ write }) => ({ ...keyArgs(await write('empty.json', '')), problem: /--service-key: is empty/ }) },
  {
    name: 'a key file saved as UTF-16',
    setup: async ({ write }) => ({ ...keyArgs(await write('utf16.json', Buffer.from(JSON.stringify({ oauth: GOOD_KEY }), 'utf16le').toString('latin1'))), problem: /--service-key: holds NUL bytes: saved as UTF-16/ }),
  },
  {
    name: 'a field that is not a string',
    setup: async ({ write }) => ({ ...keyArgs(await write('number.json', JSON.stringify({ oauth: { ...GOOD_KEY, clientid: 123 } }))), problem: /oauth\.clientid: must be a string/ }),
  },
  {
    name: 'a tokenurl that is no URL',
    setup: async ({ write }) => ({ ...keyArgs(await write('no-url-at-all.json', JSON.stringify({ oauth: { ...GOOD_KEY, tokenurl: 'not a url' } }))), problem: /oauth\.tokenurl: is not a URL/ }),
  },
  {
    name: 'a key without its certificate',
    setup: async ({ write }) => {
      const { clientsecret: _secret, ...rest } = GOOD_KEY;
      return { ...keyArgs(await write('key-only.json', JSON.stringify({ oauth: { ...rest, key: pki.client.keyPkcs8 } }))), problem: /oauth\.certificate: is missing \(the key has a "key"\)/ };
    },
  },
  {
    name: 'an External Certificate key without a key pair',
    setup: async ({ write }) => {
      const { clientsecret: _secret, ...rest } = GOOD_KEY;
      return { ...keyArgs(await write('external.json', JSON.stringify({ oauth: { ...rest, certificate: pki.client.chain } }))), problem: /oauth\.key: .*--client-cert/ };
    },
  },
  {
    name: 'a FIFO in a field\'s place in a secret directory',
    setup: async ({ dir }) => {
      const secret = join(dir, 'fifo-secret');
      await mkdir(secret, { recursive: true });
      await Promise.all(Object.entries(GOOD_KEY).filter(([k]) => k !== 'clientsecret').map(([k, v]) => writeFile(join(secret, k), v)));
      execFileSync('mkfifo', [join(secret, 'clientsecret')]);
      return { args: ['--service-key', secret], source: join(secret, 'clientsecret'), problem: /--service-key: is not a regular file/ };
    },
  },
  {
    name: 'VCAP_SERVICES without an it-rt binding',
    setup: async () => ({ args: [], env: { VCAP_SERVICES: JSON.stringify({ xsuaa: [{ name: 'uaa', credentials: {} }] }) }, source: 'VCAP_SERVICES', problem: /has no it-rt binding; found: xsuaa\/uaa/ }),
  },
  {
    name: 'VCAP_SERVICES_FILE_PATH with two it-rt instances and no --binding',
    setup: async ({ write }) => {
      const instance = (name: string, plan: string) => ({ name, plan, label: 'it-rt', credentials: { oauth: GOOD_KEY } });
      const file = await write('vcap_services', JSON.stringify({ 'it-rt': [instance('flows', 'integration-flow'), instance('odata', 'api')] }));
      return { args: [], env: { VCAP_SERVICES_FILE_PATH: file }, source: file, problem: /has several it-rt bindings, so name the one to use with --binding \(SIDECAR_BINDING\); found: it-rt\/flows, it-rt\/odata/ };
    },
  },
  {
    name: 'a user list saved as Windows-1252 (a password with ü would never match)',
    setup: async ({ write, goodKey }) => {
      const file = await write('users-ansi.txt', '');
      await writeFile(file, Buffer.from('erp:Gr\xfc\xdfe-Passw0rd\n', 'latin1'));
      return { command: 'serve', args: ['--service-key', goodKey, '--basic-auth-file', file], source: file, problem: /--basic-auth-file: user list is not UTF-8 text: saved as Windows-1252/ };
    },
  },
  {
    name: 'a config file saved as Windows-1252',
    setup: async ({ write, goodKey }) => {
      const file = await write('ansi.yaml', '');
      await writeFile(file, Buffer.from(`# Bestellungen für SAP\nroutes:\n  - prefix: /\n    serviceKey: ${goodKey}\n`, 'latin1'));
      return { args: ['--config', file], source: file, problem: /--config: config file is not UTF-8 text: saved as Windows-1252/ };
    },
  },
  { name: 'a missing config file', setup: async ({ dir }) => ({ args: ['--config', join(dir, 'nope.yaml')], source: join(dir, 'nope.yaml'), problem: /--config: config file does not exist/ }) },
  {
    name: 'a config file that is not a mapping',
    setup: async ({ write }) => {
      const file = await write('scalar.yaml', 'just text\n');
      return { args: ['--config', file], source: file, problem: /must be a mapping/ };
    },
  },
  {
    name: 'a route without serviceKey, and a prefix without its /',
    setup: async ({ write }) => {
      const file = await write('no-key.yaml', 'routes:\n  - name: a\n    prefix: a\n');
      return { args: ['--config', file], source: file, problem: /routes\[0\]\.serviceKey: is required/ };
    },
  },
  {
    name: 'the admin listener on the listener\'s port',
    setup: async ({ goodKey }) => ({
      args: ['--service-key', goodKey, '--listen', '127.0.0.1:18555', '--admin-listen', '127.0.0.1:18555'],
      source: '--admin-listen',
      problem: /admin-listen: takes the port of listen/,
    }),
  },
  {
    name: 'an HTTPS_PROXY with a path (a PAC file) and credentials: undici would refuse it at the first pool',
    setup: async ({ goodKey }) => ({
      command: 'serve',
      args: ['--service-key', goodKey],
      env: { HTTPS_PROXY: `http://corp:${encodeURIComponent(SECRET)}@127.0.0.1:3128/proxy.pac` },
      source: 'environment',
      problem: /HTTPS_PROXY: has a path, query or fragment/,
    }),
  },
  {
    name: 'unknown --token-auth',
    setup: async ({ goodKey }) => ({ args: ['--service-key', goodKey, '--token-auth', 'digest'], source: '--token-auth', problem: /token-auth: must be basic or post, not "digest"/ }),
  },
];

describe('broken configuration (real CLI): exit code 2, one clear message naming the field and its source', () => {
  // Side by side (each a child process of its own); `expect` from the test context, as concurrent tests need.
  it.concurrent.for(CONFIG_CASES)('$name', async (c, { expect }) => {
    const { args, source, problem, command, env } = await c.setup(ctx);
    const serveArgs = command === 'serve' ? ['--listen', '127.0.0.1:0', '--admin-listen', 'off'] : [];
    const result = await runCliBounded([command ?? 'token', ...args, ...serveArgs], env);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stdout).toBe('');
    const lines = result.stderr.trimEnd().split('\n');
    expect(lines[0]).toBe('oauth-sidecar: invalid configuration:');
    expect(result.stderr.match(/oauth-sidecar:/g)).toHaveLength(1); // one message…
    expect(lines.length).toBeGreaterThanOrEqual(2);
    for (const line of lines.slice(1)) expect(line).toMatch(/^ {2}- \S/); // …listing problems, nothing else
    const line = lines.find((l) => problem.test(l));
    expect(line, `no line matching ${problem} in:\n${result.stderr}`).toBeDefined();
    expect(line, 'the problem names where the value came from').toContain(`(${source})`);
    expectNoSecretOrStack(result.stdout + result.stderr, secrets()); // no secret in any encoding, no piece of a key, no stack trace
  });
});

describe('serve lists every problem of the files it reads at once', () => {
  it('two routes whose keys are missing and a broken users file: three problems, each route named', async () => {
    const users = await ctx.write('users-broken.txt', 'no colon on this line\n');
    const first = join(ctx.dir, 'missing-first.json');
    const second = join(ctx.dir, 'missing-second.json');
    const file = await ctx.write(
      'two-missing.yaml',
      `inbound:\n  basicAuthFile: ${users}\nroutes:\n  - name: orders\n    prefix: /orders\n    serviceKey: ${first}\n  - name: invoices\n    prefix: /invoices\n    serviceKey: ${second}\n`,
    );
    const result = await runCliBounded(['serve', '--config', file, '--listen', '127.0.0.1:0', '--admin-listen', 'off']);
    expect(result.code, result.stderr).toBe(2);
    const lines = result.stderr.trimEnd().split('\n');
    expect(lines[0]).toBe('oauth-sidecar: invalid configuration:');
    expect(lines).toHaveLength(4);
    expect(lines.find((l) => l.includes(`(${users})`))).toBe(`  - inbound.basicAuthFile line 1: expected user:password or user:sha256:<hex> (${users})`);
    expect(lines.find((l) => l.startsWith('  - route "orders"') && l.includes(`(${first})`))).toBeDefined();
    expect(lines.find((l) => l.startsWith('  - route "invoices"') && l.includes(`(${second})`))).toBeDefined();
  });
});

/** A CLI run with a hard bound, so that a case that unexpectedly starts serving cannot hang the suite. */
async function runCliBounded(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const child = startCli(args, env);
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  try {
    return await collect(child);
  } finally {
    clearTimeout(timer);
  }
}
