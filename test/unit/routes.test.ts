/**
 * `routes`: dot segments that would let a request leave its route's prefix
 * (RFC 3986 §5.2.4 removes them at the upstream) are recognised in every
 * spelling an upstream may decode; ordinary paths with dots are not.
 */
import { describe, expect, it } from 'vitest';
import { hasDotSegment } from '../../src/routes.js';

describe('hasDotSegment', () => {
  it.each([
    '/orders/../api/v1/IntegrationPackages',
    '/orders/..',
    '/orders/./x',
    '/..',
    '/orders/%2e%2e/%2E%2E/api/v1/x',
    '/orders/.%2e/x',
    '/orders/%2E./x',
    '/orders/..;/x',
    '/orders/..;jsessionid=1/x',
    '/orders/..%2f..%2fapi',
    '/orders/..%2F..%2Fapi',
    '/orders/..%5c..%5capi',
    '/orders/..\\..\\api',
    '/orders/x/..',
  ])('%s: yes', (path) => {
    expect(hasDotSegment(path)).toBe(true);
  });

  it.each([
    '/',
    '/http/order',
    '/http/file.xml',
    '/http/...',
    '/http/..x',
    '/http/x..',
    '/http/.hidden',
    '/api/v1/IntegrationDesigntimeArtifacts(Id=\'a.b\',Version=\'1.0.0\')',
    '/http/100%25',
    '/http/a%2fb',
    '/http/caf%C3%A9',
  ])('%s: no', (path) => {
    expect(hasDotSegment(path)).toBe(false);
  });
});
