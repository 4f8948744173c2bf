import { describe, expect, it } from 'vitest';
import { localUrl } from '../../src/sidecar.js';

describe('localUrl (the demo banner\'s curl lines)', () => {
  it('reaches a wildcard listener on loopback, and any other as it is', () => {
    expect(localUrl({ host: '0.0.0.0', port: 9090 })).toBe('http://127.0.0.1:9090');
    expect(localUrl({ host: '::', port: 9090 })).toBe('http://127.0.0.1:9090');
    expect(localUrl({ host: '127.0.0.1', port: 8080 })).toBe('http://127.0.0.1:8080');
    expect(localUrl({ host: '::1', port: 8080 })).toBe('http://[::1]:8080');
    expect(localUrl({ host: '10.20.30.40', port: 8080 })).toBe('http://10.20.30.40:8080');
  });
});
