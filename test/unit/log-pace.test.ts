import { describe, expect, it } from 'vitest';
import { LogPace } from '../../src/log-pace.js';

describe('LogPace', () => {
  it('lets the first line of a key through at once, then one per interval with the count held back', () => {
    let now = 1_000;
    const pace = new LogPace(60_000, () => now);
    expect(pace.take('a')).toEqual({ skipped: 0 });
    expect(pace.take('a')).toBeUndefined();
    expect(pace.take('a')).toBeUndefined();
    expect(pace.take('b')).toEqual({ skipped: 0 }); // keys are paced apart
    now += 59_999;
    expect(pace.take('a')).toBeUndefined();
    now += 1;
    expect(pace.take('a')).toEqual({ skipped: 3 });
    expect(pace.take('a')).toBeUndefined();
    now += 60_000;
    expect(pace.take('a')).toEqual({ skipped: 1 });
  });
});
