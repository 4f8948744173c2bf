import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { FLAGS } from '../../src/config.js';
import { cleanEnv, collect, collectToFile, killAtTestEnd, runCli, startCli, waitForLog } from '../helpers/cli.js';
import type { OAuthServer } from '../helpers/oauth-server.js';
import type { Pki } from '../helpers/pki.js';
import type { Upstream } from '../helpers/upstream.js';
import { holdRequests, startWorld, type World } from '../helpers/world.js';

const CLIENT_ID = 'sb-cli!b1|it-rt-acme!b196';
const SECRET = 'cli$Secret=value!|%+:';

let world: World;
let pki: Pki;
let oauth: OAuthServer;
let upstream: Upstream;
let files: World['files'];
let keyPath: string;
let caPath: string;

beforeAll(async () => {
  world = await startWorld([
    { clientId: CLIENT_ID, secret: SECRET, authMethod: 'client_secret_basic' },
    { clientId: 'sb-cert!b1|it-rt-acme!b196', authMethod: 'tls_client_auth', subjectDn: 'CN=sidecar-client, O=Test, C=DE' },
  ]);
  ({ pki, oauth, upstream, files, caPath } = world);
  keyPath = await world.secretKey('key.json', CLIENT_ID, SECRET);
});

afterAll(() => world?.close());

describe('oauth-sidecar CLI', () => {
  it('--help lists every flag with its environment variable and default', async () => {
    const { code, stdout } = await runCli(['--help']);
    expect(code).toBe(0);
    for (const [name, spec] of Object.entries(FLAGS)) {
      expect(stdout).toContain(`--${name}`);
      if (spec.env) expect(stdout).toContain(spec.env);
      if (spec.default) expect(stdout).toContain(`default ${spec.default}`);
    }
    expect(stdout).toMatch(/Exit codes: 0 ok, 1 runtime failure, 2 configuration error/);
  });

  it('--version prints the package version, also after a leading -- (npx) and for the demo', async () => {
    for (const args of [['--version'], ['--', '--version'], ['demo', '--version']]) {
      const { code, stdout } = await runCli(args);
      expect(code).toBe(0);
      expect(stdout.trim(), args.join(' ')).toMatch(/^\d+\.\d+\.\d+$/);
    }
  });

  it('token prints only the token on stdout (ClientId/Secret key, Basic)', async () => {
    const { code, stdout, stderr } = await runCli(['token', '--service-key', keyPath, '--ca', caPath, '--log-format', 'json']);
    expect(stderr).not.toContain(SECRET);
    expect(code).toBe(0);
    const token = stdout.trim();
    expect(stdout).toBe(`${token}\n`);
    expect(await oauth.verify(token)).toMatchObject({ client_id: CLIENT_ID });
  });

  it('token works with a certificate key given as a Kubernetes-style environment variable', async () => {
    const key = JSON.stringify({
      oauth: { clientid: 'sb-cert!b1|it-rt-acme!b196', certificate: pki.client.chain, key: pki.client.keyPkcs1, tokenurl: oauth.tokenUrl, url: upstream.url },
    });
    const { code, stdout } = await runCli(['token', '--ca', caPath], { SIDECAR_SERVICE_KEY_JSON: key });
    expect(code).toBe(0);
    expect(await oauth.verify(stdout.trim())).toMatchObject({ client_id: 'sb-cert!b1|it-rt-acme!b196' });
  });

  it('exits 2 with one message listing every problem of a broken service key', async () => {
    const broken = await files.write('broken.json', JSON.stringify({ oauth: { clientid: '', url: 'ftp://x' } }));
    const { code, stdout, stderr } = await runCli(['token', '--service-key', broken]);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('invalid configuration');
    expect(stderr).toContain(broken);
    expect(stderr).toMatch(/clientid/);
    expect(stderr).toMatch(/tokenurl/);
    expect(stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('exits 2 for unknown flags and for a non-loopback listener without inbound control', async () => {
    expect((await runCli(['--no-such-flag'])).code).toBe(2);
    const exposed = await runCli(['serve', '--service-key', keyPath, '--ca', caPath, '--listen', '0.0.0.0:0', '--admin-listen', 'off']);
    expect(exposed.code).toBe(2);
    // It names what to set, as flag and variable.
    expect(exposed.stderr).toContain(
      '"0.0.0.0" is not a loopback address: choose inbound control with --basic-auth-file (SIDECAR_BASIC_AUTH_FILE), ' +
        '--allow-cidr (SIDECAR_ALLOW_CIDRS) or --allow-any-sender (SIDECAR_ALLOW_ANY_SENDER=true) (--listen)',
    );
  });

  it("token and check run with the image's 0.0.0.0 listener and the service key alone; serve refuses it", async () => {
    const image = { SIDECAR_LISTEN: '0.0.0.0:8080', SIDECAR_ADMIN_LISTEN: '0.0.0.0:9090', SIDECAR_SERVICE_KEY: keyPath };
    const token = await runCli(['token', '--ca', caPath], image);
    expect(token.code, token.stderr).toBe(0);
    expect(await oauth.verify(token.stdout.trim())).toMatchObject({ client_id: CLIENT_ID });
    const check = await runCli(['check', '--ca', caPath, '--check-path', '/http/GetTimestamp'], image);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/^warn\s+proxy listener: "0\.0\.0\.0" is not a loopback address: choose inbound control with --basic-auth-file/m);
    expect(check.stdout).toMatch(/^ok\s+summary: 1 route checked, all pass/m);
    const serve = await runCli(['serve', '--ca', caPath], image);
    expect(serve.code).toBe(2);
    expect(serve.stderr).toMatch(/not a loopback address/);
  });

  it('--help says what --allow-host and --binding accept, as the code does', async () => {
    const { stdout } = await runCli(['--help']);
    const line = (flag: string) => stdout.split('\n').find((l) => l.trimStart().startsWith(`--${flag} `)) ?? '';
    // The web-page guard passes loopback addresses and *.localhost names, and an address given here (inbound-control LoopbackHostCheck).
    expect(line('allow-host')).toContain('a Host name (or address) loopback-only senders may use besides loopback addresses, localhost and *.localhost');
    // VCAP_SERVICES matches an instance name, else a service label; a binding root matches directory names.
    expect(line('binding')).toContain('an instance name or service label in VCAP_SERVICES');
    expect(line('binding')).toContain('a binding directory name under $SERVICE_BINDING_ROOT');
  });

  it.each([
    ['the admin port is taken', 'admin-listen'],
    ['the proxy port is taken', 'listen'],
  ])('exits 2, closing everything it opened, when a listener cannot start (%s)', async (_name, flag) => {
    const taken = createNetServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as AddressInfo).port;
    try {
      const other = flag === 'listen' ? ['--admin-listen', '127.0.0.1:0'] : ['--listen', '127.0.0.1:0'];
      const { code, stderr } = await runCli(['serve', '--service-key', keyPath, '--ca', caPath, `--${flag}`, `127.0.0.1:${port}`, ...other]);
      expect(code).toBe(2);
      expect(stderr).toContain(`cannot listen on 127.0.0.1:${port}: the address is in use (EADDRINUSE)`);
      expect(stderr).not.toMatch(/unexpected failure|\n\s+at /);
    } finally {
      taken.close();
    }
  });

  it('check piped into a reader that stops early (| head -1) runs to its end quietly and exits with its own code', async () => {
    const wrongKey = await world.secretKey('key-wrong-secret.json', CLIENT_ID, 'not-the-secret');
    for (const [key, expected] of [[keyPath, 0], [wrongKey, 1]] as const) {
      const child = startCli(['check', '--service-key', key, '--ca', caPath]);
      const result = collect(child);
      child.stdout.once('data', () => child.stdout.destroy()); // the reader goes after the first line
      const { code, stderr } = await result;
      expect(stderr).not.toMatch(/EPIPE|Unhandled|\n\s+at /);
      expect(code, key).toBe(expected);
    }
  });

  it('token and --version exit 1 when what they print cannot be written (a full disk: > /dev/full)', async () => {
    for (const args of [['--version'], ['token', '--service-key', keyPath, '--ca', caPath]]) {
      const { code, stderr } = await collectToFile(args, '/dev/full');
      expect(stderr, args.join(' ')).toContain('cannot write to stdout (ENOSPC)');
      expect(code, args.join(' ')).toBe(1);
    }
  });

  it('exits 2 when a listen host does not resolve', async () => {
    const { code, stderr } = await runCli(['serve', '--service-key', keyPath, '--ca', caPath, '--admin-listen', 'no-such-host.invalid:0']);
    expect(code).toBe(2);
    expect(stderr).toMatch(/cannot listen on no-such-host\.invalid:0: the host does not resolve/);
  });

  it('exits 1 when the token server rejects the credentials, naming the service key and no secret', async () => {
    const wrong = await files.write('wrong.json', JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: 'not-it', tokenurl: oauth.tokenUrl, url: upstream.url } }));
    const { code, stdout, stderr } = await runCli(['token', '--service-key', wrong, '--ca', caPath]);
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toContain('TOKEN_REJECTED');
    expect(stderr).toContain(wrong);
    expect(stderr).not.toContain('not-it');
  });

  it('check: exit 0 with a report for a healthy setup, 1 when the token server rejects the key', async () => {
    const healthy = await runCli(['check', '--service-key', keyPath, '--ca', caPath, '--check-path', '/http/GetTimestamp']);
    expect(healthy.code).toBe(0);
    expect(healthy.stdout).toMatch(/^ok\s+token client id: sb-cli!b1\|it-rt-acme!b196$/m);
    expect(healthy.stdout).toMatch(/^ok\s+summary: 1 route checked, all pass/m);
    expect(healthy.stdout + healthy.stderr).not.toContain(SECRET);
    const wrong = await files.write('check-wrong.json', JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: 'nope', tokenurl: oauth.tokenUrl, url: upstream.url } }));
    const failed = await runCli(['check', '--service-key', wrong, '--ca', caPath]);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/^FAIL\s+TOKEN_REJECTED/m);
    // An unusable inbound basic-auth file is a configuration error, as it is for serve.
    const users = await files.write('check-users.txt', 'no-colon-here\n');
    const unusable = await runCli(['check', '--service-key', keyPath, '--ca', caPath, '--check-path', '/http/GetTimestamp', '--basic-auth-file', users]);
    expect(unusable.code).toBe(2);
    expect(unusable.stdout).toMatch(/^FAIL\s+inbound basic auth file: --basic-auth-file line 1: /m);
  });

  /** `serve` on a port of its own with JSON logs and this shutdown delay and grace, once it listens. */
  async function serving(delayMs: number, graceMs: number) {
    const child = startCli([
      'serve', '--service-key', keyPath, '--ca', caPath, '--listen', '127.0.0.1:0', '--admin-listen', 'off',
      '--shutdown-delay', String(delayMs), '--shutdown-grace', String(graceMs), '--log-format', 'json',
    ]);
    const result = collect(child);
    try {
      const listening = await waitForLog(child, (l) => l['msg'] === 'oauth-sidecar listening');
      return { child, result, url: `http://${listening['listen'] as string}` };
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
  }

  it.each(['SIGTERM', 'SIGHUP'] as const)('serve: on %s an in-flight slow request completes with 200, new connections are refused, exit 0', async (signal) => {
    const { arrival, release } = holdRequests(upstream, '/http/slow');
    const { child, result, url } = await serving(100, 10_000);
    try {
      const slow = request(`${url}/http/slow`);
      await arrival;
      // SIGHUP: the terminal of a local process closed (node's default would end it at once, access lines lost).
      child.kill(signal);
      await waitForLog(child, (l) => l['msg'] === 'shutting down');
      release();
      const res = await slow;
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toBe('done');
      const { code } = await result;
      expect(code).toBe(0);
      await expect(request(`${url}/http/GetTimestamp`)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    } finally {
      upstream.setHandler(undefined);
      child.kill('SIGKILL');
    }
  });

  it.each([
    ['token', 'SIGTERM', true, { code: 143, killedBy: null }],
    ['token', 'SIGINT', true, { code: 130, killedBy: null }],
    ['check', 'SIGTERM', true, { code: 143, killedBy: null }],
    // Not PID 1: killed by the signal, as node's default does, so that a shell script running it stops on Ctrl+C.
    ['token', 'SIGINT', false, { code: null, killedBy: 'SIGINT' }],
    ['check', 'SIGTERM', false, { code: null, killedBy: 'SIGTERM' }],
  ] as const)('%s ends at once on %s (as PID 1: %s) → %o', async (command, signal, asPid1, ending) => {
    // A token server that takes the connection and never answers: the command waits in its token request.
    const held = new Set<Socket>();
    const hanging = createNetServer((socket) => held.add(socket));
    await new Promise<void>((resolve) => hanging.listen(0, '127.0.0.1', resolve));
    const connected = new Promise<void>((resolve) => hanging.once('connection', () => resolve()));
    try {
      const port = (hanging.address() as AddressInfo).port;
      const key = await files.write(`hang-${command}-${signal}.json`, JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: `https://127.0.0.1:${port}/oauth/token`, url: upstream.url } }));
      // As PID 1 (the image) node has no default action for the signal; the preload makes the CLI see itself as PID 1.
      const preload = pathToFileURL(fileURLToPath(new URL('../helpers/as-pid-1.mjs', import.meta.url))).href;
      const child = startCli([command, '--service-key', key, '--ca', caPath, '--token-timeout', '60000'], asPid1 ? { NODE_OPTIONS: `--import=${preload}` } : {});
      const result = collect(child);
      await connected; // its handlers are installed before its token request goes out
      child.kill(signal);
      const { code, signal: killedBy, stdout } = await result;
      expect({ code, killedBy }).toEqual(ending);
      if (command === 'token') expect(stdout).toBe(''); // no token came, none printed
    } finally {
      for (const socket of held) socket.destroy();
      await new Promise((resolve) => hanging.close(resolve));
    }
  });

  /** `serve` with a preload that sends it SIGTERM from inside at the moments `at` names (see signal-at.mjs). */
  function signalledAt(at: string, shutdownDelayMs = 0) {
    const preload = pathToFileURL(fileURLToPath(new URL('../helpers/signal-at.mjs', import.meta.url))).href;
    return startCli(
      ['serve', '--service-key', keyPath, '--ca', caPath, '--listen', '127.0.0.1:0', '--admin-listen', 'off', '--shutdown-delay', String(shutdownDelayMs), '--log-format', 'json'],
      { SIGNAL_AT: at, NODE_OPTIONS: `--import=${preload}` },
    );
  }

  it('serve: a stop signal while it starts (its port already bound) is noted, and it stops as soon as it has started: exit 0', async () => {
    const { code, signal, stdout, stderr } = await collect(signalledAt('listening'));
    expect({ code, signal }, stderr).toEqual({ code: 0, signal: null });
    const messages = stdout.split('\n').filter(Boolean).map((line) => (JSON.parse(line) as { msg: string }).msg);
    expect(messages).toEqual(expect.arrayContaining(['oauth-sidecar listening', 'shutting down', 'stopped']));
    expect(messages.indexOf('shutting down')).toBeGreaterThan(messages.indexOf('oauth-sidecar listening'));
  });

  it('serve: two stop signals while it starts stop it as soon as it has started, the second ending the shutdown delay: exit 0', async () => {
    // A 60-s shutdown delay outlasts the test's own timeout: only the second signal ends it.
    const { code, signal, stdout, stderr } = await collect(signalledAt('listening-twice', 60_000));
    expect({ code, signal }, stderr).toEqual({ code: 0, signal: null });
    const messages = stdout.split('\n').filter(Boolean).map((line) => (JSON.parse(line) as { msg: string }).msg);
    expect(messages).toEqual(expect.arrayContaining(['oauth-sidecar listening', 'shutting down', 'stopped']));
  });

  it('serve: a stop signal after the stop, while the process ends, ends it with exit 0, not by the signal', async () => {
    const child = signalledAt('stopped'); // the second right after the "stopped" line
    const result = collect(child);
    try {
      await waitForLog(child, (l) => l['msg'] === 'oauth-sidecar listening');
      child.kill('SIGTERM');
      const { code, signal, stdout, stderr } = await result;
      expect({ code, signal }, stderr).toEqual({ code: 0, signal: null });
      expect(stdout).toContain('"msg":"stopped"');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it.each(['json', 'pretty'])('serve with its log output failing (stdout on a full disk, --log-format %s) goes on, says so once on stderr, and stops on SIGTERM with exit 0', async (format) => {
    const out = openSync('/dev/full', 'w');
    const child = killAtTestEnd(
      spawn(
        process.execPath,
        ['--import', 'tsx', 'src/cli.ts', 'serve', '--service-key', keyPath, '--ca', caPath, '--listen', '127.0.0.1:0', '--admin-listen', 'off', '--shutdown-delay', '0', '--log-format', format],
        { cwd: fileURLToPath(new URL('../..', import.meta.url)), env: cleanEnv(), stdio: ['ignore', out, 'pipe'] },
      ),
    );
    closeSync(out);
    try {
      let stderr = '';
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
      await new Promise<void>((resolve) =>
        child.stderr!.on('data', (chunk: Buffer) => {
          stderr += chunk.toString();
          if (stderr.includes('the log output failed')) resolve();
        }),
      );
      expect(stderr).toContain('oauth-sidecar: the log output failed (ENOSPC); log lines are dropped from now on and counted in oauth_sidecar_log_lines_dropped_total');
      child.kill('SIGTERM');
      // Before: an uncaught ENOSPC, then pino's exit hook retrying the write for ever — neither serving nor stopping.
      expect(await exited).toEqual({ code: 0, signal: null });
      expect(stderr).not.toMatch(/\n\s+at /); // no stack trace
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('serve: a second signal ends the shutdown delay and the grace period at once, cutting what is in flight, exit 0', async () => {
    const { arrival, release } = holdRequests(upstream, '/http/slow');
    const { child, result, url } = await serving(60_000, 60_000);
    try {
      const slow = request(`${url}/http/slow`).then(
        (res) => res.body.text().then(() => 'completed' as const, () => 'cut' as const),
        () => 'cut' as const,
      );
      await arrival;
      child.kill('SIGTERM');
      await waitForLog(child, (l) => l['msg'] === 'readiness failed; still serving while endpoints are removed');
      // Still serving during the delay…
      const during = await request(`${url}/http/GetTimestamp`);
      expect(during.statusCode).toBe(200);
      await during.body.dump();
      // …until the second signal: neither the 60-s delay nor the 60-s grace period is waited out (either
      // would outlast the test's own timeout).
      child.kill('SIGTERM');
      const { code, stdout } = await result;
      expect(code).toBe(0);
      expect(await slow).toBe('cut'); // the held request never completes
      expect(stdout).toContain('second signal; closing remaining connections');
      expect(stdout).toContain('"msg":"stopped"');
    } finally {
      release();
      upstream.setHandler(undefined);
      child.kill('SIGKILL');
    }
  });
});
