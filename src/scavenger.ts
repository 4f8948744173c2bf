/**
 * A young-generation garbage collection (a scavenge) after every few MiB of
 * body passed through, so that body chunks are freed soon after they are sent.
 *
 * Why: node's HTTP parser copies each request body chunk (up to 64 KiB) into a
 * new Buffer, and TLS reads of a response body come in new Buffers too. Their
 * memory lives outside V8's heap and is freed only when a collection finds the
 * Buffer dead. Scavenges follow JavaScript allocation, of which a streamed body
 * makes little (~2.5 KB per 64 KiB chunk), so a large upload piles up tens of
 * MB of dead chunks between them. V8 (11.3, Node 20) counts that memory against
 * the old generation's limit and answers with full mark-compacts: 12–24 of them
 * per 512 MiB uploaded, with concurrent markers competing for the proxy's CPU,
 * measured at 330–500 MB/s and +30–40 MB of RSS. A scavenge while the young
 * generation holds little costs well under a millisecond; one every 4 MiB frees
 * the chunks before any of that happens (README.md, "Benchmarks and soak":
 * Uploads).
 *
 * Only the part of a body beyond its first MiB counts. A small body's chunks
 * live about as long as its request, so a forced scavenge finds them alive
 * and, with their requests, promotes them to the old generation: with 16
 * concurrent 256 KiB uploads, counting every byte cost ~20 % more CPU per
 * request and removed no mark-compact. A long body's chunks are dead soon
 * after they are sent, whatever else is in flight: with 16 concurrent 16 MiB
 * uploads, 10 mark-compacts instead of 351 and ~40 % less CPU per request.
 *
 * The collector comes from V8's `gc` extension, made for a fresh context only
 * (`--expose-gc` is switched on for the moment it is made and off again), so no
 * other code sees a global `gc`. Where it cannot be made, nothing is scheduled.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** Bytes at the start of each body that are not counted (see above). */
export const LONG_BODY_BYTES = 1024 * 1024;

/**
 * Counted body bytes between two scavenges. Per 512 MiB uploaded (one upload, 16 MB semi-spaces): 2 MiB ran 256
 * scavenges and no mark-compact, 4 MiB 128 and none, 8 MiB 64 and 3, 16 MiB 32 and 0–7. 4 MiB is the
 * largest step that kept them out; side by side it cost ~10 % more CPU per GB than 8 MiB, 2 MiB ~10 % more.
 */
export const SCAVENGE_STEP_BYTES = 4 * 1024 * 1024;

export interface Scavenger {
  /**
   * `bytes` more of one body were passed on (either direction), `before` of it already: what lies
   * beyond the body's first `LONG_BODY_BYTES` counts, and a scavenge is scheduled every step.
   */
  passed(before: number, bytes: number): void;
  /** Scavenges run so far. */
  readonly runs: number;
}

export interface ScavengerOptions {
  stepBytes?: number;
  longBodyBytes?: number;
  /** Runs one young-generation collection; undefined: never collect. */
  collect: (() => void) | undefined;
  /** Runs `task` soon, outside the stream callback that crossed the step (default `setImmediate`). */
  schedule?: (task: () => void) => void;
}

export function createScavenger(options: ScavengerOptions): Scavenger {
  const step = options.stepBytes ?? SCAVENGE_STEP_BYTES;
  const longBody = options.longBodyBytes ?? LONG_BODY_BYTES;
  const collect = options.collect;
  const schedule = options.schedule ?? ((task) => void setImmediate(task));
  let pending = 0;
  let scheduled = false;
  let runs = 0;
  const run = (): void => {
    scheduled = false;
    pending = 0;
    runs++;
    collect?.();
  };
  return {
    passed(before, bytes) {
      if (collect === undefined) return;
      const after = before + bytes;
      if (after <= longBody) return;
      pending += before >= longBody ? bytes : after - longBody;
      if (pending < step || scheduled) return;
      // One scavenge frees whatever piled up meanwhile: steps crossed while one is scheduled are not queued.
      scheduled = true;
      schedule(run);
    },
    get runs() {
      return runs;
    },
  };
}

type MinorGc = (options: { type: 'minor' }) => void;

/** V8's young-generation collection as a function, or undefined when this runtime does not offer it. */
export function youngGenerationCollector(): (() => void) | undefined {
  const exposed = (globalThis as { gc?: unknown }).gc; // node --expose-gc
  if (typeof exposed === 'function') return () => (exposed as MinorGc)({ type: 'minor' });
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    if (typeof gc !== 'function') return undefined;
    return () => (gc as MinorGc)({ type: 'minor' });
  } catch {
    return undefined;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}
