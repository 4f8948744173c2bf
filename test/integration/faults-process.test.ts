/**
 * The fault suite's "no secret in any output", for the outputs the in-process cases cannot see: the real CLI (a
 * child process) serves through token-server and upstream faults at its most verbose log level, and everything
 * it writes — stdout and stderr, warnings and stray console output included — is scanned for the secret in all
 * its forms, the tokens it was given and the Bearer header.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { request } from 'undici';
import { collect, startCli, startCliWithFileLimit, waitForLog } from '../helpers/cli.js';
import { createPki, type Pki } from '../helpers/pki.js';
import { rawOpen } from '../helpers/raw-http.js';
import { expectNoSecretOrStack, secretForms } from '../helpers/secrets.js';
import { scratch } from '../helpers/sidecar.js';
import { TokenEndpoint } from '../helpers/token-endpoint.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLIENT_ID = 'sb-process!b3|it-rt-acme!b196';
const SECRET = 'pr0cess$Secret=value!|%+:5e';

let pki: Pki;
let endpoint: TokenEndpoint;
let upstream: Upstream;
let files: Awaited<ReturnType<typeof scratch>>;

beforeAll(async () => {
  pki = await createPki();
  endpoint = await TokenEndpoint.start({ tls: { cert: pki.server.chain, key: pki.server.key, ca: pki.ca }, clients: [{ clientId: CLIENT_ID, secret: SECRET }] });
  // Any token goes (the endpoint's are not JWTs); a path of its own resets the connection before answering.
  upstream = await startUpstream(pki, {
    verify: null,
    handler: (req) => {
      if (!req.url?.startsWith('/http/reset')) return false;
      req.socket.destroy();
      return true;
    },
  });
  files = await scratch();
});

afterAll(async () => {
  await Promise.all([endpoint?.close(), upstream?.close()]);
  await files?.cleanup();
});

it('serve through token-server and upstream faults at debug level: stdout and stderr hold no secret, token or stack', { timeout: 40_000 }, async () => {
  const key = await files.write('key.json', JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: endpoint.tokenUrl, url: upstream.url } }));
  const ca = await files.write('ca.pem', pki.ca);
  const echo = `Bad credentials: client_secret=${encodeURIComponent(SECRET)}, Authorization: Basic ${Buffer.from(`${CLIENT_ID}:${SECRET}`).toString('base64')}`;
  // The warm-up fetch meets 500s (three attempts), then the credentials are "rejected" quoting them back.
  endpoint.fail(...Array.from({ length: 3 }, () => ({ kind: 'status', status: 500 }) as const), { kind: 'status', status: 401, body: JSON.stringify({ error: 'invalid_client', error_description: echo }) });
  const child = startCli(['serve', '--service-key', key, '--ca', ca, '--listen', '127.0.0.1:0', '--admin-listen', 'off', '--log-level', 'debug', '--log-format', 'json', '--shutdown-delay', '0']);
  const result = collect(child);
  try {
    const listening = await waitForLog(child, (l) => l['msg'] === 'oauth-sidecar listening');
    const url = `http://${listening['listen'] as string}`;
    const get = async (path: string) => {
      const res = await request(`${url}${path}`, { headers: { authorization: `Basic ${Buffer.from(`legacy:${SECRET}`).toString('base64')}` } });
      return { status: res.statusCode, text: await res.body.text() };
    };
    // The token server fails: 503, then the rejection: 502; each answer is scanned as well.
    const answers = [await get('/http/first')];
    await expect.poll(async () => (await get('/http/poll')).status).toBe(502);
    // Back to normal (after the backoff): a token, then an upstream that resets and one that answers.
    await expect.poll(async () => (await get('/http/GetTimestamp')).status, { timeout: 15_000 }).toBe(200);
    answers.push(await get('/http/reset'), await get('/http/echo'));
    expect(answers.map((a) => a.status)).toEqual([503, 502, 200]);
    for (const answer of answers) expectNoSecretOrStack(answer.text, secretForms(CLIENT_ID, SECRET));
    expect(upstream.requests.filter((r) => r.url === '/http/echo' && r.authorized)).toHaveLength(1);
    child.kill('SIGTERM');
    const { code, stdout, stderr } = await result;
    expect(code).toBe(0);
    // Every output, as a user's terminal or log collector gets it.
    const output = stdout + stderr;
    expect(output).toContain('"msg":"request"'); // it did log, at debug level
    expect(output).toContain('invalid_client');
    expectNoSecretOrStack(output, secretForms(CLIENT_ID, SECRET));
    expect(output).not.toContain(Buffer.from(`legacy:${SECRET}`).toString('base64'));
    expect(output).not.toMatch(/Bearer [A-Za-z0-9]/);
    expect(endpoint.tokensWritten.size).toBeGreaterThan(0);
    for (const token of endpoint.tokensWritten) expect(output).not.toContain(token);
  } finally {
    child.kill('SIGKILL');
  }
});

it('under a low open-file limit, senders beyond what the descriptors carry get 503 TOO_MANY_CONNECTIONS, none a reset or nothing', { timeout: 40_000 }, async () => {
  const key = await files.write('fd-key.json', JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: endpoint.tokenUrl, url: upstream.url } }));
  const ca = await files.write('fd-ca.pem', pki.ca);
  // The limit is read from the process itself: 268 descriptors carry 5 served connections after the reserve (256,
  // and 1 for the route's token connection; each served connection counts for itself and its upstream one). Of 60 senders held open at once, the others get their 503 while
  // descriptors are left to answer them, instead of resets once accept() meets EMFILE.
  const child = startCliWithFileLimit(268, ['serve', '--service-key', key, '--ca', ca, '--listen', '127.0.0.1:0', '--admin-listen', 'off', '--log-format', 'json', '--shutdown-delay', '0']);
  const result = collect(child);
  try {
    const listening = await waitForLog(child, (l) => l['msg'] === 'oauth-sidecar listening');
    const port = Number(String(listening['listen']).split(':').at(-1));
    const senders: Array<Awaited<ReturnType<typeof rawOpen>>> = [];
    for (let i = 0; i < 60; i++) senders.push(await rawOpen(port, `GET /http/echo?fd-${i} HTTP/1.1\r\nHost: localhost\r\n\r\n`));
    // Each gets an answer: its status line, or the close (a reset or nothing) that shows it got none.
    const answered = (s: (typeof senders)[number]) => /^HTTP\/1\.1 \d{3} /.test(s.received());
    const outcome = (s: (typeof senders)[number]) => Promise.race([s.closed.then((how) => (answered(s) ? s.received().slice(9, 12) : how)), expect.poll(() => answered(s), { timeout: 15_000 }).toBe(true).then(() => s.received().slice(9, 12))]);
    const outcomes = await Promise.all(senders.map(outcome));
    const counts: Record<string, number> = {};
    for (const o of outcomes) counts[o] = (counts[o] ?? 0) + 1;
    expect(counts).toEqual({ '200': 5, '503': 55 });
    for (const sender of senders) sender.socket.destroy();
    child.kill('SIGTERM');
    const { code, stdout } = await result;
    expect(code).toBe(0);
    const warning = stdout.split('\n').filter((l) => l.includes('the open-file limit')).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(warning).toEqual([expect.objectContaining({ level: 'warn', openFileLimit: 268, maxConnections: 1024, served: 5 })]);
  } finally {
    child.kill('SIGKILL');
  }
});

it('a service key read out of file descriptors says so, and a reload meeting it keeps the credentials without calling them rejected', { timeout: 20_000 }, async () => {
  const key = await files.write('fd-read-key.json', JSON.stringify({ oauth: { clientid: CLIENT_ID, clientsecret: SECRET, tokenurl: endpoint.tokenUrl, url: upstream.url } }));
  // A real EMFILE: the child holds every descriptor its limit allows, then reads the key as a reload does.
  const script = `
    const { loadCredentials } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'src/credentials.ts')).href)});
    const { reloadFailureMessage } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'src/sidecar.ts')).href)});
    const { openSync } = await import('node:fs');
    const held = [];
    const fill = () => { let n = 0; try { for (;;) { held.push(openSync('/dev/null', 'r')); n++; } } catch (err) { if (err.code !== 'EMFILE') throw err; } return n; };
    fill();
    // Node 24 closes some of its module loader's descriptors a turn later: take those too, until a turn frees none.
    do await new Promise((resolve) => setImmediate(resolve)); while (fill() > 0);
    try {
      await loadCredentials({ source: { kind: 'path', path: ${JSON.stringify(key)} } });
      console.log(JSON.stringify({ loaded: true }));
    } catch (err) {
      console.log(JSON.stringify({ code: err.code, transient: err.transient, message: err.message, reload: reloadFailureMessage(err) }));
    }`;
  const child = spawn('/bin/sh', ['-c', 'ulimit -n 64 && exec "$@"', 'sh', process.execPath, '--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT });
  const { code, stdout, stderr } = await collect(child);
  expect(stderr).toBe('');
  expect(code).toBe(0);
  const outcome = JSON.parse(stdout) as Record<string, unknown>;
  expect(outcome).toEqual({
    code: 'CONFIG_INVALID',
    transient: true,
    message: expect.stringContaining(`cannot be read now: the sidecar is out of file descriptors (EMFILE) — raise its open-file limit`) as unknown,
    reload: 'the service key could not be read now; the previous credentials stay in use, and it is read again at the next check',
  });
  expect(String(outcome['message'])).toContain(`(${key})`);
  expectNoSecretOrStack(stdout, secretForms(CLIENT_ID, SECRET));
});
