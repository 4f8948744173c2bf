import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { cpusFromCpuMax, tuneGarbageCollection, usableCpus } from '../../src/gc-tuning.js';

describe('cpusFromCpuMax', () => {
  it.each([
    ['max 100000\n', undefined],
    ['50000 100000\n', 0.5],
    ['200000 100000', 2],
    ['', undefined],
    [undefined, undefined],
    ['garbage', undefined],
    ['0 100000', undefined],
  ])('%j → %s', (text, cpus) => {
    expect(cpusFromCpuMax(text)).toBe(cpus);
  });
});

describe('usableCpus', () => {
  it('is the CPUs the process may run on, bounded by its cgroup limit', () => {
    expect(usableCpus(2, 'max 100000')).toBe(2);
    expect(usableCpus(2, undefined)).toBe(2);
    expect(usableCpus(4, '50000 100000')).toBe(0.5);
    expect(usableCpus(1, '400000 100000')).toBe(1);
  });
});

describe('tuneGarbageCollection', () => {
  it('chooses single-threaded scavenges with at most one CPU, and leaves V8 alone with more', () => {
    const set: string[] = [];
    expect(tuneGarbageCollection(1, (f) => set.push(f))).toBe(true);
    expect(tuneGarbageCollection(0.5, (f) => set.push(f))).toBe(true);
    expect(tuneGarbageCollection(2, (f) => set.push(f))).toBe(false);
    expect(set).toEqual(['--no-parallel-scavenge', '--no-parallel-scavenge']);
  });

  it('takes effect in a running process: its scavenges no longer wake V8\'s worker threads', { timeout: 30_000 }, () => {
    // The same allocation in two processes, the flag set at run time in one: parallel scavenge tasks wake
    // worker threads at every scavenge, which shows in the process's voluntary context switches (a thread going
    // to sleep). Involuntary ones are the machine's load preempting it, in both alike: not counted.
    const switches = (flag: boolean): number => {
      const script =
        (flag ? "require('v8').setFlagsFromString('--no-parallel-scavenge');" : '') +
        'const keep = []; for (let i = 0; i < 3e6; i++) { keep.push({ i, a: [i] }); if (keep.length > 20000) keep.length = 0; }' +
        'process.stdout.write(String(process.resourceUsage().voluntaryContextSwitches));';
      return Number(execFileSync(process.execPath, ['--max-semi-space-size=16', '-e', script], { encoding: 'utf8' }));
    };
    // Measured 4.7–5× fewer on a loaded 2-CPU machine: the median of three pairs, against a margin that load
    // on the machine does not erase.
    const median = (xs: number[]): number => xs.sort((a, b) => a - b)[1]!;
    const pairs = [0, 1, 2].map(() => [switches(false), switches(true)] as const);
    const parallel = median(pairs.map(([p]) => p));
    const single = median(pairs.map(([, s]) => s));
    expect(single).toBeLessThan(parallel * 0.6);
  });
});
