/**
 * The shared environment of a bench or soak run: a scratch directory, a
 * throw-away PKI (the demo PKI of `src/demo-pki.ts`: a root CA and a server
 * certificate for 127.0.0.1), and the servers process (HTTPS upstream + token
 * server, `bench/servers/main.ts`).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDemoPki } from '../../src/demo-pki.js';
import type { ClientSecret, FromServers, ServersConfig, ServersStats, ToServers } from '../servers/protocol.js';
import type { Runner } from './build.js';
import { Child, cleanEnv, registerTempDir } from './proc.js';

export interface Environment {
  /** Scratch directory for keys, configs and logs (removed by `close`). */
  readonly dir: string;
  readonly caFile: string;
  /** `https://127.0.0.1:<port>` */
  readonly upstreamUrl: string;
  readonly tokenUrl: string;
  readonly staticToken: string;
  readonly servers: Child;
  stats(): Promise<ServersStats>;
  setClients(clients: ClientSecret[]): Promise<void>;
  close(): Promise<void>;
}

export interface EnvironmentOptions {
  runner: Runner;
  cpu: number | undefined;
  tokenLifetimeS: number;
  clients: ClientSecret[];
  /** Keep the scratch directory (logs) after the run. */
  keep?: boolean;
}

const REPLY_TIMEOUT_MS = 10_000;

export async function startEnvironment(options: EnvironmentOptions): Promise<Environment> {
  const dir = mkdtempSync(join(tmpdir(), 'oauth-sidecar-bench-'));
  // Holds the PKI's keys and the service keys' client secrets: removed however the harness exits.
  if (!options.keep) registerTempDir(dir);
  const pki = await createDemoPki();
  const caFile = join(dir, 'ca.pem');
  const certFile = join(dir, 'server.pem');
  const keyFile = join(dir, 'server-key.pem');
  writeFileSync(caFile, pki.ca);
  writeFileSync(certFile, pki.server.cert);
  writeFileSync(keyFile, pki.server.key, { mode: 0o600 });
  const staticToken = `static_${randomBytes(24).toString('base64url')}`;
  const config: ServersConfig = { caFile, certFile, keyFile, staticToken, tokenLifetimeS: options.tokenLifetimeS, clients: options.clients };

  const servers = new Child('servers', process.execPath, [...options.runner.args('bench/servers/main.ts'), JSON.stringify(config)], {
    cpu: options.cpu,
    env: cleanEnv(),
    ipc: true,
  });
  const pending = new Map<number, (message: FromServers) => void>();
  let nextId = 1;
  const ready = new Promise<{ upstreamPort: number; tokenPort: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`servers did not start in time: ${servers.stderr}`)), 30_000);
    servers.process.on('message', (message: FromServers) => {
      if (message.type === 'ready') {
        clearTimeout(timer);
        resolve(message);
      } else if (message.type === 'error') {
        clearTimeout(timer);
        reject(new Error(`servers failed: ${message.message}`));
      } else if (message.type === 'reply') {
        pending.get(message.id)?.(message);
        pending.delete(message.id);
      }
    });
    servers.process.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`servers exited (${code}): ${servers.stderr}`));
    });
  });
  let ports: { upstreamPort: number; tokenPort: number };
  try {
    ports = await ready;
  } catch (err) {
    await servers.stop(1_000);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const ask = (message: Omit<ToServers, 'id'>): Promise<FromServers> =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`servers did not answer ${message.type} in time`));
      }, REPLY_TIMEOUT_MS);
      pending.set(id, (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      servers.process.send({ ...message, id } as ToServers);
    });

  return {
    dir,
    caFile,
    upstreamUrl: `https://127.0.0.1:${ports.upstreamPort}`,
    tokenUrl: `https://127.0.0.1:${ports.tokenPort}/oauth/token`,
    staticToken,
    servers,
    async stats() {
      const reply = await ask({ type: 'stats' });
      if (reply.type !== 'reply' || !reply.stats) throw new Error('servers sent no stats');
      return reply.stats;
    },
    async setClients(clients) {
      await ask({ type: 'set-clients', clients } as Omit<ToServers, 'id'>);
    },
    async close() {
      if (servers.running && servers.process.connected) servers.process.disconnect();
      await servers.stop(3_000);
      if (!options.keep) rmSync(dir, { recursive: true, force: true });
    },
  };
}
