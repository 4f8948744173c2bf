/**
 * `dispatcher.ts` loads undici's Agent and EnvHttpProxyAgent from their own modules (not undici's
 * index, which also loads fetch, WebSocket, the caches and the mocks: about 7.5 MB of resident
 * memory). These tests pin that choice: the modules are the classes undici exports, the dispatcher is
 * one of them, and the sidecar's module graph does not pull the index in through another door.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as undici from 'undici';
import api from 'undici/lib/api/index.js';
import AgentModule from 'undici/lib/dispatcher/agent.js';
import DispatcherModule from 'undici/lib/dispatcher/dispatcher.js';
import EnvHttpProxyAgentModule from 'undici/lib/dispatcher/env-http-proxy-agent.js';
import PoolModule from 'undici/lib/dispatcher/pool.js';
import { describe, expect, it } from 'vitest';
import { addedAnchors, createDispatcher } from '../../src/dispatcher.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const base = { connectTimeoutMs: 1_000, headersTimeoutMs: 1_000, bodyTimeoutMs: 1_000 };

describe('dispatcher modules', () => {
  it('are the classes undici exports (an undici release that moves them fails here)', () => {
    expect(AgentModule).toBe(undici.Agent);
    expect(EnvHttpProxyAgentModule).toBe(undici.EnvHttpProxyAgent);
    expect(DispatcherModule).toBe(undici.Dispatcher);
    // The pool to an HTTPS proxy, built by the dispatcher's clientFactory so that failures to reach the proxy are marked.
    expect(PoolModule).toBe(undici.Pool);
    // The methods undici's index mixes into Dispatcher.prototype, and dispatcher.ts with it.
    for (const [name, method] of Object.entries(api)) expect(undici.Dispatcher.prototype[name as keyof undici.Dispatcher]).toBe(method);
  });

  it('give an Agent for direct connections and an EnvHttpProxyAgent behind HTTPS_PROXY', async () => {
    const direct = createDispatcher({ ...base, network: { ca: [] } });
    const proxied = createDispatcher({ ...base, network: { ca: [], httpsProxy: 'http://127.0.0.1:3128', noProxy: 'localhost' } });
    try {
      expect(direct).toBeInstanceOf(undici.Agent);
      expect(proxied).toBeInstanceOf(undici.EnvHttpProxyAgent);
    } finally {
      await Promise.all([direct.close(), proxied.close()]);
    }
  });

  it('are the only undici modules the sidecar loads (no index, fetch or WebSocket), and its dispatchers still have request()', async () => {
    // A fresh process (vitest's own workers load undici's index for the tests): import the sidecar's
    // entry modules and list the undici files node loaded.
    const script = [
      "await import('./src/sidecar.ts'); await import('./src/token-client.ts'); await import('./src/check.ts');",
      "const { createRequire } = await import('node:module');",
      'const loaded = Object.keys(createRequire(import.meta.url).cache).filter((f) => f.includes("/node_modules/undici/"));',
      "const { createDispatcher } = await import('./src/dispatcher.ts');",
      'const d = createDispatcher({ network: { ca: [] }, connectTimeoutMs: 1, headersTimeoutMs: 1, bodyTimeoutMs: 1 });',
      'console.log(JSON.stringify({ loaded, methods: ["request", "stream", "pipeline", "upgrade", "connect"].filter((m) => typeof d[m] === "function") }));',
      'await d.close();',
    ].join('\n');
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT });
    const result = JSON.parse(stdout) as { loaded: string[]; methods: string[] };
    const loaded = result.loaded.map((f) => f.slice(f.indexOf('/node_modules/undici/') + '/node_modules/undici/'.length));
    // Without the index, the api the token client, CSRF fetch and check call is there all the same.
    expect(result.methods).toEqual(['request', 'stream', 'pipeline', 'upgrade', 'connect']);
    expect(loaded).toContain('lib/dispatcher/agent.js');
    expect(loaded).not.toContain('index.js');
    expect(loaded.filter((f) => /^lib\/(web|mock|cache)\//.test(f))).toEqual([]);
  });
});

describe('addedAnchors', () => {
  const extraCaCerts = { file: '/corp.pem', pem: 'EXTRA' };

  it("adds nothing without --ca: node's default store (NODE_EXTRA_CA_CERTS included) is used as it is", () => {
    expect(addedAnchors({ ca: [], extraCaCerts })).toEqual([]);
  });

  it('with --ca, adds NODE_EXTRA_CA_CERTS (node 20 keeps it out of the copy the context gets) and the --ca anchors', () => {
    expect(addedAnchors({ ca: ['CA-1', 'CA-2'], extraCaCerts })).toEqual(['EXTRA', 'CA-1', 'CA-2']);
    expect(addedAnchors({ ca: ['CA-1'] })).toEqual(['CA-1']);
  });
});
