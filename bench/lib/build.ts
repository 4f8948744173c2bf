/**
 * How child programs are run. By default the sidecar and the bench's own
 * programs are compiled with `tsc` into a temp directory and run as plain
 * JavaScript (what production runs: `node dist/cli.js`), so no process under
 * measurement carries a TypeScript loader. `--runner tsx` skips the build
 * and runs the sources through tsx instead (a few MB more RSS per process and
 * slower start-up; the request path is the same JavaScript).
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { registerTempDir } from './proc.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface Runner {
  kind: 'dist' | 'tsx';
  /** Build directory (dist runner), removed by `dispose`. */
  dir: string | undefined;
  /** `node` arguments that run the program `relative` (e.g. `src/cli.ts`, `bench/servers/main.ts`). */
  args(relative: string): string[];
  dispose(): void;
}

export function tsxRunner(): Runner {
  return {
    kind: 'tsx',
    dir: undefined,
    args: (relative) => ['--import', 'tsx', resolve(ROOT, relative)],
    dispose: () => undefined,
  };
}

/**
 * Compile src/ and bench/ into a fresh temp directory. The directory gets a
 * package.json (`"type": "module"`, the project's version) and a symlink to the
 * project's node_modules so that imports resolve as in a checkout.
 */
export function buildRunner(log: (line: string) => void): Runner {
  const dir = mkdtempSync(join(tmpdir(), 'oauth-sidecar-bench-build-'));
  registerTempDir(dir);
  const started = Date.now();
  const tsc = resolve(ROOT, 'node_modules/typescript/bin/tsc');
  const result = spawnSync(process.execPath, [tsc, '-p', resolve(ROOT, 'bench/tsconfig.build.json'), '--outDir', dir], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 180_000,
  });
  if (result.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    const output = `${result.stdout ?? ''}${result.stderr ?? ''}${result.error ? String(result.error) : ''}`.trim();
    throw new Error(`tsc build failed:\n${output.slice(0, 4000)}`);
  }
  const pkg = JSON.parse(readFileSync(resolve(ROOT, 'package.json'), 'utf8')) as { version?: string };
  writeFileSync(join(dir, 'package.json'), `${JSON.stringify({ name: 'oauth-sidecar-bench-build', version: pkg.version ?? '0.0.0', type: 'module', private: true })}\n`);
  symlinkSync(resolve(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  log(`built src/ and bench/ with tsc into ${dir} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  return {
    kind: 'dist',
    dir,
    args: (relative) => [join(dir, relative.replace(/\.ts$/, '.js'))],
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export function makeRunner(kind: 'dist' | 'tsx', log: (line: string) => void): Runner {
  return kind === 'tsx' ? tsxRunner() : buildRunner(log);
}

/**
 * A runner for the sidecar of another source tree (a checkout, or a patched
 * copy of `src/` with package.json and the tsconfig files): its `src/`,
 * `package.json` and `tsconfig*.json` are
 * copied into a temp directory and compiled there with its
 * tsconfig.build.json, against the tree's own node_modules or, when it has
 * none, the project's (the same ones are linked next to the output). The tree
 * itself is never written to. Only `src/cli.ts` can be run from it; the
 * bench's own programs come from this checkout.
 */
export function variantRunner(root: string, log: (line: string) => void): Runner {
  const absolute = resolve(root);
  const dir = mkdtempSync(join(tmpdir(), 'oauth-sidecar-bench-variant-'));
  registerTempDir(dir);
  const tsc = resolve(ROOT, 'node_modules/typescript/bin/tsc');
  const out = join(dir, 'dist');
  const modules = existsSync(join(absolute, 'node_modules')) ? join(absolute, 'node_modules') : resolve(ROOT, 'node_modules');
  const tree = join(dir, 'tree');
  cpSync(join(absolute, 'src'), join(tree, 'src'), { recursive: true });
  // package.json too: its "type" decides whether tsc emits ES modules.
  for (const name of readdirSync(absolute).filter((n) => /^tsconfig.*\.json$|^package\.json$/.test(n))) cpSync(join(absolute, name), join(tree, name));
  symlinkSync(modules, join(tree, 'node_modules'), 'dir');
  const result = spawnSync(process.execPath, [tsc, '-p', join(tree, 'tsconfig.build.json'), '--outDir', out, '--sourceMap', 'false'], {
    cwd: tree,
    encoding: 'utf8',
    timeout: 180_000,
  });
  if (result.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`tsc build of ${absolute} failed:\n${`${result.stdout ?? ''}${result.stderr ?? ''}`.trim().slice(0, 4000)}`);
  }
  const pkg = JSON.parse(readFileSync(join(absolute, 'package.json'), 'utf8')) as { version?: string };
  writeFileSync(join(dir, 'package.json'), `${JSON.stringify({ name: 'oauth-sidecar-bench-variant', version: pkg.version ?? '0.0.0', type: 'module', private: true })}\n`);
  symlinkSync(modules, join(dir, 'node_modules'), 'dir');
  log(`built the sidecar of ${absolute} into ${out}`);
  return {
    kind: 'dist',
    dir,
    args: (relative) => {
      if (!relative.startsWith('src/')) throw new Error(`a variant runs only the sidecar, not ${relative}`);
      return [join(out, relative.slice('src/'.length).replace(/\.ts$/, '.js'))];
    },
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}
