/**
 * NO_PROXY as configured (IPv6 addresses written bare are bracketed for undici) against the real
 * EnvHttpProxyAgent: a recording CONNECT proxy shows which connections went through it, and `goesThroughProxy`
 * (what `check`'s advice relies on) must say the same for every pair — an undici release that changes its rules
 * fails here. The targets need not answer: a tunnel asked for is the proxy's, a connection tried without one is not.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { createDispatcher, goesThroughProxy, type OutboundNetwork } from '../../src/dispatcher.js';
import { startConnectProxy, type ConnectProxy } from '../helpers/connect-proxy.js';
import { closedPort } from '../helpers/net.js';

let proxy: ConnectProxy;
let port: number;

beforeAll(async () => {
  proxy = await startConnectProxy();
  port = await closedPort();
});

afterAll(async () => {
  await proxy?.close();
});

function network(noProxy: string): OutboundNetwork {
  const parsed = parseConfig(['--service-key', '/nowhere/key.json'], { HTTPS_PROXY: proxy.url, NO_PROXY: noProxy });
  if (parsed.kind !== 'run') throw new Error(`unexpected parse result ${parsed.kind}`);
  return parsed.config.network;
}

/** Whether a request to `host` went through the proxy (a tunnel was asked for), whatever became of it. */
async function tunnelled(net: OutboundNetwork, host: string): Promise<boolean> {
  const dispatcher = createDispatcher({ network: net, connectTimeoutMs: 2_000, headersTimeoutMs: 2_000, bodyTimeoutMs: 2_000 });
  const before = proxy.tunnels.length;
  try {
    await dispatcher.request({ origin: `https://${host}`, path: '/', method: 'GET' }).then(
      (res) => res.body.dump(),
      () => undefined,
    );
  } finally {
    await dispatcher.destroy();
  }
  return proxy.tunnels.length > before;
}

describe('NO_PROXY', () => {
  const entries = (p: number) => ['', 'other.example', '127.0.0.1', `127.0.0.1:${p}`, '127.0.0.1:1', 'localhost', '.localhost', '*.localhost', 'LOCALHOST', '::1', '[::1]', `[::1]:${p}`, '*', 'a.example, ::1 localhost'];
  const hosts = (p: number) => [`127.0.0.1:${p}`, `localhost:${p}`, `[::1]:${p}`, `api.localhost:${p}`];

  it('decides per host as undici does, and goesThroughProxy says the same', async () => {
    const rows: string[] = [];
    for (const noProxy of entries(port)) {
      const net = network(noProxy);
      for (const host of hosts(port)) {
        const actual = await tunnelled(net, host);
        rows.push(`${JSON.stringify(noProxy)} ${host}: ${actual ? 'proxy' : 'direct'}${actual === goesThroughProxy(net, host) ? '' : ' (goesThroughProxy disagrees)'}`);
      }
    }
    expect(rows.filter((row) => row.includes('disagrees'))).toEqual([]);
    // The rules themselves, for the cases a user writes.
    const direct = rows.filter((row) => row.endsWith('direct'));
    expect(direct).toEqual(
      expect.arrayContaining([`"::1" [::1]:${port}: direct`, `"[::1]" [::1]:${port}: direct`, `"127.0.0.1:${port}" 127.0.0.1:${port}: direct`, `".localhost" api.localhost:${port}: direct`, `"a.example, ::1 localhost" [::1]:${port}: direct`]),
    );
    expect(rows).toEqual(expect.arrayContaining([`"127.0.0.1:1" 127.0.0.1:${port}: proxy`, `"" [::1]:${port}: proxy`, `"other.example" localhost:${port}: proxy`]));
    expect(rows.filter((row) => row.startsWith('"*"')).every((row) => row.endsWith('direct'))).toBe(true);
  });
});
