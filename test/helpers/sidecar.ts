/** Start a real sidecar in-process from CLI-style arguments, with its log lines captured for assertions. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseConfig } from '../../src/config.js';
import { createLoggers } from '../../src/logger.js';
import { startSidecar, type Sidecar, type SidecarOptions } from '../../src/sidecar.js';

export interface RunningSidecar extends Sidecar {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** Every log line written so far, parsed. */
  readonly logs: Array<Record<string, unknown>>;
  /** Raw log text, for "no secret anywhere" checks. */
  logText(): string;
}

export async function runSidecar(argv: string[], env: Record<string, string> = {}, options: SidecarOptions = {}): Promise<RunningSidecar> {
  const defaults = ['--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'];
  const result = parseConfig(['serve', ...defaults, ...argv], env);
  if (result.kind !== 'run') throw new Error('expected a runnable config');
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      callback();
    },
  });
  // The most verbose level, so that every test also checks that nothing secret is logged at any level.
  const loggers = createLoggers({ level: 'trace', stream });
  const sidecar = await startSidecar(result.config, loggers, { defaultMetrics: false, ...options });
  // Not Object.assign: it would copy the getter's value once instead of the getter.
  return Object.defineProperties(sidecar as RunningSidecar, {
    url: { value: `http://127.0.0.1:${sidecar.address.port}` },
    logs: { get: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) },
    logText: { value: () => lines.join('\n') },
  });
}

/** A scratch directory for service keys and config files, removed by `cleanup`. */
export async function scratch(): Promise<{ dir: string; write(name: string, content: string): Promise<string>; cleanup(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'oauth-sidecar-test-'));
  return {
    dir,
    async write(name, content) {
      const path = join(dir, name);
      await writeFile(path, content);
      return path;
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
