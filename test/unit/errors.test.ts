/** test/unit/errors.test.ts (new) */
import { describe, expect, it } from 'vitest';
import { SidecarError, toHttpFailure } from '../../src/errors.js';

describe('toHttpFailure', () => {
  it('gives every 503 a Retry-After: the one the failure names, else 5 s; a 502 none', () => {
    expect(toHttpFailure(new SidecarError('TOKEN_UNREACHABLE', 'down'))).toMatchObject({ status: 503, retryAfter: 5 });
    expect(toHttpFailure(new SidecarError('TOKEN_RATE_LIMITED', 'slow down', { retryAfter: 42 }))).toMatchObject({ status: 503, retryAfter: 42 });
    expect(toHttpFailure(new SidecarError('TOKEN_REJECTED', 'no'))).toMatchObject({ status: 502, retryAfter: undefined });
  });
});
