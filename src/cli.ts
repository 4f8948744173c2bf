#!/usr/bin/env node
/**
 * Command-line entry: argv/env → config → the command. The only place that
 * calls `process.exit`. Exit codes: 0 ok, 1 runtime failure, 2 configuration
 * error.
 */
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { isatty } from 'node:tty';
import { wallTimeOf } from './clock.js';
import { checkRoutes } from './check.js';
import { COMMANDS, FLAGS, parseConfig, type Config } from './config.js';
import { loadCredentials } from './credentials.js';
import { ConfigError, SidecarError } from './errors.js';
import { tuneGarbageCollection, usableCpus } from './gc-tuning.js';
import { createLoggers, type Logger, type Loggers } from './logger.js';
import { localUrl, startSidecar, type Sidecar } from './sidecar.js';
import { createTokenClient } from './token-client.js';
import { TokenProvider } from './token-provider.js';

export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_CONFIG = 2;

/**
 * The signals that stop `serve` gracefully. SIGHUP too when no standard stream is a terminal (`kill -HUP` out of
 * habit, a service manager). With one on a terminal, SIGHUP means that terminal is gone: every log line would fail
 * (pino's final flush retries a write that fails with EIO for ever), and node's exit asserts on resetting it. Node's
 * default, an immediate end, stays.
 */
const STOP_SIGNALS: readonly NodeJS.Signals[] = [0, 1, 2].some((fd) => isatty(fd)) ? ['SIGTERM', 'SIGINT'] : ['SIGTERM', 'SIGINT', 'SIGHUP'];

async function main(given: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  // `npx oauth-sidecar -- --help` hands the `--` on: it separates nothing here.
  const argv = given[0] === '--' ? given.slice(1) : given;
  if (argv[0] === 'demo') return demo(argv.slice(1), env);
  let config: Readonly<Config>;
  try {
    const result = parseConfig(argv, env);
    if (result.kind === 'help') {
      process.stdout.write(helpText());
      return EXIT_OK;
    }
    if (result.kind === 'version') {
      process.stdout.write(`${version()}\n`);
      return EXIT_OK;
    }
    config = result.config;
  } catch (err) {
    return fail(err);
  }
  const loggers = loggersFor(config);
  const log = loggers.log;
  let code: number = EXIT_OK;
  try {
    switch (config.command) {
      case 'token':
        endOnStopSignal();
        return await printToken(config, log);
      case 'serve':
        // A late signal exits with the code `fail` gives when the start failed.
        return (code = await serve(config, loggers, { afterStop: exitWith(() => code) }));
      case 'check':
        endOnStopSignal();
        return await check(config);
    }
  } catch (err) {
    return (code = fail(err));
  } finally {
    log.flush();
    loggers.access.flush();
  }
}

function loggersFor(config: Readonly<Config>): Loggers {
  // `token` and `check` print their result on stdout, so their logs go to stderr.
  const fd = config.command === 'serve' ? 1 : 2;
  const pretty = config.logFormat === 'pretty' || (config.logFormat === 'auto' && Boolean(fd === 1 ? process.stdout.isTTY : process.stderr.isTTY));
  return createLoggers({ level: config.logLevel, fd, pretty });
}

/** Settings a user may give the demo; everything else comes from the demo tenant. */
const DEMO_ENV = ['SIDECAR_LISTEN', 'SIDECAR_ADMIN_LISTEN', 'SIDECAR_LOG_LEVEL', 'SIDECAR_LOG_FORMAT'];
const DEMO_FLAGS = ['listen', 'admin-listen', 'log-level', 'log-format', 'help', 'h', 'version'];

/**
 * The demo's configuration. Its listener has no inbound control, and the demo takes none (see DEMO_FLAGS): a
 * non-loopback address is refused with that reason, not with advice to add inbound control.
 */
function demoConfig(argv: string[], env: NodeJS.ProcessEnv): ReturnType<typeof parseConfig> {
  try {
    return parseConfig(argv, env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const loopbackOnly = 'the demo takes no inbound control, so it listens on loopback only (e.g. 127.0.0.1:8080)';
    const notLoopback = ' is not a loopback address';
    const problems = err.problems.map((p) => {
      const at = p.field === 'listen' ? p.message.indexOf(notLoopback) : -1;
      return at === -1 ? p : { ...p, message: `${p.message.slice(0, at + notLoopback.length)}: ${loopbackOnly}` };
    });
    throw new ConfigError(problems);
  }
}

/**
 * `oauth-sidecar demo`: a local demo tenant (token server + CSRF-protected
 * integration flow, certificates made on the fly) with the sidecar in front.
 */
async function demo(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  // The demo tenant is the key and the upstream: any other flag would quietly run something else under its banner.
  const other = argv.find((arg) => arg.startsWith('-') && !DEMO_FLAGS.includes(arg.replace(/^--?/, '').split('=', 1)[0]!));
  if (other !== undefined) {
    const takes = DEMO_FLAGS.filter((f) => f.length > 1).map((f) => `--${f}`);
    return fail(new ConfigError([{ source: 'command line', field: other.split('=', 1)[0]!, message: `is not a demo flag (the demo takes ${takes.join(', ')})` }]));
  }
  // A stop signal while the tenant starts (its directory holds the demo's keys) must not take node's default, an
  // end that leaves the directory behind: it is noted, and the demo stops as soon as it can clean up.
  let early: NodeJS.Signals | undefined;
  const note = (signal: NodeJS.Signals) => (early ??= signal);
  for (const name of STOP_SIGNALS) process.on(name, note);
  const { startDemoTenant } = await import('./demo-tenant.js');
  const tenant = await startDemoTenant();
  if (early !== undefined) {
    await tenant.close();
    for (const name of STOP_SIGNALS) process.off(name, note);
    return EXIT_OK;
  }
  let code: number = EXIT_OK;
  try {
    const demoEnv = Object.fromEntries(DEMO_ENV.filter((k) => env[k] !== undefined).map((k) => [k, env[k]]));
    // Interactive: Ctrl+C stops at once unless --shutdown-delay says otherwise.
    const result = demoConfig(['serve', '--shutdown-delay', '0', '--service-key', tenant.serviceKeyPath, '--ca', tenant.caPath, ...argv], demoEnv);
    if (result.kind !== 'run') {
      process.stdout.write(result.kind === 'version' ? `${version()}\n` : helpText());
      return (code = EXIT_OK);
    }
    const config = result.config;
    const loggers = loggersFor(config);
    try {
      const banner = (sidecar: Sidecar): void => {
        // A wildcard listener (`--listen 0.0.0.0:…` with inbound control) is tried on loopback.
        const base = localUrl(sidecar.address);
        const admin = sidecar.adminAddress ? localUrl(sidecar.adminAddress) : undefined;
        process.stdout.write(
          [
            '',
            'oauth-sidecar demo: a local demo tenant is running, with the sidecar in front of it.',
            `  token server      ${tenant.tokenUrl}`,
            `  integration flow  ${tenant.url}  (needs a Bearer token and, for POST, a CSRF token)`,
            `  service key       ${tenant.serviceKeyPath}`,
            `  its CA            ${tenant.caPath}  (for --ca: e.g. check --service-key <key> --ca <CA> --check-path /http/GetTimestamp)`,
            '',
            'Try it (plain HTTP, no credentials — the sidecar adds them):',
            `  curl ${base}/http/GetTimestamp`,
            `  curl -X POST -H 'content-type: text/plain' --data 'hello from a legacy sender' ${base}/http/echo`,
            ...(admin ? [`  curl ${admin}/readyz`, `  curl ${admin}/metrics`] : []),
            '',
            'Stop with Ctrl+C (from a script: signal this node process, not npm, whose shell does not pass it on).',
            '',
          ].join('\n'),
        );
      };
      // A signal after the stop is noted (`note`) until the demo's directory is gone.
      return (code = await serve(config, loggers, { started: banner, afterStop: () => undefined }));
    } finally {
      loggers.log.flush();
      loggers.access.flush();
    }
  } catch (err) {
    return (code = fail(err));
  } finally {
    // Noted, not node's default end, until the directory is gone: a second Ctrl+C must not leave the demo keys.
    await tenant.close();
    // Nothing is left to clean up: a signal from here on ends the process with the demo's code.
    const exit = exitWith(() => code);
    for (const name of STOP_SIGNALS) {
      process.off(name, note);
      process.once(name, exit);
    }
  }
}

/** `oauth-sidecar check`: diagnose every route; 0 all pass (warnings allowed), 1 a route failed, 2 a service key or the basic-auth file is unusable. */
async function check(config: Readonly<Config>): Promise<number> {
  const routes = config.routeName ? config.routes.filter((r) => r.name === config.routeName) : config.routes;
  const report = await checkRoutes(
    { ...config, routes },
    {
      ...(config.checkPath !== undefined && { path: config.checkPath }),
      ...(config.checkRole !== undefined && { role: config.checkRole }),
      out: (line) => process.stdout.write(`${line}\n`),
    },
  );
  if (report.ok) return EXIT_OK;
  return report.inboundInvalid || report.routes.some((r) => r.configInvalid) ? EXIT_CONFIG : EXIT_RUNTIME;
}

/** `oauth-sidecar token`: fetch one token for a route and print it, alone, on stdout. */
async function printToken(config: Readonly<Config>, log: Logger): Promise<number> {
  const route = config.routes.find((r) => r.name === config.routeName) ?? config.routes[0];
  if (!route) throw new SidecarError('CONFIG_INVALID', 'no route configured');
  const { credentials, notices } = await loadCredentials(route.credentials, {});
  for (const notice of notices) log[notice.level]({ route: route.name, source: credentials.source }, notice.message);
  const client = createTokenClient({
    credentials,
    settings: route.token,
    network: config.network,
    attemptTimeoutMs: config.tokenTimeoutMs,
  });
  try {
    const token = await new TokenProvider().getToken(client);
    log.debug(
      { route: route.name, clientId: credentials.clientId, auth: client.authMethod, expiresAt: new Date(wallTimeOf(token.expiresAt)).toISOString() },
      'token obtained',
    );
    process.stdout.write(`${token.value}\n`);
    return EXIT_OK;
  } finally {
    await client.close();
  }
}

/**
 * `oauth-sidecar serve`: run until one of `STOP_SIGNALS`, then drain gracefully and exit 0. `started` is told once
 * the sidecar is listening (the demo prints its banner).
 */
async function serve(
  config: Readonly<Config>,
  loggers: Loggers,
  { started, afterStop }: ServeHooks,
): Promise<number> {
  const log = loggers.log;
  // From the start on, a stop signal is the sidecar's: node's default would end the process with the proxy port
  // already open and no drain, or — node as PID 1, as in the image — ignore it. One that comes while the sidecar
  // starts is noted, and the stop begins as soon as it has started; a later one hurries the stop under way
  // (`close` ends the delay and the grace period at once); one after the stop (or a failed start) is `afterStop`'s.
  // The listeners stay: there is no moment without one.
  const signals: NodeJS.Signals[] = [];
  let onSignal: () => void = () => undefined;
  for (const name of STOP_SIGNALS) {
    process.on(name, (signal: NodeJS.Signals) => {
      signals.push(signal);
      onSignal();
    });
  }
  try {
    const cpus = usableCpus();
    if (tuneGarbageCollection(cpus)) log.debug({ cpus }, 'one CPU usable: scavenges on the main thread alone');
    const sidecar = await startSidecar(config, loggers);
    started?.(sidecar);
    if (signals.length === 0) await new Promise<void>((resolve) => (onSignal = resolve));
    log.info({ signal: signals[0], delayMs: config.shutdownDelayMs, graceMs: config.shutdownGraceMs }, 'shutting down');
    onSignal = () => void sidecar.close();
    const stopped = sidecar.shutdown();
    if (signals.length > 1) onSignal(); // two already
    await stopped;
  } finally {
    onSignal = afterStop;
  }
  // The access lines still batched go out first: none of them comes after "stopped".
  loggers.access.flush();
  log.info('stopped');
  return EXIT_OK;
}

/**
 * `token` and `check` have nothing to drain: a stop signal ends them at once. As PID 1 (the image, a Kubernetes
 * Job) a process has no default action for it — node would ignore Ctrl+C and `docker stop` until the command's own
 * timeouts ran out — so it exits there with the shell's code for the signal (130 for SIGINT, 143 for SIGTERM).
 * Anywhere else the signal's default action ends it, as before: a shell running `TOKEN=$(oauth-sidecar token)`
 * stops its script on Ctrl+C only when the child was killed by the signal, not when it exited 130.
 */
function endOnStopSignal(): void {
  const end = (signal: NodeJS.Signals): void => {
    if (process.pid === 1) process.exit(128 + constants.signals[signal]);
    for (const name of STOP_SIGNALS) process.off(name, end);
    process.kill(process.pid, signal); // no listener left: node restores the default action
  };
  for (const name of STOP_SIGNALS) process.on(name, end);
}

interface ServeHooks {
  /** Told once the sidecar is listening (the demo prints its banner). */
  started?: (sidecar: Sidecar) => void;
  /** A stop signal after the stop (or a failed start), while the process ends. */
  afterStop: () => void;
}

/**
 * Once a command that handles stop signals is over, a signal that still comes while the process ends (its log
 * written out, handles closing; a stalled log reader can hold it there) ends it at once with `code`, not by
 * node's default (no exit code at all) — nor, for node as PID 1, not at all.
 */
function exitWith(code: () => number): () => never {
  return () => process.exit(Math.max(code(), Number(process.exitCode ?? EXIT_OK)));
}

function fail(err: unknown): number {
  if (err instanceof ConfigError || (err instanceof SidecarError && err.code === 'CONFIG_INVALID')) {
    process.stderr.write(`oauth-sidecar: ${err.message}\n`);
    return EXIT_CONFIG;
  }
  if (err instanceof SidecarError) {
    process.stderr.write(`oauth-sidecar: ${err.code}: ${err.message}\n`);
    return EXIT_RUNTIME;
  }
  // Unexpected: say what kind of failure without dumping internals that may hold values.
  process.stderr.write(`oauth-sidecar: unexpected failure (${(err as Error)?.name ?? 'error'}: ${(err as Error)?.message ?? ''})\n`);
  return EXIT_RUNTIME;
}

export function helpText(): string {
  const lines = [
    `oauth-sidecar ${version()} — adds OAuth 2.0 client-credentials tokens from an SAP BTP service key to plain HTTP`,
    '',
    `Usage: oauth-sidecar [${[...COMMANDS, 'demo'].join(' | ')}] [flags]`,
    '',
    'Commands:',
    '  serve   forward plain HTTP to the integration flow with a Bearer token (default)',
    '  token   print an access token for the service key on stdout',
    '  check   diagnose each route: service key, token (client id, scopes, role), one GET upstream; explains failures',
    '  demo    start a local demo tenant and the sidecar in front of it (accepts --listen, --admin-listen, --log-*)',
    '',
    'Flags (flag > environment > config file > default):',
  ];
  for (const [name, spec] of Object.entries(FLAGS)) {
    const flag = `--${name}${spec.short ? `, -${spec.short}` : ''}${spec.type === 'string' ? (spec.path ? ' PATH' : ' VALUE') : ''}`;
    const extras = [spec.env && `env ${spec.env}`, spec.default !== undefined && `default ${spec.default}`].filter(Boolean);
    lines.push(`  ${flag.padEnd(26)} ${spec.description}${extras.length ? ` [${extras.join(', ')}]` : ''}`);
  }
  lines.push(
    '',
    'Service key sources, first found wins: --service-key / SIDECAR_SERVICE_KEY, SIDECAR_SERVICE_KEY_JSON,',
    '$SERVICE_BINDING_ROOT (servicebinding.io), VCAP_SERVICES, the file VCAP_SERVICES_FILE_PATH names.',
    'HTTPS_PROXY / NO_PROXY and NODE_EXTRA_CA_CERTS are honoured.',
    '',
    'Exit codes: 0 ok, 1 runtime failure, 2 configuration error.',
    '',
  );
  return lines.join('\n');
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

// A reader that stops early (`check | head -1`): what is written after it is lost, and the command runs to its end
// and exits with its own code (a failing check still exits 1 under `pipefail`), not with an unhandled 'error'
// and a stack trace. Any other failure to write (`token > /dev/full`) fails the command.
let stdoutFailed = false;
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (stdoutFailed || err.code === 'EPIPE') return void (stdoutFailed = true);
  stdoutFailed = true;
  process.stderr.write(`oauth-sidecar: cannot write to stdout (${err.code ?? 'error'})\n`);
  process.exitCode = EXIT_RUNTIME;
});

main(process.argv.slice(2), process.env).then(
  (code) => {
    // A failure to write what the command printed stands, whatever the command itself made of it.
    process.exitCode = Math.max(code, Number(process.exitCode ?? EXIT_OK));
  },
  (err: unknown) => {
    process.exitCode = fail(err);
  },
);
