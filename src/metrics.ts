/**
 * Prometheus metrics (prom-client) for the admin port.
 *
 * Labels stay bounded: route names come from configuration, methods from a
 * fixed list, statuses as classes (`2xx`…), outcomes from the error codes.
 * Never a raw path, id, address or token key.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { UNROUTED } from './config.js';
import { SidecarError } from './errors.js';
import { FastHistogram, type HistogramSeries } from './histogram.js';
import type { RequestRecord } from './proxy.js';
import type { RouteTable } from './routes.js';
import type { TokenEvent, TokenProvider } from './token-provider.js';

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
const PREFIX = 'oauth_sidecar_';
/** Upstream latency buckets in seconds: sub-millisecond hops to the 60 s response timeout. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export interface MetricsOptions {
  routes: () => RouteTable;
  tokens: TokenProvider;
  /** Routes whose last credential reload failed, with the error code. */
  credentialErrors: () => ReadonlyMap<string, string>;
  /** The calendar clock, for certificate expiry (token expiry comes from the token provider's own clock). */
  now?: () => number;
  /** Sender connections open now and accepted over `--max-connections` so far. */
  connections?: { readonly open: number; readonly refused: number };
  /** Log lines dropped because the output was not being read (logger.ts `LOG_BUFFER_BYTES`). */
  logDropped?: { readonly lines: number };
  /** Process metrics (heap, GC, event loop); off in tests that build many registries. */
  defaultMetrics?: boolean;
}

/** A counter whose total is kept elsewhere (a plain number) and read at scrape time. */
function countedElsewhere(registers: Registry[], name: string, help: string, total: () => number): void {
  new Counter({
    name: `${PREFIX}${name}`,
    help,
    registers,
    collect() {
      this.reset();
      this.inc(total());
    },
  });
}

export class Metrics {
  readonly registry = new Registry();
  readonly #upstreamLatency: FastHistogram;
  /** The latency series by route → method → upstream status class. */
  readonly #latencySeries: BySeries<HistogramSeries> = new Map();
  readonly #newLatencySeries = (route: string, method: string, status_class: string): HistogramSeries =>
    this.#upstreamLatency.series({ route, method, status_class });
  /** Requests being handled: a plain number, read by the gauge at scrape time. */
  #inFlight = 0;
  /**
   * Answered requests by route → method → status class, counted here and handed to the prom-client
   * counter at scrape time: the per-request path then costs three map look-ups instead of a label hash.
   */
  readonly #answered: BySeries<{ count: number }> = new Map();
  readonly #tokenFetches: Counter<'route' | 'outcome'>;
  readonly #retries401: Counter<'route'>;
  readonly #csrfFetches: Counter<'route' | 'outcome'>;
  readonly #aborts: Counter<'route'>;
  readonly #cut: Counter<'route' | 'error'>;
  readonly #rejected: Counter<'reason'>;
  readonly #credentialReloads: Counter<'route' | 'outcome'>;
  /** The render that scrapes arriving now will share: not started yet (see `render`). */
  #nextRender: Promise<{ contentType: string; body: string }> | undefined;
  /** The render under way (settled when there is none). */
  #rendering: Promise<unknown> = Promise.resolve();
  /** When the next render may start (`performance.now()`). */
  #nextStart = Number.NEGATIVE_INFINITY;

  constructor(options: MetricsOptions) {
    const registers = [this.registry];
    const now = options.now ?? Date.now;
    const answered = this.#answered;
    new Counter({
      name: `${PREFIX}requests_total`,
      help: 'Requests answered, by route, method and status class.',
      labelNames: ['route', 'method', 'status_class'],
      registers,
      collect() {
        this.reset();
        for (const [route, byMethod] of answered) {
          for (const [method, byStatus] of byMethod) {
            for (const [statusClass, series] of byStatus) this.inc({ route, method, status_class: statusClass }, series.count);
          }
        }
      },
    });
    this.#upstreamLatency = new FastHistogram({
      name: `${PREFIX}upstream_duration_seconds`,
      help: "Time from sending a request upstream to its response headers, including the sidecar's own event-loop delay (see nodejs_eventloop_lag_seconds).",
      buckets: LATENCY_BUCKETS,
      registers,
    });
    const inFlight = () => this.#inFlight;
    new Gauge({
      name: `${PREFIX}requests_in_flight`,
      help: 'Requests being handled now.',
      registers,
      collect() {
        this.set(inFlight());
      },
    });
    const connections = options.connections;
    if (connections !== undefined) {
      new Gauge({
        name: `${PREFIX}sender_connections`,
        help: 'Sender connections open now (within --max-connections or not).',
        registers,
        collect() {
          this.set(connections.open);
        },
      });
      countedElsewhere(registers, 'connections_over_limit_total', 'Sender connections accepted while --max-connections others were being served (their requests get 503).', () => connections.refused);
    }
    const logDropped = options.logDropped;
    if (logDropped !== undefined) {
      countedElsewhere(registers, 'log_lines_dropped_total', 'Log lines dropped because the log output was not being read (more than 16 MiB waiting) or failed.', () => logDropped.lines);
    }
    this.#tokenFetches = new Counter({
      name: `${PREFIX}token_fetches_total`,
      help: 'Token fetches (each up to 3 HTTP attempts, twice that when the clock jumped during one; rotation checks included), by route and outcome (success or error code); routes sharing credentials share a fetch, counted under each.',
      labelNames: ['route', 'outcome'],
      registers,
    });
    this.#retries401 = new Counter({
      name: `${PREFIX}upstream_401_retries_total`,
      help: 'Requests sent once more after an upstream 401: with a new token, or with the one they had when the token server could give none.',
      labelNames: ['route'],
      registers,
    });
    this.#csrfFetches = new Counter({
      name: `${PREFIX}csrf_fetches_total`,
      help: 'CSRF token fetches after a 403 "X-CSRF-Token: Required", by outcome.',
      labelNames: ['route', 'outcome'],
      registers,
    });
    this.#cut = new Counter({
      name: `${PREFIX}answers_cut_total`,
      help: 'Answers the sidecar cut after their head went out (the upstream failed or stalled mid-answer, or the body broke), counted by status class in requests_total too.',
      labelNames: ['route', 'error'],
      registers,
    });
    this.#aborts = new Counter({
      name: `${PREFIX}client_aborts_total`,
      help: 'Requests the sender abandoned before the answer was complete.',
      labelNames: ['route'],
      registers,
    });
    this.#rejected = new Counter({
      name: `${PREFIX}malformed_requests_total`,
      help: 'Requests rejected by the HTTP parser, and CONNECT requests, by reason.',
      labelNames: ['reason'],
      registers,
    });
    this.#credentialReloads = new Counter({
      name: `${PREFIX}credential_reloads_total`,
      help: 'Credential reloads after a change on disk, by outcome (applied or error code).',
      labelNames: ['route', 'outcome'],
      registers,
    });
    new Gauge({
      name: `${PREFIX}token_expiry_seconds`,
      help: 'Seconds until the cached access token of a route expires (absent when none is cached or it has expired).',
      labelNames: ['route'],
      registers,
      collect() {
        this.reset();
        for (const route of options.routes().routes) {
          const left = options.tokens.expiresInMs(route.tokenClient);
          if (left !== undefined) this.set({ route: route.name }, Math.round(left / 1000));
        }
      },
    });
    new Gauge({
      name: `${PREFIX}client_certificate_expiry_seconds`,
      help: 'Seconds until the client certificate of a route expires (certificate keys only).',
      labelNames: ['route'],
      registers,
      collect() {
        this.reset();
        for (const route of options.routes().routes) {
          const c = route.credentials;
          if (c.kind !== 'client-secret') this.set({ route: route.name }, Math.round((c.notAfter.getTime() - now()) / 1000));
        }
      },
    });
    new Gauge({
      name: `${PREFIX}credentials_reload_failing`,
      help: '1 when the last credential reload of a route failed and the previous credentials are still in use.',
      labelNames: ['route'],
      registers,
      collect() {
        this.reset();
        const failing = options.credentialErrors();
        for (const route of options.routes().routes) this.set({ route: route.name }, failing.has(route.name) ? 1 : 0);
      },
    });
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
  }

  requestStarted(): void {
    this.#inFlight++;
  }

  requestFinished(r: RequestRecord): void {
    this.#inFlight--;
    const route = r.route ?? UNROUTED;
    const method = METHODS.has(r.method) ? r.method : 'OTHER';
    seriesOf(this.#answered, route, method, statusClass(r.status), newCount).count++;
    if (r.upstreamMs !== undefined && r.upstreamStatus !== undefined) {
      const series = seriesOf(this.#latencySeries, route, method, statusClass(r.upstreamStatus), this.#newLatencySeries);
      this.#upstreamLatency.observe(series, r.upstreamMs / 1000);
    }
    if (r.retried?.includes('401-refresh')) this.#retries401.inc({ route });
    if (r.aborted) this.#aborts.inc({ route });
    // An answer that began (its status sent) and was then cut: its status class says nothing of that.
    else if (r.cut) this.#cut.inc({ route, error: r.error ?? 'UPSTREAM_UNREACHABLE' });
  }

  csrfFetched(route: string, ok: boolean): void {
    this.#csrfFetches.inc({ route, outcome: ok ? 'success' : 'failure' });
  }

  malformedRequest(code: string): void {
    this.#rejected.inc({ reason: code.startsWith('HPE_') || code.startsWith('ERR_HTTP_') || code === 'CONNECT' ? code : 'other' });
  }

  /**
   * A token event of the routes whose credentials it was for (`routes`: routes with the same client share the
   * fetch, and each counts it; none when every route it served was replaced meanwhile, counted under `none`).
   */
  tokenEvent(event: TokenEvent, routes: readonly string[]): void {
    if (event.type === 'fetch') return;
    const outcome = event.type === 'fetched' ? 'success' : event.error instanceof SidecarError ? event.error.code : 'INTERNAL';
    for (const route of routes.length > 0 ? routes : [UNROUTED]) this.#tokenFetches.inc({ route, outcome });
  }

  credentialReload(route: string, outcome: string): void {
    this.#credentialReloads.inc({ route, outcome });
  }

  /**
   * The Prometheus text, rendered after the call (never an older render), but paced: a render starts no sooner
   * than `RENDER_PACE` times the last one's duration after it ended, and every scrape that arrives meanwhile
   * shares that next render. A render costs about a millisecond of the event loop the proxy runs on; a client
   * flooding the admin port with scrapes (in a cluster any pod may reach it) would otherwise take the whole
   * loop, stall proxied requests for seconds and fail the liveness probe. Paced, scrapes take at most about a
   * tenth of it, and a lone scrape waits for no one.
   */
  render(): Promise<{ contentType: string; body: string }> {
    this.#nextRender ??= this.#rendering.then(async () => {
      // Node's timers count whole milliseconds from a cached loop time and may fire a fraction early: wait again.
      for (let wait = this.#nextStart - performance.now(); wait > 0; wait = this.#nextStart - performance.now()) {
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
      this.#nextRender = undefined; // arriving from here on: the render after this one
      const started = performance.now();
      const rendering = this.registry.metrics();
      this.#rendering = rendering.catch(() => undefined);
      try {
        return { contentType: this.registry.contentType, body: await rendering };
      } finally {
        const ended = performance.now();
        this.#nextStart = ended + Math.min(RENDER_PACE * (ended - started), MAX_RENDER_WAIT_MS);
      }
    });
    return this.#nextRender;
  }
}

/** A render waits this many times the last one's duration after it: scrapes take at most ~1/11 of the event loop. */
export const RENDER_PACE = 10;
/** However long the last render took (a collection that met a full GC), the next waits at most this long. */
const MAX_RENDER_WAIT_MS = 1_000;

/** Per-request series by route → method → status class: three map look-ups, no label hash. */
type BySeries<T> = Map<string, Map<string, Map<string, T>>>;

function seriesOf<T>(map: BySeries<T>, route: string, method: string, statusClass: string, create: (route: string, method: string, statusClass: string) => T): T {
  let byMethod = map.get(route);
  if (byMethod === undefined) map.set(route, (byMethod = new Map()));
  let byStatus = byMethod.get(method);
  if (byStatus === undefined) byMethod.set(method, (byStatus = new Map()));
  let series = byStatus.get(statusClass);
  if (series === undefined) byStatus.set(statusClass, (series = create(route, method, statusClass)));
  return series;
}

const newCount = (): { count: number } => ({ count: 0 });

const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'];

function statusClass(status: number): string {
  return status >= 100 && status < 600 ? STATUS_CLASSES[Math.floor(status / 100) - 1]! : 'other';
}
