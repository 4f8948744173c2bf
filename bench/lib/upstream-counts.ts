/**
 * The upstream's own counts as evidence: a 2xx answer that never reached the upstream with a valid token was not
 * forwarded (a cache, a bug, a cheat), and passes every status check the load generator can make.
 */

/** The upstream's own counts, read between measurements (one contender runs at a time). */
export interface UpstreamCounts {
  /** TLS connections it accepted. */
  connections(): Promise<number>;
  /** Requests it accepted with a valid Bearer token (the static one or one the token server issued). */
  authorised(): Promise<number>;
}

/**
 * Runs a load and counts how many of its 2xx answers the upstream did not see with a valid token. The upstream may
 * have seen more (requests in flight when the load generator stopped), never fewer.
 */
export async function reachingUpstream<T extends { requests: number; non2xx: number }>(upstream: UpstreamCounts, run: () => Promise<T>): Promise<T & { unreached: number }> {
  const before = await upstream.authorised();
  const result = await run();
  const seen = (await upstream.authorised()) - before;
  return { ...result, unreached: Math.max(0, result.requests - result.non2xx - seen) };
}

/** The problem line for answers that never reached the upstream. */
export const unreachedProblem = (n: number, phase: string): string => `${n} 2xx answers ${phase} never reached the upstream with a valid token`;
