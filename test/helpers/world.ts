/** The real parts most integration tests need: test PKI, an OAuth server, an HTTPS upstream that verifies its tokens, and a scratch dir. */
import { startOAuthServer, type OAuthClient, type OAuthServer, type OAuthServerOptions } from './oauth-server.js';
import { createPki, type Pki } from './pki.js';
import { scratch } from './sidecar.js';
import { startUpstream, type Upstream } from './upstream.js';
import { gate } from './net.js';

export interface World {
  pki: Pki;
  oauth: OAuthServer;
  /** Accepts only tokens `oauth` issued. */
  upstream: Upstream;
  files: Awaited<ReturnType<typeof scratch>>;
  /** The test CA as a file, for `--ca`. */
  caPath: string;
  /** Write a ClientId/Secret service key (nested under `oauth`) for this world's servers. */
  secretKey(name: string, clientId: string, secret: string): Promise<string>;
  close(): Promise<void>;
}

export async function startWorld(clients: readonly OAuthClient[], options: Omit<OAuthServerOptions, 'clients'> = {}): Promise<World> {
  const pki = await createPki();
  const oauth = await startOAuthServer(pki, { ...options, clients });
  const upstream = await startUpstream(pki, { verify: (token) => oauth.verify(token) });
  const files = await scratch();
  const caPath = await files.write('ca.pem', pki.ca);
  return {
    pki,
    oauth,
    upstream,
    files,
    caPath,
    secretKey: (name, clientId, secret) =>
      files.write(name, JSON.stringify({ oauth: { clientid: clientId, clientsecret: secret, tokenurl: oauth.tokenUrl, url: upstream.url } })),
    async close() {
      await Promise.all([upstream.close(), oauth.close()]);
      await files.cleanup();
    },
  };
}

/** A handler that holds requests to `path` until released, to have a request in flight. */
export function holdRequests(upstream: Upstream, path: string, answer = 'done') {
  const { arrival, arrived, released, release } = gate();
  upstream.setHandler(async (req, res, body) => {
    if (req.url !== path) return false;
    body.resume();
    arrived();
    await released;
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(answer);
    return true;
  });
  return { arrival, release };
}
