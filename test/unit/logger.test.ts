import { describe, expect, it } from 'vitest';
import { isoTimeOf } from '../../src/logger.js';

describe('log timestamps', () => {
  it('write the time exactly as toISOString does, across milliseconds, seconds, days and years', () => {
    const starts = [Date.UTC(2026, 10, 29, 19, 53, 12, 0), Date.UTC(2026, 11, 31, 23, 59, 59, 990), Date.UTC(2024, 1, 29, 0, 0, 0, 0)];
    for (const start of starts) {
      for (let t = start; t < start + 2_500; t += 7) {
        expect(isoTimeOf(t)).toBe(`,"time":"${new Date(t).toISOString()}"`);
        expect(isoTimeOf(t)).toBe(`,"time":"${new Date(t).toISOString()}"`); // from the cache
      }
    }
    // Back in time (clock adjusted): still right.
    expect(isoTimeOf(starts[1]!)).toBe(`,"time":"${new Date(starts[1]!).toISOString()}"`);
    expect(isoTimeOf(starts[0]! + 5)).toBe(`,"time":"${new Date(starts[0]! + 5).toISOString()}"`);
  });
});
