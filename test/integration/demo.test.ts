import { access, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describe, expect, it, onTestFinished } from 'vitest';
import { request } from 'undici';
import { collect, startCli } from '../helpers/cli.js';

describe('oauth-sidecar demo', () => {
  it('starts a demo tenant and the sidecar, the printed curl lines work, and Ctrl+C stops it cleanly', async () => {
    const child = startCli(['demo', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--log-format', 'json']);
    const result = collect(child);
    try {
      let out = '';
      const banner = await new Promise<string>((resolve, reject) => {
        child.stdout.on('data', (c: Buffer) => {
          out += c.toString();
          if (out.includes('Stop with Ctrl+C')) resolve(out);
        });
        child.once('close', (code) => reject(new Error(`demo exited early (${code}): ${out}`)));
      });
      const timestampUrl = /curl (http:\/\/127\.0\.0\.1:\d+\/http\/GetTimestamp)/.exec(banner)?.[1];
      const echoLine = /curl -X POST .* (http:\/\/127\.0\.0\.1:\d+\/http\/echo)/.exec(banner)?.[1];
      const keyPath = /service key\s+(\S+)/.exec(banner)?.[1];
      const caPath = /its CA\s+(\S+)/.exec(banner)?.[1];
      expect(timestampUrl).toBeDefined();
      await access(caPath!); // the CA a user needs to point check or token at the demo tenant
      expect(echoLine).toBeDefined();

      const res = await request(timestampUrl!);
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toMatch(/^Current time \(UTC\): \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
      // The demo flow is CSRF protected: the sidecar handles it, the sender never sees it.
      const posted = await request(echoLine!, { method: 'POST', body: 'hello from a legacy sender', headers: { 'content-type': 'text/plain' } });
      expect(posted.statusCode).toBe(200);
      expect(await posted.body.json()).toMatchObject({ method: 'POST', body: 'hello from a legacy sender' });

      child.kill('SIGINT');
      // A second Ctrl+C as the sidecar has stopped, while the demo tenant closes: still a clean end, keys removed.
      await new Promise<void>((resolve) => {
        const stopped = () => out.includes('"msg":"stopped"') && resolve();
        stopped();
        child.stdout.on('data', stopped);
      });
      child.kill('SIGINT');
      const { code } = await result;
      expect(code).toBe(0);
      await expect(access(keyPath!)).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a stop signal while the demo tenant starts still removes its directory (the demo keys), and exits 0', async () => {
    const base = await mkdtemp(join(tmpdir(), 'demo-early-'));
    // Also when the test times out (a `finally` after the hung await would never run), and only after the
    // helper's afterEach has killed a child still running in it.
    onTestFinished(() => rm(base, { recursive: true, force: true }));
    const demoDirs = async () => (await readdir(base)).filter((name) => name.startsWith('oauth-sidecar-demo-'));
    // The signal comes the moment the tenant's directory exists (a preload sends it from inside the child):
    // before the sidecar, and its handlers, can start.
    const preload = fileURLToPath(new URL('../helpers/signal-after-mkdtemp.mjs', import.meta.url));
    const child = startCli(['demo', '--listen', '127.0.0.1:0', '--admin-listen', 'off'], { TMPDIR: base, NODE_OPTIONS: `--import=${pathToFileURL(preload).href}` });
    const { code, stdout, stderr } = await collect(child);
    expect(code, stderr).toBe(0);
    expect(stdout).not.toContain('Stop with Ctrl+C'); // it never got as far as serving
    expect(await demoDirs()).toEqual([]);
  });

  it('refuses a flag that would run something else under its banner (another service key, another upstream)', async () => {
    for (const flag of [['--service-key', 'key.json'], ['--upstream=https://example.com']]) {
      const { code, stderr } = await collect(startCli(['demo', ...flag]));
      expect(code, flag.join(' ')).toBe(2);
      expect(stderr).toContain(`${flag[0]!.split('=')[0]}: is not a demo flag`);
    }
  });

  it('refuses a non-loopback listener with its own reason, not advice to add inbound control it does not take', async () => {
    for (const listen of ['0.0.0.0:0', '[::]:0']) {
      const { code, stderr } = await collect(startCli(['demo', '--listen', listen]));
      expect(code, listen).toBe(2);
      expect(stderr).toMatch(/listen: "(0\.0\.0\.0|::)" is not a loopback address: the demo takes no inbound control, so it listens on loopback only/);
      expect(stderr).not.toContain('--basic-auth-file');
    }
  });
});
