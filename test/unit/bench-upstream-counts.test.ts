import { describe, expect, it } from 'vitest';
import { reachingUpstream, type UpstreamCounts } from '../../bench/lib/upstream-counts.js';

/** An upstream whose authorised count grows by `seen` during each run. */
function upstreamSeeing(seen: number): { counts: UpstreamCounts; run: <T>(result: T) => () => Promise<T> } {
  let authorised = 1_000; // what earlier phases left
  return {
    counts: { connections: async () => 0, authorised: async () => authorised },
    run: (result) => async () => {
      authorised += seen;
      return result;
    },
  };
}

describe('reachingUpstream', () => {
  it('counts 2xx answers the upstream never saw with a valid token as unreached', async () => {
    const honest = upstreamSeeing(100);
    expect(await reachingUpstream(honest.counts, honest.run({ requests: 100, non2xx: 0 }))).toEqual({ requests: 100, non2xx: 0, unreached: 0 });
    // A contender answering 40 of 100 by itself.
    const cheat = upstreamSeeing(60);
    expect((await reachingUpstream(cheat.counts, cheat.run({ requests: 100, non2xx: 0 }))).unreached).toBe(40);
    // Nothing forwarded at all.
    const local = upstreamSeeing(0);
    expect((await reachingUpstream(local.counts, local.run({ requests: 5_000, non2xx: 0 }))).unreached).toBe(5_000);
  });

  it('does not count non-2xx answers (reported as such), nor requests the upstream saw beyond those answered', async () => {
    const refused = upstreamSeeing(90);
    expect((await reachingUpstream(refused.counts, refused.run({ requests: 100, non2xx: 10 }))).unreached).toBe(0);
    // In flight when the load generator stopped: seen upstream, never answered.
    const inFlight = upstreamSeeing(164);
    expect((await reachingUpstream(inFlight.counts, inFlight.run({ requests: 100, non2xx: 0 }))).unreached).toBe(0);
  });
});
