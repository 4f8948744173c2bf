import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    // Integration suites start their own servers on port 0; running files in
    // parallel is safe and keeps `npm test` fast on two cores.
    pool: 'forks',
    restoreMocks: true,
    // Polls wait for events under load (CI machines are shared): generous, never a fixed sleep.
    expect: { poll: { timeout: 10_000 } },
  },
});
