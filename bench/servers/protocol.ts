/** What the harness and the servers process (upstream + token server) say to each other over IPC. */

export interface ServersConfig {
  /** PEM files of the bench PKI. */
  caFile: string;
  certFile: string;
  keyFile: string;
  /** Bearer value the upstream accepts forever (bare forwarders, nginx, direct). */
  staticToken: string;
  /** `expires_in` of issued tokens, seconds. */
  tokenLifetimeS: number;
  /** Clients the token server accepts at start (client_secret_basic). */
  clients: ClientSecret[];
}

export interface ClientSecret {
  id: string;
  secret: string;
}

export interface TokenRequestRecord {
  /** Epoch ms. */
  at: number;
  clientId: string | undefined;
  status: number;
}

export interface ServersStats {
  upstream: {
    /** TLS connections accepted (a forwarder that does not reuse connections shows here). */
    connections: number;
    /** Authorised requests by the kind of Bearer token. */
    staticToken: number;
    issuedToken: number;
    /** 401s: no/unknown Bearer. */
    rejectedUnknown: number;
    /** 401s: a token the token server issued, used after its expiry. */
    rejectedExpired: number;
    /** The same by the client id the token was issued to (each sidecar of a run has its own). */
    rejectedExpiredByClient: Record<string, number>;
    uploadBytes: number;
    downloadBytes: number;
  };
  token: {
    requests: TokenRequestRecord[];
  };
}

export type ToServers =
  | { type: 'stats'; id: number }
  | { type: 'set-clients'; id: number; clients: ClientSecret[] };

export type FromServers =
  | { type: 'ready'; upstreamPort: number; tokenPort: number }
  | { type: 'reply'; id: number; stats?: ServersStats }
  | { type: 'error'; message: string };

/** Upstream routes. */
export const GET_PATH = '/bench/get';
export const UPLOAD_PATH = '/bench/upload';
export const DOWNLOAD_PATH = '/bench/download';
export const TOKEN_PATH = '/oauth/token';
/** The small fixed response of GET_PATH. */
export const GET_BODY = 'hello from the bench upstream\n';
