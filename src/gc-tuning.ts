/**
 * Garbage collection sized to the CPUs the sidecar has. V8 splits a scavenge (a young-generation collection)
 * into tasks on its worker threads. With one CPU to run on — a pinned process (`taskset`, a cpuset) or a CPU
 * limit of one or less (cgroup v2 `cpu.max`, what a Kubernetes `limits.cpu` sets) — those tasks only take turns
 * with the main thread: no shorter pause, and hundreds of context switches per second under load (about 500
 * against 30 for the same allocation; bench/FINDINGS.md). There the sidecar scavenges on the main thread alone
 * (`--no-parallel-scavenge`, which V8 reads at every scavenge, so it can be set once the process runs).
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { setFlagsFromString } from 'node:v8';

/** cgroup v2's CPU limit of the process's own cgroup (`max 100000` when there is none). */
const CPU_MAX = '/sys/fs/cgroup/cpu.max';

/** CPUs a `cpu.max` text allows (`50000 100000` → 0.5), or undefined for no limit or an unreadable text. */
export function cpusFromCpuMax(text: string | undefined): number | undefined {
  const [quota, period] = (text ?? '').trim().split(/\s+/);
  if (quota === undefined || quota === 'max' || period === undefined) return undefined;
  const cpus = Number(quota) / Number(period);
  return Number.isFinite(cpus) && cpus > 0 ? cpus : undefined;
}

/** The CPUs the process can use at once: the CPUs it may run on, bounded by its cgroup's CPU limit. */
export function usableCpus(parallelism: number = availableParallelism(), cpuMax: string | undefined = readCpuMax()): number {
  const limit = cpusFromCpuMax(cpuMax);
  return limit === undefined ? parallelism : Math.min(parallelism, limit);
}

function readCpuMax(): string | undefined {
  try {
    return readFileSync(CPU_MAX, 'utf8');
  } catch {
    return undefined; // cgroup v1, or not Linux: the affinity alone decides
  }
}

/** Single-threaded scavenges when at most one CPU is usable; returns whether they were chosen. */
export function tuneGarbageCollection(cpus: number = usableCpus(), setFlags: (flags: string) => void = setFlagsFromString): boolean {
  if (cpus > 1) return false;
  setFlags('--no-parallel-scavenge');
  return true;
}
