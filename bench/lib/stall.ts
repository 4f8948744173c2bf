/**
 * The VM's own stalls, read from `tools/stall-probe.ts`: how much of the time
 * the proxy's CPU ran several times slower than usual. On a shared VM the host
 * slows whole vCPUs down in bursts (every process alike, for tens of
 * milliseconds); at one connection every request caught in such a burst takes
 * that many times longer, so the share and the slowdown tell how much of a
 * latency tail on this machine is the machine's.
 */
import type { Runner } from './build.js';
import { Child, cleanEnv } from './proc.js';
import { max, median } from './stats.js';

export interface StallFigures {
  /** How long the probe's fixed piece of work usually took (median), µs. */
  medianUs: number;
  /** Share of the probe's time spent in pieces that took `SLOW_FACTOR`× the median or longer (0–1). */
  slowShare: number;
  /** Those slow pieces' typical slowdown (median multiple of the median piece); 1 when there were none. */
  slowdown: number;
  /** The worst piece, as a multiple of the median. */
  worst: number;
}

/** A piece this many times slower than the median counts as stalled. */
export const SLOW_FACTOR = 4;

export function stallFigures(pieceUs: readonly number[], elapsedUs: number): StallFigures | undefined {
  const typical = median(pieceUs);
  if (typical === undefined || typical <= 0 || elapsedUs <= 0) return undefined;
  const slow = pieceUs.filter((us) => us >= SLOW_FACTOR * typical);
  const slowUs = slow.reduce((sum, us) => sum + us, 0);
  return {
    medianUs: typical,
    slowShare: slowUs / elapsedUs,
    slowdown: slow.length > 0 ? median(slow)! / typical : 1,
    worst: max(pieceUs)! / typical,
  };
}

/** Run the probe for `seconds` on `cpu` (all else idle); undefined when it fails. */
export async function probeStalls(runner: Runner, cpu: number | undefined, seconds: number): Promise<StallFigures | undefined> {
  const child = new Child('stall-probe', process.execPath, [...runner.args('bench/tools/stall-probe.ts'), String(seconds)], { cpu, env: cleanEnv() });
  const status = await child.exited();
  if (status.code !== 0) return undefined;
  try {
    const out = JSON.parse(child.stdout) as { pieceUs: number[]; elapsedUs: number };
    return stallFigures(out.pieceUs, out.elapsedUs);
  } catch {
    return undefined;
  }
}
