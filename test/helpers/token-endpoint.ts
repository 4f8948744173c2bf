/**
 * A token endpoint whose failures the test controls: it really checks client
 * credentials (Basic with RFC 6749 §2.3.1 decoding, post, or a client
 * certificate on the TLS connection) and can refuse, hang, fail, rate-limit or
 * answer garbage on demand. The real OAuth server (oidc-provider) covers the
 * happy paths; this one covers the faults it cannot produce.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { closeServer, listen, SocketTracker } from './net.js';

export interface EndpointClient {
  clientId: string;
  /** Secret for Basic/post; absent for a certificate client. */
  secret?: string;
  /** Subject CN the client certificate must carry. */
  certCn?: string;
}

export type Fault =
  | { kind: 'status'; status: number; body?: string; headers?: Record<string, string> }
  | { kind: 'hang' }
  /** Held: `arrived` is called when the request comes, and it is answered as usual once `released` resolves. */
  | { kind: 'held'; arrived: () => void; released: Promise<void> }
  | { kind: 'reset' }
  /** `status` with `headers` and the start of a longer body (its Content-Length promises more), then the connection reset. */
  | { kind: 'cut'; status: number; body: string; headers?: Record<string, string> }
  /** A 200 with `body`; `date` replaces the `Date` header node sends (`null`: none at all). */
  | { kind: 'body'; body: string; date?: string | null }
  /**
   * A 200 of `bytes` bytes: `'a'` repeated, or with `json` a valid token response (`access_token`, `token_type`,
   * `expires_in`) padded with a long `pad` field, so that only a size limit can refuse it.
   */
  | { kind: 'huge'; bytes: number; json?: boolean }
  /**
   * 429 with `Retry-After: retryAfterS`, enforced as a real rate limiter would: a request that comes back
   * before half of that wait has passed (half, to allow for clock and scheduling skew) gets another 429.
   */
  | { kind: 'rate-limit'; retryAfterS: number }
  /** `bytes` written to the connection as the answer, whatever they are (a gateway answering malformed HTTP), then the connection ended. */
  | { kind: 'raw'; bytes: string };

/** How a `huge` answer went: `finished` resolves true once it was all handed to the connection, false if the client closed first. */
export interface HugeAnswer {
  readonly bytes: number;
  readonly finished: Promise<boolean>;
}

export interface TokenRequestRecord {
  auth: 'basic' | 'post' | 'mtls' | 'none';
  /** Answered 429 because it came back before the wait of a `rate-limit` fault was over. */
  early?: true;
  form: Record<string, string>;
  /** True when the request carried a client certificate the CA vouches for. */
  certAuthorized: boolean;
}

export interface TokenEndpointOptions {
  tls: { cert: string; key: string; ca: string };
  clients: EndpointClient[];
  expiresIn?: number;
}

export class TokenEndpoint {
  readonly requests: TokenRequestRecord[] = [];
  /** Every `huge` fault answered, in order. */
  readonly hugeAnswers: HugeAnswer[] = [];
  /** Every access token it wrote into an answer, whether the client took it or not: none may ever be shown. */
  readonly tokensWritten = new Set<string>();
  #faults: Fault[] = [];
  /** `performance.now()` before which a `rate-limit` fault refuses requests. */
  #limitedUntil = 0;
  #expiresIn: number;
  #issued = 0;
  readonly #server: Server;
  readonly #sockets: SocketTracker;
  readonly #clients: EndpointClient[];
  #port = 0;

  private constructor(options: TokenEndpointOptions) {
    this.#clients = options.clients;
    this.#expiresIn = options.expiresIn ?? 3600;
    this.#server = createServer(
      { cert: options.tls.cert, key: options.tls.key, ca: options.tls.ca, requestCert: true, rejectUnauthorized: false },
      (req, res) => void this.#handle(req, res),
    );
    this.#sockets = new SocketTracker(this.#server);
  }

  static async start(options: TokenEndpointOptions): Promise<TokenEndpoint> {
    const endpoint = new TokenEndpoint(options);
    endpoint.#port = await listen(endpoint.#server);
    return endpoint;
  }

  get tokenUrl(): string {
    return `https://127.0.0.1:${this.#port}/oauth/token`;
  }

  get issued(): number {
    return this.#issued;
  }

  /** The next requests meet these faults, in order; then normal service resumes. */
  fail(...faults: Fault[]): void {
    this.#faults.push(...faults);
  }

  set expiresIn(seconds: number) {
    this.#expiresIn = seconds;
  }

  /** Stop listening and drop connections: "connection refused" from now on. */
  async stop(): Promise<void> {
    await closeServer(this.#server, this.#sockets);
  }

  /** Listen again on the same port. */
  async start(): Promise<void> {
    await listen(this.#server, this.#port);
  }

  close(): Promise<void> {
    return closeServer(this.#server, this.#sockets);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readAll(req);
    const form = Object.fromEntries(new URLSearchParams(body));
    const socket = req.socket as TLSSocket;
    const record: TokenRequestRecord = { auth: 'none', form: { ...form }, certAuthorized: socket.authorized };
    delete record.form['client_secret'];
    this.requests.push(record);

    const early = this.#limitedUntil - performance.now();
    if (early > 0) {
      record.early = true;
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': String(Math.ceil(early / 1000)) });
      res.end(JSON.stringify({ error: 'rate_limited', error_description: 'came back too early' }));
      return;
    }
    const fault = this.#faults.shift();
    if (fault?.kind === 'held') {
      fault.arrived();
      await fault.released;
    } else if (fault) return this.#inject(fault, req, res);

    if (req.method !== 'POST' || req.headers['content-type'] !== 'application/x-www-form-urlencoded') {
      return json(res, 400, { error: 'invalid_request', error_description: 'POST a form' });
    }
    if (form['grant_type'] !== 'client_credentials') {
      return json(res, 400, { error: 'invalid_request', error_description: 'Missing grant type' });
    }
    const client = this.#authenticate(req, form, socket, record);
    if (!client) return json(res, 401, { error: 'invalid_client', error_description: 'Bad credentials' });
    this.#issued++;
    const token = `tok-${this.#issued}-${randomBytes(12).toString('hex')}`;
    this.tokensWritten.add(token);
    json(res, 200, {
      access_token: token,
      token_type: 'bearer',
      expires_in: this.#expiresIn,
      scope: 'it-rt-acme!b196.ESBMessaging.send uaa.resource',
      jti: randomBytes(8).toString('hex'),
    });
  }

  #authenticate(req: IncomingMessage, form: Record<string, string>, socket: TLSSocket, record: TokenRequestRecord): EndpointClient | undefined {
    const header = req.headers.authorization;
    if (header?.startsWith('Basic ')) {
      record.auth = 'basic';
      const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      // RFC 6749 §2.3.1: both parts are application/x-www-form-urlencoded.
      const id = formDecode(decoded.slice(0, colon));
      const secret = formDecode(decoded.slice(colon + 1));
      return this.#clients.find((c) => c.clientId === id && c.secret !== undefined && c.secret === secret);
    }
    if (form['client_secret'] !== undefined) {
      record.auth = 'post';
      return this.#clients.find((c) => c.clientId === form['client_id'] && c.secret === form['client_secret']);
    }
    const peer = socket.getPeerX509Certificate?.();
    if (peer) {
      record.auth = 'mtls';
      const cn = /(?:^|\n)CN=([^\n]+)/.exec(peer.subject)?.[1];
      return this.#clients.find((c) => c.clientId === form['client_id'] && c.certCn !== undefined && c.certCn === cn && socket.authorized);
    }
    return undefined;
  }

  #inject(fault: Fault, req: IncomingMessage, res: ServerResponse): void {
    switch (fault.kind) {
      case 'status':
        res.writeHead(fault.status, { 'content-type': 'application/json', ...fault.headers });
        res.end(fault.body ?? JSON.stringify({ error: 'server_error' }));
        return;
      case 'hang':
        return; // never answers; closed by close()/stop()
      case 'reset':
        req.socket.destroy();
        return;
      case 'cut':
        res.writeHead(fault.status, { 'content-type': 'application/json', 'content-length': String(fault.body.length + 1024), ...fault.headers });
        // Destroyed once the start has been handed to the connection: the client has the head and part of the body.
        res.write(fault.body, () => req.socket.destroy());
        return;
      case 'body':
        if (fault.date === null) res.sendDate = false;
        res.writeHead(200, { 'content-type': 'application/json', ...(typeof fault.date === 'string' && { date: fault.date }) });
        res.end(fault.body);
        return;
      case 'huge': {
        res.writeHead(200, { 'content-type': 'application/json' });
        const chunk = Buffer.alloc(64 * 1024, 'a');
        // A valid token response whose `pad` string runs to `bytes` in all.
        const hugeToken = `tok-0-${randomBytes(12).toString('hex')}`;
        if (fault.json) this.tokensWritten.add(hugeToken);
        const head = fault.json ? `{"access_token":"${hugeToken}","token_type":"bearer","expires_in":300,"pad":"` : '';
        const tail = fault.json ? '"}' : '';
        let left = fault.bytes - head.length - tail.length;
        if (head) res.write(head);
        const pump = (): void => {
          while (left > 0) {
            const part = Math.min(left, chunk.length);
            left -= part;
            // Without `json`, whole chunks as before (the body may overshoot `bytes` by less than a chunk).
            if (!res.write(fault.json ? chunk.subarray(0, part) : chunk)) return void res.once('drain', pump);
          }
          res.end(tail);
        };
        res.on('error', () => {});
        this.hugeAnswers.push({
          bytes: fault.bytes,
          finished: new Promise<boolean>((resolve) => {
            res.once('finish', () => resolve(true));
            res.once('close', () => resolve(res.writableFinished));
          }),
        });
        pump();
        return;
      }
      case 'raw':
        req.socket.end(fault.bytes);
        return;
      case 'rate-limit':
        this.#limitedUntil = performance.now() + (fault.retryAfterS * 1000) / 2;
        res.writeHead(429, { 'content-type': 'application/json', 'retry-after': String(fault.retryAfterS) });
        res.end(JSON.stringify({ error: 'rate_limited' }));
        return;
    }
  }
}

function formDecode(text: string): string {
  return decodeURIComponent(text.replace(/\+/g, ' '));
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function readAll(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
