/**
 * Running the sidecar inside a memory cgroup that the operator made, to check a container memory limit
 * (e.g. the Kubernetes example's 192Mi) without a container runtime: the soak's `--cgroup DIR`.
 *
 * The harness neither creates nor limits the cgroup (that needs root and differs between cgroup v1 and
 * v2); it starts the sidecar through `/bin/sh`, which writes its own pid into `DIR/cgroup.procs` and then
 * execs node, so the sidecar's memory is charged there from its first page. Afterwards it reads the
 * limit, the peak charge and the OOM kills, from v2 (`memory.max`, `memory.peak`, `memory.events`) or v1
 * (`memory.limit_in_bytes`, `memory.max_usage_in_bytes`, `memory.oom_control`) files.
 */
import { accessSync, constants, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface CgroupMemory {
  /** Bytes; undefined: no limit ("max", or v1's huge default). */
  limitBytes: number | undefined;
  /** Highest charge since the cgroup was made (or its peak was last reset), bytes. */
  peakBytes: number | undefined;
  /** Processes the kernel's OOM killer ended in this cgroup. */
  oomKills: number | undefined;
}

/** v1 reports "no limit" as a page-aligned value near 2^63. */
const V1_UNLIMITED = 2 ** 62;

/** Throws a message that says what to do when `dir` cannot take the sidecar. */
export function checkCgroupDir(dir: string): void {
  try {
    accessSync(join(dir, 'cgroup.procs'), constants.W_OK);
  } catch {
    throw new Error(
      `--cgroup ${dir}: ${join(dir, 'cgroup.procs')} is missing or not writable. Make and limit the cgroup first, as root, e.g. ` +
        `(v2) mkdir /sys/fs/cgroup/sidecar && echo 192M > /sys/fs/cgroup/sidecar/memory.max, or ` +
        `(v1) mkdir /sys/fs/cgroup/memory/sidecar && echo 192M > /sys/fs/cgroup/memory/sidecar/memory.limit_in_bytes`,
    );
  }
}

/** Command and arguments that start `command args…` inside the cgroup at `dir`. */
export function inCgroup(dir: string, command: string, args: readonly string[]): [string, string[]] {
  // $0 is "sh"; $1 the procs file; the rest the command. Writing "$$" moves the shell, and exec keeps its pid.
  return ['/bin/sh', ['-c', 'echo $$ > "$1" && shift && exec "$@"', 'sh', join(dir, 'cgroup.procs'), command, ...args]];
}

/** The memory figures of the cgroup at `dir`, whichever version it is; a file that is missing gives undefined. */
export function readCgroupMemory(dir: string): CgroupMemory {
  const read = (name: string): string | undefined => {
    try {
      return readFileSync(join(dir, name), 'utf8');
    } catch {
      return undefined;
    }
  };
  return parseCgroupMemory({
    max: read('memory.max'),
    peak: read('memory.peak'),
    events: read('memory.events'),
    limitInBytes: read('memory.limit_in_bytes'),
    maxUsageInBytes: read('memory.max_usage_in_bytes'),
    oomControl: read('memory.oom_control'),
  });
}

/** The file contents of either version (undefined where a file is absent) → figures. Pure, for tests. */
export function parseCgroupMemory(files: {
  max?: string | undefined;
  peak?: string | undefined;
  events?: string | undefined;
  limitInBytes?: string | undefined;
  maxUsageInBytes?: string | undefined;
  oomControl?: string | undefined;
}): CgroupMemory {
  const number = (text: string | undefined): number | undefined => {
    const value = text?.trim();
    return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined;
  };
  const field = (text: string | undefined, key: string): number | undefined => number(new RegExp(`^${key} (\\d+)$`, 'm').exec(text ?? '')?.[1]);
  if (files.max !== undefined || files.peak !== undefined || files.events !== undefined) {
    return { limitBytes: number(files.max), peakBytes: number(files.peak), oomKills: field(files.events, 'oom_kill') };
  }
  const limit = number(files.limitInBytes);
  return {
    limitBytes: limit !== undefined && limit < V1_UNLIMITED ? limit : undefined,
    peakBytes: number(files.maxUsageInBytes),
    oomKills: field(files.oomControl, 'oom_kill'),
  };
}
