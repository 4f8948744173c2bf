import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { createScavenger, youngGenerationCollector } from '../../src/scavenger.js';

/** A scavenger whose scheduled tasks wait in `tasks` until the test runs them. */
function manual(stepBytes: number, longBodyBytes = 0) {
  const tasks: Array<() => void> = [];
  let collected = 0;
  const scavenger = createScavenger({ stepBytes, longBodyBytes, collect: () => collected++, schedule: (task) => tasks.push(task) });
  return {
    scavenger,
    tasks,
    collected: () => collected,
    runAll: () => tasks.splice(0).forEach((t) => t()),
  };
}

describe('scavenger', () => {
  it('schedules one collection each time a step of bytes has passed', () => {
    const m = manual(1000);
    m.scavenger.passed(0, 600);
    expect(m.tasks).toHaveLength(0);
    m.scavenger.passed(600, 400);
    expect(m.tasks).toHaveLength(1);
    m.runAll();
    expect(m.collected()).toBe(1);
    expect(m.scavenger.runs).toBe(1);
    // Counting starts again after a collection.
    m.scavenger.passed(0, 999);
    expect(m.tasks).toHaveLength(0);
    m.scavenger.passed(0, 1);
    m.runAll();
    expect(m.collected()).toBe(2);
  });

  it('coalesces the steps crossed while a collection is waiting to run', () => {
    const m = manual(1000);
    for (let i = 0; i < 10; i++) m.scavenger.passed(i * 1000, 1000);
    expect(m.tasks).toHaveLength(1);
    m.runAll();
    expect(m.collected()).toBe(1);
    // What passed before the collection ran is not carried over.
    m.scavenger.passed(10_000, 500);
    expect(m.tasks).toHaveLength(0);
  });

  it("counts only what lies beyond each body's first longBodyBytes", () => {
    const m = manual(1000, 5000);
    // Two bodies of 5,000 bytes each: nothing counted.
    for (let body = 0; body < 2; body++) for (let at = 0; at < 5000; at += 1000) m.scavenger.passed(at, 1000);
    expect(m.tasks).toHaveLength(0);
    // A chunk across the boundary counts its part beyond it: 4,500 + 1,000 → 500.
    m.scavenger.passed(4500, 1000);
    expect(m.tasks).toHaveLength(0);
    m.scavenger.passed(5500, 499);
    expect(m.tasks).toHaveLength(0);
    m.scavenger.passed(5999, 1);
    expect(m.tasks).toHaveLength(1);
    m.runAll();
    expect(m.collected()).toBe(1);
  });

  it('does nothing without a collector', () => {
    const tasks: Array<() => void> = [];
    const scavenger = createScavenger({ stepBytes: 1, collect: undefined, schedule: (task) => tasks.push(task) });
    scavenger.passed(0, 1_000_000);
    expect(tasks).toHaveLength(0);
    expect(scavenger.runs).toBe(0);
  });

  it('runs on setImmediate by default, outside the caller', async () => {
    let collected = 0;
    const scavenger = createScavenger({ stepBytes: 10, longBodyBytes: 0, collect: () => collected++ });
    scavenger.passed(0, 10);
    expect(collected).toBe(0);
    await new Promise((resolve) => setImmediate(resolve));
    expect(collected).toBe(1);
  });
});

describe('youngGenerationCollector', () => {
  it('runs a real young-generation collection without exposing a global gc', async () => {
    const collect = youngGenerationCollector();
    expect(collect).toBeTypeOf('function');
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
    // `--expose-gc` is off again: a context made afterwards (by any other code) gets no `gc` either.
    expect(runInNewContext('typeof gc')).toBe('undefined');

    // The entry of a collection started between `before` and `after`, i.e. by the call.
    let before = Infinity;
    let after = -Infinity;
    const seen = new Promise<PerformanceEntry>((resolve) => {
      const observer = new PerformanceObserver((list) => {
        const minor = list.getEntries().find((e) => (e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR && e.startTime >= before);
        if (minor) {
          observer.disconnect();
          resolve(minor);
        }
      });
      observer.observe({ entryTypes: ['gc'] });
    });
    before = performance.now();
    collect!();
    after = performance.now();
    expect((await seen).startTime).toBeLessThanOrEqual(after);
  });
});
