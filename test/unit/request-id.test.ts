import { describe, expect, it } from 'vitest';
import { newRequestId, requestIdOf } from '../../src/request-id.js';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('request ids', () => {
  it('generates distinct version 4 UUIDs, across refills of the random pool', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 2_000; i++) {
      const id = newRequestId();
      expect(id).toMatch(UUID_V4);
      ids.add(id);
    }
    expect(ids.size).toBe(2_000);
  });

  it("keeps a sender's sane id and replaces anything else", () => {
    expect(requestIdOf('order-4711/abc')).toBe('order-4711/abc');
    for (const bad of [undefined, '', 'has space', 'x'.repeat(129), 'tab\there', 'ünïcode', ['a', 'b']]) {
      expect(requestIdOf(bad)).toMatch(UUID_V4);
    }
  });
});
