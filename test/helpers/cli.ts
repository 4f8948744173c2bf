/** Run the real CLI (TypeScript through tsx) as a child process, as a user would. */
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = ['--import', 'tsx', 'src/cli.ts'];

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Environment without the developer's proxy or sidecar settings, so tests see only what they pass. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(SIDECAR_|HTTPS?_PROXY$|NO_PROXY$|VCAP_SERVICES(_FILE_PATH)?$|SERVICE_BINDING_ROOT$)/i.test(k)) env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Every CLI child started through this module, until it exits. One still running when its test ends (the test
 * failed, or timed out, before it stopped the child: a `finally` after an await that never settles does not run)
 * is killed then; a `serve` child would otherwise outlive the test run, holding its port and the test's files.
 * So a child belongs to the test that started it: none started here outlives it (not even one from `beforeAll`).
 */
const children = new Set<ChildProcess>();
/** Tests of the importing file under way: more than one with `it.concurrent`. */
let running = 0;

/** Kill `child` (SIGKILL) when the current test ends, if it is still running then. */
export function killAtTestEnd<T extends ChildProcess>(child: T): T {
  if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
    children.add(child);
    child.once('exit', () => children.delete(child));
  }
  return child;
}

// Registered for each test of whichever test file imports this module.
beforeEach(() => {
  running += 1;
});
afterEach(async () => {
  running -= 1;
  // Tests side by side (`it.concurrent`) cannot tell their children apart: the last of them to end kills what is left.
  if (running > 0) return;
  const left = [...children];
  children.clear();
  await Promise.all(
    left.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }),
  );
});

export function startCli(args: string[], env: Record<string, string> = {}): ChildProcessWithoutNullStreams {
  return killAtTestEnd(spawn(process.execPath, [...CLI, ...args], { cwd: ROOT, env: cleanEnv(env) }));
}

/** Start the CLI with an open-file limit (soft and hard), set by the shell that then becomes it. */
export function startCliWithFileLimit(openFiles: number, args: string[], env: Record<string, string> = {}): ChildProcessWithoutNullStreams {
  const script = `ulimit -n ${openFiles} && exec "$@"`;
  return killAtTestEnd(spawn('/bin/sh', ['-c', script, 'sh', process.execPath, ...CLI, ...args], { cwd: ROOT, env: cleanEnv(env) }));
}

/** Run the CLI with its stdout going to the file `path` (e.g. `/dev/full`); the result's `stdout` stays empty. */
export function collectToFile(args: string[], path: string, env: Record<string, string> = {}): Promise<CliResult> {
  const fd = openSync(path, 'w');
  const child = killAtTestEnd(spawn(process.execPath, [...CLI, ...args], { cwd: ROOT, env: cleanEnv(env), stdio: ['ignore', fd, 'pipe'] }));
  closeSync(fd);
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout: '', stderr }));
  });
}

export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const child = startCli(args, env);
  return collect(child);
}

/** Its output and how it ended; the child is killed at the end of the test if it has not ended by then. */
export function collect(child: ChildProcessWithoutNullStreams): Promise<CliResult> {
  killAtTestEnd(child); // also one spawned elsewhere (package.test.ts runs the packed install)
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Resolve with the first JSON log line on stdout that satisfies `match`. */
export function waitForLog(child: ChildProcessWithoutNullStreams, match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buffer = '';
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString();
      let nl: number;
      while ((nl = buffer.indexOf('\n')) !== -1) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        try {
          const parsed = JSON.parse(line) as Record<string, unknown>;
          if (match(parsed)) {
            child.stdout.off('data', onData);
            resolve(parsed);
            return;
          }
        } catch {
          /* not a JSON line */
        }
      }
    };
    child.stdout.on('data', onData);
    child.once('close', (code) => reject(new Error(`CLI exited (${code}) before the expected log line`)));
  });
}
